//! A tracing session: a collector, the process table and the trace writer,
//! driven by the caller's event loop (trace-only mode, and the worker).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use tracekit_trace::node::{self, NodeIdentity};
use tracekit_trace::{Invocation, NodeMeta, TraceWriter, TracerStats};

use crate::cli::TracerArgs;
use crate::clock::{self, Clock};
use crate::matcher::Matcher;
use crate::table::{Line, Output, ProcessTable};
use crate::ticker::Ticker;
use crate::tracer::select::select;
use crate::tracer::{Collector, Event, ProcStart, Scope, ebpf};

/// How often `tracer_stats.json` is rewritten.
const STATS_EVERY: Duration = Duration::from_secs(60);
/// Events taken from the collector and applied at a time.
const DRAIN_CHUNK: usize = 1024;
/// How often progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(60);

pub struct Session {
    pub collector: Collector,
    pub table: ProcessTable,
    /// The open run's trace directory (none between runs of an agent that
    /// follows the controller's runs: nothing is recorded then).
    writer: Option<TraceWriter>,
    meta: NodeMeta,
    /// The agent's own counters when the open run began: each run's
    /// `tracer_stats.json` holds its own share.
    stats_base: TracerStats,
    /// Lines that came while no run was open (not recorded).
    unrecorded: u64,
    clock: Clock,
    events: Vec<Event>,
    interval: Duration,
    last_stats: Instant,
    last_progress: Instant,
}

impl Session {
    /// Choose and start the collector, and open the run's directory `dir`
    /// (`None`: no run yet, see [`Session::open_run`]); `describe` adds what
    /// the caller knows to `node_meta.json`.
    pub fn start(
        args: &TracerArgs,
        id: &NodeIdentity,
        dir: Option<&Path>,
        freq: Option<f64>,
        describe: impl FnOnce(&mut NodeMeta),
    ) -> Result<Self> {
        let matcher = Matcher::new(&args.proc_match)?;
        let interval = Duration::from_millis(args.interval_ms);
        // Before the tracer starts: detecting runs `ffmpeg -version`, which
        // must not be traced as a process of this node.
        let mut meta = node::detect(id, freq);
        let selected = select(
            args.collector,
            args.scope,
            matcher.exact_comms(),
            interval,
            args.sampler_cpu,
        )?;
        meta.collector = Some(selected.collector.kind());
        meta.fallback_reason = selected.fallback_reason;
        meta.interval_ms = Some(args.interval_ms);
        meta.scope = Some(args.scope.to_string());
        meta.proc_match = Some(args.proc_match.clone());
        meta.tracekit = Some(crate::VERSION.to_string());
        describe(&mut meta);
        let writer = dir.map(|d| TraceWriter::create(d, &meta)).transpose()?;
        let table = ProcessTable::new(
            matcher,
            id.node.clone(),
            id.stage.clone(),
            selected.collector.kind(),
        );
        let mut session = Session {
            collector: selected.collector,
            table,
            writer,
            meta,
            clock: Clock::new(),
            events: Vec::new(),
            interval,
            last_stats: Instant::now(),
            last_progress: Instant::now(),
            stats_base: TracerStats::default(),
            unrecorded: 0,
        };
        if args.scope == Scope::Host {
            session.adopt_running()?;
            // Adopted processes are traced, and so sampled by the kernel,
            // from now: no exec or exit event has to come first.
            session.pump()?;
        }
        tracing::info!(
            collector = %session.collector.kind(),
            scope = %args.scope,
            dir = %dir.map_or_else(|| "none until a run starts".into(), |d| d.display().to_string()),
            "tracing"
        );
        Ok(session)
    }

    /// The open run's trace directory.
    pub fn run_dir(&self) -> Option<&Path> {
        self.writer.as_ref().map(|w| w.dir())
    }

    /// Open run `run_id`'s trace directory `dir`: lines go there from now.
    pub fn open_run(&mut self, run_id: &str, dir: &Path) -> Result<()> {
        self.meta.run_id = run_id.to_string();
        self.writer = Some(TraceWriter::create(dir, &self.meta)?);
        self.stats_base = self.cumulative_stats();
        self.last_stats = Instant::now();
        tracing::info!(run = run_id, dir = %dir.display(), "recording into a new run");
        Ok(())
    }

    /// Close the open run's directory: the last lines, its share of the
    /// tracer's stats, everything synced. Returns the directory.
    pub fn close_run(&mut self) -> Result<Option<PathBuf>> {
        self.pump()?;
        if self.writer.is_none() {
            return Ok(None);
        }
        self.write_stats()?;
        let Some(mut w) = self.writer.take() else {
            return Ok(None);
        };
        w.flush()?;
        w.sync()?;
        Ok(Some(w.dir().to_path_buf()))
    }

