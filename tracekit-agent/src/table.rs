//! The table of traced processes: turns a collector's events and CPU readings
//! into trace records.
//!
//! Each process's samples tile its run exactly: the first interval starts at
//! its exec, every later one at the previous sample, and the last ends at its
//! exit with the remainder of its exact CPU total, so the samples of a process
//! add up to its whole CPU time.

use std::collections::HashMap;

use anyhow::Result;
use tracekit_trace::{CollectorKind, Invocation, ProcSample, TraceWriter};

use crate::clock::Clock;
use crate::matcher::Matcher;
use crate::tracer::{Collector, Event, KernelSample, ProcExit, ProcStart, Statm, decode_status};

struct Tracked {
    start: ProcStart,
    ts_start_ms: i64,
    last_ts_ms: i64,
    last_cpu_ns: u64,
    rss_kb: u64,
    peak_rss_kb: u64,
    /// Kept open for the agent's own sampling (procfs); the kernel reads
    /// RSS itself for eBPF.
    statm: Option<Statm>,
}

impl Tracked {
    fn note_rss(&mut self, rss_kb: u64) {
        self.rss_kb = rss_kb;
        self.peak_rss_kb = self.peak_rss_kb.max(rss_kb);
    }
}

/// What the worker knows of a process it launched for a task: recorded in
/// the process's invocation line instead of the generic fields.
#[derive(Debug, Clone, Default)]
pub struct Annotation {
    pub trace_id: String,
    pub ts_enqueue: Option<i64>,
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// What the table has done so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct TableCounts {
    pub processes_seen: u64,
    pub exits_recorded: u64,
    pub samples: u64,
}

pub struct ProcessTable {
    matcher: Matcher,
    node: String,
    stage: String,
    collector: CollectorKind,
    procs: HashMap<u32, Tracked>,
    /// Exit statuses learnt from wait(2) for children the agent reaped itself
    /// (procfs cannot see them otherwise).
    statuses: HashMap<u32, i32>,
    annotations: HashMap<u32, Annotation>,
    counts: TableCounts,
}

impl ProcessTable {
    pub fn new(matcher: Matcher, node: String, stage: String, collector: CollectorKind) -> Self {
        ProcessTable {
            matcher,
            node,
            stage,
            collector,
            procs: HashMap::new(),
            statuses: HashMap::new(),
            annotations: HashMap::new(),
            counts: TableCounts::default(),
        }
    }

    pub fn counts(&self) -> TableCounts {
        self.counts
    }

    pub fn is_traced(&self, pid: u32) -> bool {
        self.procs.contains_key(&pid)
    }

