//! `tracekit-sched run start | stop | list`: runs belong to the controller
//! (see `tracekit_proto::run`). Agents without a `RUN_ID` of their own pick
//! up the current run with their next heartbeat, and publish its traces
//! when it stops, so `gather` works while they keep running.

use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use tokio::time::Instant;
use tracekit_proto::run::{RunStart, RunStop, check_run_id};
use tracekit_proto::{Keys, Queue};

use crate::progress::Progress;
use crate::redis_conn::{RedisArgs, secs};
use crate::wait::EXIT_TIMEOUT;

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(subcommand)]
    pub action: RunAction,
}

#[derive(Subcommand, Debug)]
pub enum RunAction {
    /// Start a run: agents that follow the controller record into
    /// <logs>/<RUN>/<node>/ from their next heartbeat; the run's counters
    /// start from zero.
    Start {
        /// The run's id (default: run-<UTC date>-<time>). Letters, digits,
        /// '.', '_', '-'; an id is used once.
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// Stop the current run, then wait until every agent recording into it
    /// has published its traces (`gather` can then fetch them). Exits 4 if
    /// --timeout passes first.
    Stop {
        /// Stop only if this is the current run.
        #[arg(long)]
        id: Option<String>,
        /// Stop even with tasks pending, placed or running: those running
        /// finish in this run, the others stay queued for the next run.
        #[arg(long)]
        force: bool,
        /// Seconds to wait for the agents' publications.
        #[arg(long, value_parser = secs, default_value = "120", value_name = "SECONDS")]
        timeout: Duration,
        /// Do not wait for the publications.
        #[arg(long)]
        no_wait: bool,
        /// Name of the global pending list.
        #[arg(long, default_value = "q:pending")]
        pending: String,
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// List the runs started from the controller: id, start, duration,
    /// counters, nodes published.
    List {
        /// One JSON object per line instead.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        redis: RedisArgs,
    },
}

/// A new run's id from the controller's clock: run-YYYYMMDD-HHMMSS (UTC).
pub fn new_run_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    // "YYYY-MM-DD HH:MM:SS.mmm UTC"
    let t = crate::fmt::utc(now);
    let digits = |r: std::ops::Range<usize>| t[r].replace([':', '-'], "");
    format!("run-{}-{}", digits(0..10), digits(11..19))
}

pub async fn run(a: RunArgs) -> anyhow::Result<u8> {
    match a.action {
        RunAction::Start { id, redis } => {
            let queue = redis.queue_once(Keys::default()).await?;
            let id = match id {
                Some(id) => {
                    start(&queue, &id).await?;
                    id
                }
                None => start_new(&queue).await?,
            };
            println!(
                "run {id} started: agents that follow the controller record into <logs>/{id}/<node>/ from their next heartbeat"
            );
            Ok(0)
        }
        RunAction::Stop {
            id,
            force,
            timeout,
            no_wait,
            pending,
            redis,
        } => {
            let queue = redis
                .queue_once(Keys {
                    pending,
                    ..Keys::default()
                })
                .await?;
            stop(&queue, id.as_deref(), force, (!no_wait).then_some(timeout)).await
        }
        RunAction::List { json, redis } => {
            let queue = redis.queue_once(Keys::default()).await?;
            list(&queue, json).await
        }
    }
}

/// Start run `id`, or say why not.
pub async fn start(queue: &Queue, id: &str) -> anyhow::Result<()> {
    if let Err(why) = check_run_id(id) {
        bail!("{why}");
    }
    match queue.run_start(id).await? {
        RunStart::Started => Ok(()),
        RunStart::Busy { current } => {
            bail!("run {current} is current: `tracekit-sched run stop` it first")
        }
        RunStart::Used => bail!("run id {id} was used before: choose another"),
    }
}

/// Start a run under a new id (a second suffix when the second's id was
/// used already).
async fn start_new(queue: &Queue) -> anyhow::Result<String> {
    let base = new_run_id();
    for n in 1..=9 {
        let id = if n == 1 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        match queue.run_start(&id).await? {
            RunStart::Started => return Ok(id),
            RunStart::Used => continue,
            RunStart::Busy { current } => {
                bail!("run {current} is current: `tracekit-sched run stop` it first")
            }
        }
    }
    bail!("run ids {base}…-9 were all used: give one with --id")
}

/// The run a dispatcher submits into: the current one, or `wanted` (else a
/// new id) started now. A current run other than `wanted` is an error.
pub async fn ensure_current(queue: &Queue, wanted: Option<&str>) -> anyhow::Result<String> {
    let busy = |current: String| match wanted {
        Some(w) if w != current => bail!(
            "run {current} is current, not {w} (--run-id / RUN_ID): `tracekit-sched run stop` it first, or submit into it"
        ),
        _ => Ok(current),
    };
    if let Some(current) = queue.current_run().await? {
        return busy(current);
    }
    let Some(id) = wanted else {
        let id = match start_new(queue).await {
            Ok(id) => id,
            // Another dispatcher started one meanwhile.
            Err(_) if let Some(current) = queue.current_run().await? => return Ok(current),
            Err(e) => return Err(e),
        };
        tracing::info!(run = %id, "no run was current: started it (`tracekit-sched run stop` ends it)");
        return Ok(id);
    };
    if let Err(why) = check_run_id(id) {
        bail!("{why}");
    }
    match queue.run_start(id).await? {
        RunStart::Started => {
            tracing::info!(run = %id, "no run was current: started it (`tracekit-sched run stop` ends it)");
            Ok(id.to_string())
        }
        // Another dispatcher started one meanwhile.
        RunStart::Busy { current } => busy(current),
        RunStart::Used => bail!("run id {id} was used before: choose another"),
    }
}

/// Stop the current run; with `wait`, wait for the publications.
async fn stop(
    queue: &Queue,
    id: Option<&str>,
    force: bool,
    wait: Option<Duration>,
) -> anyhow::Result<u8> {
    let (run, nodes) = match queue.run_stop(id, force).await? {
        RunStop::NoRun => bail!("no run is current"),
        RunStop::NotCurrent { current } => {
            bail!("the current run is {current}, not {}", id.unwrap_or(""))
        }
        RunStop::Outstanding { run, left } => bail!(
            "run {run} has {} task(s) outstanding ({} pending, {} placed, {} running): \
             `tracekit-sched wait` first, or --force",
            left.total(),
            left.pending,
            left.placed,
            left.running
        ),
        RunStop::Stopped { run, left, nodes } => {
            if left.total() > 0 {
                eprintln!(
                    "stopped with {} task(s) outstanding: {} running finish in run {run}; {} pending and {} placed stay queued for the next run",
                    left.total(),
                    left.running,
                    left.pending,
                    left.placed
                );
            }
            (run, nodes)
        }
    };
    println!("run {run} stopped");
    let Some(timeout) = wait else {
        return Ok(0);
    };
    if nodes.is_empty() {
        println!("no live agent follows it: nothing to wait for");
        queue.run_settle(&run).await?;
        return Ok(0);
    }
    let deadline = Instant::now() + timeout;
    let mut progress = Progress::new("nodes published", nodes.len() as u64);
    loop {
        let (published, gone) = queue.run_publications(&run, &nodes).await?;
        let waiting: Vec<&String> = nodes
            .iter()
            .filter(|n| !published.contains(n) && !gone.contains(n))
            .collect();
        progress.update(
            published.len() as u64,
            nodes.len() as u64,
            &format!("waiting for {}", list_names(&waiting)),
        );
        if waiting.is_empty() {
            progress.finish();
            queue.run_settle(&run).await?;
            println!(
                "{} of {} node(s) published run {run}: `tracekit-sched gather --run-id {run}` fetches them",
                published.len(),
                nodes.len()
            );
            if !gone.is_empty() {
                eprintln!(
                    "stopped heartbeating before publishing (their traces stay on the node): {}",
                    list_names(&gone.iter().collect::<Vec<_>>())
                );
            }
            return Ok(0);
        }
        if Instant::now() >= deadline {
            progress.finish();
            // The counters as they are now, the best there is.
            queue.run_settle(&run).await?;
            eprintln!(
                "timed out: {} node(s) have not published run {run} yet (still running its tasks?): {}",
                waiting.len(),
                list_names(&waiting)
            );
            return Ok(EXIT_TIMEOUT);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn list_names(nodes: &[&String]) -> String {
    const SHOWN: usize = 8;
    let mut s = nodes
        .iter()
        .take(SHOWN)
        .map(|n| n.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if nodes.len() > SHOWN {
        s.push_str(&format!(" … ({} in all)", nodes.len()));
    }
    s
}

async fn list(queue: &Queue, json: bool) -> anyhow::Result<u8> {
    use std::io::Write;
    let mut runs = queue.runs().await?;
    // The current run's counters are the live ones; times are Redis's.
    let st = queue.run_stats().await?;
    if let Some(r) = runs.iter_mut().find(|r| r.stopped_ms.is_none()) {
        (r.submitted, r.done, r.failed, r.dead) = (st.submitted, st.done, st.failed, st.dead);
    }
    let mut out = std::io::stdout().lock();
    if json {
        for r in &runs {
            writeln!(out, "{}", serde_json::to_string(r)?)?;
        }
        return Ok(0);
    }
    if runs.is_empty() {
        writeln!(out, "no runs yet: `tracekit-sched run start`")?;
        return Ok(0);
    }
    writeln!(
        out,
        "{:<28} {:<24} {:>10} {:>9} {:>7} {:>7} {:>6}  published",
        "run", "started", "duration", "submitted", "done", "failed", "dead"
    )?;
    let now = st.now_ms;
    for r in &runs {
        let (duration, state) = match r.stopped_ms {
            Some(end) => (end - r.started_ms, ""),
            None => (now - r.started_ms, " (current)"),
        };
        let started = crate::fmt::utc(r.started_ms);
        writeln!(
            out,
            "{:<28} {:<24} {:>10} {:>9} {:>7} {:>7} {:>6}  {}{}",
            format!("{}{state}", r.id),
            &started[..19],
            format!("{:.0}s", duration as f64 / 1000.0),
            r.submitted,
            r.done,
            r.failed,
            r.dead,
            if r.published.is_empty() {
                "—".into()
            } else {
                r.published.join(",")
            },
            if r.outstanding > 0 {
                format!(" ({} outstanding at stop)", r.outstanding)
            } else {
                String::new()
            }
        )?;
    }
    Ok(0)
}
