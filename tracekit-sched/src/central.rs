//! `tracekit-sched central`: the placement loop. Each call of
//! `Queue::place` is one atomic Lua script, so any number of central
//! processes may run at once.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use tracekit_proto::task::quote;
use tracekit_proto::{Keys, PlaceEvent, PlaceOptions, PlaceStatus, Task, Weigher, WeigherOrder};

use crate::redis_conn::{RedisArgs, secs};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OrderArg {
    Min,
    Max,
}

#[derive(Args, Debug)]
pub struct CentralArgs {
    /// Name of the global pending list.
    #[arg(long, default_value = "q:pending")]
    pub pending: String,
    /// Name of the slot-token list (value = node id, one per free slot).
    #[arg(long, default_value = "slots:available")]
    pub slots: String,
    /// Only the newest N slot tokens count (0 = all).
    #[arg(long, default_value_t = 0)]
    pub scan_slots: usize,
    /// How many pending tasks to consider from the head. Placement is strict
    /// FIFO, so only 1 is accepted (kept for the original's command lines).
    #[arg(long, default_value_t = 1)]
    pub scan_pending: usize,
    /// Weigher: "" (first fit by node name), instances (run_count) or vcpu
    /// (cap_total − cap).
    #[arg(long, default_value = "")]
    pub weigher: String,
    /// Prefer the smallest or the largest metric (ties by node name).
    #[arg(long, value_enum, default_value = "min")]
    pub weigher_order: OrderArg,
    /// A task that failed this many attempts goes to the dead-letter list (0 = no limit).
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// Seconds without a heartbeat after which a node is dead and its work is taken back.
    #[arg(long, value_parser = secs, default_value = "10")]
    pub heartbeat_timeout: Duration,
    /// Seconds between dead-node checks. After a pause of the checks longer
    /// than three of these (at least 2 s: Redis was unreachable, or no
    /// central ran), nodes get a full --heartbeat-timeout before they can be
    /// declared dead.
    #[arg(long, value_parser = secs, default_value = "1")]
    pub recover_interval: Duration,
    /// Seconds to wait before looking again when nothing can be placed.
    #[arg(long, value_parser = secs, default_value = "0.05")]
    pub idle_interval: Duration,
    /// Most placements per Redis call (each still strictly FIFO; the call is atomic).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Exit once pending is empty (for scripted runs and tests).
    #[arg(long)]
    pub exit_when_empty: bool,

    #[command(flatten)]
    pub redis: RedisArgs,
}

const WAIT_NOTE_EVERY: Duration = Duration::from_secs(30);

/// The longest pause between dead-node checks that still counts as watching
/// the nodes (see `recover.lua`).
fn watch_gap(recover_interval: Duration) -> Duration {
    (recover_interval * 3).max(Duration::from_secs(2))
}

pub fn parse_weigher(s: &str) -> anyhow::Result<Weigher> {
    match s.trim().to_ascii_lowercase().as_str() {
        "" | "none" => Ok(Weigher::None),
        "instances" => Ok(Weigher::Instances),
        "vcpu" => Ok(Weigher::Vcpu),
        other => bail!("unknown --weigher `{other}`: use \"\", instances or vcpu"),
    }
}

impl CentralArgs {
    fn place_options(&self) -> anyhow::Result<PlaceOptions> {
        if self.scan_pending != 1 {
            bail!(
                "--scan-pending {}: placement is strict FIFO, only 1 is supported",
                self.scan_pending
            );
        }
        Ok(PlaceOptions {
            weigher: parse_weigher(&self.weigher)?,
            order: match self.weigher_order {
                OrderArg::Min => WeigherOrder::Min,
                OrderArg::Max => WeigherOrder::Max,
            },
            scan_slots: self.scan_slots,
            max_attempts: self.max_attempts,
            heartbeat_timeout: self.heartbeat_timeout,
            batch: self.batch.max(1),
        })
    }
}