    /// Write a task's invocation line (the worker's, when the tracer's did
    /// not come) and flush it.
    pub fn invocation(&mut self, inv: &Invocation) -> Result<()> {
        match self.writer.as_mut() {
            Some(w) => {
                w.invocation(inv)?;
                w.flush()
            }
            None => {
                tracing::error!(
                    pid = inv.pid,
                    "an invocation line with no run open: not recorded"
                );
                Ok(())
            }
        }
    }

    /// Change what `node_meta.json` says (rewritten atomically).
    pub fn update_meta(&mut self, change: impl FnOnce(&mut NodeMeta)) -> Result<()> {
        change(&mut self.meta);
        match &self.writer {
            Some(w) => w.write_meta(&self.meta),
            None => Ok(()),
        }
    }

    /// The agent's clock, its first tick one period from now.
    pub fn ticker(&self) -> Result<Ticker> {
        Ticker::new(self.tick_every(false))
    }

    /// The period the agent's clock needs now ([`Collector::tick_every`]):
    /// `busy` if the caller has work in flight besides traced processes.
    pub fn tick_every(&self, busy: bool) -> Duration {
        let busy = busy || self.table.live() > 0;
        self.collector.tick_every(self.interval, busy)
    }

    /// Readable when the collector may have events (see [`Session::pump`]).
    pub fn event_fd(&self) -> Option<std::os::fd::RawFd> {
        self.collector.event_fd()
    }

