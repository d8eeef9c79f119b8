//! The audit of a node's trace: what the original's `audit_report.md` said
//! (counts, field completeness, time order, per-PID monotonic time, negative
//! dt, PID cross-reference) plus what it could not: which collector ran,
//! events lost, the tracer's cost per call, each task's sampled CPU reconciled
//! against its exact total, whether the samples tile each run, and which tasks
//! failed.
//!
//! One streaming pass over each file; memory is a few dozen bytes per task and
//! per PID. The findings come back as numbers ([`AuditCounts`]), as problems
//! (which make `ok` false) and warnings, and as the markdown report
//! ([`markdown`]).

mod markdown;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::join::TaskIndex;
use crate::reader::{BadLine, NodeDir, ReadStats, discover};
use crate::schema::{
    AUDIT_REPORT_FILE, ClockSkew, CollectorKind, InvocationRecord, SampleRecord, TaskTimes,
    TracerStats,
};

/// How many offending tasks each list keeps (all are counted).
pub const LISTED: usize = 20;

/// A task's sampled CPU may differ from its exact total by this much (ms)
/// before it is an offender: samples carry 3 decimals, so rounding adds up to
/// 0.0005 ms per sample.
pub const CPU_TOLERANCE_MS: f64 = 1.0;
/// …or by this fraction of the total, whichever is larger.
pub const CPU_TOLERANCE_REL: f64 = 0.001;

/// The numbers of an audit (of one node, or summed over a run).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditCounts {
    pub invocations: u64,
    pub samples: u64,
    /// Missing counts of [`InvocationRecord::REQUIRED`] and
    /// [`SampleRecord::FIELDS`], in that order.
    pub missing_invocation_fields: [u64; 5],
    pub missing_sample_fields: [u64; 5],
    /// Invocations breaking ts_enqueue ≤ ts_start ≤ ts_end.
    pub order_violations: u64,
    /// Samples whose ts_ms is not after the previous sample of their PID (a
    /// zero-length sample in the same millisecond is allowed).
    pub monotonic_violations: u64,
    pub negative_dt: u64,
    pub distinct_pids_invocations: u64,
    pub distinct_pids_samples: u64,
    /// PIDs of invocations that have at least one sample.
    pub matched_pids: u64,
    /// PIDs that name more than one task (reused by the kernel).
    pub reused_pids: u64,
    /// Tasks (complete invocations) and those at least one sample joined.
    pub tasks: u64,
    pub tasks_with_samples: u64,
    /// Samples that fall in no task's run.
    pub samples_unmatched: u64,
    pub failed_tasks: u64,
    /// Tasks whose samples do not tile their run.
    pub tiling_mismatches: u64,
    /// Tasks with an exact CPU total and samples, and those off by more than
    /// the tolerance.
    pub cpu_reconciled: u64,
    pub cpu_offenders: u64,
    pub cpu_max_abs_dev_ms: f64,
    /// Sum of |deviation| over reconciled tasks (mean = sum / cpu_reconciled).
    pub cpu_sum_abs_dev_ms: f64,
    pub cpu_max_rel_dev: f64,
    /// Tasks without an exact CPU total.
    pub tasks_without_exact_cpu: u64,
    /// Tasks whose CPU nothing measured: no exact total and no sample with
    /// `dt_ms > 0` and `cpu_ms` inside the run (the original collector's
    /// first sample of a process, `dt_ms = 0`, is a baseline, not a
    /// measurement). Their CPU is unknown, not zero.
    pub tasks_unmeasured_cpu: u64,
    pub events_lost: u64,
    pub map_full: u64,
    pub torn_tails: u64,
    pub bad_lines: u64,
    /// Tasks that ran without the CPU binding they asked for.
    pub unbound_tasks: u64,
    /// Processes with intervals that have no sample while they were alive,
    /// and those intervals.
    pub processes_with_gaps: u64,
    pub missed_intervals: u64,
}

impl AuditCounts {
    /// Share of invocation PIDs that samples also name (0 without invocations).
    pub fn pid_match_rate(&self) -> f64 {
        ratio(self.matched_pids, self.distinct_pids_invocations)
    }

    /// Mean |sampled − exact| CPU over reconciled tasks, ms.
    pub fn cpu_mean_abs_dev_ms(&self) -> f64 {
        if self.cpu_reconciled == 0 {
            0.0
        } else {
            self.cpu_sum_abs_dev_ms / self.cpu_reconciled as f64
        }
    }

