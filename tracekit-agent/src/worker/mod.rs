//! The worker: takes the tasks placed on this node, runs each ffmpeg in its
//! own cgroup as an unprivileged user, traces it, and reports it done.
//!
//! Redis work never blocks the loop: taking tasks, heartbeats and reports
//! each run in their own task ([`intake`], [`heartbeat`], [`reporter`]) and
//! retry through outages, so running tasks go on and completions are
//! reported when Redis is back. A task leaves its in-flight list only once
//! its invocation line is written.

pub mod cgroup;
pub mod command;
pub mod cores;
pub mod fairshare;
pub mod runas;

use std::collections::{HashMap, VecDeque};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracekit_proto::cli::RedisArgs;
use tracekit_proto::{Heartbeat, Keys, Queue, Registration, Take, Task};
use tracekit_trace::Invocation;

use crate::cli::{IdentityArgs, TracerArgs};
use crate::clock;
use crate::session::Session;
use crate::table::Annotation;
use cgroup::{Applied, Cgroups, TaskGroup};
use command::{Limits, Plan};
use cores::{CoreAllocator, cpu_list};
use fairshare::{Demand, water_fill};
use runas::RunAs;

/// `--cpu-binding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Binding {
    /// Each task gets its own cores (k units → k cores no other task holds).
    Exclusive,
    /// No pinning: CPU weight by units and a max-min fair quota.
    Shared,
}

/// The worker's flags (the original's names and meanings, plus `--inputs`,
/// `--run-as` and `--drain`).
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub redis: RedisArgs,

    /// Root that task outputs must lie under (created, and given to
    /// --run-as).
    #[arg(long, default_value = "outputs")]
    pub outputs: PathBuf,

    /// Root that task inputs must lie under.
    #[arg(long, default_value = "inputs")]
    pub inputs: PathBuf,

    /// Slot tokens to register for this node (0 = capacity only).
    #[arg(long, default_value_t = 0)]
    pub parallel: u32,

    /// Name of the slot-token list.
    #[arg(long, default_value = "slots:available")]
    pub slots_key: String,

    /// Name of the pending list.
    #[arg(long, default_value = "q:pending")]
    pub pending_key: String,

    /// Capacity units (default: max(1, floor(ratio × logical cores))).
    #[arg(long)]
    pub capacity_units: Option<u32>,

    /// Units per logical core.
    #[arg(long, default_value_t = 1.0)]
    pub allocation_ratio: f64,

    /// How tasks get CPU.
    #[arg(long, value_enum, default_value_t = Binding::Shared)]
    pub cpu_binding: Binding,

    /// Run tasks without CPU binding when this host offers no usable cgroup
    /// hierarchy (otherwise the agent refuses to start). Every task's record,
    /// the audit and `tracekit-sched status` then say that it ran unbound.
    #[arg(long)]
    pub allow_unbound: bool,

    /// Shared binding: CPU weight per unit (100 = a normal process).
    #[arg(long, default_value_t = 100)]
    pub cpuweight_per_vcpu: u64,

    /// Overwrite stale capacity values in Redis.
    #[arg(long)]
    pub reset_capacity: bool,

    /// Hand this node's queued tasks back to pending at start.
    #[arg(long)]
    pub clear_queue: bool,

    /// Run ffmpeg as this user (no capabilities, no_new_privs).
    #[arg(long, default_value = "nobody")]
    pub run_as: String,

    /// On SIGINT/SIGTERM finish the running tasks (default: stop them and
    /// hand them back).
    #[arg(long)]
    pub drain: bool,

    /// Heartbeat period, ms; the node counts as dead when the central's
    /// --heartbeat-timeout (10 s by default) passes without one.
    #[arg(long, default_value_t = 1000)]
    pub heartbeat_ms: u64,

    /// Do not publish this node's trace directory through Redis at stop
    /// (by default it is, for `tracekit-sched gather`).
    #[arg(long)]
    pub no_publish: bool,

    /// Largest ffmpeg stderr kept per task, bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    pub stderr_limit: usize,
}

