//! Redis key names (the data model is documented in the crate root).
//!
//! This table is the only place a key name is written. The Lua scripts get
//! the same names from [`lua_prelude`], generated from it and prepended to
//! every script, so Rust and Lua cannot drift apart.

/// Sorted set of every registered node (scores 0: byte order of names).
pub const REGISTRY: &str = "nodes:registry";
/// Sorted set node → last heartbeat (ms, Redis server time).
pub const ALIVE: &str = "nodes:alive";
/// Sorted set node → when it left the alive set (ms): deregistered, or
/// declared dead and its work taken back; a registration takes it out.
pub const LEFT: &str = "nodes:left";
/// Set of nodes that use slot tokens (`parallel` > 0).
pub const SLOTTED: &str = "nodes:slotted";
/// Dead-letter list.
pub const DEAD: &str = "q:dead";
/// Hash raw task → failed attempts.
pub const ATTEMPTS: &str = "q:attempts";
/// Hash raw task → why its last failed attempt failed.
pub const LAST_ERROR: &str = "q:last_error";
/// Set of nodes that are stopping: out of placement until they register
/// again (their heartbeats do not put them back in the index).
pub const LEAVING: &str = "nodes:leaving";
/// When a central last checked for dead nodes (ms, Redis server time).
pub const WATCH_LAST: &str = "nodes:watch_last";
/// Since when the centrals have checked for dead nodes without a gap (ms,
/// Redis server time): no node is declared dead before a full heartbeat
/// timeout of watching, so an outage of Redis (or of every central) never
/// counts against the nodes.
pub const WATCH_SINCE: &str = "nodes:watch_since";
/// Hash of the run's cumulative counters: `submitted`, `done`, `failed`
/// (failed attempts), `dead` (dead-lettered, less those requeued from the
/// dead-letter list). A `run start` resets them (with [`DONE_TIMES`]).
pub const STATS_RUN: &str = "stats:run";
/// Sorted set of the last minute's completions (score = ms, Redis time),
/// trimmed by every completion: the throughput.
pub const DONE_TIMES: &str = "stats:done_times";
/// Hash of gauges kept by the transitions: `placed` (tasks on node queues)
/// and `running` (tasks in flight). Never reset: they describe what exists.
pub const STATS_LIVE: &str = "stats:live";
/// The current run's id (absent between runs): agents that follow the
/// controller's runs record into it. Set by `run start`, removed by `run stop`.
pub const RUN_CURRENT: &str = "runs:current";
/// Sorted set run id → when it started (ms, Redis time): `run list`.
pub const RUNS: &str = "runs:started";
/// Hash node → the run its agent records into ("" = none yet), for agents
/// that follow the controller's runs; written by each heartbeat.
pub const NODE_RUN: &str = "nodes:run";
/// Placement index: sorted set of the nodes placement may consider (alive and
/// not found stale), scored by `cap_total`.
pub const INDEX_LIVE: &str = "idx:live";
/// Placement index: sorted set of free capacities (member = score = the
/// capacity), a superset of those whose buckets hold a node (placement drops
/// the empty ones it meets).
pub const INDEX_CAPS: &str = "idx:caps";
/// Placement index: set of the bucket families kept up to date ("first",
/// "inst", "inst_max", "vcpu", "vcpu_max"); a family is built the first time a placement uses its
/// weigher, so nobody pays for weighers no central uses.
pub const INDEX_FAMILIES: &str = "idx:families";

/// Fixed key names as the Lua prelude declares them (`local NAME = 'key'`).
const FIXED: &[(&str, &str)] = &[
    ("REGISTRY", REGISTRY),
    ("ALIVE", ALIVE),
    ("SLOTTED", SLOTTED),
    ("LEFT", LEFT),
    ("DEAD", DEAD),
    ("ATTEMPTS", ATTEMPTS),
    ("LAST_ERROR", LAST_ERROR),
    ("LEAVING", LEAVING),
    ("WATCH_LAST", WATCH_LAST),
    ("WATCH_SINCE", WATCH_SINCE),
    ("STATS_RUN", STATS_RUN),
    ("DONE_TIMES", DONE_TIMES),
    ("STATS_LIVE", STATS_LIVE),
    ("RUN_CURRENT", RUN_CURRENT),
    ("RUNS", RUNS),
    ("NODE_RUN", NODE_RUN),
    ("IDX_LIVE", INDEX_LIVE),
    ("IDX_CAPS", INDEX_CAPS),
    ("IDX_FAMILIES", INDEX_FAMILIES),
];

