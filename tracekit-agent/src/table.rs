//! The table of traced processes: a pure state machine from a collector's
//! events to trace lines and to commands for the collector. It does no I/O:
//! the caller ([`crate::session::Session`]) writes the lines and runs the
//! commands, and the unit tests below drive it with event sequences alone.
//!
//! Each process's samples tile its run exactly: the first interval starts at
//! its exec, every later one at the previous sample, and the last ends at its
//! exit with the remainder of its exact CPU total, so the samples of a process
//! add up to its whole CPU time.

use std::collections::HashMap;

use rustc_hash::FxHashMap;

use tracekit_trace::{CollectorKind, Invocation, ProcSample};

use crate::clock::Clock;
use crate::matcher::Matcher;
use crate::tracer::{Event, KernelSample, ProcExit, ProcStart, decode_status};

struct Tracked {
    start: ProcStart,
    ts_start_ms: i64,
    last_ts_ms: i64,
    last_cpu_ns: u64,
    rss_kb: u64,
    peak_rss_kb: u64,
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
}

/// What the table has done so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct TableCounts {
    pub processes_seen: u64,
    pub exits_recorded: u64,
    pub samples: u64,
}

/// A line for the trace files, in the order the table produced it.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    Sample(ProcSample),
    /// A process the worker did not launch (a task's line is the worker's).
    /// Boxed: sample lines, by far the most, stay small.
    Invocation(Box<Invocation>),
}

/// What the table asks of the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `pid` is traced: sample it.
    Watch(u32),
    /// `pid` ended and is recorded: drop what the collector keeps of it.
    Forget(u32),
    /// Image `image` of `pid` does not match: stop following it, unless a
    /// newer exec of the same process (whose event is still queued) replaced
    /// it.
    ForgetImage { pid: u32, image: u32 },
}

/// The table's answer to a batch of events.
#[derive(Debug, Default)]
pub struct Output {
    pub lines: Vec<Line>,
    pub commands: Vec<Command>,
    /// Processes that ended, with their invocation (also those annotated by
    /// the worker, whose line the worker writes).
    pub finished: Vec<Invocation>,
}

pub struct ProcessTable {
    matcher: Matcher,
    node: String,
    stage: String,
    collector: CollectorKind,
    /// Looked up for every sample: a fast hash.
    procs: FxHashMap<u32, Tracked>,
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
            procs: FxHashMap::default(),
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

    /// Remember the wait status of a child the agent reaped.
    pub fn note_status(&mut self, pid: u32, status: i32) {
        self.statuses.insert(pid, status);
    }

    /// Whether `start` would be traced.
    pub fn would_trace(&self, start: &ProcStart) -> bool {
        self.matcher.matches(&start.comm, &start.filename)
    }

    /// Apply the collector's events.
    pub fn apply(
        &mut self,
        events: impl IntoIterator<Item = Event>,
        clock: &Clock,
        out: &mut Output,
    ) {
        for event in events {
            match event {
                Event::Start(start) => self.on_start(start, clock, out),
                Event::Exit(exit) => self.on_exit(exit, clock, out),
                Event::Sample(sample) => self.on_sample(sample, clock, out),
            }
        }
    }