/// What happens to a task in flight, reported in order by [`reporter`].
#[derive(Debug)]
enum Report {
    Complete(String),
    Requeue {
        raw: String,
        failed: bool,
        /// Why the attempt failed, kept for the dead letter.
        reason: Option<String>,
    },
    DeadLetter {
        raw: String,
        reason: String,
    },
}

/// One running task.
struct Job {
    raw: String,
    task: Task,
    plan: Plan,
    trace_id: String,
    child: Option<tokio::process::Child>,
    pid: u32,
    group: Option<TaskGroup>,
    cores: Vec<u32>,
    started_ms: i64,
    exited: Option<(std::process::ExitStatus, i64)>,
    invocation: Option<Invocation>,
    bytes_in: u64,
    /// Its binding as read back from its cgroup while it ran.
    applied: Option<Applied>,
}

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
    reports: mpsc::UnboundedSender<Report>,
    stderr_dir: PathBuf,
    seq: u64,
}

/// How long a finished ffmpeg waits for its exit record from the tracer
/// before the worker writes its line from its own clock. Meanwhile the
/// exit is looked up in the kernel's records at every wake-up, so a lost
/// exit event costs no CPU figure.
const TRACE_GRACE_MS: i64 = 3000;
/// The worker's tick while a task that ended awaits its exit record.
const AWAIT_TRACE_TICK: Duration = Duration::from_millis(250);