fn log_event(ev: &PlaceEvent) {
    match ev {
        PlaceEvent::Placed { node, task } => match Task::parse(task) {
            Ok(t) => tracing::info!(
                node = %node,
                input = %quote(&t.input),
                output = %quote(&t.output),
                cpu_units = t.units(),
                seq = ?t.seq,
                "placed"
            ),
            Err(_) => tracing::info!(node = %node, "placed"),
        },
        PlaceEvent::Dead { reason, task } => {
            let head: String = task.chars().take(200).collect();
            tracing::warn!(reason = %quote(reason), task = %head, "dead-lettered");
        }
    }
}

pub async fn run(a: CentralArgs) -> anyhow::Result<()> {
    let opts = a.place_options()?;
    let keys = Keys {
        pending: a.pending.clone(),
        slots: a.slots.clone(),
    };
    let queue = a.redis.queue(keys).await?;
    tracing::info!(
        redis = %queue.conn().url(),
        pending = %a.pending,
        slots = %a.slots,
        weigher = ?opts.weigher,
        order = ?opts.order,
        "central scheduler started"
    );
    let mut stop = Box::pin(shutdown_signal());
    let mut last_recover: Option<Instant> = None;
    let mut last_status = None;
    let mut placed: u64 = 0;
    // When the head has been waiting, say so now and then: never block in silence.
    let mut waiting_since: Option<Instant> = None;
    let mut last_wait_note = Instant::now();
    loop {
        if last_recover.is_none_or(|t| t.elapsed() >= a.recover_interval) {
            // Every call retries through Redis outages; a stop ends the wait
            // (a script call cut short either ran whole or not at all).
            let recovered = tokio::select! {
                r = queue.recover_dead_nodes(a.heartbeat_timeout, watch_gap(a.recover_interval)) => r,
                () = &mut stop => {
                    tracing::info!(placed, "stopping central scheduler");
                    return Ok(());
                }
            };
            for r in recovered.context("recovering dead nodes")? {
                tracing::warn!(node = %r.node, tasks = r.tasks, "node missed its heartbeat: declared dead, its tasks are back at the head of pending");
            }
            last_recover = Some(Instant::now());
        }
        let out = tokio::select! {
            out = queue.place(&opts) => out.context("placing tasks")?,
            () = &mut stop => {
                tracing::info!(placed, "stopping central scheduler");
                return Ok(());
            }
        };
        for ev in &out.events {
            if matches!(ev, PlaceEvent::Placed { .. }) {
                placed += 1;
            }
            log_event(ev);
        }
        if last_status != Some(out.status) {
            match out.status {
                PlaceStatus::NoLiveNodes => {
                    tracing::warn!("no live worker node: pending tasks wait")
                }
                PlaceStatus::Wait => tracing::debug!("head task fits no live node yet: waiting"),
                _ => {}
            }
            last_status = Some(out.status);
        }
        if matches!(out.status, PlaceStatus::Wait | PlaceStatus::NoLiveNodes) {
            let since = *waiting_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= WAIT_NOTE_EVERY && last_wait_note.elapsed() >= WAIT_NOTE_EVERY {
                tracing::warn!(
                    waited_s = since.elapsed().as_secs(),
                    status = ?out.status,
                    "the head of pending is still waiting for a live node with enough free capacity"
                );
                last_wait_note = Instant::now();
            }
        } else {
            waiting_since = None;
        }
        if out.status == PlaceStatus::Empty && a.exit_when_empty {
            tracing::info!(placed, "pending is empty: exiting");
            return Ok(());
        }
        if out.status != PlaceStatus::More {
            tokio::select! {
                _ = tokio::time::sleep(a.idle_interval) => {}
                _ = &mut stop => {
                    tracing::info!(placed, "stopping central scheduler");
                    return Ok(());
                }
            }
        } else if futures_poll_ready(&mut stop).await {
            tracing::info!(placed, "stopping central scheduler");
            return Ok(());
        }
    }
}

/// Whether the shutdown future has completed, without waiting.
async fn futures_poll_ready<F: std::future::Future<Output = ()> + Unpin>(f: &mut F) -> bool {
    tokio::select! {
        biased;
        _ = f => true,
        _ = std::future::ready(()) => false,
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
