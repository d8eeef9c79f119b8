//! Placement throughput against a real redis-server on loopback, before and
//! after, side by side in one run.
//!
//! `cargo bench -p tracekit-sched --bench placement [-- --nodes 50,500,5000
//! --tasks N --rounds R --max-secs S --batches 64,1 --before legacy|REV]`
//!
//! For each number of live nodes, every weigher × order and each batch size,
//! places tasks from a pre-filled q:pending (capacity to spare, so nothing
//! blocks) with a *before* script and with today's `place.lua`, and reports
//! placements per second (over N tasks or S seconds, whichever comes first),
//! their ratio, redis-server's CPU time per placement for both (its threads'
//! schedstat: steadier than wall-clock rates on a shared machine), Redis
//! commands per placement for both (INFO commandstats deltas, which count the
//! commands scripts run too), and for today's script Redis time in the script
//! and the client's own CPU per placement. *Before* is the frozen pre-index
//! script (`legacy/place_mget.lua`: every call reads every live node; the
//! default) or, with `--before REV`, `place.lua` and `common.lua` as they
//! were at git revision REV (run with today's key prelude: the index layout
//! is shared). Variants and configurations are interleaved round by round, so
//! load from other work hits them alike; the median round counts.

mod common;

use common::cpu_s;
use std::time::{Duration, Instant};

use anyhow::Context;
use redis::aio::ConnectionManager;
use tracekit_proto::testing::RedisServer;
use tracekit_proto::{PlaceOptions, PlaceStatus, Queue, Registration, Weigher, WeigherOrder};

/// The placement script before the index, run on the same data.
const LEGACY: &str = include_str!("legacy/place_mget.lua");

/// (all commands, µs Redis spent in EVALSHA/EVAL).
async fn commandstats(c: &mut ConnectionManager) -> anyhow::Result<(u64, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(c)
        .await?;
    let (mut all, mut usec) = (0, 0);
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
        let field = |key: &str| -> u64 {
            stats
                .split(',')
                .find_map(|kv| kv.strip_prefix(key))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        all += field("calls=");
        if name == "evalsha" || name == "eval" {
            usec += field("usec=");
        }
    }
    Ok((all, usec))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Before,
    After,
}

struct Sample {
    rate: f64,
    cpu_us: f64,
    client_us: f64,
    cmds: f64,
    server_us: f64,
}

/// The script of the *before* column.
enum Before {
    /// The frozen pre-index script.
    Legacy,
    /// `place.lua` at a git revision.
    Rev(String),
}

impl Before {
    fn script(&self) -> anyhow::Result<String> {
        let rev = match self {
            Before::Legacy => return Ok(LEGACY.to_string()),
            Before::Rev(rev) => rev,
        };
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let show = |file: &str| -> anyhow::Result<String> {
            let spec = format!("{rev}:tracekit-proto/src/scripts/{file}");
            let out = std::process::Command::new("git")
                .args(["-C", root, "show", &spec])
                .output()
                .context("running git")?;
            anyhow::ensure!(
                out.status.success(),
                "git show {spec}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            String::from_utf8(out.stdout).with_context(|| format!("{spec} is not UTF-8"))
        };
        Ok(tracekit_proto::testing::script_source(
            &show("common.lua")?,
            &show("place.lua")?,
        ))
    }

    fn describe(&self) -> String {
        match self {
            Before::Legacy => "every call reads every live node (pre-index place.lua)".into(),
            Before::Rev(rev) => format!("place.lua at {rev}"),
        }
    }
}

struct Args {
    nodes: Vec<usize>,
    batches: Vec<usize>,
    tasks: usize,
    rounds: usize,
    max_secs: f64,
    /// Only the housekeeping figures (dead-node check, status).
    housekeeping_only: bool,
    before: Before,
}

fn list(v: &str) -> anyhow::Result<Vec<usize>> {
    v.split(',')
        .map(|x| x.trim().parse::<usize>().with_context(|| format!("`{x}`")))
        .collect()
}

fn parse_args() -> anyhow::Result<Args> {
    let argv: Vec<String> = std::env::args().collect();
    let get = |name: &str| {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1))
            .cloned()
    };
    Ok(Args {
        nodes: get("--nodes")
            .map(|v| list(&v))
            .transpose()
            .context("--nodes a,b,c")?
            .unwrap_or_else(|| vec![50, 500, 5000]),
        batches: get("--batches")
            .map(|v| list(&v))
            .transpose()
            .context("--batches a,b")?
            .unwrap_or_else(|| vec![64, 1]),
        tasks: get("--tasks")
            .map(|v| v.parse())
            .transpose()
            .context("--tasks N")?
            .unwrap_or(10_000),
        rounds: get("--rounds")
            .map(|v| v.parse())
            .transpose()
            .context("--rounds N")?
            .unwrap_or(3),
        max_secs: get("--max-secs")
            .map(|v| v.parse())
            .transpose()
            .context("--max-secs S")?
            .unwrap_or(2.0),
        housekeeping_only: argv.iter().any(|a| a == "--housekeeping-only"),
        before: match get("--before").as_deref() {
            None | Some("legacy") => Before::Legacy,
            Some(rev) => Before::Rev(rev.to_string()),
        },
    })
}