/// Declares each key builder once: a Rust function `name(part) -> String` and
/// the Lua function `key_name(part)` of the prelude, both `prefix .. part`.
macro_rules! builders {
    ($( $(#[$doc:meta])* $name:ident => $prefix:literal, )*) => {
        $(
            $(#[$doc])*
            pub fn $name(part: &str) -> String {
                format!(concat!($prefix, "{}"), part)
            }
        )*
        const BUILDERS: &[(&str, &str)] = &[$((stringify!($name), $prefix)),*];
    };
}

builders! {
    /// Queue of tasks placed on `node`.
    queue => "q:",
    /// Tasks `node`'s worker has taken and not finished.
    inflight => "inflight:",
    /// Hash: each of `node`'s in-flight tasks (raw) → when it was taken (ms).
    taken_at => "taken_at:",
    /// Free capacity units of `node`.
    cap => "cap:",
    /// Total capacity units of `node`.
    cap_total => "cap_total:",
    /// Logical cores of `node`.
    phys => "phys:",
    /// Allocation ratio of `node`.
    ratio => "ratio:",
    /// Tasks placed on `node` and not finished.
    run_count => "run_count:",
    /// Slots of `node` (0 = capacity only).
    parallel => "parallel:",
    /// How `node`'s worker binds tasks to CPUs ("shared", "exclusive", or
    /// "UNBOUND: why"), set by the worker at registration.
    binding => "binding:",
    /// Hash of the agent that holds `node`'s lease: `token` (one per
    /// registration), `host`, `pid`, `lease_ms` (how long after its last
    /// heartbeat another host may take the node over).
    lease => "lease:",
    /// The answer a completion of a run (its trace id) got, kept a day.
    completed => "done:",
    /// Hash of a run started by `run start`: `started_ms`, and from its
    /// stop `stopped_ms` with the run's counters as they were then.
    run_info => "run:",
    /// Set of the nodes a run's stop waits on: each leaves it by publishing
    /// the run's traces (a publication from before the stop does not count).
    run_waiting => "runs:waiting:",
    /// The answer a take call gave, under the call's token.
    take_memo => "take:",
    /// Placement index, first fit: indexed nodes without slot tokens whose
    /// free capacity is the suffix, all scores 0 (byte order of names).
    index_first => "idx:first:",
    /// Placement index, `instances` weigher: like [`index_first`], scored
    /// by `run_count`.
    index_instances => "idx:inst:",
    /// Placement index, `instances` weigher, order max: scored by
    /// −`run_count` (equal scores still sort by name, as the tie rule wants).
    index_instances_max => "idx:inst_max:",
    /// Placement index, `vcpu` weigher: like [`index_first`], scored by
    /// `cap_total` (within one free capacity, `cap_total − cap` orders the
    /// nodes as `cap_total` does).
    index_vcpu => "idx:vcpu:",
    /// Placement index, `vcpu` weigher, order max: scored by −`cap_total`.
    index_vcpu_max => "idx:vcpu_max:",
}

/// A dispatcher's submission high-water mark.
pub fn dispatch_mark(dispatcher_id: &str) -> String {
    format!("dispatch:{dispatcher_id}:mark")
}

/// Lua source declaring every key of this table: `local NAME = 'key'` for the
/// fixed keys and `local function key_<builder>(part)` for the per-node
/// ones. Prepended to every script (see `scripts.rs`); also usable by tests
/// that inspect Redis with their own Lua.
pub fn lua_prelude() -> String {
    let mut out = String::from("-- Generated from tracekit-proto/src/keys.rs: the key table.\n");
    for (name, key) in FIXED {
        out.push_str(&format!("local {name} = {}\n", lua_string(key)));
    }
    for (name, prefix) in BUILDERS {
        out.push_str(&format!(
            "local function key_{name}(part) return {} .. part end\n",
            lua_string(prefix)
        ));
    }
    out
}

/// A Lua string literal (the key names are plain ASCII; quotes and
/// backslashes are escaped all the same).
fn lua_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// The two list names the original made configurable (`--pending`, `--slots`);
/// everything else is fixed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// Global FIFO of submitted tasks.
    pub pending: String,
    /// Slot tokens (value = node id).
    pub slots: String,
}

impl Default for Keys {
    fn default() -> Self {
        Self {
            pending: "q:pending".into(),
            slots: "slots:available".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_names_are_kept() {
        let k = Keys::default();
        assert_eq!(k.pending, "q:pending");
        assert_eq!(k.slots, "slots:available");
        assert_eq!(queue("n1"), "q:n1");
        assert_eq!(cap("n1"), "cap:n1");
        assert_eq!(cap_total("n1"), "cap_total:n1");
        assert_eq!(phys("n1"), "phys:n1");
        assert_eq!(ratio("n1"), "ratio:n1");
        assert_eq!(run_count("n1"), "run_count:n1");
        assert_eq!(inflight("n1"), "inflight:n1");
    }

    #[test]
    fn the_prelude_declares_every_key_of_the_table() {
        let p = lua_prelude();
        assert!(p.contains("local ALIVE = 'nodes:alive'\n"));
        assert!(p.contains("local function key_queue(part) return 'q:' .. part end\n"));
        assert!(p.contains("local function key_index_vcpu(part) return 'idx:vcpu:' .. part end\n"));
        for (name, _) in FIXED {
            assert!(p.contains(&format!("local {name} = ")), "{name}");
        }
        for (name, _) in BUILDERS {
            assert!(p.contains(&format!("local function key_{name}(")), "{name}");
        }
        assert_eq!(lua_string(r"a'b\c"), r"'a\'b\\c'");
    }

    /// No script writes a key name itself: every name comes from the prelude.
    #[test]
    fn scripts_use_no_raw_key_names() {
        let mut prefixes: Vec<&str> = BUILDERS.iter().map(|(_, p)| *p).collect();
        prefixes.extend(FIXED.iter().map(|(_, k)| *k));
        prefixes.extend(["slots:", "q:pending", "dispatch:"]);
        for (file, src) in crate::scripts::SOURCES {
            for p in &prefixes {
                for quote in ['\'', '"'] {
                    let raw = format!("{quote}{p}");
                    assert!(!src.contains(&raw), "{file} writes the key {raw}… itself");
                }
            }
        }
    }
}
