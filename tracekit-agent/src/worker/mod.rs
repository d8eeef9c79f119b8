//! The worker: takes the tasks placed on this node, runs each ffmpeg in its
//! own cgroup as an unprivileged user, traces it, and reports it done.
//!
//! Its parts: [`args`] (the command line), [`link`] (Redis: intake,
//! heartbeats, reports, never blocking the loop), [`job`] (a task's life),
//! [`binding`] (CPU binding), and here the loop that ties them together. A
//! task leaves its in-flight list only once its invocation line is written.

mod args;
mod binding;
pub mod cgroup;
mod clock_skew;
pub mod command;
pub mod cores;
pub mod fairshare;
mod job;
mod journal;
mod link;
mod node_lock;
pub mod runas;

pub use args::{Binding, WorkerArgs, check};

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tracekit_proto::{Keys, Lease, Queue, Registration, Task};
use tracekit_trace::Invocation;

use crate::cli::{IdentityArgs, TracerArgs};
use crate::clock;
use crate::session::Session;
use args::binding_name;
use cgroup::Cgroups;
use command::{Limits, Plan};
use cores::CoreAllocator;
use job::Job;
use journal::Journal;
use link::{Fence, Following, Gate, Report, Tell, heartbeat, intake, reporter, withdrawn_file};
use node_lock::NodeLock;
use runas::RunAs;

/// Everything the loop owns.
struct Worker {
    args: WorkerArgs,
    node: String,
    cores_total: u32,
    limits: Limits,
    user: Option<RunAs>,
    cgroups: Option<Cgroups>,
    binding_note: Option<String>,
    allocator: CoreAllocator,
    waiting: VecDeque<(String, Task, Plan)>,
    jobs: HashMap<u32, Job>,
    reports: mpsc::UnboundedSender<(u64, Report)>,
    journal: Arc<Mutex<Journal>>,
    /// The lease token the tasks it accepts were taken under.
    lease: String,
    /// Where ffmpeg's stderr of the open run's tasks is kept.
    stderr_dir: PathBuf,
    /// Start no waiting task: no run is open to record it in.
    hold: bool,
    seq: u64,
    /// When this agent started (epoch ms), in the trace ids it makes.
    started_ms: i64,
}

/// How long a finished ffmpeg waits for its exit record from the tracer
/// before the worker writes its line from its own clock. Meanwhile the
/// exit is looked up in the kernel's records at every wake-up, so a lost
/// exit event costs no CPU figure.
const TRACE_GRACE_MS: i64 = 3000;
/// The worker's tick while a task that ended awaits its exit record.
const AWAIT_TRACE_TICK: Duration = Duration::from_millis(250);
/// How long a stopping agent tries to reach Redis (leave, reports,
/// deregistration, publishing) before it ends anyway: what was not
/// delivered stays in the journal for the node's next agent.
const STOP_REDIS_TIMEOUT: Duration = Duration::from_secs(15);
/// Publishing the traces gets at least this long, even past that deadline.
const PUBLISH_AT_LEAST: Duration = Duration::from_secs(3);
/// How long a stopping agent tries to leave placement before it hands
/// tasks back anyway.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Run the worker until SIGINT or SIGTERM.
pub async fn run(args: WorkerArgs, tracer: TracerArgs, identity: IdentityArgs) -> Result<i32> {
    // The handlers are installed when the loop first waits on this: until
    // then (loading, connecting to Redis, registering) SIGINT and SIGTERM
    // end the agent at once, as they should.
    let stop = async {
        let handlers =
            signal(SignalKind::interrupt()).and_then(|i| Ok((i, signal(SignalKind::terminate())?)));
        let (mut sigint, mut sigterm) = match handlers {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(
                    "installing the SIGINT/SIGTERM handlers: {e}; stop the agent with SIGKILL"
                );
                return std::future::pending().await;
            }
        };
        tokio::select! {
            _ = sigint.recv() => tracing::info!("SIGINT: stopping"),
            _ = sigterm.recv() => tracing::info!("SIGTERM: stopping"),
        }
    };
    run_until(args, tracer, identity, stop).await
}