    /// The pids traced now.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.keys().copied().collect()
    }

    pub fn live(&self) -> usize {
        self.procs.len()
    }

    /// Attach the worker's task fields to `pid`'s invocation line.
    pub fn annotate(&mut self, pid: u32, annotation: Annotation) {
        self.annotations.insert(pid, annotation);
    }

    /// Drop an annotation whose process was never seen (the worker writes
    /// that task's line itself).
    pub fn take_annotation(&mut self, pid: u32) -> Option<Annotation> {
        self.annotations.remove(&pid)
    }

    /// Remember the wait status of a child the agent reaped.
    pub fn note_status(&mut self, pid: u32, status: i32) {
        self.statuses.insert(pid, status);
    }

    /// Whether `start` would be traced.
    pub fn would_trace(&self, start: &ProcStart) -> bool {
        self.matcher.matches(&start.comm, &start.filename)
    }

    /// Apply the collector's events; finished processes are written and
    /// returned.
    pub fn apply(
        &mut self,
        events: &mut Vec<Event>,
        collector: &mut Collector,
        clock: &Clock,
        writer: &mut TraceWriter,
    ) -> Result<Vec<Invocation>> {
        let mut finished = Vec::new();
        for event in events.drain(..) {
            match event {
                Event::Start(start) => self.on_start(start, collector, clock),
                Event::Exit(exit) => {
                    if let Some(done) = self.on_exit(exit, collector, clock, writer)? {
                        finished.push(done);
                    }
                }
                Event::Sample(sample) => self.on_sample(sample, clock, writer)?,
            }
        }
        Ok(finished)
    }

    fn on_start(&mut self, start: ProcStart, collector: &mut Collector, clock: &Clock) {
        if let Some(known) = self.procs.get_mut(&start.pid) {
            // A traced process exec'd again: same process, new image.
            known.start.comm = start.comm;
            if !start.filename.is_empty() {
                known.start.filename = start.filename;
            }
            return;
        }
        if !self.would_trace(&start) {
            // A forked child carries its parent's comm: wait for its exec
            // (or exit) before dropping it.
            if !start.forked {
                collector.forget_image(start.pid, start.image);
            }
            return;
        }
        let ts_start_ms = clock.epoch_ms_of(start.start_ns);
        tracing::debug!(pid = start.pid, comm = %start.comm, "tracing process");
        collector.watch(start.pid);
        self.counts.processes_seen += 1;
        let statm = match self.collector {
            CollectorKind::Procfs => Statm::open(start.pid),
            CollectorKind::Ebpf => None,
        };
        let rss = statm.as_ref().and_then(Statm::rss_kb).unwrap_or(0);
        self.procs.insert(
            start.pid,
            Tracked {
                start,
                ts_start_ms,
                last_ts_ms: ts_start_ms,
                last_cpu_ns: 0,
                rss_kb: rss,
                peak_rss_kb: rss,
                statm,
            },
        );
    }

    fn on_exit(
        &mut self,
        exit: ProcExit,
        collector: &mut Collector,
        clock: &Clock,
        writer: &mut TraceWriter,
    ) -> Result<Option<Invocation>> {
        collector.forget(exit.pid);
        let Some(mut t) = self.procs.remove(&exit.pid) else {
            return Ok(None);
        };
        if let Some(rss) = exit.rss_kb {
            t.note_rss(rss);
        }
        // The exit comes after the last sample, within the same millisecond
        // at worst: it is stamped one later then, so the last line is always
        // the exit's, and times go forward. A process shorter than a
        // millisecond still gets its one line.
        let has_samples = t.last_ts_ms > t.ts_start_ms;
        let mut ts_end_ms = clock.epoch_ms_of(exit.end_ns).max(t.last_ts_ms);
        if has_samples {
            ts_end_ms = ts_end_ms.max(t.last_ts_ms + 1);
        }
        let cpu_ns = exit.cpu_ns.max(t.last_cpu_ns);
        writer.sample(&ProcSample {
            ts_ms: ts_end_ms,
            pid: exit.pid,
            dt_ms: ts_end_ms - t.last_ts_ms,
            cpu_ms: delta_ms(t.last_cpu_ns, cpu_ns),
            rss_kb: t.rss_kb,
        })?;
        self.counts.samples += 1;
        t.last_ts_ms = ts_end_ms;
        let status = exit.status.or_else(|| self.statuses.remove(&exit.pid));
        self.statuses.remove(&exit.pid);
        let (exit_code, signal) = match status {
            Some(s) => decode_status(s),
            None => (None, None),
        };
        let annotation = self.annotations.remove(&exit.pid);
        let annotated = annotation.is_some();
        let mut extra = serde_json::Map::new();
        extra.insert("rss_peak_kb".into(), t.peak_rss_kb.into());
        if t.start.pre_existing {
            // CPU and samples count from when tracing began.
            extra.insert("pre_existing".into(), true.into());
        }
        let (trace_id, ts_enqueue) = match &annotation {
            Some(a) => (a.trace_id.clone(), a.ts_enqueue.unwrap_or(t.ts_start_ms)),
            None => (
                format!("{}-{}-{}", self.node, exit.pid, t.ts_start_ms),
                t.ts_start_ms,
            ),
        };
        if let Some(a) = annotation {
            extra.extend(a.extra);
        }
        let invocation = Invocation {
            trace_id,
            pid: exit.pid,
            ts_enqueue,
            ts_start: t.ts_start_ms,
            ts_end: ts_end_ms,
            ppid: Some(t.start.ppid),
            comm: Some(t.start.comm.clone()),
            filename: (!t.start.filename.is_empty()).then(|| t.start.filename.clone()),
            cpu_ms: Some(ns_to_ms(cpu_ns)),
            exit_code,
            signal,
            node: Some(self.node.clone()),
            stage: Some(self.stage.clone()),
            collector: Some(self.collector),
            extra,
        };
        // A task's line is written by the worker, with the task's fields.
        if !annotated {
            writer.invocation(&invocation)?;
        }
        self.counts.exits_recorded += 1;
        Ok(Some(invocation))
    }

    /// A sample the kernel took (eBPF); one for a process not traced (yet,
    /// or any more) is dropped.
    fn on_sample(
        &mut self,
        sample: KernelSample,
        clock: &Clock,
        writer: &mut TraceWriter,
    ) -> Result<()> {
        let Some(t) = self.procs.get_mut(&sample.pid) else {
            return Ok(());
        };
        if let Some(rss) = sample.rss_kb {
            t.note_rss(rss);
        }
        let ts_ms = clock.epoch_ms_of(sample.ts_ns);
        if record(t, sample.pid, ts_ms, sample.cpu_ns, writer)? {
            self.counts.samples += 1;
        }
        Ok(())
    }

    /// The agent's own sampling (procfs): one sample per live traced process,
    /// all stamped `now_ms`. `cpu`: a process's CPU so far, ns.
    pub fn sample(
        &mut self,
        now_ms: i64,
        cpu: impl Fn(u32) -> Option<u64>,
        writer: &mut TraceWriter,
    ) -> Result<()> {
        let mut pids: Vec<u32> = self.procs.keys().copied().collect();
        pids.sort_unstable();
        for pid in pids {
            let (Some(cpu_ns), Some(t)) = (cpu(pid), self.procs.get_mut(&pid)) else {
                continue;
            };
            if let Some(rss) = t.statm.as_ref().and_then(Statm::rss_kb) {
                t.note_rss(rss);
            }
            if record(t, pid, now_ms, cpu_ns, writer)? {
                self.counts.samples += 1;
            }
        }
        Ok(())
    }
}