    /// Host scope: matching processes already running are traced from now.
    fn adopt_running(&mut self) -> Result<()> {
        let Collector::Ebpf(c) = &mut self.collector else {
            // The procfs collector finds them at its first scan.
            return Ok(());
        };
        let me = std::process::id();
        let mut adopted = 0;
        for pid in ebpf::all_pids() {
            if pid == me {
                continue;
            }
            let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
                continue;
            };
            let start = ProcStart {
                pid,
                ppid: 0,
                comm: comm.trim().to_string(),
                filename: std::fs::read_link(format!("/proc/{pid}/exe"))
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                start_ns: clock::monotonic_ns(),
                pre_existing: true,
                forked: false,
                image: 0,
            };
            if !self.table.would_trace(&start) {
                continue;
            }
            let threads = ebpf::running_threads(pid);
            if threads.is_empty() {
                continue;
            }
            // A process may end between the scan and here: then it is not
            // adopted, and nothing else is lost.
            if let Err(e) = c.adopt(&start, &threads) {
                tracing::debug!(pid, "not adopted: {e:#}");
                continue;
            }
            self.events.push(Event::Start(start));
            adopted += 1;
        }
        if adopted > 0 {
            c.complete_adoption()?;
        }
        tracing::debug!(adopted, "adopted running processes");
        Ok(())
    }

    /// Wait until the collector may have events.
    pub async fn ready(&mut self) -> Result<()> {
        self.collector.ready().await
    }

    /// Take and apply pending events; what they finished is flushed at once
    /// (an idle agent ticks rarely). Events the kernel lost meanwhile are
    /// recovered from its records here, not at the next tick.
    pub fn pump(&mut self) -> Result<Vec<Invocation>> {
        // Kernel times become epoch ms here: follow any clock step first.
        self.clock.recalibrate();
        // In chunks, so that the buffers stay small and are reused whatever
        // the backlog (thousands of samples wait at every drain).
        let mut finished = Vec::new();
        loop {
            let more = self.collector.drain(&mut self.events, DRAIN_CHUNK)?;
            finished.extend(self.apply()?);
            if !more {
                break;
            }
        }
        let table = &self.table;
        if self
            .collector
            .recover_lost(|| table.pids(), &mut self.events)
        {
            finished.extend(self.apply()?);
        }
        if !finished.is_empty() {
            self.flush()?;
        }
        Ok(finished)
    }

    fn flush(&mut self) -> Result<()> {
        match self.writer.as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }

    /// Traced processes that ended (their parent reaped them) but whose exit
    /// event has not come: take their exits from the kernel's records now.
    pub fn recover_exits(&mut self, pids: &[u32]) -> Result<Vec<Invocation>> {
        let mut finished = self.pump()?;
        for &pid in pids {
            if self.table.is_traced(pid) {
                self.collector.recover_exit(pid, &mut self.events);
            }
        }
        finished.extend(self.apply()?);
        if !finished.is_empty() {
            self.flush()?;
        }
        Ok(finished)
    }

    /// Apply the pending events to the table, and carry out its answer.
    fn apply(&mut self) -> Result<Vec<Invocation>> {
        let mut out = Output::default();
        self.table
            .apply(self.events.drain(..), &self.clock, &mut out);
        self.carry_out(out)
    }

    /// Run the table's commands on the collector and write its lines.
    fn carry_out(&mut self, out: Output) -> Result<Vec<Invocation>> {
        for command in out.commands {
            self.collector.run(command);
        }
        match self.writer.as_mut() {
            Some(w) => {
                for line in &out.lines {
                    match line {
                        Line::Sample(s) => w.sample(s)?,
                        Line::Invocation(i) => w.invocation(i)?,
                    }
                }
            }
            None if !out.lines.is_empty() => {
                self.unrecorded += out.lines.len() as u64;
                tracing::debug!(
                    lines = out.lines.len(),
                    total = self.unrecorded,
                    "trace lines with no run open: not recorded"
                );
            }
            None => {}
        }
        Ok(out.finished)
    }

    /// At each tick: events (with the kernel's samples), the collector's own
    /// pass, the agent's own samples (procfs), flush.
    pub fn tick(&mut self) -> Result<Vec<Invocation>> {
        let mut finished = self.pump()?;
        let traced = self.table.pids();
        self.collector.tick(&traced, &mut self.events)?;
        finished.extend(self.apply()?);
        if let Collector::Procfs(c) = &self.collector {
            let mut out = Output::default();
            self.table
                .sample(clock::epoch_ms(), |pid| c.reading(pid), &mut out);
            finished.extend(self.carry_out(out)?);
        }
        self.flush()?;
        if self.last_stats.elapsed() >= STATS_EVERY {
            self.write_stats()?;
        }
        if self.last_progress.elapsed() >= PROGRESS_EVERY {
            self.last_progress = Instant::now();
            let c = self.table.counts();
            tracing::info!(
                live = self.table.live(),
                finished = c.exits_recorded,
                samples = c.samples,
                "tracing progress"
            );
        }
        Ok(finished)
    }

    /// The collector's and the agent's own cost during the open run.
    pub fn stats(&mut self) -> TracerStats {
        self.cumulative_stats().since(&self.stats_base)
    }

    /// The collector's and the agent's own cost since the agent started.
    fn cumulative_stats(&mut self) -> TracerStats {
        let c = self.collector.stats();
        let t = self.table.counts();
        let (agent_cpu_ms, agent_max_rss_kb) = self_usage();
        TracerStats {
            collector: Some(self.collector.kind()),
            events_lost: c.events_lost,
            map_full: c.map_full,
            processes_seen: t.processes_seen,
            exits_recorded: t.exits_recorded,
            exits_recovered: c.exits_recovered,
            samples_cut: c.samples_cut,
            samples_dropped: c.samples_dropped,
            sampler_cpu: c.sampler_cpu,
            sampler_moves: c.sampler_moves,
            sampler_stalled: c.sampler_stalled,
            sampler_runs: c.sampler_runs,
            sampler_run_ns: c.sampler_run_ns,
            sampler_max_run_ns: c.sampler_max_run_ns,
            sampler_slow_runs: c.sampler_slow_runs,
            agent_cpu_ms,
            agent_max_rss_kb,
            programs: c.programs,
        }
    }

    fn write_stats(&mut self) -> Result<()> {
        self.last_stats = Instant::now();
        let stats = self.stats();
        if stats.events_lost > 0 || stats.map_full > 0 {
            tracing::warn!(
                events_lost = stats.events_lost,
                map_full = stats.map_full,
                "the kernel side dropped data"
            );
        }
        match &self.writer {
            Some(w) => w.write_stats(&stats),
            None => Ok(()),
        }
    }

    /// Final pass at stop: last events, stats, everything synced.
    pub fn finish(mut self) -> Result<TracerStats> {
        self.tick()?;
        let stats = self.stats();
        if let Some(w) = self.writer.as_mut() {
            w.write_stats(&stats)?;
            w.sync()?;
        }
        for p in &stats.programs {
            tracing::info!(
                program = %p.program,
                calls = p.run_count,
                ns_per_call = format!("{:.0}", p.ns_per_call),
                "BPF cost"
            );
        }
        tracing::info!(
            processes = stats.processes_seen,
            exits = stats.exits_recorded,
            events_lost = stats.events_lost,
            agent_cpu_ms = format!("{:.0}", stats.agent_cpu_ms),
            "tracing stopped"
        );
        Ok(stats)
    }
}

/// This process's CPU time (ms) and peak RSS (KiB).
fn self_usage() -> (f64, u64) {
    // The peak of this process's own memory: ru_maxrss would also carry the
    // parent's size at fork across exec.
    let peak_kb = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    (crate::sys::self_cpu_ms(), peak_kb)
}