/// Run the worker until `stop` resolves: then it stops taking tasks, hands
/// back (or with `--drain` finishes) what it holds, deregisters, and
/// publishes its traces.
pub async fn run_until(
    args: WorkerArgs,
    tracer: TracerArgs,
    identity: IdentityArgs,
    stop: impl std::future::Future<Output = ()>,
) -> Result<i32> {
    // Without a run id of its own the agent follows the controller's runs.
    let follow = identity.run_id.is_none();
    if follow && identity.node_dir.is_some() {
        bail!(
            "--node-dir needs --run-id: an agent that follows the controller's runs writes <logs>/<run>/<node>/"
        );
    }
    if follow && args.no_publish {
        bail!(
            "--no-publish needs --run-id: an agent that follows the controller's runs publishes each one (`run stop` waits for it)"
        );
    }
    let mut id = identity.identity();
    let cores_total = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let capacity = args
        .capacity_units
        .filter(|&units| units > 0)
        .unwrap_or_else(|| ((args.allocation_ratio * cores_total as f64).floor() as u32).max(1));
    if args.cpu_binding == Binding::Exclusive && capacity > cores_total {
        tracing::warn!(
            capacity,
            cores = cores_total,
            "exclusive binding with more units than cores: a task waits for free cores rather than share one"
        );
    }

    let user = RunAs::lookup(&args.run_as)?;
    let user = (!user.is_root()).then_some(user);
    if user.is_none() {
        tracing::warn!("--run-as root: tasks keep root's privileges");
    }
    runas::prepare_outputs(&args.outputs, user.as_ref())?;
    let limits = Limits {
        inputs: args
            .inputs
            .canonicalize()
            .with_context(|| format!("--inputs {}", args.inputs.display()))?,
        outputs: args
            .outputs
            .canonicalize()
            .with_context(|| format!("--outputs {}", args.outputs.display()))?,
        cores: cores_total,
    };
    // Before anything under the node's cgroup is touched: what is left
    // there belongs to an agent that is gone only if nobody holds the lock.
    let node_lock = NodeLock::acquire(&id.node)?;
    tracing::debug!(lock = %node_lock.path.display(), "holding the node lock");
    let conn = args.redis.connect().await?;
    let keys = Keys {
        pending: args.pending_key.clone(),
        slots: args.slots_key.clone(),
    };
    let queue = Queue::new(conn, keys);
    // And no live agent of another host holds the node id (registering
    // checks again, atomically).
    if let Some((host, pid)) = queue
        .live_holder(&id.node)
        .await
        .context("reading the node's lease")?
        && host != tracekit_proto::queue::host_name()
    {
        return Err(tracekit_proto::QueueError::Held {
            node: id.node.clone(),
            host,
            pid,
        }
        .into());
    }
    let (cgroups, binding_note) = binding::prepare(&args, &id.node)?;

    // The run recorded into: the agent's own, or the controller's current
    // one (none: tasks wait until a run starts).
    let mut recording = if follow {
        queue
            .current_run()
            .await
            .context("reading the controller's current run")?
    } else {
        Some(id.run_id.clone())
    };
    match &recording {
        Some(run) => id.run_id = run.clone(),
        None => tracing::info!(
            "no run is current: tasks are taken once one starts (`tracekit-sched run start`, or a dispatch)"
        ),
    }
    let run_dir = |run: &str| {
        if follow {
            identity.logs.join(run).join(&id.node)
        } else {
            identity.node_dir(&id)
        }
    };
    let node_dir = recording.as_deref().map(run_dir);
    // Before the tracer starts: these encodes are not this node's tasks.
    let encoders = tracekit_trace::node::encoder_versions();
    let mut session = Session::start(
        &tracer,
        &id,
        node_dir.as_deref(),
        identity.cpu_freq_mhz,
        |meta| {
            meta.cpu_binding = Some(binding_name(args.cpu_binding).to_string());
            meta.binding_error = binding_note.clone();
            meta.run_as = Some(args.run_as.clone());
            meta.privileges_dropped = Some(user.is_some());
            (meta.x264, meta.x265) = encoders;
        },
    )?;
    let stderr_dir = match &node_dir {
        Some(dir) => stderr_dir_of(dir)?,
        None => PathBuf::new(),
    };

    // Reports a previous agent of this node could not deliver go first:
    // registering would send their tasks back to pending, to run again.
    std::fs::create_dir_all(&identity.logs)
        .with_context(|| format!("creating {}", identity.logs.display()))?;
    let journal_path = identity
        .logs
        .join(format!(".tracekit-{}.journal", job::group_name(&id.node)));
    let (mut journal, undelivered) = Journal::open(&journal_path)?;
    // For journaled reports that do not say which trace they belong to.
    let withdrawn = session.run_dir().map(withdrawn_file);
    if !undelivered.is_empty() {
        tracing::info!(
            reports = undelivered.len(),
            journal = %journal_path.display(),
            "delivering the reports a previous agent of this node left"
        );
        for (report_id, report) in undelivered {
            link::deliver(&queue, &id.node, withdrawn.as_deref(), &report).await;
            journal.delivered(report_id)?;
        }
    }
    // A run the node's previous agent recorded into and never closed (it
    // died, and the run ended meanwhile): published now, as it would have.
    if follow
        && let Some(prev) = queue
            .recording_of(&id.node)
            .await
            .context("reading the run this node recorded last")?
        && !prev.is_empty()
        && Some(&prev) != recording.as_ref()
    {
        let dir = run_dir(&prev);
        if dir.is_dir() {
            tracing::info!(run = %prev, "publishing the run a previous agent of this node left open");
            let publish = Report::Publish { run: prev, dir };
            link::deliver(&queue, &id.node, withdrawn.as_deref(), &publish).await;
        }
    }
    let swept = job::sweep_staged(&limits.outputs, &id.node);
    if swept > 0 {
        tracing::info!(
            files = swept,
            "removed the staged outputs a previous agent of this node left (runs that never counted)"
        );
    }
    let journal = Arc::new(Mutex::new(journal));
    let registration = Registration {
        node: id.node.clone(),
        capacity: i64::from(capacity),
        cores: cores_total,
        ratio: args.allocation_ratio,
        parallel: args.parallel,
        reset_capacity: args.reset_capacity,
        clear_queue: args.clear_queue,
        lease: Lease::fresh(lease_ms(args.heartbeat_ms)),
    };
    let reg = queue.register(&registration).await?;
    let binding = match &binding_note {
        Some(note) => format!("UNBOUND: {note}"),
        None => binding_name(args.cpu_binding).to_string(),
    };
    queue
        .set_binding(&id.node, &binding)
        .await
        .context("recording this node's CPU binding in Redis")?;
    tracing::info!(
        node = %id.node,
        capacity = reg.cap_total,
        free = reg.cap,
        orphans_requeued = reg.orphans_requeued,
        queued = reg.queued,
        "registered"
    );

    let (report_tx, report_rx) = mpsc::unbounded_channel();
    let (task_tx, mut task_rx) = mpsc::channel::<link::Taken>(64);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (give_up_tx, give_up_rx) = watch::channel(false);
    let (lease_tx, lease_rx) = watch::channel(registration.lease.token.clone());
    let (fence_tx, mut fence_rx) = mpsc::channel::<Fence>(1);
    let (clock_tx, mut clock_rx) = watch::channel(None);
    // The run recorded into goes out with the heartbeats; the current run
    // comes back with them; the intake takes tasks only while a run is open.
    let (recording_tx, recording_rx) = watch::channel(recording.clone());
    let (current_tx, mut current_rx) = watch::channel(recording.clone());
    let (open_tx, open_rx) = watch::channel(recording.is_some());
    let heartbeat_task = tokio::spawn(heartbeat(
        queue.clone(),
        registration.clone(),
        Duration::from_millis(args.heartbeat_ms),
        Tell {
            lease: lease_tx,
            fence: fence_tx,
            clock: clock_tx,
            following: follow.then_some(Following {
                recording: recording_rx.clone(),
                current: current_tx,
            }),
        },
        stop_rx.clone(),
    ));
    let intake_task = tokio::spawn(intake(
        queue.clone(),
        id.node.clone(),
        lease_rx.clone(),
        task_tx,
        Gate {
            open: open_rx,
            recording: follow.then(|| recording_rx.clone()),
        },
        stop_rx,
    ));
    let reporter_task = tokio::spawn(reporter(
        queue.clone(),
        id.node.clone(),
        withdrawn,
        journal.clone(),
        report_rx,
        give_up_rx,
    ));

    let mut worker = Worker {
        args: args.clone(),
        node: id.node.clone(),
        cores_total,
        limits,
        user,
        cgroups,
        binding_note,
        allocator: CoreAllocator::new(cores_total as usize),
        waiting: VecDeque::new(),
        jobs: HashMap::new(),
        reports: report_tx,
        journal,
        lease: registration.lease.token.clone(),
        stderr_dir,
        hold: recording.is_none(),
        seq: 0,
        started_ms: clock::epoch_ms(),
    };

    tokio::pin!(stop);
    // Tasks are reaped when SIGCHLD says one ended, not by polling: every
    // wake-up of an idle agent costs CPU. The tick reaps too, in case.
    let mut sigchld = signal(SignalKind::child()).context("installing SIGCHLD handler")?;
    let mut ticker = session.ticker()?.into_async()?;
    // Poll the stop signal once before anything else: the handlers it
    // installs are in place from here on (select! below polls its branches
    // in random order, so it might not reach it before a signal comes).
    let mut stopping = tokio::select! {
        biased;
        () = &mut stop => true,
        () = std::future::ready(()) => false,
    };
    if stopping {
        begin_stop(&queue, &lease_rx, &stop_tx, &mut worker, &mut session).await?;
    }
    let mut intake_open = true;
    let mut replaced: Option<String> = None;
    let mut clock_written = None;
    let mut fence_open = true;

    loop {
        tokio::select! {
            r = session.ready() => {
                r?;
                let done = session.pump()?;
                worker.on_traced(done);
                worker.progress(&mut session)?;
            }
            r = ticker.tick() => {
                r?;
                let done = session.tick()?;
                worker.on_traced(done);
                worker.progress(&mut session)?;
            }
            _ = sigchld.recv() => worker.progress(&mut session)?,
            taken = task_rx.recv(), if intake_open => {
                match taken {
                    // Taken just before the run it was taken in ended here:
                    // back to pending, to run in the run that is current.
                    Some(t) if follow && t.run != recording => {
                        tracing::info!(run = ?t.run, "handing back a task taken in a run this agent no longer records");
                        worker.report(Report::Requeue {
                            raw: t.raw,
                            lease: t.lease,
                            failed: false,
                            reason: None,
                        });
                    }
                    Some(t) if t.lease == *lease_rx.borrow() => {
                        worker.lease = t.lease;
                        worker.accept(t.raw, &mut session)
                    }
                    // Taken under a registration that is over: that
                    // registration's end sent it back to pending.
                    Some(_) => tracing::info!("dropping a task taken before this node's registration ended"),
                    None => intake_open = false,
                }
            }
            fence = fence_rx.recv(), if fence_open => match fence {
                Some(Fence::StopAll(done)) => {
                    worker.fence(&mut session)?;
                    // Tasks taken under the old registration are not run.
                    while let Ok(t) = task_rx.try_recv() {
                        tracing::info!(token = %t.lease, "dropping a task taken before this node's registration ended");
                    }
                    let _ = done.send(());
                }
                Some(Fence::Replaced(why)) => {
                    tracing::error!("{why}: this agent stops");
                    worker.fence(&mut session)?;
                    let _ = stop_tx.send(true);
                    replaced = Some(why);
                    stopping = true;
                }
                None => fence_open = false,
            },
            Ok(()) = clock_rx.changed() => {
                let skew = *clock_rx.borrow_and_update();
                if let Some(s) = skew
                    && clock_skew::worth_writing(clock_written.as_ref(), &s)
                {
                    tracing::debug!(offset_ms = s.offset_ms, rtt_ms = s.rtt_ms, "clock against Redis");
                    session.update_meta(|m| m.clock = Some(s))?;
                    clock_written = Some(s);
                }
            }
            Ok(()) = current_rx.changed(), if follow => {
                let wanted = current_rx.borrow_and_update().clone();
                if wanted != recording {
                    // Nothing new is taken until the switch: what was taken
                    // in this run runs (and is recorded) in it.
                    let _ = open_tx.send(false);
                    tracing::info!(
                        from = recording.as_deref().unwrap_or("none"),
                        to = wanted.as_deref().unwrap_or("none"),
                        running = worker.jobs.len(),
                        waiting = worker.waiting.len(),
                        "the controller's run changed: switching once this run's tasks are done"
                    );
                }
            }
            () = &mut stop, if !stopping => {
                stopping = true;
                begin_stop(&queue, &lease_rx, &stop_tx, &mut worker, &mut session).await?;
            }
        }
        if follow
            && !stopping
            && worker.jobs.is_empty()
            && worker.waiting.is_empty()
            && *current_rx.borrow() != recording
        {
            // The run that ended is published after every report of its
            // tasks (the reporter keeps their order).
            let ended = recording.take();
            let closed = session.close_run()?;
            if let (Some(run), Some(dir)) = (ended, closed)
                && !args.no_publish
            {
                worker.report(Report::Publish { run, dir });
            }
            recording = current_rx.borrow().clone();
            // A run's clock estimate is the run's own.
            clock_written = None;
            session.update_meta(|m| m.clock = None)?;
            if let Some(run) = &recording {
                let dir = run_dir(run);
                session.open_run(run, &dir)?;
                worker.stderr_dir = stderr_dir_of(&dir)?;
            }
            // Said with the next heartbeat (and by each take) before the
            // gate opens.
            let _ = recording_tx.send(recording.clone());
            worker.hold = recording.is_none();
            // Also when the switch came before the change was seen above.
            let _ = open_tx.send(recording.is_some());
        }
        let period = session.tick_every(!worker.jobs.is_empty());
        // Waiting for a task's exit record is the eBPF collector's business
        // (procfs keeps its interval).
        let ebpf = session.collector.kind() == tracekit_trace::CollectorKind::Ebpf;
        ticker.set_period(if !ebpf || worker.awaiting_trace().is_empty() {
            period
        } else {
            period.min(AWAIT_TRACE_TICK)
        })?;
        if stopping && worker.jobs.is_empty() {
            break;
        }
    }
    // Tasks the intake delivered after the stop go straight back (those
    // of an ended registration are back already).
    while let Ok(t) = task_rx.try_recv() {
        if replaced.is_none() && t.lease == *lease_rx.borrow() {
            worker.report(Report::Requeue {
                raw: t.raw,
                lease: t.lease,
                failed: false,
                reason: None,
            });
        }
    }
    if let Some(cg) = &worker.cgroups {
        cg.remove_base();
    }
    drop(worker);
    // One deadline for everything that needs Redis from here on: a stopping
    // agent ends even when Redis is out of reach.
    let deadline = tokio::time::Instant::now() + STOP_REDIS_TIMEOUT;
    // A take cut short is safe: what it took is handed back by the
    // deregistration, or by the central once the node's heartbeats stop.
    let intake_abort = intake_task.abort_handle();
    if tokio::time::timeout_at(deadline, intake_task)
        .await
        .is_err()
    {
        intake_abort.abort();
    }
    heartbeat_task.abort();
    // The reporter ends once every report is delivered, or gives up when
    // Redis stays out of reach (the journal keeps the rest).
    let give_up = tokio::spawn(async move {
        tokio::time::sleep_until(deadline).await;
        let _ = give_up_tx.send(true);
    });
    match reporter_task.await {
        Ok(()) => {}
        Err(e) => tracing::error!("reporter: {e}"),
    }
    give_up.abort();
    if replaced.is_none() {
        let token = lease_rx.borrow().clone();
        match tokio::time::timeout_at(deadline, queue.deregister(&id.node, &token)).await {
            Ok(Ok(Some(n))) => tracing::info!(handed_back = n, "deregistered"),
            Ok(Ok(None)) => tracing::warn!("not deregistered: another agent holds this node id"),
            Ok(Err(e)) => tracing::warn!("deregistering: {e}"),
            Err(_) => tracing::warn!(
                "deregistering: Redis out of reach; the central declares the node dead after its heartbeat timeout"
            ),
        }
    }
    // The clock's last estimate, with every reading counted.
    if let Some(s) = *clock_rx.borrow() {
        session.update_meta(|m| m.clock = Some(s))?;
    }
    let node_dir = session.run_dir().map(Path::to_path_buf);
    session.finish()?;
    // Between runs nothing was recorded since the last publication.
    if let Some((run, node_dir)) = recording.zip(node_dir) {
        publish_at_stop(
            &queue,
            &run,
            &id.node,
            &node_dir,
            &args,
            replaced.is_some(),
            deadline,
        )
        .await;
    }
    drop(node_lock);
    if let Some(why) = replaced {
        bail!("{why}");
    }
    Ok(0)
}

