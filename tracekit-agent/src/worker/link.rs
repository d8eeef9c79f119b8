//! The worker's link to Redis: taking tasks ([`intake`]), heartbeats
//! ([`heartbeat`]) and reports ([`reporter`]) each run in their own task and
//! retry through outages, so the loop never blocks on Redis, running tasks go
//! on, and completions are reported when Redis is back.
//!
//! Every registration holds the node's lease under a new token. A heartbeat
//! that finds the lease gone (the node was declared dead, or another agent
//! took the node over) fences the worker: the loop stops everything it
//! runs (those tasks were handed to others) before the node registers again,
//! and tasks taken under an old token are dropped, never run.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tracekit_proto::{Completion, Heartbeat, Lease, Queue, QueueError, Registration, RunRef, Take};

use super::journal::Journal;
use tracekit_trace::ClockSkew;
use tracekit_trace::clock::ClockTracker;

/// What happens to a task in flight, reported in order by [`reporter`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Report {
    Complete {
        raw: String,
        /// The lease token of the registration that took the task: an ended
        /// registration's report cannot touch a later one's run.
        #[serde(default)]
        lease: String,
        /// The run's trace id: withdrawn from the trace if the completion is
        /// refused.
        trace_id: Option<String>,
        /// The run's output, written under a staged name: moved into place
        /// only when the completion counts, removed when it is refused.
        output: Option<StagedOutput>,
        /// The `withdrawn.jsonl` of the trace the run is recorded in.
        #[serde(default)]
        withdrawn: Option<PathBuf>,
    },
    Requeue {
        raw: String,
        #[serde(default)]
        lease: String,
        failed: bool,
        /// Why the attempt failed, kept for the dead letter.
        reason: Option<String>,
    },
    DeadLetter {
        raw: String,
        #[serde(default)]
        lease: String,
        reason: String,
    },
    /// A run the controller stopped is closed here: its traces go to Redis
    /// for `gather`, after every report before it.
    Publish { run: String, dir: PathBuf },
}

/// A run directory's `withdrawn.jsonl`.
pub fn withdrawn_file(run_dir: &Path) -> PathBuf {
    run_dir
        .join(tracekit_trace::CTS_DIR)
        .join(tracekit_trace::WITHDRAWN_FILE)
}

/// Where a run wrote its output, and where the task wants it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StagedOutput {
    pub staged: PathBuf,
    pub path: PathBuf,
}

impl StagedOutput {
    /// The run counts: its output takes the task's name.
    fn publish(&self) {
        match std::fs::rename(&self.staged, &self.path) {
            Ok(()) => {}
            // Already moved by a delivery whose note a crash lost.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.path.exists() => {}
            Err(e) => tracing::error!(
                "moving the output {} to {}: {e}",
                self.staged.display(),
                self.path.display()
            ),
        }
    }

    /// The run does not count: nothing of it stays.
    pub fn discard(&self) {
        match std::fs::remove_file(&self.staged) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("removing {}: {e}", self.staged.display()),
        }
    }
}

/// The current registration's lease token, shared by the link's tasks.
pub type LeaseToken = watch::Receiver<String>;