    /// Add another node's counts (distinct PIDs add up: PIDs are per node).
    pub fn merge(&mut self, o: &AuditCounts) {
        self.invocations += o.invocations;
        self.samples += o.samples;
        for i in 0..5 {
            self.missing_invocation_fields[i] += o.missing_invocation_fields[i];
            self.missing_sample_fields[i] += o.missing_sample_fields[i];
        }
        self.order_violations += o.order_violations;
        self.monotonic_violations += o.monotonic_violations;
        self.negative_dt += o.negative_dt;
        self.distinct_pids_invocations += o.distinct_pids_invocations;
        self.distinct_pids_samples += o.distinct_pids_samples;
        self.matched_pids += o.matched_pids;
        self.reused_pids += o.reused_pids;
        self.tasks += o.tasks;
        self.tasks_with_samples += o.tasks_with_samples;
        self.samples_unmatched += o.samples_unmatched;
        self.failed_tasks += o.failed_tasks;
        self.tiling_mismatches += o.tiling_mismatches;
        self.cpu_reconciled += o.cpu_reconciled;
        self.cpu_offenders += o.cpu_offenders;
        self.cpu_max_abs_dev_ms = self.cpu_max_abs_dev_ms.max(o.cpu_max_abs_dev_ms);
        self.cpu_sum_abs_dev_ms += o.cpu_sum_abs_dev_ms;
        self.cpu_max_rel_dev = self.cpu_max_rel_dev.max(o.cpu_max_rel_dev);
        self.tasks_without_exact_cpu += o.tasks_without_exact_cpu;
        self.tasks_unmeasured_cpu += o.tasks_unmeasured_cpu;
        self.events_lost += o.events_lost;
        self.map_full += o.map_full;
        self.torn_tails += o.torn_tails;
        self.bad_lines += o.bad_lines;
        self.unbound_tasks += o.unbound_tasks;
        self.processes_with_gaps += o.processes_with_gaps;
        self.missed_intervals += o.missed_intervals;
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// A task named in a list of offenders.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRef {
    pub trace_id: Option<String>,
    pub pid: u32,
    pub ts_start: i64,
}

/// A task whose sampled CPU is off its exact total.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuOffender {
    pub task: TaskRef,
    pub exact_ms: f64,
    pub sampled_ms: f64,
    pub samples: u64,
}

/// A task whose samples do not tile its run.
#[derive(Debug, Clone, PartialEq)]
pub struct TilingOffender {
    pub task: TaskRef,
    pub duration_ms: i64,
    pub sum_dt_ms: i64,
    /// Where the first sample's interval starts and the last one ends.
    pub first_from: i64,
    pub last_ts: i64,
    pub samples: u64,
}

/// A process with intervals that have no sample while it was alive.
#[derive(Debug, Clone, PartialEq)]
pub struct GapOffender {
    pub pid: u32,
    /// The task of that pid, when one was recorded.
    pub trace_id: Option<String>,
    /// Intervals with no sample, and the intervals its samples cover.
    pub missed: u64,
    pub intervals: u64,
    /// Its longest time without a sample, ms.
    pub longest_ms: i64,
}

impl GapOffender {
    /// More than the odd timer firing a VM skips: more than two intervals
    /// and more than a tenth of them.
    pub fn serious(&self) -> bool {
        self.missed > 2 && self.missed * 10 > self.intervals
    }
}

