//! The protocol operations: one method per task state transition, each one
//! Lua script (see the crate doc for the data model and the state diagram).

use std::collections::HashMap;
use std::time::Duration;

use redis::{RedisError, Value};

use crate::conn::RedisConn;
use crate::keys::{self, Keys};
use crate::scripts;

/// Errors of protocol operations.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("Redis: {0}")]
    Redis(#[from] RedisError),
    #[error(
        "node id `{node}` is in use by the agent on host {host} (pid {pid}): one live agent per node id; give this one another --node-id, or stop that one"
    )]
    Held {
        node: String,
        host: String,
        pid: String,
    },
    #[error("task {index} is {bytes} bytes, more than the limit of {limit}: not submitted", limit = crate::task::MAX_TASK_BYTES)]
    TooLarge { index: u64, bytes: usize },
    #[error("unexpected reply from {script}: {detail}")]
    Reply {
        script: &'static str,
        detail: String,
    },
}

pub(crate) fn bad_reply(script: &'static str, detail: impl Into<String>) -> QueueError {
    QueueError::Reply {
        script,
        detail: detail.into(),
    }
}

/// The central scheduler's weigher (SPEC "Central scheduler").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Weigher {
    /// First fit by node name.
    #[default]
    None,
    /// Metric `run_count`.
    Instances,
    /// Metric `cap_total − cap`.
    Vcpu,
}

impl Weigher {
    fn arg(self) -> &'static str {
        match self {
            Weigher::None => "",
            Weigher::Instances => "instances",
            Weigher::Vcpu => "vcpu",
        }
    }
}

/// Whether the weigher prefers the smallest or the largest metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeigherOrder {
    #[default]
    Min,
    Max,
}

/// Parameters of one placement call.
#[derive(Debug, Clone)]
pub struct PlaceOptions {
    pub weigher: Weigher,
    pub order: WeigherOrder,
    /// Only slot tokens among the newest `scan_slots` count (0 = all).
    pub scan_slots: usize,
    /// A task that failed this many attempts is dead-lettered (0 = no limit).
    pub max_attempts: u32,
    /// A node whose last heartbeat is older is not alive.
    pub heartbeat_timeout: Duration,
    /// Most placements (and dead letters) in one call (≥ 1).
    pub batch: usize,
}

impl Default for PlaceOptions {
    fn default() -> Self {
        Self {
            weigher: Weigher::None,
            order: WeigherOrder::Min,
            scan_slots: 0,
            max_attempts: 3,
            heartbeat_timeout: Duration::from_secs(10),
            batch: 1,
        }
    }
}

/// Why a placement call stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaceStatus {
    /// `q:pending` is empty.
    Empty,
    /// The head task fits no live node now (head-of-line blocking).
    Wait,
    /// No node is alive.
    NoLiveNodes,
    /// The batch was used up; there may be more to place.
    More,
}

/// What happened to one head task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlaceEvent {
    Placed { node: String, task: String },
    Dead { reason: String, task: String },
}

/// Result of [`Queue::place`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceOutcome {
    pub status: PlaceStatus,
    pub events: Vec<PlaceEvent>,
}

/// A worker's registration.
#[derive(Debug, Clone)]
pub struct Registration {
    pub node: String,
    /// Total capacity units.
    pub capacity: i64,
    /// Logical cores (informational, `phys:<node>`).
    pub cores: u32,
    /// Allocation ratio (informational, `ratio:<node>`).
    pub ratio: f64,
    /// Slot tokens to keep for the node (0 = capacity only).
    pub parallel: u32,
    /// Overwrite a stale `cap_total` (otherwise set only when absent).
    pub reset_capacity: bool,
    /// Hand the node's queued tasks back to the head of pending.
    pub clear_queue: bool,
    /// Who holds the node while this registration lasts.
    pub lease: Lease,
}

/// A registration's hold on its node id: one live agent per node id. The
/// token is new for each registration; heartbeats, takes and deregistration
/// carry it, so a registration that was replaced (its node declared dead,
/// or taken over) learns it at once and can change nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub token: String,
    /// Host name of the holder (its previous holder on the same host is
    /// known to be gone: the agent holds a local lock on the node id).
    pub host: String,
    pub pid: u32,
    /// How long after the holder's last heartbeat another host may take the
    /// node over.
    pub lease_ms: u64,
}

impl Lease {
    /// A new lease for this process on this host.
    pub fn fresh(lease_ms: u64) -> Lease {
        let host = host_name();
        let pid = std::process::id();
        Lease {
            token: format!("{}:{pid}:{}", host, take_token("lease")),
            host,
            pid,
            lease_ms,
        }
    }
}

/// This host's name (the kernel's, as `hostname` prints it).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Result of [`Queue::register`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registered {
    pub cap_total: i64,
    /// Free capacity (total minus what the node's queued tasks hold).
    pub cap: i64,
    /// In-flight tasks of a previous process, sent back to pending.
    pub orphans_requeued: i64,
    /// Tasks still queued for the node.
    pub queued: i64,
}

/// Result of [`Queue::heartbeat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    Alive,
    /// The node is not alive (declared dead or never registered): its work
    /// was taken back, and it must [`Queue::register`] again.
    Lost,
}