pub async fn run(args: WorkerArgs, tracer: TracerArgs, identity: IdentityArgs) -> Result<i32> {
    let id = identity.identity();
    let cores_total = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let capacity = args
        .capacity_units
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
    let (cgroups, binding_note) = match Cgroups::detect(&id.node) {
        Ok(cg) => {
            // Tasks of a crashed predecessor must not run on unaccounted.
            for old in cg.leftovers() {
                tracing::warn!(group = %old.name, "killing a task left by an earlier agent");
                cg.destroy(&old)?;
            }
            tracing::info!(version = %cg.version(), binding = ?args.cpu_binding, "cgroups ready");
            (Some(cg), None)
        }
        Err(e) if args.allow_unbound => {
            let note = format!("CPU binding not applied (--allow-unbound): {e:#}");
            tracing::error!("{note}; every task runs UNBOUND");
            (None, Some(note))
        }
        Err(e) => {
            return Err(e.context(format!(
                "--cpu-binding {} cannot be applied on this host; give the agent a cgroup \
                 hierarchy (run it on the host, or in a network namespace only: `nsenter \
                 --net=/run/netns/NAME`, not `ip netns exec`, which remounts /sys), or pass \
                 --allow-unbound to run tasks without CPU binding",
                binding_name(args.cpu_binding)
            )));
        }
    };

    let node_dir = identity.node_dir(&id);
    let mut session = Session::start(&tracer, &id, &node_dir, identity.cpu_freq_mhz, |meta| {
        meta.cpu_binding = Some(binding_name(args.cpu_binding).to_string());
        meta.binding_error = binding_note.clone();
        meta.run_as = Some(args.run_as.clone());
        meta.privileges_dropped = Some(user.is_some());
    })?;
    let stderr_dir = node_dir.join("ffmpeg");
    std::fs::create_dir_all(&stderr_dir)
        .with_context(|| format!("creating {}", stderr_dir.display()))?;

    let conn = args.redis.connect().await?;
    let keys = Keys {
        pending: args.pending_key.clone(),
        slots: args.slots_key.clone(),
    };
    let queue = Queue::new(conn, keys);
    let registration = Registration {
        node: id.node.clone(),
        capacity: i64::from(capacity),
        cores: cores_total,
        ratio: args.allocation_ratio,
        parallel: args.parallel,
        reset_capacity: args.reset_capacity,
        clear_queue: args.clear_queue,
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
    let (task_tx, mut task_rx) = mpsc::channel::<String>(64);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let heartbeat_task = tokio::spawn(heartbeat(
        queue.clone(),
        registration.clone(),
        Duration::from_millis(args.heartbeat_ms),
        stop_rx.clone(),
    ));
    let intake_task = tokio::spawn(intake(queue.clone(), id.node.clone(), task_tx, stop_rx));
    let reporter_task = tokio::spawn(reporter(queue.clone(), id.node.clone(), report_rx));

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
        stderr_dir,
        seq: 0,
    };

    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    // Tasks are reaped when SIGCHLD says one ended, not by polling: every
    // wake-up of an idle agent costs CPU. The tick reaps too, in case.
    let mut sigchld = signal(SignalKind::child()).context("installing SIGCHLD handler")?;
    let mut ticker = session.ticker()?.into_async()?;
    let mut stopping = false;
    let mut intake_open = true;

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
            raw = task_rx.recv(), if intake_open => {
                match raw {
                    Some(raw) => worker.accept(raw, &mut session),
                    None => intake_open = false,
                }
            }
            _ = sigint.recv(), if !stopping => {
                tracing::info!("SIGINT: stopping");
                stopping = true;
                worker.stop(&stop_tx)?;
            }
            _ = sigterm.recv(), if !stopping => {
                tracing::info!("SIGTERM: stopping");
                stopping = true;
                worker.stop(&stop_tx)?;
            }
        }
        let period = session.tick_every(!worker.jobs.is_empty());
        ticker.set_period(if worker.awaiting_trace().is_empty() {
            period
        } else {
            period.min(AWAIT_TRACE_TICK)
        })?;
        if stopping && worker.jobs.is_empty() {
            break;
        }
    }
    // Tasks the intake delivered after the stop go straight back.
    while let Ok(raw) = task_rx.try_recv() {
        let _ = worker.reports.send(Report::Requeue {
            raw,
            failed: false,
            reason: None,
        });
    }
    drop(worker);
    let _ = intake_task.await;
    heartbeat_task.abort();
    // The reporter ends once every report is delivered.
    match reporter_task.await {
        Ok(()) => {}
        Err(e) => tracing::error!("reporter: {e}"),
    }
    match queue.deregister(&id.node).await {
        Ok(n) => tracing::info!(handed_back = n, "deregistered"),
        Err(e) => tracing::warn!("deregistering: {e}"),
    }
    session.finish()?;
    if !args.no_publish {
        match tracekit_proto::gather::publish(queue.conn(), &id.run_id, &id.node, &node_dir).await {
            Ok(m) => tracing::info!(files = m.files.len(), "traces published for gather"),
            Err(e) => tracing::error!(
                "publishing traces: {e:#} (they stay in {})",
                node_dir.display()
            ),
        }
    }
    Ok(0)
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
        tracing::warn!(%reason, "task rejected: not run, sent to the dead-letter list");
        let _ = self.reports.send(Report::DeadLetter { raw, reason });
    }

    /// Start waiting tasks, in order, while they fit.
    fn start_waiting(&mut self, session: &mut Session) {
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
                let _ = self.reports.send(Report::Requeue {
                    raw,
                    failed: true,
                    reason: Some(reason),
                });
            }
        }
    }

    fn spawn(
        &mut self,
        raw: String,
        task: Task,
        plan: Plan,
        cores: Vec<u32>,
        session: &mut Session,
    ) -> Result<()> {
        self.seq += 1;
        let trace_id = task
            .extra
            .get("trace_id")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| {
                format!(
                    "{}-{}-{}",
                    self.node,
                    task.seq
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "x".into()),
                    self.seq
                )
            });
        let group = match &self.cgroups {
            Some(cg) => Some(
                self.bind(cg, &trace_id, &plan, &cores)
                    .context("CPU binding failed")?,
            ),
            None => None,
        };
        let procs = match (&self.cgroups, &group) {
            (Some(cg), Some(g)) => runas::open_procs_files(&cg.procs_files(g))
                .context("CPU binding failed: opening the group's cgroup.procs")?,
            _ => Vec::new(),
        };
        let mut cmd = std::process::Command::new(&plan.argv[0]);
        cmd.args(&plan.argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .current_dir(&self.limits.outputs);
        runas::confine(&mut cmd, &procs, self.user.as_ref());
        let mut cmd = tokio::process::Command::from(cmd);
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                let what = match (&self.cgroups, &group) {
                    // The child joins its group before exec: a failure there
                    // is a binding that failed.
                    (Some(cg), Some(g)) => {
                        let _ = cg.destroy(g);
                        format!("CPU binding failed: starting ffmpeg in cgroup {}", g.name)
                    }
                    _ => "starting ffmpeg".to_string(),
                };
                return Err(anyhow::Error::new(e).context(what));
            }
        };
        drop(procs);
        let pid = child.id().context("the child has a pid")?;
        let applied = match (&self.cgroups, &group) {
            (Some(cg), Some(g)) => match cg.applied(g, pid) {
                Ok(a) if a.member => Some(a),
                result => {
                    let why = match result {
                        Ok(a) => format!("the task's process is not in {}", a.cgroup),
                        Err(e) => format!("{e:#}"),
                    };
                    let _ = child.start_kill();
                    let _ = cg.destroy(g);
                    bail!("CPU binding failed: {why}");
                }
            },
            _ => None,
        };
        let started_ms = clock::epoch_ms();
        let bytes_in = std::fs::metadata(&plan.input).map(|m| m.len()).unwrap_or(0);
        session.table.annotate(
            pid,
            Annotation {
                trace_id: trace_id.clone(),
                ts_enqueue: task.ts_enqueue,
            },
        );
        if let Some(stderr) = child.stderr.take() {
            let path = self
                .stderr_dir
                .join(format!("{}.log", group_name(&trace_id)));
            tokio::spawn(keep_stderr(stderr, path, self.args.stderr_limit));
        }
        tracing::info!(
            %trace_id,
            pid,
            units = plan.units,
            cores = %cpu_list(&cores),
            input = %plan.input.display(),
            "task started"
        );
        self.jobs.insert(
            pid,
            Job {
                raw,
                task,
                plan,
                trace_id,
                child: Some(child),
                pid,
                group,
                cores,
                started_ms,
                exited: None,
                invocation: None,
                bytes_in,
                applied,
            },
        );
        self.rebalance();
        Ok(())
    }

    /// Create the task's group and apply its binding.
    fn bind(&self, cg: &Cgroups, trace_id: &str, plan: &Plan, cores: &[u32]) -> Result<TaskGroup> {
        let g = cg.create(&group_name(trace_id))?;
        let set = match self.args.cpu_binding {
            Binding::Exclusive => cg.set_cpus(&g, &cpu_list(cores)),
            Binding::Shared => {
                cg.set_weight(&g, self.args.cpuweight_per_vcpu * u64::from(plan.units))
            }
        };
        if let Err(e) = set {
            let _ = cg.destroy(&g);
            return Err(e);
        }
        Ok(g)
    }

    /// Shared binding: recompute every running task's quota, and read back
    /// what each group holds then.
    fn rebalance(&mut self) {
        let (Binding::Shared, Some(cg)) = (self.args.cpu_binding, &self.cgroups) else {
            return;
        };
        let mut jobs: Vec<&mut Job> = self
            .jobs
            .values_mut()
            .filter(|j| j.exited.is_none() && j.group.is_some())
            .collect();
        let demands: Vec<Demand> = jobs
            .iter()
            .map(|j| Demand {
                cores: f64::from(j.plan.units).min(f64::from(self.cores_total)),
                weight: f64::from(j.plan.units),
            })
            .collect();
        let grants = water_fill(f64::from(self.cores_total), &demands);
        for (job, grant) in jobs.iter_mut().zip(grants) {
            let Some(g) = &job.group else { continue };
            if let Err(e) = cg.set_quota(g, Some(grant)) {
                tracing::error!(trace_id = %job.trace_id, "CPU quota not applied: {e:#}");
            }
            match cg.applied(g, job.pid) {
                Ok(a) => job.applied = Some(a),
                Err(e) => {
                    tracing::warn!(trace_id = %job.trace_id, "reading back the binding: {e:#}")
                }
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

    fn finish(&mut self, job: Job, session: &mut Session) -> Result<()> {
        let (status, exited_ms) = job.exited.context("finishing a running task")?;
        let bytes_out = std::fs::metadata(&job.plan.output)
            .map(|m| m.len())
            .unwrap_or(0);
        let mut fields = serde_json::Map::new();
        let basename = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        fields.insert("input".into(), basename(&job.plan.input).into());
        fields.insert("output".into(), basename(&job.plan.output).into());
        fields.insert("cpu_units".into(), job.plan.units.into());
        fields.insert("cpuset".into(), cpu_list(&job.cores).into());
        fields.insert("binding".into(), binding_name(self.args.cpu_binding).into());
        if let Some(note) = &self.binding_note {
            fields.insert("binding_error".into(), note.clone().into());
        }
        if let Some(a) = &job.applied {
            fields.insert("cgroup".into(), a.cgroup.clone().into());
            fields.insert("cpus_allowed".into(), a.cpus.clone().into());
            if let Some(w) = a.weight {
                fields.insert("cpu_weight".into(), w.into());
            }
            fields.insert("cpu_max".into(), a.max.clone().into());
        }
        fields.insert("bytes_in".into(), job.bytes_in.into());
        fields.insert("bytes_out".into(), bytes_out.into());
        if let Some(seq) = job.task.seq {
            fields.insert("seq".into(), seq.into());
        }
        for key in ["profile"] {
            if let Some(v) = job.task.extra.get(key) {
                fields.insert(key.into(), v.clone());
            }
        }
        let inv = match job.invocation {
            Some(inv) => inv,
            None => {
                tracing::warn!(trace_id = %job.trace_id, "the tracer did not see this task; times from the worker's clock");
                session
                    .table
                    .untraced(job.pid, job.started_ms, exited_ms, status.into_raw())
            }
        };
        let mut record = inv.clone();
        record.extra.extend(fields);
        session.writer.invocation(&record)?;
        // On disk now, not at the next tick: an idle worker ticks rarely.
        session.writer.flush()?;
        if let (Some(cg), Some(g)) = (&self.cgroups, &job.group)
            && let Err(e) = cg.destroy(g)
        {
            tracing::warn!("removing cgroup {}: {e:#}", g.name);
        }
        self.allocator.release(&job.cores);
        let ok = status.success();
        tracing::info!(
            trace_id = %job.trace_id,
            pid = job.pid,
            ok,
            cpu_ms = inv.cpu_ms.unwrap_or(0.0),
            run_ms = inv.ts_end - inv.ts_start,
            "task finished"
        );
        let report = if ok {
            Report::Complete(job.raw)
        } else {
            // A failure counts towards the central's --max-attempts.
            Report::Requeue {
                raw: job.raw,
                failed: true,
                reason: Some(match (status.code(), status.signal()) {
                    (Some(code), _) => format!("ffmpeg exited with {code}"),
                    (None, Some(sig)) => format!("ffmpeg was killed by signal {sig}"),
                    _ => "ffmpeg failed".to_string(),
                }),
            }
        };
        let _ = self.reports.send(report);
        Ok(())
    }

    /// SIGINT/SIGTERM: stop taking tasks; hand back what has not started;
    /// with --drain let running tasks finish, else stop and hand them back.
    fn stop(&mut self, stop: &tokio::sync::watch::Sender<bool>) -> Result<()> {
        let _ = stop.send(true);
        for (raw, _, _) in self.waiting.drain(..) {
            let _ = self.reports.send(Report::Requeue {
                raw,
                failed: false,
                reason: None,
            });
        }
        if self.args.drain {
            tracing::info!(
                running = self.jobs.len(),
                "draining: finishing running tasks"
            );
            return Ok(());
        }
        let pids: Vec<u32> = self.jobs.keys().copied().collect();
        for pid in pids {
            let Some(mut job) = self.jobs.remove(&pid) else {
                continue;
            };
            if let Some(child) = job.child.as_mut() {
                let _ = child.start_kill();
            }
            if let (Some(cg), Some(g)) = (&self.cgroups, &job.group) {
                let _ = cg.destroy(g);
            }
            self.allocator.release(&job.cores);
            // Its annotation stays: the stopped run gets no invocation line
            // (the task runs again, and is recorded then).
            tracing::info!(trace_id = %job.trace_id, "stopped; handed back");
            let _ = self.reports.send(Report::Requeue {
                raw: job.raw,
                failed: false,
                reason: None,
            });
        }
        Ok(())
    }
}

/// `--cpu-binding`'s value as the command line spells it.
fn binding_name(b: Binding) -> &'static str {
    match b {
        Binding::Exclusive => "exclusive",
        Binding::Shared => "shared",
    }
}

/// A cgroup-safe name for a task.
fn group_name(trace_id: &str) -> String {
    trace_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Keep up to `limit` bytes of a task's stderr (the head, where ffmpeg says
/// what it does, and a note of how much was cut).
async fn keep_stderr(mut stderr: tokio::process::ChildStderr, path: PathBuf, limit: usize) {
    let mut kept = Vec::new();
    let mut cut = 0usize;
    let mut buf = [0u8; 8192];
    loop {
        match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                cut += n - n.min(room);
            }
        }
    }
    if cut > 0 {
        kept.extend_from_slice(format!("\n[tracekit: {cut} more bytes not kept]\n").as_bytes());
    }
    if let Err(e) = tokio::fs::write(&path, kept).await {
        tracing::warn!("writing {}: {e}", path.display());
    }
}

