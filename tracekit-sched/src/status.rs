//! `tracekit-sched status`: the run's counters (submitted, placed, running,
//! done, failed, dead; throughput and ETA), then one table of nodes with
//! their running tasks, once or refreshed with `--watch`.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::Duration;

use clap::Args;
use tracekit_proto::{Keys, RunStats, Snapshot};

use crate::redis_conn::{RedisArgs, secs};
use crate::task_label::TaskLabel;

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Name of the global pending list.
    #[arg(long, default_value = "q:pending")]
    pub pending: String,
    /// Name of the slot-token list.
    #[arg(long, default_value = "slots:available")]
    pub slots: String,
    /// Seconds without a heartbeat after which a node counts as dead.
    #[arg(long, value_parser = secs, default_value = "10", value_name = "SECONDS")]
    pub heartbeat_timeout: Duration,
    /// Refresh every this many seconds until interrupted: redrawn in place
    /// on a terminal, otherwise one snapshot after another.
    #[arg(long, value_parser = secs, value_name = "SECONDS")]
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
    /// Show every registered node, those that left long ago included;
    /// overrides --limit.
    #[arg(long)]
    pub all: bool,
    /// Hide nodes that left (deregistered, or declared dead and their work
    /// taken back) more than this many seconds ago.
    #[arg(long, value_parser = secs, default_value = "600", value_name = "SECONDS")]
    pub retired_after: Duration,

    #[command(flatten)]
    pub redis: RedisArgs,
}

/// The run's counters, throughput and ETA.
pub fn render_stats(st: &RunStats) -> String {
    let eta = match st.eta_secs() {
        _ if st.outstanding() == 0 => "-".to_string(),
        Some(s) => format!("{}s", s.round()),
        None => "unknown (nothing done in the last minute)".into(),
    };
    let run = match (&st.run, st.run_started_ms) {
        (Some(id), Some(t)) => format!(
            "run: {id} (started {}, {}s ago)\n",
            &crate::fmt::utc(t)[..19],
            (st.now_ms - t) / 1000
        ),
        (Some(id), None) => format!("run: {id}\n"),
        (None, _) => {
            "run: none current (`tracekit-sched run start`, or a dispatch starts one)\n".into()
        }
    };
    format!(
        "{run}tasks: {} submitted   {} pending   {} placed   {} running   {} done   {} failed attempts   {} dead\nthroughput: {}/min   ETA: {}\n",
        st.submitted,
        st.pending,
        st.placed,
        st.running,
        st.done,
        st.failed,
        st.dead,
        st.done_last_minute,
        eta
    )
}

/// The status table; `current`: the current run, to point out agents that
/// follow the controller's runs and record into another one (or none).
pub fn render(s: &Snapshot, current: Option<&str>) -> String {
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
        match n.recording.as_deref() {
            Some(r) if n.alive && r.is_empty() && current.is_some() => {
                let _ = writeln!(
                    out,
                    "{:<w$}    no run yet (picks up the current run with its next heartbeat)",
                    ""
                );
            }
            Some(r) if n.alive && !r.is_empty() && Some(r) != current => {
                let _ = writeln!(
                    out,
                    "{:<w$}    still recording run {r} (finishing its tasks of it)",
                    ""
                );
            }
            _ => {}
        }
        for t in &n.running {
            let l = TaskLabel::of(&t.raw);
            let _ = writeln!(
                out,
                "{:<w$}    running {}  profile {}  {}",
                "",
                l.id(),
                l.profile.as_deref().unwrap_or("-"),
                elapsed(s.now_ms, t.taken_ms)
            );
        }
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
    if s.retired > 0 {
        let _ = writeln!(
            out,
            "{} node(s) that left long ago are hidden (--all shows them)",
            s.retired
        );
    }
    out
}

/// How long a task has run, from when its worker took it.
fn elapsed(now_ms: i64, taken_ms: Option<i64>) -> String {
    match taken_ms {
        Some(t) => format!("{:.1}s", (now_ms - t).max(0) as f64 / 1000.0),
        None => "-".into(),
    }
}

/// A worker's binding as it reports one it could not apply.
fn is_unbound(binding: &str) -> bool {
    binding.starts_with("UNBOUND")
}

fn to_json(s: &Snapshot, st: &RunStats) -> String {
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
                "recording": n.recording,
                "unbound": n.binding.as_deref().is_some_and(is_unbound),
                "running": n.running.iter().map(|t| {
                    let l = TaskLabel::of(&t.raw);
                    serde_json::json!({
                        "trace_id": l.trace_id, "seq": l.seq, "profile": l.profile,
                        "input": l.input,
                        "elapsed_ms": t.taken_ms.map(|at| (s.now_ms - at).max(0)),
                    })
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({
        "now_ms": s.now_ms, "nodes": nodes, "offset": s.offset,
        "registered": s.registered, "alive": s.alive,
        "pending": s.pending, "dead": s.dead, "retired": s.retired,
        "stats": st,
        "throughput_per_min": st.done_last_minute,
        "eta_s": st.eta_secs(),
    })
    .to_string()
}

pub async fn run(a: StatusArgs) -> anyhow::Result<()> {
    let queue = a
        .redis
        .queue_once(Keys {
            pending: a.pending.clone(),
            slots: a.slots.clone(),
        })
        .await?;
    // Redrawing in place only makes sense on a terminal; elsewhere (a pipe,
    // a log file) each refresh is a snapshot of its own.
    let redraw = a.watch.is_some() && !a.json && std::io::stdout().is_terminal();
    loop {
        let limit = (!a.all).then_some(a.limit);
        let snap = queue
            .snapshot_view(
                a.heartbeat_timeout,
                a.offset,
                limit,
                (!a.all).then_some(a.retired_after),
            )
            .await?;
        let stats = queue.run_stats().await?;
        if a.json {
            println!("{}", to_json(&snap, &stats));
        } else {
            if redraw {
                print!("\x1b[2J\x1b[H");
            } else if a.watch.is_some() {
                println!("--- {}", crate::fmt::utc(snap.now_ms));
            }
            print!(
                "{}{}",
                render_stats(&stats),
                render(&snap, stats.run.as_deref())
            );
        }
        let Some(every) = a.watch else { return Ok(()) };
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