/// Which run of a task a report is about: the lease token of the
/// registration that took it and the run's trace id (empty = not said).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunRef<'a> {
    pub lease: &'a str,
    pub trace_id: &'a str,
}

/// Result of [`Queue::complete_task`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// The task left the node's in-flight list.
    Accepted,
    /// The node had been declared dead, but nobody had taken the task again:
    /// it left pending (or the queue it was placed on) and is done.
    Late,
    /// Not in flight here and not waiting anywhere: already completed, or
    /// another node runs it again. Nothing changed.
    Refused,
}

impl Completion {
    /// Whether the run counts (its output is the task's).
    pub fn counts(self) -> bool {
        matches!(self, Completion::Accepted | Completion::Late)
    }
}

/// Result of [`Queue::take_task`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Take {
    /// The raw task, now in `inflight:<node>`. Pass it unchanged to
    /// complete/dead-letter/requeue.
    Task(String),
    Empty,
    /// The node is not alive; register again.
    Lost,
}

/// A node declared dead by [`Queue::recover_dead_nodes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub node: String,
    /// Tasks put back at the head of pending.
    pub tasks: usize,
}

/// Where [`Queue::submit`] puts tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitTarget<'a> {
    Pending,
    /// Directly on a node's queue (the dispatcher's per-node modes).
    Node(&'a str),
}

/// One node as [`Queue::snapshot`] sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeState {
    pub name: String,
    pub alive: bool,
    pub last_heartbeat_ms: Option<i64>,
    pub cap: i64,
    pub cap_total: i64,
    pub run_count: i64,
    pub parallel: i64,
    pub phys: Option<String>,
    pub ratio: Option<String>,
    pub queued: usize,
    pub inflight: usize,
    pub slot_tokens: usize,
    /// The worker's CPU binding as it reported it ("shared", "exclusive",
    /// or "UNBOUND: why").
    pub binding: Option<String>,
    /// The run its agent records into, for an agent that follows the
    /// controller's runs ("" between runs); None for one with a run of its
    /// own.
    pub recording: Option<String>,
    /// Its in-flight tasks, oldest first.
    pub running: Vec<RunningTask>,
}

/// A task in flight on a node.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningTask {
    /// The raw task JSON.
    pub raw: String,
    /// When its worker took it (ms, Redis time; None for a task taken by
    /// a version that did not note it).
    pub taken_ms: Option<i64>,
}

/// The queue state, for `status` and tests: every node
/// ([`Queue::snapshot`]) or one page of them in byte order of names
/// ([`Queue::snapshot_page`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub now_ms: i64,
    /// The nodes of this page.
    pub nodes: Vec<NodeState>,
    /// Index of the page's first node among all registered nodes.
    pub offset: usize,
    /// Registered nodes (all pages).
    pub registered: usize,
    /// Nodes alive by the heartbeat timeout (all pages).
    pub alive: usize,
    pub pending: usize,
    pub dead: usize,
    /// Registered nodes left out because they left (deregistered, or
    /// declared dead and their work taken back); 0 when they are included.
    pub retired: usize,
}

/// One entry of `q:dead`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct DeadLetter {
    pub task: String,
    pub reason: String,
    #[serde(default)]
    pub node: Option<String>,
    pub ts: i64,
    /// Failed attempts when it was dead-lettered (absent in letters written
    /// before the count was kept).
    #[serde(default)]
    pub attempts: Option<i64>,
}

/// The protocol on one connection.
#[derive(Clone)]
pub struct Queue {
    conn: RedisConn,
    keys: Keys,
}

pub(crate) fn utf8(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

pub(crate) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => utf8(other).and_then(|s| s.parse().ok()),
    }
}

impl Queue {
    pub fn new(conn: RedisConn, keys: Keys) -> Queue {
        Queue { conn, keys }
    }