/// Write the interval of `t` that ends at `ts_ms` with cumulative CPU
/// `cpu_ns`; false (nothing written) if it does not end after the last one.
/// A reading below the last counts as the last: CPU totals never go back, and
/// the exit's exact total settles the rest.
fn record(
    t: &mut Tracked,
    pid: u32,
    ts_ms: i64,
    cpu_ns: u64,
    writer: &mut TraceWriter,
) -> Result<bool> {
    let dt = ts_ms - t.last_ts_ms;
    if dt <= 0 {
        return Ok(false);
    }
    let cpu_ns = cpu_ns.max(t.last_cpu_ns);
    writer.sample(&ProcSample {
        ts_ms,
        pid,
        dt_ms: dt,
        cpu_ms: delta_ms(t.last_cpu_ns, cpu_ns),
        rss_kb: t.rss_kb,
    })?;
    t.last_ts_ms = ts_ms;
    t.last_cpu_ns = cpu_ns;
    Ok(true)
}

/// ns to ms with µs precision (three decimals), as the trace records it.
pub fn ns_to_ms(ns: u64) -> f64 {
    (ns / 1000) as f64 / 1000.0
}

/// CPU ms between two cumulative readings, from whole µs of each, so the
/// deltas of a process add up to its total exactly.
fn delta_ms(from_ns: u64, to_ns: u64) -> f64 {
    (to_ns / 1000).saturating_sub(from_ns / 1000) as f64 / 1000.0
}