/// A task that exited non-zero or by a signal.
#[derive(Debug, Clone, PartialEq)]
pub struct FailedTask {
    pub task: TaskRef,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

/// The audit of one node directory.
#[derive(Debug, Clone)]
pub struct NodeAudit {
    pub node: String,
    pub stage: String,
    pub dir: PathBuf,
    /// Where the report belongs: `<dir>/CTS/audit_report.md`.
    pub report_path: PathBuf,
    pub collector: Option<CollectorKind>,
    pub fallback_reason: Option<String>,
    pub interval_ms: Option<u64>,
    pub tracer_stats: Option<TracerStats>,
    pub counts: AuditCounts,
    pub invocations_read: ReadStats,
    pub samples_read: ReadStats,
    /// First unmatched invocation PIDs, sorted.
    pub unmatched_pids: Vec<u32>,
    pub cpu_offenders: Vec<CpuOffender>,
    pub tiling_offenders: Vec<TilingOffender>,
    pub failed: Vec<FailedTask>,
    /// Processes with sampling gaps, most intervals missed first.
    pub gaps: Vec<GapOffender>,
    /// What the run was asked to do and did not (a collector fallback,
    /// tasks run unbound, privileges kept), for the report's first lines.
    pub not_as_asked: Vec<String>,
    /// The first reason a task ran unbound.
    pub unbound_reason: Option<String>,
    /// The user tasks ran as, when they kept the agent's privileges.
    pub privileges_kept: Option<String>,
    /// Runs left out because their completion was refused (`withdrawn.jsonl`).
    pub withdrawn: usize,
    /// The node's clock against Redis, as its worker measured it.
    pub clock: Option<ClockSkew>,
    /// The largest |offset| of a dispatcher's clock at a submission, ms,
    /// and how many tasks carry one (`ts_enqueue_offset_ms`).
    pub dispatcher_max_abs_offset_ms: Option<f64>,
    pub tasks_with_dispatcher_offset: u64,
    /// Clocks further than this from Redis are warned about, ms.
    pub clock_skew_warn_ms: f64,
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    pub markdown: String,
}

impl NodeAudit {
    /// Write the markdown report into the node's CTS directory.
    pub fn write(&self) -> Result<()> {
        let tmp = self.report_path.with_extension("md.tmp");
        std::fs::write(&tmp, &self.markdown)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.report_path)
            .with_context(|| format!("renaming to {}", self.report_path.display()))
    }

    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The audit of a node or run directory.
#[derive(Debug, Clone)]
pub struct AuditSummary {
    pub nodes: Vec<NodeAudit>,
    /// Counts summed over nodes.
    pub totals: AuditCounts,
    /// Problems and warnings of all nodes, each prefixed by its node.
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    /// No problems anywhere.
    pub ok: bool,
}

impl AuditSummary {
    /// Write every node's report into its CTS directory.
    pub fn write_reports(&self) -> Result<()> {
        self.nodes.iter().try_for_each(NodeAudit::write)
    }
}

/// What an audit may be told.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AuditOptions {
    /// A clock (a node's, a dispatcher's) further than this from Redis
    /// `TIME` is worth a warning, ms.
    pub clock_skew_warn_ms: f64,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            clock_skew_warn_ms: CLOCK_SKEW_WARN_MS,
        }
    }
}

/// Audit `input`: a node directory, or a run directory of node directories.
pub fn audit(input: &Path) -> Result<AuditSummary> {
    audit_with(input, &AuditOptions::default())
}

/// [`audit`] as `opts` say.
pub fn audit_with(input: &Path, opts: &AuditOptions) -> Result<AuditSummary> {
    let nodes = discover(input)?;
    let mut audits = Vec::with_capacity(nodes.len());
    for node in &nodes {
        audits.push(audit_node(node, opts)?);
    }
    let mut totals = AuditCounts::default();
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut run_ids: Vec<&str> = nodes.iter().map(|n| n.meta.run_id.as_str()).collect();
    run_ids.sort_unstable();
    run_ids.dedup();
    if run_ids.len() > 1 {
        warnings.push(format!("the nodes come from different runs: {run_ids:?}"));
    }
    for a in &audits {
        totals.merge(&a.counts);
        // Name a node by its directory when two nodes share a name.
        let shared = audits.iter().filter(|b| b.node == a.node).count() > 1;
        let label = if shared {
            a.dir.display().to_string()
        } else {
            a.node.clone()
        };
        problems.extend(a.problems.iter().map(|p| format!("{label}: {p}")));
        warnings.extend(a.warnings.iter().map(|w| format!("{label}: {w}")));
    }
    Ok(AuditSummary {
        ok: problems.is_empty(),
        nodes: audits,
        totals,
        problems,
        warnings,
    })
}

/// Per-task aggregates of the joined samples.
#[derive(Debug, Clone, Copy, Default)]
struct TaskAgg {
    samples: u64,
    sum_dt: i64,
    sum_cpu: f64,
    first_from: i64,
    last_ts: i64,
    /// A sample measured CPU over part of the run.
    measured: bool,
}

/// A complete invocation as the audit keeps it.
struct AuditTask {
    times: TaskTimes,
    cpu_ms: Option<f64>,
    trace_id: Option<String>,
}