/// A fresh database with `nodes` registered live nodes and `tasks` pending.
async fn setup(
    q: &Queue,
    c: &mut ConnectionManager,
    nodes: usize,
    tasks: usize,
) -> anyhow::Result<()> {
    let _: () = redis::cmd("FLUSHDB").query_async(c).await?;
    for i in 0..nodes {
        q.register(&Registration {
            node: format!("node{i:05}"),
            capacity: 10_000_000,
            cores: 8,
            ratio: 1.0,
            parallel: 0,
            reset_capacity: true,
            clear_queue: false,
            lease: tracekit_proto::Lease {
                token: format!("tok-node{i:05}"),
                host: "bench".into(),
                pid: std::process::id(),
                lease_ms: 5000,
            },
        })
        .await?;
    }
    let raw = r#"{"input":"in/clip.mp4","output":"out/clip.mp4","scale":"854:480","vcodec":"h264","preset":"veryfast","crf":28,"vthreads":1,"fthreads":1,"cpu_units":1}"#;
    let mut left = tasks;
    while left > 0 {
        let n = left.min(5_000);
        let mut cmd = redis::cmd("RPUSH");
        cmd.arg(&q.keys().pending);
        for _ in 0..n {
            cmd.arg(raw);
        }
        let _: () = cmd.query_async(c).await?;
        left -= n;
    }
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(c).await?;
    Ok(())
}

