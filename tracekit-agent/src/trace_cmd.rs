//! `tracekit-agent trace`: the tracer alone (no Redis, no worker), the
//! original's start-collect/stop-collect. Traces until SIGINT/SIGTERM, or
//! until the command given after `--` ends.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::{IdentityArgs, TracerArgs};
use crate::session::Session;

#[derive(Debug, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub tracer: TracerArgs,

    #[command(flatten)]
    pub identity: IdentityArgs,

    /// A command to run and trace (with `--scope worker`, only it and its
    /// descendants are traced); the agent stops when it ends and exits with
    /// its status.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// How long to wait for a finished command's exit event.
const EXIT_GRACE: Duration = Duration::from_secs(2);

pub async fn run(args: TraceArgs) -> Result<i32> {
    let id = args.identity.identity();
    let dir = args.identity.node_dir(&id);
    let mut session = Session::start(&args.tracer, &id, &dir, args.identity.cpu_freq_mhz)?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut ticker = session.ticker();

    let mut child = match args.command.split_first() {
        Some((program, rest)) => Some(
            tokio::process::Command::new(program)
                .args(rest)
                .spawn()
                .with_context(|| format!("starting {program}"))?,
        ),
        None => None,
    };
    let child_pid = child.as_ref().and_then(|c| c.id());
    let mut exit_code = 0;
    let mut grace: Option<tokio::time::Instant> = None;

    loop {
        tokio::select! {
            r = session.ready() => {
                r?;
                log_finished(&session.pump()?);
            }
            _ = ticker.tick() => {
                log_finished(&session.tick()?);
            }
            _ = sigint.recv() => { tracing::info!("SIGINT: stopping"); break; }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            status = async { child.as_mut().map(|c| c.wait()) .expect("guarded").await }, if child.is_some() && grace.is_none() => {
                let status = status.context("waiting for the traced command")?;
                if let Some(pid) = child_pid {
                    session.table.note_status(pid, status.into_raw());
                }
                exit_code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
                grace = Some(tokio::time::Instant::now() + EXIT_GRACE);
            }
        }
        if let Some(deadline) = grace {
            log_finished(&session.pump()?);
            let traced = child_pid.is_some_and(|pid| session.table.is_traced(pid));
            if session.table.live() == 0 || !traced && tokio::time::Instant::now() >= deadline {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!("the command's exit was not seen within {EXIT_GRACE:?}");
                break;
            }
        }
    }
    session.finish()?;
    Ok(exit_code)
}

fn log_finished(done: &[tracekit_trace::Invocation]) {
    for inv in done {
        tracing::debug!(
            pid = inv.pid,
            comm = inv.comm.as_deref().unwrap_or(""),
            cpu_ms = inv.cpu_ms.unwrap_or(0.0),
            run_ms = inv.ts_end - inv.ts_start,
            "process finished"
        );
    }
}
