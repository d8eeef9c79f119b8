//! Tracekit's Redis queue protocol: the one place that knows every key, Lua
//! script and task state transition. The scheduler (`tracekit-sched`) and the
//! worker (`tracekit-agent`) only call the operations of [`Queue`].
//!
//! # Data model
//!
//! The original system's key names are kept, so old and new parts can share
//! one Redis while a fleet migrates; the keys marked *new* are what
//! reliability needs.
//!
//! | key | type | meaning |
//! |---|---|---|
//! | `q:pending` | list | global FIFO of submitted task JSON (name configurable: [`Keys::pending`]) |
//! | `q:<node>` | list | tasks placed on `<node>`, oldest first; each holds its `cpu_units` of the node's capacity |
//! | `inflight:<node>` | list | *new*: tasks the node's worker has taken and not finished (crash-recoverable) |
//! | `cap:<node>` | int | free capacity units (`cap_total` − units held by queued and in-flight tasks) |
//! | `cap_total:<node>` | int | total capacity units |
//! | `phys:<node>`, `ratio:<node>` | int, float | logical cores, allocation ratio (informational) |
//! | `run_count:<node>` | int | tasks placed on the node and not finished (queued + in flight), never below 0 |
//! | `parallel:<node>` | int | *new*: slots of the node (0 = capacity only, no slot tokens) |
//! | `slots:available` | list | slot tokens (value = node id), one per free slot (name configurable: [`Keys::slots`]) |
//! | `nodes:registry` | sorted set | *new*: every node that ever registered, all scores 0 so the set is in byte order of names (the tie order of placement) |
//! | `nodes:left` | sorted set | *new*: node → when it left the alive set (ms; deregistered or declared dead), until it registers again; `status` hides nodes that left long ago |
//! | `stats:run` | hash | *new*: the run's counters `submitted`, `done`, `failed` (attempts), `dead` (less those requeued from `q:dead`), kept by the transition scripts; a `run start` resets them |
//! | `stats:done_times` | sorted set | *new*: completions of the last minute (score = ms), trimmed by each completion: the throughput |
//! | `stats:live` | hash | *new*: gauges `placed` (on node queues) and `running` (in flight), kept by the transition scripts |
//! | `taken_at:<node>` | hash | *new*: raw in-flight task → when the node's worker took it (ms), for `status` |
//! | `nodes:slotted` | set | *new*: nodes with `parallel` > 0 (placement reads it instead of every `parallel:<node>`) |
//! | `idx:live` | sorted set | *new*, placement index: nodes placement may consider (alive, not found stale), scored by `cap_total` |
//! | `idx:caps` | sorted set | *new*, placement index: free capacities (member = score) whose buckets may hold nodes (never misses one; a placement drops the empty ones it meets) |
//! | `idx:families` | set | *new*, placement index: the bucket families kept up to date; a family is built by the first placement with its weigher and order |
//! | `idx:first:<c>`, `idx:inst:<c>`, `idx:inst_max:<c>`, `idx:vcpu:<c>`, `idx:vcpu_max:<c>` | sorted sets | *new*, placement index, one bucket per family and free capacity `c`: the indexed nodes without slot tokens whose free capacity is `c`, scored 0 / `run_count` / −`run_count` / `cap_total` / −`cap_total`, so ascending score then name (Redis sorts equal scores by member bytes) is the weigher's order with the tie rule |
//! | `binding:<node>` | string | *new*: how the node's worker binds tasks to CPUs ("shared", "exclusive", "UNBOUND: why") |
//! | `take:<token>` | string | *new*: the task a take call returned, kept 60 s so a retried call returns the same task |
//! | `nodes:alive` | sorted set | *new*: node → last heartbeat (Redis server time, ms). A node is alive while `now − heartbeat < timeout`. A sorted set rather than keys with a TTL because one command lists both the live and the expired nodes; an expired key could not say whose it was. |
//! | `q:dead` | list | *new*: dead letters, JSON `{"task": <raw task string>, "reason": …, "node": …, "ts": ms, "attempts": n}`; a letter's id is the SHA-1 of its entry |
//! | `q:attempts` | hash | *new*: raw task → failed attempts so far (deleted when the task finishes) |
//! | `q:last_error` | hash | *new*: raw task → why its last failed attempt failed (the dead letter quotes it; deleted with `q:attempts`) |
//! | `binding:<node>` | string | *new*: the node's CPU binding as its worker reports it (`shared`, `exclusive`, or `UNBOUND: why`), for `status` |
//! | `lease:<node>` | hash | *new*: the registration holding the node id (`token`, `host`, `pid`, `lease_ms`): one live agent per node id; heartbeats, takes, leave and deregistration carry the token, so a replaced registration changes nothing |
//! | `nodes:leaving` | set | *new*: stopping nodes, out of placement while they hand tasks back (`leave`) |
//! | `nodes:watch_last`, `nodes:watch_since` | int | *new*: when a central last checked for dead nodes, and since when they have checked without a gap (Redis time, ms): no node is declared dead before a full heartbeat timeout of watching, so a Redis outage never counts against the nodes |
//! | `runs:current`, `runs:started`, `run:<id>`, `runs:waiting:<id>`, `nodes:run` | string, sorted set, hash, set, hash | *new*: runs started and stopped from the controller, the nodes a stop waits on, and the run each following agent records into (see [`run`]) |
//! | `trace:<run>:nodes`, `trace:<run>:<node>` | set, hash | *new*: node trace directories published for `gather` (see [`gather`]) |
//! | `dispatch:<id>:mark` | int | *new*: highest submission index a dispatcher has pushed (exactly-once submission across retries), expires after a day |
//!
//! # Task states
//!
//! ```text
//!  submit ─▶ q:pending ──place──▶ q:<node> ──take──▶ inflight:<node> ──complete──▶ (gone)
//!               ▲  │                 │                    │   └──dead_letter──▶ q:dead
//!               │  └─dead (bad, too big, too many attempts)──▶ q:dead
//!               └──── recover (node dead) / deregister / register (orphans) / requeue / leave (queued)
//! ```
//!
//! A completion that comes after its node was declared dead still completes
//! the task while nobody has taken it again (it leaves pending or the queue
//! it was placed on); otherwise it is refused, and the worker discards the
//! run's output.
//!
//! Every arrow is one Lua script (`src/scripts/*.lua`, all sharing
//! `common.lua`), so each transition is atomic: a crash or a lost connection
//! leaves a task in exactly one place and the capacity books balanced. Every
//! script is safe to retry after a lost reply: placement and recovery act on
//! the current state; complete/dead-letter/requeue act only while the task is
//! still in flight (`LREM` count); take remembers its answer under a
//! per-call token (`take:<token>`); submission skips indexes at or below the
//! dispatcher's high-water mark.
//!
//! Placement ([`Queue::place`]) does not read every node: the scripts that
//! change a node's free capacity, `run_count` or liveness keep the placement
//! index (`idx:*`) up to date, in which the nodes without slot tokens sit in
//! one bucket per free capacity, ordered by each weigher's metric and then by
//! name. The best node for a head task needing `u` units is the best of the
//! bucket heads of the capacities ≥ `u` (`idx:caps`), so a placement costs
//! O(D log K) for K nodes and D distinct free capacities (D is at most the
//! largest node's capacity, whatever the size of the fleet). Each call first
//! takes the nodes whose heartbeat is too old for its timeout out of the
//! index (their next heartbeat puts them back), reads buckets in growing
//! pages, and checks a page against its nodes' counters (one `MGET`) when one
//! of its entries is chosen (an entry written by anything else is re-filed,
//! so placement never overcommits). Within a call the index is only read:
//! the nodes it places are kept aside in the script, and their queues,
//! counters and index entries are written once at the end, a few commands
//! per bucket and node queue. Nodes with slot tokens are few
//! and read one by one. The index needs every script that changes counters
//! to keep it: programs of a version without it must not share the Redis. One round trip per call, and a call may place a batch of tasks; the
//! pure model of the policy is [`place_model`] (feature `testing`).
//!
//! Key names are defined once, in [`keys`]; the scripts get them from a Lua
//! prelude generated from that table ([`keys::lua_prelude`]). Keys are built
//! inside the scripts (only the pending and slot lists are declared in
//! `KEYS`), which standalone Redis allows; Redis Cluster is not supported.

#[cfg(feature = "cli")]
pub mod cli;
pub mod conn;
pub mod dead;
pub mod gather;
pub mod keys;
#[cfg(any(test, feature = "testing"))]
#[path = "scripts/place_model.rs"]
pub mod place_model;
pub mod queue;
pub mod run;
pub mod run_stats;
mod scripts;
pub mod task;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use conn::{RedisConn, RedisOptions};
pub use dead::DeadEntry;
pub use keys::Keys;
pub use queue::{
    Completion, DeadLetter, Heartbeat, Lease, NodeState, PlaceEvent, PlaceOptions, PlaceOutcome,
    PlaceStatus, Queue, QueueError, Recovered, Registered, Registration, RunRef, RunningTask,
    Snapshot, SubmitTarget, Take, Weigher, WeigherOrder,
};
pub use run_stats::RunStats;
pub use task::{Task, TaskError};

#[cfg(test)]
mod queue_tests;