/// One call of the *before* script; returns (placements, whether to go on).
async fn before_place(
    script: &redis::Script,
    q: &Queue,
    c: &mut ConnectionManager,
    o: &PlaceOptions,
) -> anyhow::Result<(usize, bool)> {
    let weigher = match o.weigher {
        Weigher::None => "",
        Weigher::Instances => "instances",
        Weigher::Vcpu => "vcpu",
    };
    let order = match o.order {
        WeigherOrder::Min => "min",
        WeigherOrder::Max => "max",
    };
    let v: Vec<redis::Value> = script
        .key(&q.keys().pending)
        .key(&q.keys().slots)
        .arg(weigher)
        .arg(order)
        .arg(o.scan_slots)
        .arg(o.max_attempts)
        .arg(o.heartbeat_timeout.as_millis() as u64)
        .arg(o.batch)
        .invoke_async(c)
        .await?;
    let more = matches!(v.first(), Some(redis::Value::BulkString(b)) if b == b"more");
    Ok((v.len().saturating_sub(1) / 3, more))
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    redis_pid: u32,
    variant: Variant,
    script: &redis::Script,
    q: &Queue,
    c: &mut ConnectionManager,
    opts: &PlaceOptions,
    max: Duration,
) -> anyhow::Result<Sample> {
    let cpu0 = cpu_s(redis_pid)?;
    let client0 = cpu_s(std::process::id())?;
    let start = Instant::now();
    let mut placed = 0usize;
    loop {
        let (n, more) = match variant {
            Variant::After => {
                let out = q.place(opts).await?;
                (out.events.len(), out.status == PlaceStatus::More)
            }
            Variant::Before => before_place(script, q, c, opts).await?,
        };
        placed += n;
        if !more || start.elapsed() >= max {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_s(redis_pid)? - cpu0;
    let client = cpu_s(std::process::id())? - client0;
    let (all, usec) = commandstats(c).await?;
    anyhow::ensure!(placed > 0, "nothing placed");
    Ok(Sample {
        rate: placed as f64 / secs,
        cpu_us: cpu * 1e6 / placed as f64,
        client_us: client * 1e6 / placed as f64,
        cmds: all as f64 / placed as f64,
        server_us: usec as f64 / placed as f64,
    })
}

fn median_by_rate(mut v: Vec<Sample>) -> Option<Sample> {
    v.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let mid = v.len() / 2;
    (!v.is_empty()).then(|| v.swap_remove(mid))
}

async fn run(a: &Args) -> anyhow::Result<()> {
    let server = RedisServer::start().context("starting redis-server")?;
    let q = server.queue().await?;
    let mut c = q.conn().manager();
    if a.housekeeping_only {
        return housekeeping(&q, &mut c, a.nodes.iter().copied().max().unwrap_or(0)).await;
    }
    let before_script = redis::Script::new(&a.before.script()?);
    let weighers = [
        (Weigher::None, WeigherOrder::Min, "none", "-"),
        (Weigher::Instances, WeigherOrder::Min, "instances", "min"),
        (Weigher::Instances, WeigherOrder::Max, "instances", "max"),
        (Weigher::Vcpu, WeigherOrder::Min, "vcpu", "min"),
        (Weigher::Vcpu, WeigherOrder::Max, "vcpu", "max"),
    ];
    let mut configs = Vec::new();
    for &nodes in &a.nodes {
        for &batch in &a.batches {
            for w in weighers {
                configs.push((nodes, batch, w));
            }
        }
    }
    let max = Duration::from_secs_f64(a.max_secs);
    let mut before: Vec<Vec<Sample>> = (0..configs.len()).map(|_| Vec::new()).collect();
    let mut after: Vec<Vec<Sample>> = (0..configs.len()).map(|_| Vec::new()).collect();
    for round in 0..a.rounds {
        eprintln!("round {}/{}", round + 1, a.rounds);
        for (k, &(nodes, batch, (w, o, _, _))) in configs.iter().enumerate() {
            let opts = PlaceOptions {
                weigher: w,
                order: o,
                batch,
                max_attempts: 3,
                heartbeat_timeout: Duration::from_secs(3600),
                scan_slots: 0,
            };
            // Alternate which variant goes first.
            let order = if round % 2 == 0 {
                [Variant::Before, Variant::After]
            } else {
                [Variant::After, Variant::Before]
            };
            for v in order {
                setup(&q, &mut c, nodes, a.tasks).await?;
                let s = measure(server.pid(), v, &before_script, &q, &mut c, &opts, max).await?;
                match v {
                    Variant::Before => before[k].push(s),
                    Variant::After => after[k].push(s),
                }
            }
        }
    }
    println!(
        "placement benchmark: up to {} tasks or {} s per run, median of {} interleaved rounds, redis-server on loopback, one client",
        a.tasks, a.max_secs, a.rounds
    );
    println!(
        "before = {}; after = today's place.lua",
        a.before.describe()
    );
    println!(
        "pl/s = placements per second; cpuµs = redis-server CPU µs per placement; cmds = Redis commands per placement; script µs (Redis time in the script) and client cpuµs (this process) per placement are the after variant's; cpu-bound pl/s = 1e6 / (after cpuµs + client cpuµs): the rate if Redis and this client each had a core of their own"
    );
    println!(
        "{:>5}  {:>5}  {:<9}  {:<5}  {:>11}  {:>11}  {:>6}  {:>12}  {:>11}  {:>11}  {:>10}  {:>9}  {:>12}  {:>14}",
        "nodes",
        "batch",
        "weigher",
        "order",
        "before pl/s",
        "after pl/s",
        "ratio",
        "before cpuµs",
        "after cpuµs",
        "before cmds",
        "after cmds",
        "script µs",
        "client cpuµs",
        "cpu-bound pl/s"
    );
    for ((b, f), &(nodes, batch, (_, _, wn, on))) in before.into_iter().zip(after).zip(&configs) {
        let (Some(b), Some(f)) = (median_by_rate(b), median_by_rate(f)) else {
            continue;
        };
        println!(
            "{:>5}  {:>5}  {:<9}  {:<5}  {:>11.0}  {:>11.0}  {:>6.2}  {:>12.1}  {:>11.1}  {:>11.2}  {:>10.2}  {:>9.1}  {:>12.1}  {:>14.0}",
            nodes,
            batch,
            wn,
            on,
            b.rate,
            f.rate,
            f.rate / b.rate,
            b.cpu_us,
            f.cpu_us,
            b.cmds,
            f.cmds,
            f.server_us,
            f.client_us,
            1e6 / (f.cpu_us + f.client_us)
        );
    }
    housekeeping(&q, &mut c, a.nodes.iter().copied().max().unwrap_or(0)).await
}

/// What the central and `status` do besides placing, at the largest fleet:
/// the dead-node check (every `--recover-interval`), one status page of the
/// registry, one of the default view (nodes that left long ago hidden), the
/// run's counters, and a full snapshot (the old `status`), median of 5 each.
async fn housekeeping(q: &Queue, c: &mut ConnectionManager, nodes: usize) -> anyhow::Result<()> {
    setup(q, c, nodes, 0).await?;
    // A tenth of the fleet left long ago (their entry in nodes:left is old).
    for i in (0..nodes).step_by(10) {
        let node = format!("node{i:05}");
        q.deregister(&node, &format!("tok-{node}")).await?;
        let _: i64 = redis::cmd("ZADD")
            .arg(tracekit_proto::keys::LEFT)
            .arg(0)
            .arg(&node)
            .query_async(c)
            .await?;
    }
    // Watched for long: each check reads the heartbeats, as in a running fleet.
    q.assume_watched().await?;
    let mut times: [Vec<f64>; 5] = Default::default();
    for _ in 0..5 {
        let t = Instant::now();
        q.recover_dead_nodes(Duration::from_secs(3600), Duration::from_secs(3600))
            .await?;
        times[0].push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        q.snapshot_page(Duration::from_secs(3600), 0, Some(100))
            .await?;
        times[1].push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        q.snapshot(Duration::from_secs(3600)).await?;
        times[2].push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let view = q
            .snapshot_view(
                Duration::from_secs(3600),
                0,
                Some(100),
                Some(Duration::from_secs(600)),
            )
            .await?;
        times[3].push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(
            view.retired == nodes.div_ceil(10),
            "{} retired",
            view.retired
        );
        let t = Instant::now();
        q.run_stats().await?;
        times[4].push(t.elapsed().as_secs_f64() * 1e3);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!(
        "{nodes} nodes: dead-node check {:.2} ms, registry page of 100 nodes {:.2} ms, status page of 100 nodes (those that left long ago hidden) {:.2} ms, run counters {:.2} ms, every node (old status --all) {:.1} ms",
        med(&mut times[0]),
        med(&mut times[1]),
        med(&mut times[3]),
        med(&mut times[4]),
        med(&mut times[2])
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(&args))
}