    pub fn conn(&self) -> &RedisConn {
        &self.conn
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Runs a script with KEYS = [pending, slots, extra…] and `args`, retrying
    /// transient failures (every script is safe to repeat).
    pub(crate) async fn eval(
        &self,
        name: &'static str,
        script: &redis::Script,
        extra_keys: &[&str],
        args: &[&[u8]],
    ) -> Result<Value, QueueError> {
        let mut inv = script.prepare_invoke();
        inv.key(&self.keys.pending).key(&self.keys.slots);
        for k in extra_keys {
            inv.key(*k);
        }
        for a in args {
            inv.arg(*a);
        }
        let inv = &inv;
        self.conn
            .run(name, |mut c| async move {
                inv.invoke_async::<Value>(&mut c).await
            })
            .await
            .map_err(QueueError::from)
    }

    // ---- central scheduler ----

    /// Places up to `opts.batch` head tasks (strict FIFO, filters + weigher,
    /// see `place.lua`), all in one atomic call; dead-letters head tasks that
    /// can never run.
    pub async fn place(&self, opts: &PlaceOptions) -> Result<PlaceOutcome, QueueError> {
        let order = match opts.order {
            WeigherOrder::Min => "min",
            WeigherOrder::Max => "max",
        };
        let v = self
            .eval(
                "place.lua",
                &scripts::PLACE,
                &[],
                &[
                    opts.weigher.arg().as_bytes(),
                    order.as_bytes(),
                    opts.scan_slots.to_string().as_bytes(),
                    opts.max_attempts.to_string().as_bytes(),
                    (opts.heartbeat_timeout.as_millis() as u64)
                        .to_string()
                        .as_bytes(),
                    opts.batch.max(1).to_string().as_bytes(),
                ],
            )
            .await?;
        parse_place(v)
    }

    /// Declares every node whose heartbeat is older than `timeout` dead and
    /// takes its work back (see `recover.lua`). `gap`: the longest pause
    /// between two checks (of any central) that still counts as watching;
    /// after a longer one (Redis or every central was down) no node is
    /// declared dead before a full `timeout` of watching.
    pub async fn recover_dead_nodes(
        &self,
        timeout: Duration,
        gap: Duration,
    ) -> Result<Vec<Recovered>, QueueError> {
        let v = self
            .eval(
                "recover.lua",
                &scripts::RECOVER,
                &[],
                &[
                    (timeout.as_millis() as u64).to_string().as_bytes(),
                    (gap.as_millis() as u64).to_string().as_bytes(),
                ],
            )
            .await?;
        let Value::Array(items) = v else {
            return Err(bad_reply("recover.lua", format!("{v:?}")));
        };
        items
            .chunks(2)
            .map(|c| match c {
                [n, k] => Ok(Recovered {
                    node: utf8(n).ok_or_else(|| bad_reply("recover.lua", "node"))?,
                    tasks: int(k).ok_or_else(|| bad_reply("recover.lua", "count"))? as usize,
                }),
                _ => Err(bad_reply("recover.lua", "odd reply")),
            })
            .collect()
    }

    // ---- dispatcher ----

    /// Appends `(index, raw task)` items exactly once per dispatcher:
    /// indexes must increase strictly over the dispatcher's life; items at or
    /// below its high-water mark are skipped (a retried call pushes nothing
    /// twice). Returns how many were pushed.
    pub async fn submit(
        &self,
        dispatcher_id: &str,
        target: SubmitTarget<'_>,
        items: &[(u64, String)],
    ) -> Result<usize, QueueError> {
        if let Some((index, raw)) = items
            .iter()
            .find(|(_, raw)| raw.len() > crate::task::MAX_TASK_BYTES)
        {
            return Err(QueueError::TooLarge {
                index: *index,
                bytes: raw.len(),
            });
        }
        let mark = keys::dispatch_mark(dispatcher_id);
        let node = match target {
            SubmitTarget::Pending => "",
            SubmitTarget::Node(n) => n,
        };
        let idx: Vec<String> = items.iter().map(|(i, _)| i.to_string()).collect();
        let mut args: Vec<&[u8]> = vec![node.as_bytes(), b"86400000"];
        for (i, (_, raw)) in idx.iter().zip(items) {
            args.push(i.as_bytes());
            args.push(raw.as_bytes());
        }
        let v = self
            .eval("submit.lua", &scripts::SUBMIT, &[&mark], &args)
            .await?;
        int(&v)
            .map(|n| n as usize)
            .ok_or_else(|| bad_reply("submit.lua", format!("{v:?}")))
    }

    // ---- worker ----

    /// (Re)registers a worker process (see `register.lua`).
    pub async fn register(&self, r: &Registration) -> Result<Registered, QueueError> {
        let v = self
            .eval(
                "register.lua",
                &scripts::REGISTER,
                &[],
                &[
                    r.node.as_bytes(),
                    r.capacity.to_string().as_bytes(),
                    r.cores.to_string().as_bytes(),
                    r.ratio.to_string().as_bytes(),
                    r.parallel.to_string().as_bytes(),
                    if r.reset_capacity { b"1" } else { b"0" },
                    if r.clear_queue { b"1" } else { b"0" },
                    r.lease.token.as_bytes(),
                    r.lease.host.as_bytes(),
                    r.lease.pid.to_string().as_bytes(),
                    r.lease.lease_ms.to_string().as_bytes(),
                ],
            )
            .await?;
        match &v {
            Value::Array(a) if a.first().and_then(utf8).as_deref() == Some("held") => {
                Err(QueueError::Held {
                    node: r.node.clone(),
                    host: a.get(1).and_then(utf8).unwrap_or_default(),
                    pid: a.get(2).and_then(utf8).unwrap_or_default(),
                })
            }
            Value::Array(a) if a.len() == 4 => {
                let g = |i: usize| {
                    int(&a[i]).ok_or_else(|| bad_reply("register.lua", format!("{v:?}")))
                };
                Ok(Registered {
                    cap_total: g(0)?,
                    cap: g(1)?,
                    orphans_requeued: g(2)?,
                    queued: g(3)?,
                })
            }
            _ => Err(bad_reply("register.lua", format!("{v:?}"))),
        }
    }

    /// Refreshes the node's heartbeat, if the registration of `lease` (its
    /// token) still holds the node.
    pub async fn heartbeat(&self, node: &str, lease: &str) -> Result<Heartbeat, QueueError> {
        Ok(self.heartbeat_run(node, lease, None).await?.0)
    }

    /// A heartbeat that also says which run the agent records into:
    /// `following` is `Some(run)` ("" = none yet) for an agent that follows
    /// the controller's runs, `None` for one with a run of its own. Returns
    /// the current run too (None between runs).
    pub async fn heartbeat_run(
        &self,
        node: &str,
        lease: &str,
        following: Option<&str>,
    ) -> Result<(Heartbeat, Option<String>), QueueError> {
        let (mode, run) = match following {
            Some(run) => ("follow", run),
            None => ("fixed", ""),
        };
        let v = self
            .eval(
                "heartbeat.lua",
                &scripts::HEARTBEAT,
                &[],
                &[
                    node.as_bytes(),
                    lease.as_bytes(),
                    mode.as_bytes(),
                    run.as_bytes(),
                ],
            )
            .await?;
        let bad = || bad_reply("heartbeat.lua", format!("{v:?}"));
        let Value::Array(items) = &v else {
            return Err(bad());
        };
        match items.first().and_then(int) {
            Some(1) => {
                let current = items.get(1).and_then(utf8).ok_or_else(bad)?;
                Ok((Heartbeat::Alive, (!current.is_empty()).then_some(current)))
            }
            Some(0) => Ok((Heartbeat::Lost, None)),
            _ => Err(bad()),
        }
    }

    /// One reading of this host's clock against Redis `TIME` (midpoint of
    /// the round trip): (this clock minus Redis's, round trip), ms.
    pub async fn clock_offset(&self) -> Result<(f64, f64), QueueError> {
        self.clock_offset_of(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as f64)
                .unwrap_or(0.0)
        })
        .await
    }

    /// [`Queue::clock_offset`] of the clock `epoch_us` reads (epoch µs).
    pub async fn clock_offset_of(
        &self,
        epoch_us: impl Fn() -> f64,
    ) -> Result<(f64, f64), QueueError> {
        let before = epoch_us();
        let (secs, micros): (i64, i64) = self
            .conn
            .run("TIME", |mut c| async move {
                redis::cmd("TIME").query_async(&mut c).await
            })
            .await?;
        let after = epoch_us();
        let server = secs as f64 * 1e6 + micros as f64;
        Ok((
            ((before + after) / 2.0 - server) / 1000.0,
            (after - before) / 1000.0,
        ))
    }

    /// Who holds `node`'s lease while it heartbeats within its lease time:
    /// (host, pid), or `None`. A read for refusing early (before anything on
    /// the host is touched); [`Queue::register`] checks again atomically.
    pub async fn live_holder(&self, node: &str) -> Result<Option<(String, String)>, QueueError> {
        let v = self
            .eval("holder.lua", &scripts::HOLDER, &[], &[node.as_bytes()])
            .await?;
        match &v {
            Value::Array(a) if a.len() == 2 => Ok(Some((
                utf8(&a[0]).unwrap_or_default(),
                utf8(&a[1]).unwrap_or_default(),
            ))),
            Value::Array(a) if a.is_empty() => Ok(None),
            _ => Err(bad_reply("holder.lua", format!("{v:?}"))),
        }
    }

    /// Moves the node's oldest queued task to its in-flight list. A task that
    /// is not UTF-8 cannot be a task: it is dead-lettered and the next one taken.
    /// `lease`: the registration's token (a replaced one takes nothing).
    pub async fn take_task(&self, node: &str, lease: &str) -> Result<Take, QueueError> {
        self.take_task_in(node, lease, None).await
    }

    /// [`Queue::take_task`] for an agent that follows the controller's runs
    /// and records into `run`: nothing is taken (`Take::Empty`) while `run`
    /// is not the current run.
    pub async fn take_task_in(
        &self,
        node: &str,
        lease: &str,
        run: Option<&str>,
    ) -> Result<Take, QueueError> {
        loop {
            let token = take_token(node);
            let mut args = vec![node.as_bytes(), token.as_bytes(), lease.as_bytes()];
            if let Some(run) = run {
                args.push(run.as_bytes());
            }
            let v = self.eval("take.lua", &scripts::TAKE, &[], &args).await?;
            let Value::Array(a) = &v else {
                return Err(bad_reply("take.lua", format!("{v:?}")));
            };
            match (a.first().and_then(utf8).as_deref(), a.get(1)) {
                (Some("empty"), _) => return Ok(Take::Empty),
                (Some("lost"), _) => return Ok(Take::Lost),
                (Some("task"), Some(Value::BulkString(b))) => match String::from_utf8(b.clone()) {
                    Ok(s) => return Ok(Take::Task(s)),
                    Err(_) => {
                        tracing::warn!(node, "dead-lettering a task that is not UTF-8");
                        self.eval(
                            "dead_letter.lua",
                            &scripts::DEAD_LETTER,
                            &[],
                            &[node.as_bytes(), b, b"task is not UTF-8"],
                        )
                        .await?;
                    }
                },
                _ => return Err(bad_reply("take.lua", format!("{v:?}"))),
            }
        }
    }

    /// [`Queue::take_task`], polling (20 ms growing to 250 ms) until a task
    /// arrives, the node is lost, or `timeout` passes (then `Take::Empty`).
    /// `run`: as in [`Queue::take_task_in`].
    pub async fn take_task_wait(
        &self,
        node: &str,
        lease: &str,
        run: Option<&str>,
        timeout: Duration,
    ) -> Result<Take, QueueError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut delay = Duration::from_millis(20);
        loop {
            match self.take_task_in(node, lease, run).await? {
                Take::Empty if tokio::time::Instant::now() + delay < deadline => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(250));
                }
                other => return Ok(other),
            }
        }
    }

    /// The node's in-flight tasks, oldest first (to adopt after a reconnect).
    pub async fn inflight_tasks(&self, node: &str) -> Result<Vec<String>, QueueError> {
        self.lrange(&keys::inflight(node)).await
    }

    /// The node's queued tasks, oldest first.
    pub async fn queued_tasks(&self, node: &str) -> Result<Vec<String>, QueueError> {
        self.lrange(&keys::queue(node)).await
    }

    /// The pending tasks, head first.
    pub async fn pending_tasks(&self) -> Result<Vec<String>, QueueError> {
        self.lrange(&self.keys.pending).await
    }

    /// Length of the pending list.
    pub async fn pending_len(&self) -> Result<usize, QueueError> {
        self.llen(&self.keys.pending).await
    }

    /// Number of tasks queued on `node` (placed, not yet taken).
    pub async fn queue_len(&self, node: &str) -> Result<usize, QueueError> {
        self.llen(&keys::queue(node)).await
    }

    async fn llen(&self, key: &str) -> Result<usize, QueueError> {
        Ok(self
            .conn
            .run("LLEN", |mut c| async move {
                redis::cmd("LLEN").arg(key).query_async(&mut c).await
            })
            .await?)
    }

    async fn lrange(&self, key: &str) -> Result<Vec<String>, QueueError> {
        Ok(self
            .conn
            .run("LRANGE", |mut c| async move {
                redis::cmd("LRANGE")
                    .arg(key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut c)
                    .await
            })
            .await?)
    }

    /// The task finished: it leaves the in-flight list and gives back its
    /// capacity, run_count and slot token (see [`Completion`] for a
    /// completion that comes after the node was declared dead).
    pub async fn complete_task(&self, node: &str, raw: &str) -> Result<Completion, QueueError> {
        self.complete_run(node, raw, RunRef::default()).await
    }

    /// [`Queue::complete_task`] for one run: only the registration that took
    /// it completes it in flight (a run of an ended registration is judged
    /// as late), and the answer for its trace id is kept a day, so a
    /// completion sent again gets the same one.
    pub async fn complete_run(
        &self,
        node: &str,
        raw: &str,
        run: RunRef<'_>,
    ) -> Result<Completion, QueueError> {
        let v = self
            .eval(
                "complete.lua",
                &scripts::COMPLETE,
                &[],
                &[
                    node.as_bytes(),
                    raw.as_bytes(),
                    run.trace_id.as_bytes(),
                    run.lease.as_bytes(),
                ],
            )
            .await?;
        match int(&v) {
            Some(1) => Ok(Completion::Accepted),
            Some(2) => Ok(Completion::Late),
            Some(0) => Ok(Completion::Refused),
            _ => Err(bad_reply("complete.lua", format!("{v:?}"))),
        }
    }

    /// The task can never run: it goes to `q:dead` with `reason`, its
    /// capacity comes back. `false` if it was no longer in flight.
    pub async fn dead_letter_task(
        &self,
        node: &str,
        raw: &str,
        reason: &str,
    ) -> Result<bool, QueueError> {
        self.dead_letter_run(node, raw, reason, RunRef::default())
            .await
    }

    /// [`Queue::dead_letter_task`] by the registration that took the task
    /// (an ended one changes nothing).
    pub async fn dead_letter_run(
        &self,
        node: &str,
        raw: &str,
        reason: &str,
        run: RunRef<'_>,
    ) -> Result<bool, QueueError> {
        let v = self
            .eval(
                "dead_letter.lua",
                &scripts::DEAD_LETTER,
                &[],
                &[
                    node.as_bytes(),
                    raw.as_bytes(),
                    reason.as_bytes(),
                    run.lease.as_bytes(),
                ],
            )
            .await?;
        Ok(int(&v) == Some(1))
    }

    /// Hands an in-flight task back to the head of pending (capacity comes
    /// back); `failed` counts one attempt towards the central's
    /// `--max-attempts`, and `reason` (why it failed) is what its dead letter
    /// will say if it is the last. `false` if it was no longer in flight.
    pub async fn requeue_task(
        &self,
        node: &str,
        raw: &str,
        failed: bool,
        reason: Option<&str>,
    ) -> Result<bool, QueueError> {
        self.requeue_run(node, raw, failed, reason, RunRef::default())
            .await
    }

    /// [`Queue::requeue_task`] by the registration that took the task (an
    /// ended one changes nothing).
    pub async fn requeue_run(
        &self,
        node: &str,
        raw: &str,
        failed: bool,
        reason: Option<&str>,
        run: RunRef<'_>,
    ) -> Result<bool, QueueError> {
        let v = self
            .eval(
                "requeue.lua",
                &scripts::REQUEUE,
                &[],
                &[
                    node.as_bytes(),
                    raw.as_bytes(),
                    if failed { b"1" } else { b"0" },
                    reason.unwrap_or("").as_bytes(),
                    run.lease.as_bytes(),
                ],
            )
            .await?;
        Ok(int(&v) == Some(1))
    }

    /// Record how `node`'s worker binds tasks to CPUs, for `status`.
    pub async fn set_binding(&self, node: &str, binding: &str) -> Result<(), QueueError> {
        let key = keys::binding(node);
        self.conn
            .run("set binding", |mut c| {
                let key = key.clone();
                async move {
                    redis::cmd("SET")
                        .arg(key)
                        .arg(binding)
                        .query_async::<()>(&mut c)
                        .await
                }
            })
            .await?;
        Ok(())
    }

    /// The worker leaves: everything it still holds goes back to the head of
    /// pending; returns how many tasks, or `None` (nothing changed) when
    /// another registration holds the node.
    pub async fn deregister(&self, node: &str, lease: &str) -> Result<Option<usize>, QueueError> {
        self.lease_script("deregister.lua", &scripts::DEREGISTER, node, lease)
            .await
    }

    /// A stopping worker takes itself out of placement (see `leave.lua`)
    /// before it hands anything back; returns how many queued tasks went
    /// back to pending, or `None` when another registration holds the node.
    pub async fn leave(&self, node: &str, lease: &str) -> Result<Option<usize>, QueueError> {
        self.lease_script("leave.lua", &scripts::LEAVE, node, lease)
            .await
    }

    async fn lease_script(
        &self,
        name: &'static str,
        script: &redis::Script,
        node: &str,
        lease: &str,
    ) -> Result<Option<usize>, QueueError> {
        let v = self
            .eval(name, script, &[], &[node.as_bytes(), lease.as_bytes()])
            .await?;
        match int(&v) {
            Some(-1) => Ok(None),
            Some(n) if n >= 0 => Ok(Some(n as usize)),
            _ => Err(bad_reply(name, format!("{v:?}"))),
        }
    }

    // ---- inspection ----

    /// Dead letters `start..=stop` (LRANGE indexes; 0, -1 = all).
    pub async fn dead_letters(&self, start: i64, stop: i64) -> Result<Vec<DeadLetter>, QueueError> {
        let raw: Vec<String> = self
            .conn
            .run("LRANGE", |mut c| async move {
                redis::cmd("LRANGE")
                    .arg(keys::DEAD)
                    .arg(start)
                    .arg(stop)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        raw.iter()
            .map(|s| serde_json::from_str(s).map_err(|e| bad_reply("q:dead", format!("{e}: {s}"))))
            .collect()
    }

    /// Every registered node with its counters, plus queue lengths. Several
    /// commands in pipelines: consistent enough for display, not atomic.
    pub async fn snapshot(&self, heartbeat_timeout: Duration) -> Result<Snapshot, QueueError> {
        self.snapshot_page(heartbeat_timeout, 0, None).await
    }

    /// Like [`Queue::snapshot`], for at most `limit` nodes (None = all) from
    /// the `offset`-th in byte order of names; the totals (registered,
    /// alive, pending, dead) cover every node. The cost grows with the page,
    /// not with the fleet (plus one read of the slot-token list).
    pub async fn snapshot_page(
        &self,
        heartbeat_timeout: Duration,
        offset: usize,
        limit: Option<usize>,
    ) -> Result<Snapshot, QueueError> {
        self.snapshot_view(heartbeat_timeout, offset, limit, None)
            .await
    }

    /// Like [`Queue::snapshot_page`]; with `retired_after` = Some(d), the
    /// nodes that left (deregistered, or declared dead and their work taken
    /// back) more than `d` ago are not paged through, and
    /// [`Snapshot::retired`] counts them. That reads the names in
    /// `nodes:alive` and `nodes:left` (two commands), not their counters.
    pub async fn snapshot_view(
        &self,
        heartbeat_timeout: Duration,
        offset: usize,
        limit: Option<usize>,
        retired_after: Option<Duration>,
    ) -> Result<Snapshot, QueueError> {
        let include_retired = retired_after.is_none();
        let keys = &self.keys;
        if limit == Some(0) {
            return self.snapshot_counts(heartbeat_timeout, offset).await;
        }
        let stop: i64 = match (include_retired, limit) {
            (true, Some(l)) => (offset + l - 1) as i64,
            _ => -1,
        };
        let range_of = if include_retired {
            keys::REGISTRY
        } else {
            keys::ALIVE
        };
        let (time, mut names, left, registered, pending, dead, tokens): SnapshotHead = self
            .conn
            .run("snapshot", |mut c| async move {
                redis::pipe()
                    .cmd("TIME")
                    .cmd("ZRANGE")
                    .arg(range_of)
                    .arg(if include_retired { offset } else { 0 })
                    .arg(stop)
                    .cmd("ZRANGE")
                    .arg(keys::LEFT)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .cmd("ZCARD")
                    .arg(keys::REGISTRY)
                    .cmd("LLEN")
                    .arg(&keys.pending)
                    .cmd("LLEN")
                    .arg(keys::DEAD)
                    .cmd("LRANGE")
                    .arg(&keys.slots)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let now_ms = time.0 * 1000 + time.1 / 1000;
        let mut retired = 0;
        if let Some(after) = retired_after {
            let since = now_ms - after.as_millis() as i64;
            names.extend(
                left.into_iter()
                    .filter(|(_, at)| *at as i64 > since)
                    .map(|(n, _)| n),
            );
            // nodes:alive is ordered by heartbeat: page by name here.
            names.sort_unstable();
            names.dedup();
            retired = registered.saturating_sub(names.len());
            let end = limit.map_or(names.len(), |l| (offset + l).min(names.len()));
            names = names
                .get(offset..end)
                .map(<[String]>::to_vec)
                .unwrap_or_default();
        }
        let timeout_ms = heartbeat_timeout.as_millis() as i64;
        let alive = self.count_alive(now_ms - timeout_ms).await?;
        let mut token_count: HashMap<&str, usize> = HashMap::new();
        for t in &tokens {
            *token_count.entry(t.as_str()).or_default() += 1;
        }
        let names_ref = &names;
        let rows: Vec<Value> = if names.is_empty() {
            Vec::new()
        } else {
            self.conn
                .run("snapshot nodes", |mut c| async move {
                    let mut p = redis::pipe();
                    for n in names_ref {
                        p.cmd("MGET")
                            .arg(keys::cap(n))
                            .arg(keys::cap_total(n))
                            .arg(keys::run_count(n))
                            .arg(keys::parallel(n))
                            .arg(keys::phys(n))
                            .arg(keys::ratio(n))
                            .arg(keys::binding(n));
                        p.cmd("ZSCORE").arg(keys::ALIVE).arg(n);
                        p.cmd("LLEN").arg(keys::queue(n));
                        p.cmd("LRANGE").arg(keys::inflight(n)).arg(0).arg(-1);
                        p.cmd("HGETALL").arg(keys::taken_at(n));
                        p.cmd("HGET").arg(keys::NODE_RUN).arg(n);
                    }
                    p.query_async(&mut c).await
                })
                .await?
        };
        let mut nodes = Vec::with_capacity(names.len());
        for (name, row) in names.iter().zip(rows.chunks(6)) {
            let [Value::Array(vals), hb, q, inf, since, recording] = row else {
                return Err(bad_reply("snapshot", format!("{row:?}")));
            };
            let get = |i: usize| vals.get(i).and_then(int).unwrap_or(0);
            let text = |i: usize| vals.get(i).and_then(utf8);
            let last = score(hb);
            let running = running_tasks(inf, since);
            nodes.push(NodeState {
                name: name.clone(),
                alive: last.is_some_and(|l| l > now_ms - timeout_ms),
                last_heartbeat_ms: last,
                cap: get(0),
                cap_total: get(1),
                run_count: get(2),
                parallel: get(3),
                phys: text(4),
                ratio: text(5),
                queued: int(q).unwrap_or(0) as usize,
                inflight: running.len(),
                slot_tokens: token_count.get(name.as_str()).copied().unwrap_or(0),
                binding: text(6),
                recording: utf8(recording),
                running,
            });
        }
        Ok(Snapshot {
            now_ms,
            nodes,
            offset,
            registered,
            alive,
            pending,
            dead,
            retired,
        })
    }

    /// Nodes whose last heartbeat is newer than `since_ms`.
    async fn count_alive(&self, since_ms: i64) -> Result<usize, QueueError> {
        Ok(self
            .conn
            .run("ZCOUNT", |mut c| async move {
                redis::cmd("ZCOUNT")
                    .arg(keys::ALIVE)
                    .arg(format!("({since_ms}"))
                    .arg("+inf")
                    .query_async(&mut c)
                    .await
            })
            .await?)
    }

    /// A snapshot with no node rows, only the totals.
    async fn snapshot_counts(
        &self,
        heartbeat_timeout: Duration,
        offset: usize,
    ) -> Result<Snapshot, QueueError> {
        let keys = &self.keys;
        let (time, registered, pending, dead): ((i64, i64), usize, usize, usize) = self
            .conn
            .run("snapshot", |mut c| async move {
                redis::pipe()
                    .cmd("TIME")
                    .cmd("ZCARD")
                    .arg(keys::REGISTRY)
                    .cmd("LLEN")
                    .arg(&keys.pending)
                    .cmd("LLEN")
                    .arg(keys::DEAD)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let now_ms = time.0 * 1000 + time.1 / 1000;
        let alive = self
            .count_alive(now_ms - heartbeat_timeout.as_millis() as i64)
            .await?;
        Ok(Snapshot {
            now_ms,
            nodes: Vec::new(),
            offset,
            registered,
            alive,
            pending,
            dead,
            retired: 0,
        })
    }
}

#[cfg(any(test, feature = "testing"))]
impl Queue {
    /// Test support: sets `node`'s free capacity and run_count and re-files
    /// it in the placement index (a test stages a decision this way; writing
    /// the counters alone would leave the index behind).
    pub async fn stage_counters(
        &self,
        node: &str,
        cap: i64,
        run_count: i64,
    ) -> Result<(), QueueError> {
        self.eval(
            "testing_stage.lua",
            &scripts::STAGE,
            &[],
            &[
                node.as_bytes(),
                cap.to_string().as_bytes(),
                run_count.to_string().as_bytes(),
            ],
        )
        .await?;
        Ok(())
    }

    /// Test support: `node`'s last heartbeat is made ancient (a test wants it
    /// overdue without waiting for a timeout on a loaded machine).
    pub async fn make_overdue(&self, node: &str) -> Result<(), QueueError> {
        self.conn
            .run("ZADD", |mut c| async move {
                redis::cmd("ZADD")
                    .arg(keys::ALIVE)
                    .arg(1)
                    .arg(node)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await?;
        Ok(())
    }

    /// Test support: the centrals have watched the nodes for ever (a test
    /// that makes a heartbeat ancient wants it judged at once).
    pub async fn assume_watched(&self) -> Result<(), QueueError> {
        self.eval("testing_watched.lua", &scripts::WATCHED, &[], &[])
            .await?;
        Ok(())
    }

    /// Test support: every disagreement between the placement index and the
    /// counters (empty = consistent). Reads every key of the index: tests only.
    pub async fn check_index(&self) -> Result<Vec<String>, QueueError> {
        let v = self
            .eval("testing_check_index.lua", &scripts::CHECK_INDEX, &[], &[])
            .await?;
        let Value::Array(items) = v else {
            return Err(bad_reply("testing_check_index.lua", format!("{v:?}")));
        };
        Ok(items.iter().filter_map(utf8).collect())
    }
}

/// The first pipeline of a snapshot: server time, node names, nodes that
/// left (with when), registered nodes, pending, dead letters, slot tokens.
type SnapshotHead = (
    (i64, i64),
    Vec<String>,
    Vec<(String, f64)>,
    usize,
    usize,
    usize,
    Vec<String>,
);

/// A node's in-flight list joined with its `taken_at` hash (a RESP2 flat
/// list or a RESP3 map).
fn running_tasks(inflight: &Value, taken: &Value) -> Vec<RunningTask> {
    let mut at: HashMap<String, i64> = HashMap::new();
    match taken {
        Value::Array(flat) => {
            for kv in flat.chunks(2) {
                if let [k, v] = kv
                    && let (Some(k), Some(v)) = (utf8(k), int(v))
                {
                    at.insert(k, v);
                }
            }
        }
        Value::Map(pairs) => {
            for (k, v) in pairs {
                if let (Some(k), Some(v)) = (utf8(k), int(v)) {
                    at.insert(k, v);
                }
            }
        }
        _ => {}
    }
    let Value::Array(list) = inflight else {
        return Vec::new();
    };
    list.iter()
        .filter_map(utf8)
        .map(|raw| RunningTask {
            taken_ms: at.get(&raw).copied(),
            raw,
        })
        .collect()
}

/// A sorted-set score as Redis returns it (RESP2 text or RESP3 double).
fn score(v: &Value) -> Option<i64> {
    match v {
        Value::Double(d) => Some(*d as i64),
        other => utf8(other)
            .and_then(|s| s.parse::<f64>().ok())
            .map(|d| d as i64),
    }
}

/// A token unique to one take call: node, a per-process random value and a
/// counter (retries of the call reuse it; see take.lua).
fn take_token(node: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::LazyLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PROCESS: LazyLock<u64> = LazyLock::new(|| {
        // RandomState is seeded from OS randomness once per process.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    });
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{node}:{:016x}:{}",
        *PROCESS,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn parse_place(v: Value) -> Result<PlaceOutcome, QueueError> {
    let Value::Array(items) = v else {
        return Err(bad_reply("place.lua", format!("{v:?}")));
    };
    let status = match items.first().and_then(utf8).as_deref() {
        Some("empty") => PlaceStatus::Empty,
        Some("wait") => PlaceStatus::Wait,
        Some("nolive") => PlaceStatus::NoLiveNodes,
        Some("more") => PlaceStatus::More,
        other => return Err(bad_reply("place.lua", format!("status {other:?}"))),
    };
    let mut events = Vec::new();
    for c in items[1..].chunks(3) {
        let [k, a, raw] = c else {
            return Err(bad_reply("place.lua", "truncated event"));
        };
        let (a, task) = (
            utf8(a).ok_or_else(|| bad_reply("place.lua", "event field"))?,
            utf8(raw).ok_or_else(|| bad_reply("place.lua", "event task"))?,
        );
        events.push(match utf8(k).as_deref() {
            Some("placed") => PlaceEvent::Placed { node: a, task },
            Some("dead") => PlaceEvent::Dead { reason: a, task },
            other => return Err(bad_reply("place.lua", format!("event {other:?}"))),
        });
    }
    Ok(PlaceOutcome { status, events })
}
