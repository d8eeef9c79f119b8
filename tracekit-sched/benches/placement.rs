//! Placement throughput against a real redis-server on loopback.
//!
//! `cargo bench -p tracekit-sched --bench placement [-- --tasks N]`
//!
//! For 3 and 50 live nodes and every weigher × order, places N tasks (from a
//! pre-filled q:pending, with capacity to spare so nothing blocks) with one
//! `place.lua` call per placement (batch 1) and with the central's default
//! batch of 64, and reports placements per second, client round trips per
//! placement, Redis commands per placement (INFO commandstats deltas, which
//! count the commands scripts run too) and Redis time in the script per
//! placement.

use std::time::{Duration, Instant};

use anyhow::Context;
use redis::aio::ConnectionManager;
use tracekit_proto::testing::RedisServer;
use tracekit_proto::{PlaceOptions, PlaceStatus, Queue, Registration, Weigher, WeigherOrder};

const ROUNDS: usize = 3;

/// (all commands, EVALSHA/EVAL calls, µs Redis spent in EVALSHA/EVAL).
async fn commandstats(c: &mut ConnectionManager) -> anyhow::Result<(u64, u64, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(c)
        .await?;
    let (mut all, mut evalsha, mut usec) = (0, 0, 0);
    for line in info.lines() {
        let Some(rest) = line.strip_prefix("cmdstat_") else {
            continue;
        };
        let Some((name, stats)) = rest.split_once(':') else {
            continue;
        };
        if matches!(name, "info" | "config") {
            continue;
        }
        let calls: u64 = stats
            .split(',')
            .find_map(|kv| kv.strip_prefix("calls="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        all += calls;
        if name == "evalsha" || name == "eval" {
            evalsha += calls;
            usec += stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("usec="))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok((all, evalsha, usec))
}

struct Row {
    nodes: usize,
    weigher: &'static str,
    order: &'static str,
    batch: usize,
    rate: f64,
    trips: f64,
    cmds: f64,
    server_us: f64,
}

async fn setup(
    q: &Queue,
    c: &mut ConnectionManager,
    nodes: usize,
    tasks: usize,
) -> anyhow::Result<()> {
    let _: () = redis::cmd("FLUSHDB").query_async(c).await?;
    for i in 0..nodes {
        q.register(&Registration {
            node: format!("node{i:02}"),
            capacity: 10_000_000,
            cores: 8,
            ratio: 1.0,
            parallel: 0,
            reset_capacity: true,
            clear_queue: false,
        })
        .await?;
    }
    let raw = r#"{"input":"in/clip.mp4","output":"out/clip.mp4","scale":"854:480","vcodec":"h264","preset":"veryfast","crf":28,"vthreads":1,"fthreads":1,"cpu_units":1}"#;
    for chunk in (0..tasks).collect::<Vec<_>>().chunks(5_000) {
        let mut p = redis::pipe();
        let mut cmd = redis::cmd("RPUSH");
        cmd.arg("q:pending");
        for _ in chunk {
            cmd.arg(raw);
        }
        p.add_command(cmd).ignore();
        let _: () = p.query_async(c).await?;
    }
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(c).await?;
    Ok(())
}

async fn run(tasks: usize) -> anyhow::Result<Vec<Row>> {
    let server = RedisServer::start().context("starting redis-server")?;
    let q = server.queue().await?;
    let mut c = q.conn().manager();
    let weighers = [
        (Weigher::None, WeigherOrder::Min, "none", "-"),
        (Weigher::Instances, WeigherOrder::Min, "instances", "min"),
        (Weigher::Instances, WeigherOrder::Max, "instances", "max"),
        (Weigher::Vcpu, WeigherOrder::Min, "vcpu", "min"),
        (Weigher::Vcpu, WeigherOrder::Max, "vcpu", "max"),
    ];
    let mut configs = Vec::new();
    for nodes in [3usize, 50] {
        for (w, o, wn, on) in weighers {
            for batch in [1usize, 64] {
                configs.push((nodes, w, o, wn, on, batch));
            }
        }
    }
    // Rounds interleave the configurations (A B C … A B C …) so that load
    // from other work on the machine hits them alike; the median round counts.
    let mut samples: Vec<Vec<Row>> = (0..configs.len()).map(|_| Vec::new()).collect();
    for _round in 0..ROUNDS {
        for (k, &(nodes, w, o, wn, on, batch)) in configs.iter().enumerate() {
            setup(&q, &mut c, nodes, tasks).await?;
            let opts = PlaceOptions {
                weigher: w,
                order: o,
                batch,
                max_attempts: 3,
                heartbeat_timeout: Duration::from_secs(3600),
                scan_slots: 0,
            };
            let start = Instant::now();
            let mut placed = 0usize;
            loop {
                let out = q.place(&opts).await?;
                placed += out.events.len();
                if out.status != PlaceStatus::More {
                    break;
                }
            }
            let secs = start.elapsed().as_secs_f64();
            let (all, trips, usec) = commandstats(&mut c).await?;
            anyhow::ensure!(placed == tasks, "placed {placed} of {tasks}");
            samples[k].push(Row {
                nodes,
                weigher: wn,
                order: on,
                batch,
                rate: placed as f64 / secs,
                trips: trips as f64 / placed as f64,
                cmds: all as f64 / placed as f64,
                server_us: usec as f64 / placed as f64,
            });
        }
    }
    let rows = samples
        .into_iter()
        .filter_map(|mut v| {
            v.sort_by(|a, b| a.rate.total_cmp(&b.rate));
            let mid = v.len() / 2;
            (!v.is_empty()).then(|| v.swap_remove(mid))
        })
        .collect();
    Ok(rows)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let tasks = args
        .iter()
        .position(|a| a == "--tasks")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse::<usize>())
        .transpose()
        .context("--tasks N")?
        .unwrap_or(10_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let rows = rt.block_on(run(tasks))?;
    println!(
        "placement benchmark: {tasks} tasks per run, median of {ROUNDS} interleaved runs, redis-server on loopback, one client"
    );
    println!(
        "{:>5}  {:<9}  {:<5}  {:>5}  {:>12}  {:>11}  {:>10}  {:>13}",
        "nodes",
        "weigher",
        "order",
        "batch",
        "placements/s",
        "trips/place",
        "cmds/place",
        "redis µs/place"
    );
    for r in &rows {
        println!(
            "{:>5}  {:<9}  {:<5}  {:>5}  {:>12.0}  {:>11.3}  {:>10.2}  {:>13.1}",
            r.nodes, r.weigher, r.order, r.batch, r.rate, r.trips, r.cmds, r.server_us
        );
    }
    Ok(())
}
