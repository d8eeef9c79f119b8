//! `tracekit-sched`: the controller's commands.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

use tracekit_sched::{central, compare, dead, dispatch, gather, report, run, status, wait};
use tracing_subscriber::EnvFilter;

/// Tracekit's controller: central scheduler, dispatcher, status, audit,
/// OpenDC export, report, and comparison with a simulation.
#[derive(Parser, Debug)]
#[command(name = "tracekit-sched", version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("TRACEKIT_COMMIT"), ")"))]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start, stop or list runs: agents without a RUN_ID of their own follow
    /// the current run and publish its traces when it stops.
    Run(run::RunArgs),
    /// Place pending tasks on live workers (strict FIFO, filters + weigher).
    Central(central::CentralArgs),
    /// Build a task mix and submit it (pulse or fifo arrival, or per-node modes).
    Dispatch(dispatch::DispatchArgs),
    /// Show the run's counters (throughput, ETA) and the nodes (alive,
    /// capacity, run_count, queued, running tasks).
    Status(status::StatusArgs),
    /// Wait until everything submitted is finished: exit 0 when all is done,
    /// 3 when tasks were dead-lettered (with why), 4 on --timeout.
    Wait(wait::WaitArgs),
    /// List, requeue or clear dead-lettered tasks.
    Dead(dead::DeadArgs),
    /// Write every node's published trace directory of a run under
    /// <out>/<RUN_ID>/<node>/ (checksummed; runs never mix).
    Gather(gather::GatherArgs),
    /// Check a node or run directory of traces and write audit_report.md.
    Audit(tracekit_trace::cli::AuditArgs),
    /// Export traces as an OpenDC workload (tasks.parquet, fragments.parquet,
    /// small_datacenter.json).
    ExportOpendc(tracekit_trace::cli::ExportArgs),
    /// Write a run's report: report.html (charts), report.md, report.json and
    /// CSV tables (tasks, nodes, profiles, throughput).
    Report(report::ReportArgs),
    /// Compare a real run with OpenDC's simulation of it (task.parquet) and
    /// judge each metric: compare.json, compare.md, compare.html.
    Compare(compare::CompareArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // One clean message, whatever RUST_BACKTRACE says: these are the
    // user's errors (a bad flag value, Redis out of reach), not bugs.
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    // Audit, export, report and compare are plain file work: no runtime.
    match &cli.command {
        Command::Audit(a) => return tracekit_trace::cli::run_audit(a).map(|_| 0),
        Command::ExportOpendc(a) => return tracekit_trace::cli::run_export(a).map(|_| 0),
        Command::Report(a) => return report::run(a).map(|_| 0),
        Command::Compare(a) => return compare::run(a).map(|_| 0),
        _ => {}
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match cli.command {
            Command::Run(a) => run::run(a).await,
            Command::Central(a) => central::run(a).await.map(|_| 0),
            Command::Dispatch(a) => dispatch::run(a).await.map(|_| 0),
            Command::Status(a) => status::run(a).await.map(|_| 0),
            Command::Wait(a) => wait::run(a).await,
            Command::Dead(a) => dead::run(a).await.map(|_| 0),
            Command::Gather(a) => gather::run(a).await.map(|_| 0),
            Command::Audit(_)
            | Command::ExportOpendc(_)
            | Command::Report(_)
            | Command::Compare(_) => Ok(0),
        }
    })
}
