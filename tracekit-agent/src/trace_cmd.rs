//! `tracekit-agent trace`: the tracer alone (no Redis, no worker), the
//! original's start-collect/stop-collect. Traces until SIGINT/SIGTERM, or
//! until the command given after `--` ends.
//!
//! Its loop waits with poll(2) on four descriptors (the sampling timerfd,
//! the event ring buffer, a signalfd and the command's pidfd) rather than in
//! an async runtime: on a VM every wake-up costs CPU in proportion to the
//! memory it touches, and a tokio wake-up costs several times a bare poll
//! loop's (docs/benchmarks.md).

use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;

use crate::cli::{IdentityArgs, TracerArgs};
use crate::session::Session;
use crate::signals::StopSignals;
use crate::sys;

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

pub fn run(args: TraceArgs) -> Result<i32> {
    // Before anything else: the signals arrive on a descriptor from here on.
    let signals = StopSignals::new()?;
    let id = args.identity.identity();
    let dir = args.identity.node_dir(&id);
    let mut session = Session::start(
        &args.tracer,
        &id,
        Some(&dir),
        args.identity.cpu_freq_mhz,
        |_| {},
    )?;
    let mut ticker = session.ticker()?;

    let mut child = match args.command.split_first() {
        Some((program, rest)) => {
            let child = std::process::Command::new(program)
                .args(rest)
                .spawn()
                .with_context(|| format!("starting {program}"))?;
            let pidfd = sys::pidfd_open(child.id()).context("opening a pidfd for the command")?;
            Some((child, pidfd))
        }
        None => None,
    };
    let child_pid = child.as_ref().map(|(c, _)| c.id());
    let mut exit_code = 0;
    let mut grace: Option<Instant> = None;

    loop {
        let events = session.event_fd();
        let mut fds = vec![ticker.as_raw_fd(), signals.as_raw_fd()];
        if let Some(fd) = events {
            fds.push(fd);
        }
        let waiting_child = match &child {
            Some((_, pidfd)) if grace.is_none() => {
                fds.push(pidfd.as_raw_fd());
                true
            }
            _ => false,
        };
        let timeout = grace.map(|deadline| deadline.saturating_duration_since(Instant::now()));
        let readable = sys::poll_readable(&fds, timeout).context("waiting in poll(2)")?;
        let ready = |i: usize| readable.get(i).copied().unwrap_or(false);
        if ready(1)
            && let Some(signal) = signals.take()?
        {
            let name = if signal == sys::SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
            tracing::info!("{name}: stopping");
            break;
        }
        if events.is_some() && ready(2) {
            log_finished(&session.pump()?);
        }
        if ready(0) && ticker.take().context("reading the timerfd")? {
            log_finished(&session.tick()?);
        }
        if waiting_child
            && ready(fds.len() - 1)
            && let Some((c, _)) = child.as_mut()
            && let Some(status) = c.try_wait().context("waiting for the traced command")?
        {
            if let Some(pid) = child_pid {
                session.table.note_status(pid, status.into_raw());
            }
            exit_code = status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
            grace = Some(Instant::now() + EXIT_GRACE);
        }
        ticker.set_period(session.tick_every(false))?;
        if let Some(deadline) = grace {
            log_finished(&session.pump()?);
            let traced = child_pid.is_some_and(|pid| session.table.is_traced(pid));
            if session.table.live() == 0 || !traced && Instant::now() >= deadline {
                break;
            }
            if Instant::now() >= deadline {
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