/// Takes tasks from the node's queue into its in-flight list, one at a time,
/// and hands them to the loop with the lease token they were taken under.
/// Its own task: a take is never cancelled half-way (which could strand a
/// task in flight).
pub async fn intake(
    queue: Queue,
    node: String,
    lease: LeaseToken,
    tasks: mpsc::Sender<Taken>,
    gate: Gate,
    mut stop: watch::Receiver<bool>,
) {
    let Gate {
        mut open,
        recording,
    } = gate;
    loop {
        if *stop.borrow() {
            return;
        }
        // Closed while no run is open to record tasks into (a following
        // agent between runs is closed whatever the flag says).
        let is_open = *open.borrow_and_update();
        let run = recording.as_ref().map(|r| r.borrow().clone());
        if !is_open || matches!(run, Some(None)) {
            tokio::select! {
                r = open.changed() => if r.is_err() { return },
                _ = stop.changed() => {}
            }
            continue;
        }
        let run = run.flatten();
        let token = lease.borrow().clone();
        match queue
            .take_task_wait(&node, &token, run.as_deref(), Duration::from_millis(500))
            .await
        {
            Ok(Take::Task(raw)) => {
                let taken = Taken {
                    lease: token,
                    run: run.clone(),
                    raw,
                };
                if tasks.send(taken).await.is_err() {
                    return;
                }
            }
            Ok(Take::Empty) => {}
            Ok(Take::Lost) => {
                // The heartbeat fences and registers again; wait for it.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = stop.changed() => {}
                }
            }
            Err(e) => {
                tracing::warn!("taking a task: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
}

/// A task the intake took.
pub struct Taken {
    /// The lease token it was taken under.
    pub lease: String,
    /// The run it was taken in (an agent that follows the controller's runs).
    pub run: Option<String>,
    pub raw: String,
}

/// When the intake may take tasks: while `open`, and for an agent that
/// follows the controller's runs (`recording`), only into the run it records
/// into while that run is current (checked by the take itself).
pub struct Gate {
    pub open: watch::Receiver<bool>,
    pub recording: Option<watch::Receiver<Option<String>>>,
}

/// What the heartbeat asks of the loop.
pub enum Fence {
    /// This registration is over: stop every task, then reply.
    StopAll(oneshot::Sender<()>),
    /// Another agent holds the node id: the agent must end.
    Replaced(String),
}

/// An agent that follows the controller's runs: what it records into
/// (told with each heartbeat), and the current run (learnt from it).
pub struct Following {
    pub recording: watch::Receiver<Option<String>>,
    pub current: watch::Sender<Option<String>>,
}

/// What the heartbeat tells the loop.
pub struct Tell {
    /// The registration's lease token (a new one after registering again).
    pub lease: watch::Sender<String>,
    /// The registration is over, or another agent holds the node id.
    pub fence: mpsc::Sender<Fence>,
    /// The clock against Redis.
    pub clock: watch::Sender<Option<ClockSkew>>,
    /// The current run, for an agent that follows the controller's runs.
    pub following: Option<Following>,
}

/// Heartbeats while the agent lives. When the registration is over (the
/// node was declared dead, or replaced), the loop first stops what it runs,
/// then the node registers again under a new token.
pub async fn heartbeat(
    queue: Queue,
    registration: Registration,
    period: Duration,
    tell: Tell,
    stop: watch::Receiver<bool>,
) {
    let Tell {
        lease,
        fence,
        clock,
        following,
    } = tell;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut skew = ClockTracker::default();
    let mut last_recording = None;
    loop {
        tick.tick().await;
        let recording = following
            .as_ref()
            .map(|f| f.recording.borrow().clone().unwrap_or_default());
        // Each run's clock estimate is its own.
        if recording != last_recording {
            skew = ClockTracker::default();
            last_recording.clone_from(&recording);
        }
        // The clock the node's times are compared with is Redis's.
        match queue.clock_offset().await {
            Ok((offset, rtt)) => {
                let _ = clock.send(Some(skew.add(offset, rtt)));
            }
            Err(e) => tracing::debug!("reading Redis TIME: {e}"),
        }
        let token = lease.borrow().clone();
        match queue
            .heartbeat_run(&registration.node, &token, recording.as_deref())
            .await
        {
            Ok((Heartbeat::Alive, current)) => {
                if let Some(f) = &following {
                    f.current.send_if_modified(|c| {
                        let changed = *c != current;
                        *c = current;
                        changed
                    });
                }
            }
            Ok((Heartbeat::Lost, _)) if !*stop.borrow() => {
                tracing::warn!(
                    "this node's registration is over (declared dead, or taken over): stopping its tasks, then registering again"
                );
                let (done_tx, done_rx) = oneshot::channel();
                if fence.send(Fence::StopAll(done_tx)).await.is_err() || done_rx.await.is_err() {
                    return;
                }
                let again = Registration {
                    reset_capacity: false,
                    clear_queue: false,
                    lease: Lease::fresh(registration.lease.lease_ms),
                    ..registration.clone()
                };
                loop {
                    match queue.register(&again).await {
                        Ok(r) => {
                            tracing::info!(
                                capacity = r.cap_total,
                                free = r.cap,
                                "registered again"
                            );
                            let _ = lease.send(again.lease.token.clone());
                            break;
                        }
                        Err(e @ QueueError::Held { .. }) => {
                            let _ = fence.send(Fence::Replaced(e.to_string())).await;
                            return;
                        }
                        Err(e) => {
                            tracing::warn!("registering again (will retry): {e}");
                            tokio::time::sleep(period).await;
                        }
                    }
                }
            }
            Ok((Heartbeat::Lost, _)) => {}
            Err(e) => tracing::warn!("heartbeat: {e}"),
        }
    }
}

/// Delivers reports in order, retrying through Redis outages until each is
/// applied, and notes each delivery in the journal; ends when the loop is
/// gone and everything is delivered, or when `give_up` is set (the agent
/// stops while Redis is unreachable: the journal keeps the rest for the
/// next agent of this node).
pub async fn reporter(
    queue: Queue,
    node: String,
    withdrawn: Option<PathBuf>,
    journal: Arc<Mutex<Journal>>,
    mut reports: mpsc::UnboundedReceiver<(u64, Report)>,
    mut give_up: watch::Receiver<bool>,
) {
    while let Some((id, report)) = reports.recv().await {
        tokio::select! {
            () = deliver(&queue, &node, withdrawn.as_deref(), &report) => {}
            _ = give_up.wait_for(|g| *g) => {
                let left = journal.lock().map(|j| j.undelivered()).unwrap_or(0);
                tracing::error!(
                    undelivered = left,
                    "stopping with reports Redis has not received: they stay in the journal and are sent by the next agent of this node"
                );
                return;
            }
        }
        match journal.lock() {
            Ok(mut j) => {
                if let Err(e) = j.delivered(id) {
                    tracing::warn!("journal: {e:#}");
                }
            }
            Err(_) => tracing::error!("journal lock poisoned"),
        }
    }
}

/// Applies one report, retrying until Redis answers, and then moves or
/// removes the run's output; a refused completion's run is noted in its
/// trace's `withdrawn.jsonl` (`withdrawn`: where, for reports that do not
/// say).
pub async fn deliver(queue: &Queue, node: &str, withdrawn: Option<&Path>, report: &Report) {
    if let Report::Publish { run, dir } = report {
        return publish(queue, node, run, dir).await;
    }
    let mut delay = Duration::from_millis(100);
    loop {
        let result = match report {
            Report::Publish { .. } => return,
            Report::Complete {
                raw,
                lease,
                trace_id,
                ..
            } => {
                let run = RunRef {
                    lease,
                    trace_id: trace_id.as_deref().unwrap_or(""),
                };
                queue.complete_run(node, raw, run).await
            }
            Report::Requeue {
                raw,
                lease,
                failed,
                reason,
            } => {
                let run = RunRef {
                    lease,
                    trace_id: "",
                };
                queue
                    .requeue_run(node, raw, *failed, reason.as_deref(), run)
                    .await
                    .map(applied)
            }
            Report::DeadLetter { raw, lease, reason } => {
                let run = RunRef {
                    lease,
                    trace_id: "",
                };
                queue
                    .dead_letter_run(node, raw, reason, run)
                    .await
                    .map(applied)
            }
        };
        match result {
            Ok(outcome) => {
                if let Report::Complete {
                    output: Some(out), ..
                } = report
                {
                    if outcome.counts() {
                        out.publish();
                    } else {
                        out.discard();
                    }
                }
                match outcome {
                    Completion::Accepted => {}
                    Completion::Late => tracing::info!(
                        "completed after this node was declared dead, before anyone ran the task again: it counts"
                    ),
                    Completion::Refused => {
                        tracing::warn!(
                            task = %tracekit_proto::task::quote(report_raw(report)),
                            "the task was no longer in flight here (this node was declared dead and another runs it): this run does not count and its output is removed"
                        );
                        if let Report::Complete {
                            trace_id: Some(trace_id),
                            withdrawn: own,
                            ..
                        } = report
                        {
                            match own.as_deref().or(withdrawn) {
                                Some(path) => withdraw(path, trace_id),
                                None => tracing::error!(
                                    %trace_id,
                                    "a withdrawn run whose trace is unknown: not noted in any withdrawn.jsonl"
                                ),
                            }
                        }
                    }
                }
                return;
            }
            Err(e) => {
                tracing::warn!("reporting to Redis (will retry): {e}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Note in the trace that run `trace_id` does not count.
fn withdraw(path: &Path, trace_id: &str) {
    use std::io::Write;
    let line = tracekit_trace::Withdrawn {
        trace_id: trace_id.to_string(),
        reason: "completion refused: the node had been declared dead and the task was taken again"
            .into(),
        ts: crate::clock::epoch_ms(),
    };
    let written = serde_json::to_string(&line)
        .map_err(std::io::Error::other)
        .and_then(|s| {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            f.write_all(format!("{s}\n").as_bytes())?;
            f.sync_data()
        });
    if let Err(e) = written {
        tracing::error!(%trace_id, "noting a withdrawn run in {}: {e}", path.display());
    }
}

fn applied(done: bool) -> Completion {
    if done {
        Completion::Accepted
    } else {
        Completion::Refused
    }
}

fn report_raw(r: &Report) -> &str {
    match r {
        Report::Complete { raw, .. }
        | Report::Requeue { raw, .. }
        | Report::DeadLetter { raw, .. } => raw,
        Report::Publish { .. } => "",
    }
}

/// Attempts at publishing a run before its traces are left on disk only.
/// Attempts at a publication Redis refuses (an outage is retried by the
/// connection itself, for as long as it lasts).
const PUBLISH_ATTEMPTS: u32 = 10;

/// Publish run `run`'s trace directory for `gather`. What Redis refuses is
/// tried again a few times; what cannot be published stays on disk, said.
pub async fn publish(queue: &Queue, node: &str, run: &str, dir: &Path) {
    let mut delay = Duration::from_millis(250);
    for attempt in 1.. {
        match tracekit_proto::gather::publish(queue.conn(), run, node, dir).await {
            Ok(m) => {
                tracing::info!(run, files = m.files.len(), "traces published for gather");
                return;
            }
            Err(e) if tracekit_proto::gather::failed_on_redis(&e) && attempt < PUBLISH_ATTEMPTS => {
                tracing::warn!(run, "publishing traces (will retry): {e:#}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::error!(
                    run,
                    "publishing traces: {e:#}; they stay in {}",
                    dir.display()
                );
                return;
            }
        }
    }
}