/// A stopping agent publishes the run it records into, unless another agent
/// holds the node id now (it publishes under it: this one's traces would
/// replace its successor's at gather).
async fn publish_at_stop(
    queue: &Queue,
    run: &str,
    node: &str,
    dir: &Path,
    args: &WorkerArgs,
    replaced: bool,
    deadline: tokio::time::Instant,
) {
    if args.no_publish {
        return;
    }
    if replaced {
        tracing::warn!(
            "not publishing: another agent holds this node id; this agent's traces stay in {}",
            dir.display()
        );
        return;
    }
    let until = deadline.max(tokio::time::Instant::now() + PUBLISH_AT_LEAST);
    if tokio::time::timeout_at(until, link::publish(queue, node, run, dir))
        .await
        .is_err()
    {
        tracing::error!(
            "publishing traces: Redis out of reach (they stay in {})",
            dir.display()
        );
    }
}

/// Journal `report` (on disk before it is sent), then send it to the
/// reporter.
fn send_report(
    journal: &Mutex<Journal>,
    reports: &mpsc::UnboundedSender<(u64, Report)>,
    report: Report,
) {
    let id = match journal.lock() {
        Ok(mut j) => j.record(&report),
        Err(_) => Err(anyhow::anyhow!("journal lock poisoned")),
    };
    match id {
        Ok(id) => {
            let _ = reports.send((id, report));
        }
        Err(e) => {
            // Sent all the same: only a crash before delivery would lose it.
            tracing::error!("journaling a report: {e:#}");
            let _ = reports.send((u64::MAX, report));
        }
    }
}