    fn on_start(&mut self, start: ProcStart, clock: &Clock, out: &mut Output) {
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
                out.commands.push(Command::ForgetImage {
                    pid: start.pid,
                    image: start.image,
                });
            }
            return;
        }
        let ts_start_ms = clock.epoch_ms_of(start.start_ns);
        tracing::debug!(pid = start.pid, comm = %start.comm, "tracing process");
        out.commands.push(Command::Watch(start.pid));
        self.counts.processes_seen += 1;
        self.procs.insert(
            start.pid,
            Tracked {
                start,
                ts_start_ms,
                last_ts_ms: ts_start_ms,
                last_cpu_ns: 0,
                rss_kb: 0,
                peak_rss_kb: 0,
            },
        );
    }

    fn on_exit(&mut self, exit: ProcExit, clock: &Clock, out: &mut Output) {
        let Some(mut t) = self.procs.remove(&exit.pid) else {
            // Not traced (or recorded already: a recovered exit's event
            // came after all).
            out.commands.push(Command::Forget(exit.pid));
            return;
        };
        out.commands.push(Command::Forget(exit.pid));
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
        out.lines.push(Line::Sample(ProcSample {
            ts_ms: ts_end_ms,
            pid: exit.pid,
            dt_ms: ts_end_ms - t.last_ts_ms,
            cpu_ms: delta_ms(t.last_cpu_ns, cpu_ns),
            rss_kb: t.rss_kb,
        }));
        self.counts.samples += 1;
        let status = exit.status.or_else(|| self.statuses.remove(&exit.pid));
        self.statuses.remove(&exit.pid);
        let (exit_code, signal) = match status {
            Some(s) => decode_status(s),
            None => (None, None),
        };
        let annotation = self.annotations.remove(&exit.pid);
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
        if annotation.is_none() {
            out.lines
                .push(Line::Invocation(Box::new(invocation.clone())));
        }
        self.counts.exits_recorded += 1;
        out.finished.push(invocation);
    }

    /// The invocation of a task the tracer never saw (procfs misses short
    /// ones): times from the worker's own clock, and no CPU figure. `task`:
    /// what the worker annotated it with (its annotation here, if any, is
    /// dropped).
    pub fn untraced(
        &mut self,
        pid: u32,
        task: Annotation,
        started_ms: i64,
        exited_ms: i64,
        status: i32,
    ) -> Invocation {
        self.annotations.remove(&pid);
        let annotation = task;
        let (exit_code, signal) = decode_status(status);
        Invocation {
            trace_id: annotation.trace_id,
            pid,
            ts_enqueue: annotation.ts_enqueue.unwrap_or(started_ms),
            ts_start: started_ms,
            ts_end: exited_ms,
            ppid: Some(std::process::id()),
            comm: Some("ffmpeg".into()),
            filename: None,
            cpu_ms: None,
            exit_code,
            signal,
            node: Some(self.node.clone()),
            stage: Some(self.stage.clone()),
            collector: None,
            extra: serde_json::Map::new(),
        }
    }

    /// A sample the kernel took (eBPF); one for a process not traced (yet,
    /// or any more) is dropped.
    fn on_sample(&mut self, sample: KernelSample, clock: &Clock, out: &mut Output) {
        let Some(t) = self.procs.get_mut(&sample.pid) else {
            return;
        };
        if let Some(rss) = sample.rss_kb {
            t.note_rss(rss);
        }
        let ts_ms = clock.epoch_ms_of(sample.ts_ns);
        if record(t, sample.pid, ts_ms, sample.cpu_ns, out) {
            self.counts.samples += 1;
        }
    }

    /// The agent's own sampling (procfs): one sample per live traced process,
    /// all stamped `now_ms`. `reading`: a process's CPU so far (ns) and its
    /// resident set (KiB) when known.
    pub fn sample(
        &mut self,
        now_ms: i64,
        reading: impl Fn(u32) -> Option<(u64, Option<u64>)>,
        out: &mut Output,
    ) {
        let mut pids: Vec<u32> = self.procs.keys().copied().collect();
        pids.sort_unstable();
        for pid in pids {
            let (Some((cpu_ns, rss)), Some(t)) = (reading(pid), self.procs.get_mut(&pid)) else {
                continue;
            };
            if let Some(rss) = rss {
                t.note_rss(rss);
            }
            if record(t, pid, now_ms, cpu_ns, out) {
                self.counts.samples += 1;
            }
        }
    }
}

/// Write the interval of `t` that ends at `ts_ms` with cumulative CPU
/// `cpu_ns`; false (nothing written) if it does not end after the last one.
/// A reading below the last counts as the last: CPU totals never go back, and
/// the exit's exact total settles the rest.
fn record(t: &mut Tracked, pid: u32, ts_ms: i64, cpu_ns: u64, out: &mut Output) -> bool {
    let dt = ts_ms - t.last_ts_ms;
    if dt <= 0 {
        return false;
    }
    let cpu_ns = cpu_ns.max(t.last_cpu_ns);
    out.lines.push(Line::Sample(ProcSample {
        ts_ms,
        pid,
        dt_ms: dt,
        cpu_ms: delta_ms(t.last_cpu_ns, cpu_ns),
        rss_kb: t.rss_kb,
    }));
    t.last_ts_ms = ts_ms;
    t.last_cpu_ns = cpu_ns;
    true
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

#[cfg(test)]
mod tests;
