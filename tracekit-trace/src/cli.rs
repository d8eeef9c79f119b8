//! Command-line surface of the export and the audit, for a binary to mount as
//! subcommands (`#[command(subcommand)]` with these as variants' arguments).

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::audit::{AuditOptions, AuditSummary, CLOCK_SKEW_WARN_MS, audit_with};
use crate::export::{ExportOptions, TaskIdMode, export_opendc_with};
use crate::opendc::{CpuSizing, UnmeasuredCpu};

/// `export-opendc`: write an OpenDC workload from a node or run directory.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// Node directory (holds node_meta.json) or run directory of node directories.
    #[arg(long)]
    pub input: PathBuf,
    /// Directory for tasks.parquet, fragments.parquet, small_datacenter.json
    /// and experiment.json.
    #[arg(long)]
    pub output: PathBuf,
    /// Task ids: pid when unique across nodes (auto), always pid, or 1..N.
    #[arg(long, value_enum, default_value_t = TaskIdMode::Auto)]
    pub task_id_mode: TaskIdMode,
    /// cpu_capacity: the task's peak fragment usage (the replay runs all its
    /// CPU), or the original's P95 (the replay clips what lies above).
    #[arg(long, value_enum, default_value_t = CpuSizing::Peak)]
    pub cpu_sizing: CpuSizing,
    /// Tasks whose CPU nothing measured: leave them out (skip), one fragment
    /// at the median rate of measured tasks of the same command shape
    /// (shape-median), or the original export's quarter core (original).
    #[arg(long, value_enum, default_value_t = UnmeasuredCpu::Skip)]
    pub unmeasured_cpu: UnmeasuredCpu,
    /// Put every time on Redis's clock: each node's by the offset its agent
    /// measured, each submission by its dispatcher's (what cannot be
    /// corrected is said).
    #[arg(long)]
    pub correct_clock: bool,
}

impl ExportArgs {
    /// The export's options.
    pub fn options(&self) -> ExportOptions {
        ExportOptions {
            id_mode: self.task_id_mode,
            cpu_sizing: self.cpu_sizing,
            unmeasured: self.unmeasured_cpu,
            correct_clock: self.correct_clock,
        }
    }
}

/// `audit`: check a node or run directory's traces.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// Node directory (holds node_meta.json) or run directory of node directories.
    #[arg(long)]
    pub input: PathBuf,
    /// Write audit_report.md into each node's CTS directory.
    #[arg(long)]
    pub write: bool,
    /// Fail (exit non-zero) when the audit finds problems.
    #[arg(long)]
    pub strict: bool,
    /// Warn about a clock (a node's, or a dispatcher's at submission) further
    /// than this from Redis TIME, ms.
    #[arg(long, value_name = "MS", default_value_t = CLOCK_SKEW_WARN_MS)]
    pub clock_skew_warn_ms: f64,
}

impl AuditArgs {
    /// The audit's options.
    pub fn options(&self) -> AuditOptions {
        AuditOptions {
            clock_skew_warn_ms: self.clock_skew_warn_ms,
        }
    }
}

/// Run the export and print its summary.
pub fn run_export(args: &ExportArgs) -> Result<()> {
    let r = export_opendc_with(&args.input, &args.output, &args.options())?;
    println!(
        "exported {} of {} task(s) and {} fragment(s) from {} node(s) in {:.2} s → {}",
        r.tasks_exported,
        r.tasks,
        r.fragments,
        r.nodes,
        r.seconds,
        args.output.display()
    );
    println!("task ids: {}; experiment name: {}", r.id_mode, r.run_name);
    println!(
        "samples: {} read, {} joined, {} in no task's run, {} incomplete (no CPU measurement)",
        r.samples, r.samples_joined, r.samples_unmatched, r.samples_incomplete
    );
    println!(
        "tasks without samples: {}; uncovered time filled: {} ms; max CPU deviation of a task: \
         {:.3} ms",
        r.tasks_without_samples, r.gap_ms, r.max_cpu_deviation_ms
    );
    let share = |part: f64| {
        if r.cpu_ms > 0.0 {
            part * 100.0 / r.cpu_ms
        } else {
            0.0
        }
    };
    match r.cpu_sizing {
        CpuSizing::Peak => println!(
            "cpu_capacity: peak (no fragment exceeds it; the replay runs all {:.1} ms of CPU); \
             P95 sizing would clip {:.1} ms ({:.3} %) in {} task(s)",
            r.cpu_ms,
            r.p95_clip_ms,
            share(r.p95_clip_ms),
            r.tasks_p95_clipped
        ),
        CpuSizing::P95 => println!(
            "cpu_capacity: P95 — the replay clips {:.1} ms of {:.1} ms of CPU ({:.3} %) in {} \
             task(s)",
            r.clipped_cpu_ms,
            r.cpu_ms,
            share(r.clipped_cpu_ms),
            r.tasks_p95_clipped
        ),
    }
    if r.tasks_unmeasured > 0 {
        let what = match r.unmeasured_mode {
            UnmeasuredCpu::Skip => format!("{} left out", r.unmeasured_skipped),
            UnmeasuredCpu::ShapeMedian => format!(
                "{} given the median rate of their command shape, {} left out (no measured task \
                 of the same shape), {} left out (no command shape recorded)",
                r.unmeasured_estimated, r.unmeasured_no_peer, r.unmeasured_no_shape
            ),
            UnmeasuredCpu::Original => format!(
                "{} given the original's quarter of a core",
                r.unmeasured_original
            ),
        };
        println!(
            "tasks with unknown CPU (no exact total, no sample with dt_ms > 0): {} — \
             --unmeasured-cpu {}: {what}",
            r.tasks_unmeasured, r.unmeasured_mode
        );
    }
    if let Some(tally) = &r.clock {
        println!("{}", tally.note());
        for w in tally.warnings() {
            println!("warning: {w}");
        }
    }
    if r.invocations_incomplete > 0 || r.torn_tails > 0 || r.bad_lines > 0 {
        println!(
            "skipped: {} incomplete invocation(s), {} torn last line(s), {} bad line(s)",
            r.invocations_incomplete, r.torn_tails, r.bad_lines
        );
    }
    Ok(())
}

/// Run the audit, print its summary, optionally write the reports; with
/// `--strict`, problems are an error.
pub fn run_audit(args: &AuditArgs) -> Result<AuditSummary> {
    let summary = audit_with(&args.input, &args.options())?;
    for n in &summary.nodes {
        let c = &n.counts;
        println!(
            "{}: {} invocation(s), {} sample(s), PID match {:.2}%, collector {}, \
             events lost {}, CPU max deviation {:.3} ms, {} failed, {} problem(s)",
            n.node,
            c.invocations,
            c.samples,
            c.pid_match_rate() * 100.0,
            n.collector
                .map(|k| k.to_string())
                .unwrap_or_else(|| "unknown".into()),
            c.events_lost,
            c.cpu_max_abs_dev_ms,
            c.failed_tasks,
            n.problems.len()
        );
    }
    for w in &summary.warnings {
        println!("warning: {w}");
    }
    for p in &summary.problems {
        println!("problem: {p}");
    }
    if args.write {
        summary.write_reports()?;
        for n in &summary.nodes {
            println!("wrote {}", n.report_path.display());
        }
    }
    println!(
        "audit: {}",
        if summary.ok {
            "ok".to_string()
        } else {
            format!("{} problem(s)", summary.problems.len())
        }
    );
    if args.strict && !summary.ok {
        bail!("audit found {} problem(s)", summary.problems.len());
    }
    Ok(summary)
}
