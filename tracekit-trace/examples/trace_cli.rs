//! The audit and export subcommands standing alone, as `tracekit-sched`
//! mounts them: `cargo run -p tracekit-trace --example trace_cli -- audit
//! --input logs/RUN` or `… -- export-opendc --input logs/RUN --output out`.

use clap::{Parser, Subcommand};
use tracekit_trace::cli::{AuditArgs, ExportArgs, run_audit, run_export};

#[derive(Parser)]
#[command(about = "Audit Tracekit traces or export them as an OpenDC workload")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write tasks.parquet, fragments.parquet and small_datacenter.json.
    ExportOpendc(ExportArgs),
    /// Check a node or run directory and report.
    Audit(AuditArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::ExportOpendc(args) => run_export(&args),
        Cmd::Audit(args) => run_audit(&args).map(|_| ()),
    }
}
