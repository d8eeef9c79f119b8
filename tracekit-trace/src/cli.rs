//! Command-line surface of the export and the audit, for a binary to mount as
//! subcommands (`#[command(subcommand)]` with these as variants' arguments).

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::audit::{AuditSummary, audit};
use crate::export::{TaskIdMode, export_opendc};

/// `export-opendc`: write an OpenDC workload from a node or run directory.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// Node directory (holds node_meta.json) or run directory of node directories.
    #[arg(long)]
    pub input: PathBuf,
    /// Directory for tasks.parquet, fragments.parquet and small_datacenter.json.
    #[arg(long)]
    pub output: PathBuf,
    /// Task ids: pid when unique across nodes (auto), always pid, or 1..N.
    #[arg(long, value_enum, default_value_t = TaskIdMode::Auto)]
    pub task_id_mode: TaskIdMode,
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
}

/// Run the export and print its summary.
pub fn run_export(args: &ExportArgs) -> Result<()> {
    let r = export_opendc(&args.input, &args.output, args.task_id_mode)?;
    println!(
        "exported {} task(s) and {} fragment(s) from {} node(s) in {:.2} s → {}",
        r.tasks,
        r.fragments,
        r.nodes,
        r.seconds,
        args.output.display()
    );
    println!("task ids: {}", r.id_mode);
    println!(
        "samples: {} read, {} joined, {} in no task's run, {} incomplete",
        r.samples, r.samples_joined, r.samples_unmatched, r.samples_incomplete
    );
    println!(
        "tasks without samples: {} (without any CPU data: {}); uncovered time filled: {} ms; \
         max CPU deviation of a task: {:.3} ms",
        r.tasks_without_samples, r.tasks_without_cpu, r.gap_ms, r.max_cpu_deviation_ms
    );
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
    let summary = audit(&args.input)?;
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