/// A clock further than this from Redis `TIME` is worth a warning, ms (the
/// default of `--clock-skew-warn-ms`).
pub const CLOCK_SKEW_WARN_MS: f64 = 50.0;

/// Audit one node directory.
pub fn audit_node(node: &NodeDir, opts: &AuditOptions) -> Result<NodeAudit> {
    let mut c = AuditCounts::default();
    let mut dispatcher_max_abs: Option<f64> = None;
    let mut with_dispatcher_offset = 0u64;
    let mut tasks: Vec<AuditTask> = Vec::new();
    let mut inv_pids: HashSet<u32> = HashSet::new();
    let mut reused: HashSet<u32> = HashSet::new();
    let mut failed = Vec::new();
    let mut unbound_reason: Option<String> = None;

    let invocations_read = node.read_invocations(|rec: InvocationRecord, _| {
        c.invocations += 1;
        for (i, present) in rec.present().into_iter().enumerate() {
            c.missing_invocation_fields[i] += u64::from(!present);
        }
        let in_order = matches!(
            (rec.ts_enqueue, rec.ts_start, rec.ts_end),
            (Some(q), Some(s), Some(e)) if q <= s && s <= e
        );
        c.order_violations += u64::from(!in_order);
        if let Some(pid) = rec.pid
            && !inv_pids.insert(pid)
        {
            reused.insert(pid);
        }
        if let Some(o) = rec.ts_enqueue_offset_ms {
            with_dispatcher_offset += 1;
            dispatcher_max_abs = Some(dispatcher_max_abs.unwrap_or(0.0).max(o.abs()));
        }
        if let Some(why) = &rec.binding_error {
            c.unbound_tasks += 1;
            unbound_reason.get_or_insert_with(|| why.clone());
        }
        if rec.failed() {
            c.failed_tasks += 1;
            if failed.len() < LISTED {
                failed.push(FailedTask {
                    task: TaskRef {
                        trace_id: rec.trace_id.clone(),
                        pid: rec.pid.unwrap_or(0),
                        ts_start: rec.ts_start.unwrap_or(0),
                    },
                    exit_code: rec.exit_code,
                    signal: rec.signal,
                });
            }
        }
        if let Some(times) = rec.window() {
            tasks.push(AuditTask {
                times,
                cpu_ms: rec.cpu_ms,
                trace_id: rec.trace_id,
            });
        }
        Ok(())
    })?;
    c.tasks = tasks.len() as u64;
    c.distinct_pids_invocations = inv_pids.len() as u64;
    c.reused_pids = reused.len() as u64;

    let index = TaskIndex::new(
        tasks
            .iter()
            .map(|t| (t.times.pid, t.times.ts_start, t.times.ts_end)),
    );
    let mut aggs = vec![
        TaskAgg {
            first_from: i64::MAX,
            last_ts: i64::MIN,
            ..Default::default()
        };
        tasks.len()
    ];
    let mut last_ts: HashMap<u32, i64> = HashMap::new();
    let interval = node.meta.interval_ms.filter(|&i| i > 0).map(|i| i as i64);
    // Per pid: intervals without a sample, intervals covered, longest gap.
    let mut gaps: HashMap<u32, (u64, u64, i64)> = HashMap::new();
    let samples_read = node.read_samples(
        |s: SampleRecord, _| {
            c.samples += 1;
            for (i, present) in s.present().into_iter().enumerate() {
                c.missing_sample_fields[i] += u64::from(!present);
            }
            let dt = s.dt_ms.unwrap_or(0);
            if dt < 0 {
                c.negative_dt += 1;
            }
            let (Some(pid), Some(ts)) = (s.pid, s.ts_ms) else {
                return Ok(());
            };
            // The agent's exit sample may share the millisecond of the last
            // tick; being zero-length it does not break the order.
            if let Some(prev) = last_ts.insert(pid, ts)
                && (ts < prev || (ts == prev && dt != 0))
            {
                c.monotonic_violations += 1;
            }
            if let Some(i) = interval
                && dt > 0
            {
                let g = gaps.entry(pid).or_default();
                g.1 += ((dt + i / 2) / i).max(1) as u64;
                // A sample covering more than one and a half intervals
                // stands for the ones with no sample before it.
                if dt * 2 > i * 3 {
                    g.0 += ((dt + i / 2) / i - 1) as u64;
                    g.2 = g.2.max(dt);
                }
            }
            match index.find(pid, ts, dt) {
                Some(t) => {
                    let a = &mut aggs[t as usize];
                    a.samples += 1;
                    a.sum_dt += dt;
                    a.sum_cpu += s.cpu_ms.unwrap_or(0.0);
                    a.first_from = a.first_from.min(ts - dt);
                    a.last_ts = a.last_ts.max(ts);
                    // Its interval overlaps the run by at least 1 ms.
                    a.measured |=
                        dt > 0 && ts > tasks[t as usize].times.ts_start && s.cpu_ms.is_some();
                }
                None => c.samples_unmatched += 1,
            }
            Ok(())
        },
        |_, _| {},
    )?;
    c.distinct_pids_samples = last_ts.len() as u64;
    c.matched_pids = inv_pids.iter().filter(|p| last_ts.contains_key(p)).count() as u64;
    let mut unmatched_pids: Vec<u32> = inv_pids
        .iter()
        .copied()
        .filter(|p| !last_ts.contains_key(p))
        .collect();
    unmatched_pids.sort_unstable();
    unmatched_pids.truncate(LISTED);

    let trace_of_pid: HashMap<u32, &str> = tasks
        .iter()
        .filter_map(|t| Some((t.times.pid, t.trace_id.as_deref()?)))
        .collect();
    let mut gap_offenders: Vec<GapOffender> = gaps
        .into_iter()
        .filter(|(_, g)| g.0 > 0)
        .map(|(pid, (missed, intervals, longest_ms))| GapOffender {
            pid,
            trace_id: trace_of_pid.get(&pid).map(|s| s.to_string()),
            missed,
            intervals,
            longest_ms,
        })
        .collect();
    c.processes_with_gaps = gap_offenders.len() as u64;
    c.missed_intervals = gap_offenders.iter().map(|g| g.missed).sum();
    gap_offenders.sort_by(|a, b| b.missed.cmp(&a.missed).then(a.pid.cmp(&b.pid)));

    let mut cpu_offenders = Vec::new();
    let mut tiling_offenders = Vec::new();
    for (t, a) in tasks.iter().zip(&aggs) {
        let task_ref = || TaskRef {
            trace_id: t.trace_id.clone(),
            pid: t.times.pid,
            ts_start: t.times.ts_start,
        };
        if t.cpu_ms.is_none() {
            c.tasks_without_exact_cpu += 1;
            if !a.measured {
                c.tasks_unmeasured_cpu += 1;
            }
        }
        if a.samples == 0 {
            continue;
        }
        c.tasks_with_samples += 1;
        let duration = t.times.ts_end - t.times.ts_start;
        let tiles =
            a.sum_dt == duration && a.first_from == t.times.ts_start && a.last_ts == t.times.ts_end;
        if !tiles {
            c.tiling_mismatches += 1;
            if tiling_offenders.len() < LISTED {
                tiling_offenders.push(TilingOffender {
                    task: task_ref(),
                    duration_ms: duration,
                    sum_dt_ms: a.sum_dt,
                    first_from: a.first_from,
                    last_ts: a.last_ts,
                    samples: a.samples,
                });
            }
        }
        if let Some(exact) = t.cpu_ms {
            let dev = (a.sum_cpu - exact).abs();
            c.cpu_reconciled += 1;
            c.cpu_sum_abs_dev_ms += dev;
            c.cpu_max_abs_dev_ms = c.cpu_max_abs_dev_ms.max(dev);
            if exact > 0.0 {
                c.cpu_max_rel_dev = c.cpu_max_rel_dev.max(dev / exact);
            }
            if dev > CPU_TOLERANCE_MS.max(CPU_TOLERANCE_REL * exact) {
                c.cpu_offenders += 1;
                if cpu_offenders.len() < LISTED {
                    cpu_offenders.push(CpuOffender {
                        task: task_ref(),
                        exact_ms: exact,
                        sampled_ms: a.sum_cpu,
                        samples: a.samples,
                    });
                }
            }
        }
    }

    let collector = node
        .meta
        .collector
        .or(node.tracer_stats.as_ref().and_then(|s| s.collector));
    if let Some(s) = &node.tracer_stats {
        c.events_lost = s.events_lost;
        c.map_full = s.map_full;
    }
    let meta = &node.meta;
    let privileges_kept = (meta.privileges_dropped == Some(false))
        .then(|| meta.run_as.clone().unwrap_or_else(|| "root".into()));
    c.torn_tails = u64::from(invocations_read.torn_tail) + u64::from(samples_read.torn_tail);
    c.bad_lines = invocations_read.bad_count + samples_read.bad_count;

    let withdrawn = node.withdrawn()?.len();
    let mut audit = NodeAudit {
        withdrawn,
        clock: node.meta.clock,
        dispatcher_max_abs_offset_ms: dispatcher_max_abs,
        tasks_with_dispatcher_offset: with_dispatcher_offset,
        clock_skew_warn_ms: opts.clock_skew_warn_ms,
        node: node.meta.node.clone(),
        stage: node.meta.stage.clone(),
        dir: node.dir.clone(),
        report_path: node.cts.join(AUDIT_REPORT_FILE),
        collector,
        fallback_reason: node.meta.fallback_reason.clone(),
        interval_ms: node.meta.interval_ms,
        tracer_stats: node.tracer_stats.clone(),
        counts: c,
        invocations_read,
        samples_read,
        unmatched_pids,
        cpu_offenders,
        tiling_offenders,
        failed,
        gaps: gap_offenders,
        not_as_asked: Vec::new(),
        unbound_reason,
        privileges_kept,
        problems: Vec::new(),
        warnings: Vec::new(),
        markdown: String::new(),
    };
    judge(&mut audit);
    audit.markdown = markdown::render(&audit);
    tracing::info!(
        "audited {}: {} invocation(s), {} sample(s), {} problem(s)",
        node.dir.display(),
        audit.counts.invocations,
        audit.counts.samples,
        audit.problems.len()
    );
    Ok(audit)
}

