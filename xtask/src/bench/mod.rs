//! `cargo xtask bench …`: each benchmark measures its variants side by side
//! in one run and prints a comparison table.

pub mod export;
pub mod report;
pub mod tracer;

use anyhow::Result;
use clap::{Args, ValueEnum};

use crate::util;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Which {
    /// Tracer overhead and cost: no tracer vs eBPF vs procfs (needs root).
    Tracer,
    /// Placements per second against a real redis-server, before and after
    /// the placement index, 50 / 500 / 5,000 nodes.
    Sched,
    /// A simulated fleet (agents speaking the real protocol in one process)
    /// with real centrals and dispatch: latency, throughput, CPU.
    Fleet,
    /// OpenDC export time and memory for 1k..100k tasks (`--baseline REV`:
    /// beside the export of commit REV).
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
    #[command(flatten)]
    pub fleet: FleetBenchArgs,
    #[command(flatten)]
    pub export: export::ExportBenchArgs,
}

/// Options of `bench fleet` (passed on to tracekit-sched's `fleet` bench).
#[derive(Debug, Clone, Args)]
pub struct FleetBenchArgs {
    /// Fleet sizes (comma-separated), each measured beside 50 nodes.
    #[arg(long, default_value = "1000,5000")]
    pub nodes: String,
    /// Tasks per fleet size.
    #[arg(long, default_value_t = 20_000)]
    pub tasks: u64,
    /// Central processes placing at once.
    #[arg(long, default_value_t = 1)]
    pub centrals: usize,
    /// The centrals' weigher ("" = first fit, instances, vcpu).
    #[arg(long, default_value = "instances")]
    pub weigher: String,
    /// How long a simulated agent's take call polls before starting over
    /// (tracekit-agent: 500 ms).
    #[arg(long, default_value_t = 500)]
    pub take_wait_ms: u64,
    /// Print one JSON object per fleet size instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if matches!(args.which, Which::Tracer | Which::All) {
        tracer::run(&args.tracer)?;
    }
    if matches!(args.which, Which::Sched | Which::All) {
        util::cargo(&["bench", "-p", "tracekit-sched", "--bench", "placement"])?;
    }
    if matches!(args.which, Which::Fleet | Which::All) {
        let f = &args.fleet;
        let (tasks, centrals) = (f.tasks.to_string(), f.centrals.to_string());
        let weigher = format!("--weigher={}", f.weigher);
        let wait = f.take_wait_ms.to_string();
        let mut a = vec![
            "bench",
            "-p",
            "tracekit-sched",
            "--bench",
            "fleet",
            "--",
            "--nodes",
            &f.nodes,
            "--tasks",
            &tasks,
            "--centrals",
            &centrals,
            &weigher,
            "--take-wait-ms",
            &wait,
        ];
        if f.json {
            a.push("--json");
        }
        util::cargo(&a)?;
    }
    if matches!(args.which, Which::Export | Which::All) {
        export::run(&args.export)?;
    }
    if matches!(args.which, Which::Report | Which::All) {
        report::run()?;
    }
    Ok(())
}