/// Takes tasks from the node's queue into its in-flight list, one at a time,
/// and hands them to the loop. Its own task: a take is never cancelled
/// half-way (which could strand a task in flight).
async fn intake(
    queue: Queue,
    node: String,
    tasks: mpsc::Sender<String>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        if *stop.borrow() {
            return;
        }
        match queue
            .take_task_wait(&node, Duration::from_millis(500))
            .await
        {
            Ok(Take::Task(raw)) => {
                if tasks.send(raw).await.is_err() {
                    return;
                }
            }
            Ok(Take::Empty) => {}
            Ok(Take::Lost) => {
                // The heartbeat task re-registers; wait for it.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
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

/// Heartbeats while the agent lives; re-registers if the node was declared
/// dead (its work was taken back meanwhile).
async fn heartbeat(
    queue: Queue,
    registration: Registration,
    period: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        match queue.heartbeat(&registration.node).await {
            Ok(Heartbeat::Alive) => {}
            Ok(Heartbeat::Lost) if !*stop.borrow() => {
                tracing::warn!("this node was declared dead: registering again");
                let again = Registration {
                    reset_capacity: false,
                    clear_queue: false,
                    ..registration.clone()
                };
                if let Err(e) = queue.register(&again).await {
                    tracing::warn!("registering again: {e}");
                }
            }
            Ok(Heartbeat::Lost) => {}
            Err(e) => tracing::warn!("heartbeat: {e}"),
        }
    }
}

/// Delivers reports in order, retrying through Redis outages until each is
/// applied; ends when the loop is gone and everything is delivered.
async fn reporter(queue: Queue, node: String, mut reports: mpsc::UnboundedReceiver<Report>) {
    while let Some(report) = reports.recv().await {
        let mut delay = Duration::from_millis(100);
        loop {
            let result = match &report {
                Report::Complete(raw) => queue.complete_task(&node, raw).await,
                Report::Requeue {
                    raw,
                    failed,
                    reason,
                } => {
                    queue
                        .requeue_task(&node, raw, *failed, reason.as_deref())
                        .await
                }
                Report::DeadLetter { raw, reason } => {
                    queue.dead_letter_task(&node, raw, reason).await
                }
            };
            match result {
                Ok(true) => break,
                Ok(false) => {
                    tracing::warn!(
                        ?report,
                        "the task was no longer in flight (node declared dead meanwhile)"
                    );
                    break;
                }
                Err(e) => {
                    tracing::warn!("reporting to Redis (will retry): {e}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Fail early and clearly on flags that cannot work.
pub fn check(args: &WorkerArgs) -> Result<()> {
    if !(args.allocation_ratio > 0.0 && args.allocation_ratio <= 64.0) {
        bail!(
            "--allocation-ratio {} is not in (0, 64]",
            args.allocation_ratio
        );
    }
    if args.capacity_units == Some(0) {
        bail!("--capacity-units must be at least 1");
    }
    if args.cpuweight_per_vcpu == 0 || args.cpuweight_per_vcpu > 10_000 {
        bail!(
            "--cpuweight-per-vcpu {} is not in 1..=10000",
            args.cpuweight_per_vcpu
        );
    }
    Ok(())
}