/// The directory that keeps ffmpeg's stderr of a run's tasks, created.
fn stderr_dir_of(run_dir: &Path) -> Result<PathBuf> {
    let dir = run_dir.join("ffmpeg");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// How long after this agent's last heartbeat another host may take its
/// node id over.
fn lease_ms(heartbeat_ms: u64) -> u64 {
    (heartbeat_ms * 5).max(3000)
}

/// SIGINT/SIGTERM: the stop flag first (a heartbeat must not register the
/// node again, and so put it back in placement, while it leaves), then out
/// of placement, then the tasks are handed back or drained.
async fn begin_stop(
    queue: &Queue,
    lease: &watch::Receiver<String>,
    stop_tx: &watch::Sender<bool>,
    worker: &mut Worker,
    session: &mut Session,
) -> Result<()> {
    let _ = stop_tx.send(true);
    leave(queue, &worker.node, lease).await;
    worker.stop(stop_tx, session)
}

/// A stopping node leaves placement before it hands anything back, so
/// nothing is placed on it meanwhile. Without Redis it cannot, and need not:
/// nothing is placed then either.
async fn leave(queue: &Queue, node: &str, lease: &watch::Receiver<String>) {
    let token = lease.borrow().clone();
    match tokio::time::timeout(LEAVE_TIMEOUT, queue.leave(node, &token)).await {
        Ok(Ok(Some(n))) => tracing::info!(queued_handed_back = n, "left placement"),
        Ok(Ok(None)) => tracing::warn!("leaving placement: another agent holds this node id"),
        Ok(Err(e)) => tracing::warn!("leaving placement: {e}"),
        Err(_) => tracing::warn!("leaving placement: Redis out of reach"),
    }
}

impl Worker {
    /// A task arrived from the queue: validate it, then start it or queue
    /// it locally until cores are free.
    fn accept(&mut self, raw: String, session: &mut Session) {
        let task = match Task::parse(&raw) {
            Ok(t) => t,
            Err(e) => return self.dead_letter(raw, e.to_string()),
        };
        match command::plan(&task, &self.limits) {
            Ok(plan) => {
                self.waiting.push_back((raw, task, plan));
                self.start_waiting(session);
            }
            Err(rejection) => self.dead_letter(raw, rejection.0),
        }
    }

    fn dead_letter(&mut self, raw: String, reason: String) {
        let reason = tracekit_proto::task::quote(&reason).into_owned();
        tracing::warn!(%reason, "task rejected: not run, sent to the dead-letter list");
        self.report(Report::DeadLetter {
            raw,
            lease: self.lease.clone(),
            reason,
        });
    }

    /// Journal `report` (on disk before it is sent), then send it.
    fn report(&mut self, report: Report) {
        send_report(&self.journal, &self.reports, report);
    }

    /// Start waiting tasks, in order, while they fit.
    fn start_waiting(&mut self, session: &mut Session) {
        if self.hold {
            return;
        }
        while let Some((_, _, plan)) = self.waiting.front() {
            let units = plan.units as usize;
            let cores = match self.args.cpu_binding {
                Binding::Exclusive if self.cgroups.is_some() => {
                    match self.allocator.allocate(units) {
                        Some(c) => c,
                        None => return, // FIFO: the head waits for cores
                    }
                }
                _ => Vec::new(),
            };
            let Some((raw, task, plan)) = self.waiting.pop_front() else {
                return;
            };
            if let Err(e) = self.spawn(raw.clone(), task, plan, cores.clone(), session) {
                // Never run unbound instead: the attempt fails, with why.
                let reason = format!("{e:#}");
                tracing::error!("starting a task: {reason}");
                self.allocator.release(&cores);
                self.report(Report::Requeue {
                    raw,
                    lease: self.lease.clone(),
                    failed: true,
                    reason: Some(tracekit_proto::task::quote(&reason).into_owned()),
                });
            }
        }
    }

    /// Collect exit statuses of finished children.
    /// Reap ended tasks, finish those whose trace is in, start waiting ones.
    fn progress(&mut self, session: &mut Session) -> Result<()> {
        self.reap()?;
        self.finish_ready(session)?;
        self.start_waiting(session);
        Ok(())
    }

    fn reap(&mut self) -> Result<()> {
        let mut changed = false;
        for job in self.jobs.values_mut() {
            let Some(child) = job.child.as_mut() else {
                continue;
            };
            if let Some(status) = child.try_wait().context("checking a task")? {
                job.exited = Some((status, clock::epoch_ms()));
                job.child = None;
                changed = true;
            }
        }
        if changed {
            self.rebalance();
        }
        Ok(())
    }

    /// Invocations the tracer finished: match them to tasks.
    fn on_traced(&mut self, done: Vec<Invocation>) {
        for inv in done {
            if let Some(job) = self.jobs.get_mut(&inv.pid) {
                job.invocation = Some(inv);
            }
        }
    }

    /// Tasks whose ffmpeg exited and whose exit record has not come.
    fn awaiting_trace(&self) -> Vec<u32> {
        self.jobs
            .values()
            .filter(|j| j.exited.is_some() && j.invocation.is_none())
            .map(|j| j.pid)
            .collect()
    }

    /// Finish tasks whose ffmpeg exited and whose trace line is written (or
    /// did not come in time: then the worker writes it from its own clock).
    fn finish_ready(&mut self, session: &mut Session) -> Result<()> {
        let awaiting = self.awaiting_trace();
        if !awaiting.is_empty() {
            // An exit event may have been lost: the kernel's record has it.
            let done = session.recover_exits(&awaiting)?;
            self.on_traced(done);
        }
        let now = clock::epoch_ms();
        let ready: Vec<u32> = self
            .jobs
            .values()
            .filter(|j| match j.exited {
                Some((_, at)) => j.invocation.is_some() || now - at > TRACE_GRACE_MS,
                None => false,
            })
            .map(|j| j.pid)
            .collect();
        for pid in ready {
            let Some(job) = self.jobs.remove(&pid) else {
                continue;
            };
            self.finish(job, session)?;
        }
        Ok(())
    }
}
