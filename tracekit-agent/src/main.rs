//! `tracekit-agent`: the eBPF tracer and the worker of a Tracekit node.

use tracekit_agent::{cli, trace_cmd, tracer, worker};

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Tracekit's node agent: traces ffmpeg tasks with eBPF (exact exec/exit and
/// CPU time) and runs the tasks placed on this node.
///
/// Without a command it runs the worker: `sudo tracekit-agent --redis URL
/// --cpu-binding exclusive …`.
#[derive(Debug, Parser)]
#[command(version = tracekit_agent::VERSION, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    worker: worker::WorkerArgs,

    #[command(flatten)]
    tracer: cli::TracerArgs,

    #[command(flatten)]
    identity: cli::IdentityArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Trace only (no Redis, no worker) until SIGINT/SIGTERM or until the
    /// command after `--` ends; writes <logs>/<RUN_ID>/.
    Trace(trace_cmd::TraceArgs),

    /// Internal: load and attach the eBPF tracer and pin it under --pin-dir
    /// for the agent that started this process.
    #[command(hide = true)]
    LoadEbpf {
        #[arg(long, value_enum)]
        scope: tracer::Scope,
        #[arg(long)]
        pin_dir: std::path::PathBuf,
        /// Exact comms the kernel lets start tracing (none: every exec).
        #[arg(long = "comm")]
        comms: Vec<String>,
        /// How often the kernel samples each traced process.
        #[arg(long)]
        interval_ms: u64,
        /// The CPU that samples first.
        #[arg(long)]
        sampler_cpu: Option<u32>,
    },
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if let Some(Command::LoadEbpf {
        scope,
        pin_dir,
        comms,
        interval_ms,
        sampler_cpu,
    }) = &cli.command
    {
        // A short-lived child: no async runtime needed.
        let interval = std::time::Duration::from_millis(*interval_ms);
        return match tracer::ebpf::load_and_pin(
            &tracer::ebpf::LoadConfig {
                scope: *scope,
                comms: comms.clone(),
                interval,
                sampler_cpu: *sampler_cpu,
            },
            pin_dir,
        ) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    // Trace-only mode runs its own poll(2) loop: no runtime to wake.
    if let Some(Command::Trace(args)) = cli.command {
        return exit_code(trace_cmd::run(args));
    }
    // One thread: the worker waits on a few descriptors and timers, and a
    // second thread would only add wake-ups.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    exit_code(runtime.block_on(async {
        worker::check(&cli.worker)?;
        worker::run(cli.worker, cli.tracer, cli.identity).await
    }))
}

fn exit_code(result: anyhow::Result<i32>) -> std::process::ExitCode {
    match result {
        Ok(code) => std::process::ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
