//! `cargo xtask bench …`: each benchmark measures its variants side by side
//! in one run and prints a comparison table.

pub mod report;
pub mod tracer;

use anyhow::Result;
use clap::{Args, ValueEnum};

use crate::util;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Which {
    /// Tracer overhead and cost: no tracer vs eBPF vs procfs (needs root).
    Tracer,
    /// Placements per second against a real redis-server.
    Sched,
    /// OpenDC export time and memory for 1k..100k tasks.
    Export,
    /// `report` and `compare` on 1k and 10k tasks × 60 samples.
    Report,
    /// All of them.
    All,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[arg(value_enum)]
    pub which: Which,
    #[command(flatten)]
    pub tracer: tracer::TracerBenchArgs,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if matches!(args.which, Which::Tracer | Which::All) {
        tracer::run(&args.tracer)?;
    }
    if matches!(args.which, Which::Sched | Which::All) {
        util::cargo(&["bench", "-p", "tracekit-sched", "--bench", "placement"])?;
    }
    if matches!(args.which, Which::Export | Which::All) {
        util::cargo(&["bench", "-p", "tracekit-trace", "--bench", "export"])?;
    }
    if matches!(args.which, Which::Report | Which::All) {
        report::run()?;
    }
    Ok(())
}
