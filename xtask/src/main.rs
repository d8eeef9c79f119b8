//! `cargo xtask …`: building the eBPF object, the test entry point, and the
//! benchmarks that print side-by-side comparisons.

mod bench;
mod chaos;
mod demo;
mod fleet;
mod util;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "Tracekit's build, test and benchmark tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Compile the eBPF program (bpf/tracekit.bpf.c) to a BPF object.
    BuildEbpf {
        /// Where to write the object.
        #[arg(long, default_value = "target/bpf/tracekit.bpf.o")]
        out: PathBuf,
    },
    /// Run every test of the workspace (unit, integration, eBPF, end to
    /// end); eBPF and cgroup tests need root.
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run a benchmark and print its comparison table.
    Bench(bench::BenchArgs),
    /// Internal: wake once a second and read /proc/self/statm, forever (the
    /// tracer benchmark's floor: what the kernel charges such a process).
    #[command(hide = true)]
    Ticker,
    /// Internal: attach the do-nothing sched_switch program of OBJECT, say
    /// `ready`, and when stdin closes print its calls and ns per call (the
    /// tracer benchmark's floor, in its own process so that parsing the
    /// kernel's BTF does not inflate the benchmark's own memory).
    #[command(hide = true)]
    HookFloor { object: std::path::PathBuf },
    /// The main job: a complete local experiment (Redis, two traced worker
    /// agents, the central scheduler, the seed's task mix), then audit,
    /// OpenDC export and a summary. Run as root.
    Demo(demo::DemoArgs),
    /// A fault schedule against a local fleet (kill -9, SIGTERM, SIGSTOP,
    /// Redis outages), then a table of the invariants; non-zero on any
    /// violation. Run as root.
    Chaos(chaos::ChaosArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = util::workspace_root()?;
    std::env::set_current_dir(&root).with_context(|| format!("entering {}", root.display()))?;
    match cli.command {
        Command::BuildEbpf { out } => {
            if let Some(dir) = out.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            tracekit_ebpf::build::compile(&out)?;
            println!("{}", out.display());
            Ok(())
        }
        Command::Test { args } => test(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Chaos(args) => chaos::run(&args),
        Command::HookFloor { object } => bench::tracer::hook_floor(&object),
        Command::Ticker => loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            let _ = std::fs::read_to_string("/proc/self/statm");
        },
    }
}

/// The README's test command: builds every binary (end-to-end tests drive
/// them), then runs all tests.
fn test(extra: &[String]) -> Result<()> {
    fleet::ensure_packages()?;
    util::cargo(&["build", "--workspace", "--bins"])?;
    // Every test binary runs even when one fails, so a run shows all failures.
    let mut args = vec!["test", "--workspace", "--no-fail-fast"];
    args.extend(extra.iter().map(String::as_str));
    util::cargo(&args)
}
