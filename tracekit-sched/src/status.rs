//! `tracekit-sched status`: one table of nodes and queue lengths, once or
//! refreshed with `--watch`.

use std::fmt::Write as _;
use std::time::Duration;

use clap::Args;
use tracekit_proto::{Keys, Snapshot};

use crate::redis_conn::{RedisArgs, secs};

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Name of the global pending list.
    #[arg(long, default_value = "q:pending")]
    pub pending: String,
    /// Name of the slot-token list.
    #[arg(long, default_value = "slots:available")]
    pub slots: String,
    /// Seconds without a heartbeat after which a node counts as dead.
    #[arg(long, value_parser = secs, default_value = "10")]
    pub heartbeat_timeout: Duration,
    /// Refresh every this many seconds until interrupted.
    #[arg(long, value_parser = secs)]
    pub watch: Option<Duration>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Show at most this many nodes (in byte order of names); the totals
    /// always cover every node.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Skip this many nodes before the first one shown.
    #[arg(long, default_value_t = 0)]
    pub offset: usize,
    /// Show every node (overrides --limit).
    #[arg(long)]
    pub all: bool,
}

/// The status table.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let w = s
        .nodes
        .iter()
        .map(|n| n.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        out,
        "{:<w$}  {:<5}  {:>9}  {:>9}  {:>6}  {:>6}  {:>8}  {:>5}  {:>9}  BINDING",
        "NODE", "STATE", "FREE/TOT", "RUN_COUNT", "QUEUED", "FLIGHT", "SLOTS", "PHYS", "HEARTBEAT"
    );
    for n in &s.nodes {
        let hb = match n.last_heartbeat_ms {
            Some(t) => format!("{:.1}s ago", (s.now_ms - t) as f64 / 1000.0),
            None => "-".into(),
        };
        let slots = if n.parallel > 0 {
            format!("{}/{}", n.slot_tokens, n.parallel)
        } else {
            "-".into()
        };
        let _ = writeln!(
            out,
            "{:<w$}  {:<5}  {:>9}  {:>9}  {:>6}  {:>6}  {:>8}  {:>5}  {:>9}  {}",
            n.name,
            if n.alive { "alive" } else { "dead" },
            format!("{}/{}", n.cap, n.cap_total),
            n.run_count,
            n.queued,
            n.inflight,
            slots,
            n.phys.as_deref().unwrap_or("-"),
            hb,
            n.binding.as_deref().unwrap_or("-")
        );
    }
    let unbound: Vec<&str> = s
        .nodes
        .iter()
        .filter(|n| n.alive && n.binding.as_deref().is_some_and(is_unbound))
        .map(|n| n.name.as_str())
        .collect();
    if !unbound.is_empty() {
        let _ = writeln!(
            out,
            "WARNING: {} node(s) run tasks UNBOUND (no CPU binding): {}",
            unbound.len(),
            unbound.join(", ")
        );
    }
    if s.nodes.len() < s.registered {
        let _ = writeln!(
            out,
            "showing nodes {}-{} of {} (--offset, --limit, --all)",
            if s.nodes.is_empty() {
                s.offset
            } else {
                s.offset + 1
            },
            s.offset + s.nodes.len(),
            s.registered
        );
    }
    let _ = writeln!(
        out,
        "nodes: {} alive / {} registered   pending: {}   dead letters: {}",
        s.alive, s.registered, s.pending, s.dead
    );
    out
}

/// A worker's binding as it reports one it could not apply.
fn is_unbound(binding: &str) -> bool {
    binding.starts_with("UNBOUND")
}

fn to_json(s: &Snapshot) -> String {
    let nodes: Vec<serde_json::Value> = s
        .nodes
        .iter()
        .map(|n| {
            serde_json::json!({
                "node": n.name, "alive": n.alive, "last_heartbeat_ms": n.last_heartbeat_ms,
                "cap": n.cap, "cap_total": n.cap_total, "run_count": n.run_count,
                "parallel": n.parallel, "slot_tokens": n.slot_tokens,
                "queued": n.queued, "inflight": n.inflight, "phys": n.phys, "ratio": n.ratio,
                "binding": n.binding,
                "unbound": n.binding.as_deref().is_some_and(is_unbound),
            })
        })
        .collect();
    serde_json::json!({
        "now_ms": s.now_ms, "nodes": nodes, "offset": s.offset,
        "registered": s.registered, "alive": s.alive,
        "pending": s.pending, "dead": s.dead,
    })
    .to_string()
}

pub async fn run(a: StatusArgs) -> anyhow::Result<()> {
    let queue = a
        .redis
        .queue(Keys {
            pending: a.pending.clone(),
            slots: a.slots.clone(),
        })
        .await?;
    loop {
        let limit = (!a.all).then_some(a.limit);
        let snap = queue
            .snapshot_page(a.heartbeat_timeout, a.offset, limit)
            .await?;
        if a.json {
            println!("{}", to_json(&snap));
        } else {
            if a.watch.is_some() {
                // Clear the screen between refreshes.
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", render(&snap));
        }
        let Some(every) = a.watch else { return Ok(()) };
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