/// Sort the findings into problems (the trace is not to be trusted as is)
/// and warnings (worth knowing, expected in some setups).
fn judge(a: &mut NodeAudit) {
    let c = &a.counts;
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    // What was asked and not done comes first: such a run measured
    // something else.
    let mut not_as_asked = Vec::new();
    if let Some(reason) = &a.fallback_reason {
        not_as_asked.push(format!(
            "the eBPF tracer was not used: fell back to /proc polling ({reason})"
        ));
    }
    if c.unbound_tasks > 0 {
        not_as_asked.push(format!(
            "{} task(s) ran without the CPU binding they asked for ({})",
            c.unbound_tasks,
            a.unbound_reason.as_deref().unwrap_or("no reason recorded")
        ));
    }
    problems.extend(not_as_asked.iter().cloned());
    // Kept privileges were asked for (--run-as root): worth the first lines,
    // not a failure.
    if let Some(user) = &a.privileges_kept {
        let line = format!("tasks ran with the agent's privileges (--run-as {user})");
        warnings.push(line.clone());
        not_as_asked.push(line);
    }
    let bad: Vec<&BadLine> = a
        .invocations_read
        .bad_lines
        .iter()
        .chain(&a.samples_read.bad_lines)
        .collect();
    if c.bad_lines > 0 {
        let first = bad.first().map(|b| b.to_string()).unwrap_or_default();
        problems.push(format!(
            "{} unparseable line(s) before the end of a file (first: {first})",
            c.bad_lines
        ));
    }
    if c.torn_tails > 0 {
        warnings.push(format!(
            "{} file(s) end in a torn line (skipped; expected after a crash)",
            c.torn_tails
        ));
    }
    if let Some(clock) = a.clock
        && clock.offset_ms.abs() > a.clock_skew_warn_ms
    {
        warnings.push(format!(
            "this node's clock is {:+.0} ms off Redis TIME (±{:.0} ms): its start and end times are that far from the submission times (export and report --correct-clock correct them)",
            clock.offset_ms,
            clock.rtt_ms / 2.0
        ));
    }
    if let Some(max) = a.dispatcher_max_abs_offset_ms
        && max > a.clock_skew_warn_ms
    {
        warnings.push(format!(
            "a dispatcher's clock was up to {max:.0} ms off Redis TIME when it submitted this node's tasks: their submission times are that far off (export and report --correct-clock correct them)"
        ));
    }
    if a.withdrawn > 0 {
        warnings.push(format!(
            "{} run(s) withdrawn and left out: their node had been declared dead and the task ran again elsewhere (withdrawn.jsonl)",
            a.withdrawn
        ));
    }
    for (i, name) in InvocationRecord::REQUIRED.iter().enumerate() {
        let miss = c.missing_invocation_fields[i];
        if miss > 0 {
            problems.push(format!("{miss} invocation(s) lack {name}"));
        }
    }
    for (i, name) in SampleRecord::FIELDS.iter().enumerate() {
        let miss = c.missing_sample_fields[i];
        if miss > 0 {
            let msg = format!("{miss} sample(s) lack {name}");
            // The original wrote rss_kb only when it could read it.
            if *name == "rss_kb" {
                warnings.push(msg);
            } else {
                problems.push(msg);
            }
        }
    }
    if c.order_violations > 0 {
        problems.push(format!(
            "{} invocation(s) break ts_enqueue ≤ ts_start ≤ ts_end",
            c.order_violations
        ));
    }
    if c.monotonic_violations > 0 {
        problems.push(format!(
            "{} sample(s) are not later than the previous sample of their PID \
             (zero-length samples in the same ms excepted)",
            c.monotonic_violations
        ));
    }
    if c.negative_dt > 0 {
        problems.push(format!("{} sample(s) have dt_ms < 0", c.negative_dt));
    }
    let without_samples = c.tasks - c.tasks_with_samples;
    if without_samples > 0 {
        let msg = format!("{without_samples} task(s) have no sample");
        // Only the eBPF tracer promises a final sample for every process;
        // /proc polling misses processes shorter than its interval.
        if a.collector == Some(CollectorKind::Ebpf) {
            problems.push(msg);
        } else {
            warnings.push(msg);
        }
    }
    if c.tasks_unmeasured_cpu > 0 {
        warnings.push(format!(
            "{} task(s) have no CPU measurement (no exact total, no sample with dt_ms > 0 in \
             their run): their CPU is unknown, not zero; export-opendc skips them unless \
             --unmeasured-cpu says otherwise",
            c.tasks_unmeasured_cpu
        ));
    }
    if c.samples_unmatched > 0 {
        warnings.push(format!(
            "{} sample(s) fall in no task's run (processes still running at stop, or not \
             recorded as invocations)",
            c.samples_unmatched
        ));
    }
    if c.events_lost > 0 {
        problems.push(format!("the tracer lost {} event(s)", c.events_lost));
    }
    if c.map_full > 0 {
        problems.push(format!(
            "the tracer's maps were full {} time(s) (processes untracked)",
            c.map_full
        ));
    }
    if a.tracer_stats.is_none() {
        warnings.push("no tracer_stats.json: collector cost and losses unknown".into());
    }
    if c.cpu_offenders > 0 {
        problems.push(format!(
            "{} task(s) whose sampled CPU is off their exact total by more than \
             max({CPU_TOLERANCE_MS} ms, {:.1} %) (max {:.3} ms)",
            c.cpu_offenders,
            CPU_TOLERANCE_REL * 100.0,
            c.cpu_max_abs_dev_ms
        ));
    }
    if c.tiling_mismatches > 0 {
        problems.push(format!(
            "{} task(s) whose samples do not tile their run",
            c.tiling_mismatches
        ));
    }
    if c.failed_tasks > 0 {
        problems.push(format!(
            "{} task(s) failed (non-zero exit or signal)",
            c.failed_tasks
        ));
    }
    if c.processes_with_gaps > 0 {
        let serious = a.gaps.iter().filter(|g| g.serious()).count();
        let msg = format!(
            "{} process(es) have {} interval(s) with no sample while alive (longest gap {} ms)",
            c.processes_with_gaps,
            c.missed_intervals,
            a.gaps.iter().map(|g| g.longest_ms).max().unwrap_or(0)
        );
        if serious > 0 {
            problems.push(format!(
                "{msg}; {serious} miss more than a tenth of their intervals"
            ));
        } else {
            warnings.push(msg);
        }
    }
    if let Some(s) = &a.tracer_stats {
        if s.sampler_stalled {
            problems.push("sampling had stopped: no online CPU was left to take it".into());
        }
        if s.sampler_moves > 0 {
            warnings.push(format!(
                "sampling moved to another CPU {} time(s) (its CPU went offline)",
                s.sampler_moves
            ));
        }
    }
    if c.invocations == 0 {
        warnings.push("no invocations recorded".into());
    }
    a.not_as_asked = not_as_asked;
    a.problems = problems;
    a.warnings = warnings;
}
