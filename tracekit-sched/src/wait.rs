//! `tracekit-sched wait`: until everything submitted to this Redis is
//! finished (the run's counters, see `tracekit_proto::run_stats`); exits 0
//! when all is done, [`EXIT_DEAD`] when tasks were dead-lettered (printing
//! why), [`EXIT_TIMEOUT`] when `--timeout` passes first.

use std::time::Duration;

use clap::Args;
use tokio::time::Instant;
use tracekit_proto::{Keys, Queue, RunStats};

use crate::dead::print_letters;
use crate::progress::Progress;
use crate::redis_conn::{RedisArgs, secs};

/// Exit status when every task finished but some were dead-lettered.
pub const EXIT_DEAD: u8 = 3;
/// Exit status when `--timeout` passed with tasks still outstanding.
pub const EXIT_TIMEOUT: u8 = 4;

/// Dead letters printed at the end (the rest: `tracekit-sched dead list`).
const SHOW_DEAD: i64 = 20;

#[derive(Args, Debug)]
pub struct WaitArgs {
    /// Name of the global pending list.
    #[arg(long, default_value = "q:pending")]
    pub pending: String,
    /// Give up after this many seconds (exit status 4; default: wait for ever).
    #[arg(long, value_parser = secs, value_name = "SECONDS")]
    pub timeout: Option<Duration>,
    /// Seconds between two reads of the counters.
    #[arg(long, value_parser = secs, default_value = "1", value_name = "SECONDS")]
    pub interval: Duration,

    #[command(flatten)]
    pub redis: RedisArgs,
}

/// Whether the run is over: something was submitted and nothing is
/// pending, placed or running.
pub fn finished(st: &RunStats) -> bool {
    st.submitted > 0 && st.outstanding() == 0
}

fn note(st: &RunStats) -> String {
    if st.submitted == 0 {
        return "(nothing submitted yet)".into();
    }
    let eta = st
        .eta_secs()
        .map(|s| format!("ETA {}s", s.round()))
        .unwrap_or_else(|| "ETA unknown".into());
    format!(
        "finished ({} done, {} dead); {} pending, {} placed, {} running, {} failed attempts; {}/min, {eta}",
        st.done, st.dead, st.pending, st.placed, st.running, st.failed, st.done_last_minute
    )
}

pub async fn run(a: WaitArgs) -> anyhow::Result<u8> {
    let queue = a
        .redis
        .queue_once(Keys {
            pending: a.pending.clone(),
            ..Keys::default()
        })
        .await?;
    let deadline = a.timeout.map(|t| Instant::now() + t);
    let mut progress = Progress::new("tasks", 0);
    loop {
        let st = queue.run_stats().await?;
        progress.update((st.done + st.dead) as u64, st.submitted as u64, &note(&st));
        if finished(&st) {
            progress.finish();
            return report(&queue, &st).await;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            progress.finish();
            eprintln!(
                "timed out with {} task(s) outstanding: {}",
                st.outstanding(),
                note(&st)
            );
            return Ok(EXIT_TIMEOUT);
        }
        tokio::select! {
            _ = tokio::time::sleep(a.interval) => {}
            _ = tokio::signal::ctrl_c() => {
                progress.finish();
                anyhow::bail!("interrupted with {} task(s) outstanding", st.outstanding());
            }
        }
    }
}

/// The final word: all done, or which tasks were dead-lettered and why.
async fn report(queue: &Queue, st: &RunStats) -> anyhow::Result<u8> {
    if st.dead == 0 {
        println!(
            "all {} task(s) done ({} failed attempt(s) retried)",
            st.done, st.failed
        );
        return Ok(0);
    }
    eprintln!("{} task(s) done, {} dead-lettered:", st.done, st.dead);
    let letters = queue.dead_entries(-SHOW_DEAD, -1).await?;
    let mut err = std::io::stderr().lock();
    print_letters(&mut err, &letters)?;
    if st.dead_letters > SHOW_DEAD {
        eprintln!(
            "… and {} more: tracekit-sched dead list",
            st.dead_letters - SHOW_DEAD
        );
    }
    Ok(EXIT_DEAD)
}
