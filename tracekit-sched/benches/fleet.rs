//! A simulated fleet against real processes: `cargo xtask bench fleet`
//! (`cargo bench -p tracekit-sched --bench fleet -- [--nodes 1000,5000]
//! [--tasks N] [--json] …`).
//!
//! For each fleet size (50 nodes always runs too, as the baseline), one
//! fresh redis-server, real `tracekit-sched central` processes and real
//! `tracekit-sched dispatch` processes (each one pulse, one task per
//! millisecond, so that every `ts_enqueue` is the submission time: a
//! dispatcher stamps strictly increasing milliseconds), and in this process one
//! simulated agent per node speaking the real protocol through
//! `tracekit_proto::Queue`: it registers, heartbeats every second, takes
//! tasks as `tracekit-agent` does (`take_task_wait`, 500 ms), "runs" each
//! one for a synthetic duration and completes it. Reported per fleet size:
//! the submission rate, placements per second (tasks / time from the first
//! take to the last), submit-to-take latency (take time − the task's
//! `ts_enqueue`) p50 / p99, and CPU per placement of the centrals, of
//! redis-server and of the simulated agents (per-thread schedstat, over the
//! run; the agents' polling and heartbeats are in Redis's share), Redis
//! commands per placement (INFO commandstats, which counts the commands
//! scripts run).

mod common;

use common::cpu_s;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use rand_core::RngCore;
use tracekit_proto::testing::RedisServer;
use tracekit_proto::{Queue, Registration, Take};

/// Simulated fleet benchmark.
#[derive(Debug, Parser)]
struct Args {
    /// Fleet sizes to measure (comma-separated); 50 nodes always runs too.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    nodes: Vec<usize>,
    /// Tasks per fleet size.
    #[arg(long, default_value_t = 20_000)]
    tasks: u64,
    /// Capacity units of every node (tasks take 1 unit: profile light1c).
    #[arg(long, default_value_t = 4)]
    capacity: i64,
    /// Shortest synthetic task duration, ms.
    #[arg(long, default_value_t = 50)]
    task_ms_min: u64,
    /// Longest synthetic task duration, ms.
    #[arg(long, default_value_t = 150)]
    task_ms_max: u64,
    /// Central processes placing at once.
    #[arg(long, default_value_t = 1)]
    centrals: usize,
    /// The centrals' weigher ("" = first fit, instances, vcpu).
    #[arg(long, default_value = "instances")]
    weigher: String,
    /// The centrals' --batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Dispatcher processes submitting at once (each about one task per ms).
    #[arg(long, default_value_t = 8)]
    dispatchers: u64,
    /// How long one take call of a simulated agent waits, polling, before it
    /// starts over (tracekit-agent: 500; the polls back off from 20 ms to
    /// 250 ms within one call).
    #[arg(long, default_value_t = 500)]
    take_wait_ms: u64,
    /// Redis connections the simulated agents share.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Give up on a fleet size after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    /// One JSON object per fleet size instead of the table.
    #[arg(long)]
    json: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
struct FleetResult {
    nodes: usize,
    tasks: u64,
    submitted_per_s: f64,
    placements_per_s: f64,
    submit_to_take_p50_ms: f64,
    submit_to_take_p99_ms: f64,
    central_cpu_us_per_placement: f64,
    redis_cpu_us_per_placement: f64,
    agents_cpu_us_per_placement: f64,
    redis_commands_per_placement: f64,
    wall_s: f64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A child process killed (by its PID) and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sched(server: &RedisServer) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tracekit-sched"));
    c.env("REDIS_PASSWORD", server.password())
        .env("TRACEKIT_REDIS", server.url_without_password())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    c
}

async fn redis_commands(q: &Queue) -> anyhow::Result<u64> {
    let mut c = q.conn().manager();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await?;
    Ok(info
        .lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter(|l| !l.starts_with("info:"))
        .filter_map(|l| {
            l.split(',')
                .find_map(|kv| kv.split_once("calls=").map(|(_, v)| v))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum())
}

struct Shared {
    stop: AtomicBool,
    completed: AtomicUsize,
    /// (take time, ts_enqueue), epoch ms, per task.
    takes: Mutex<Vec<(i64, i64)>>,
}

/// One simulated agent's intake: take as tracekit-agent does, run each task
/// for a synthetic duration, complete it.
async fn agent(
    q: Queue,
    node: String,
    shared: Arc<Shared>,
    (lo, hi): (u64, u64),
    seed: u64,
    wait: Duration,
) -> anyhow::Result<()> {
    let mut r = tracekit_sched::mix::rng(seed);
    while !shared.stop.load(Ordering::Relaxed) {
        match q
            .take_task_wait(&node, &format!("tok-{node}"), None, wait)
            .await
            .context("take")?
        {
            Take::Task(raw) => {
                let now = now_ms();
                let enq = serde_json::from_str::<serde_json::Value>(&raw)
                    .ok()
                    .and_then(|v| v.get("ts_enqueue").and_then(|t| t.as_i64()))
                    .context("task without ts_enqueue")?;
                if let Ok(mut t) = shared.takes.lock() {
                    t.push((now, enq));
                }
                let ms = lo + r.next_u64() % (hi - lo + 1);
                let (q, node, shared) = (q.clone(), node.clone(), shared.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    match q.complete_task(&node, &raw).await {
                        Ok(c) if c.counts() => {
                            shared.completed.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => eprintln!("{node}: task no longer in flight"),
                        Err(e) => eprintln!("{node}: complete: {e}"),
                    }
                });
            }
            Take::Empty => {}
            Take::Lost => bail!("{node} lost (declared dead)"),
        }
    }
    Ok(())
}

async fn heartbeats(q: Queue, node: String, shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = q.heartbeat(&node, &format!("tok-{node}")).await {
            eprintln!("{node}: heartbeat: {e}");
        }
    }
}

/// One row of the table: a figure of a fleet size, formatted.
type Cell = fn(&FleetResult) -> String;

fn percentile(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64
}

async fn run_one(a: &Args, nodes: usize, inputs: &Path) -> anyhow::Result<FleetResult> {
    let server = RedisServer::start().context("starting redis-server")?;
    let admin = server.queue().await?;
    let mut pool = Vec::new();
    for _ in 0..a.connections.max(1) {
        pool.push(server.queue().await?);
    }
    let names: Vec<String> = (0..nodes).map(|i| format!("sim{i:05}")).collect();
    for n in &names {
        admin
            .register(&Registration {
                node: n.clone(),
                capacity: a.capacity,
                cores: a.capacity as u32,
                ratio: 1.0,
                parallel: 0,
                reset_capacity: true,
                clear_queue: false,
                lease: tracekit_proto::Lease {
                    token: format!("tok-{n}"),
                    host: "bench".into(),
                    pid: std::process::id(),
                    lease_ms: 5000,
                },
            })
            .await
            .with_context(|| format!("registering {n}"))?;
    }
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        completed: AtomicUsize::new(0),
        takes: Mutex::new(Vec::with_capacity(a.tasks as usize)),
    });
    let mut tasks = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let q = pool[i % pool.len()].clone();
        tasks.push(tokio::spawn(agent(
            q.clone(),
            n.clone(),
            shared.clone(),
            (a.task_ms_min, a.task_ms_max.max(a.task_ms_min)),
            1 + i as u64,
            Duration::from_millis(a.take_wait_ms),
        )));
        tokio::spawn(heartbeats(q, n.clone(), shared.clone()));
    }
    let mut c = admin.conn().manager();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut c)
        .await?;
    let self_pid = std::process::id();
    let (redis0, self0) = (cpu_s(server.pid())?, cpu_s(self_pid)?);
    let start = Instant::now();
    let mut centrals = Vec::new();
    for _ in 0..a.centrals.max(1) {
        let mut cmd = sched(&server);
        cmd.args(["central", "--weigher", &a.weigher])
            .args(["--batch", &a.batch.to_string()]);
        centrals.push(Proc(
            cmd.spawn().context("starting tracekit-sched central")?,
        ));
    }
    let out_dir = inputs.join("out");
    let per = a.tasks / a.dispatchers.max(1);
    let mut dispatchers = Vec::new();
    for k in 0..a.dispatchers.max(1) {
        let n = if k == 0 {
            a.tasks - per * (a.dispatchers.max(1) - 1)
        } else {
            per
        };
        let mut d = sched(&server);
        d.args(["dispatch", "--pending", "--pending-mode", "pulse"])
            .arg("--inputs")
            .arg(inputs)
            .arg("--outputs")
            .arg(&out_dir)
            .args(["--mix", "light1c=1", "--total", &n.to_string()])
            .args(["--pulse-size", &n.to_string(), "--pulse-spacing", "0.001"])
            .args(["--pulse-interval", "0", "--seed", &(1 + k).to_string()]);
        dispatchers.push(Proc(d.spawn().context("starting tracekit-sched dispatch")?));
    }
    let deadline = start + Duration::from_secs(a.timeout_s);
    while shared.completed.load(Ordering::Relaxed) < a.tasks as usize {
        if Instant::now() > deadline {
            bail!(
                "{nodes} nodes: only {} of {} tasks completed in {} s",
                shared.completed.load(Ordering::Relaxed),
                a.tasks,
                a.timeout_s
            );
        }
        if tasks.iter().any(|t| t.is_finished()) {
            bail!("{nodes} nodes: a simulated agent stopped");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall_s = start.elapsed().as_secs_f64();
    let mut central_cpu = 0.0;
    for p in &centrals {
        central_cpu += cpu_s(p.0.id())?;
    }
    let (redis1, self1) = (cpu_s(server.pid())?, cpu_s(self_pid)?);
    let commands = redis_commands(&admin).await?;
    shared.stop.store(true, Ordering::Relaxed);
    for d in &mut dispatchers {
        let st = d.0.wait().context("waiting for dispatch")?;
        if !st.success() {
            bail!("dispatch failed: {st}");
        }
    }
    drop(centrals);
    for t in tasks {
        t.await.context("agent task")??;
    }
    let takes = std::mem::take(
        &mut *shared
            .takes
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?,
    );
    let first = takes.iter().map(|t| t.0).min().unwrap_or(0);
    let last = takes.iter().map(|t| t.0).max().unwrap_or(0);
    let mut lat: Vec<i64> = takes.iter().map(|t| t.0 - t.1).collect();
    lat.sort_unstable();
    let sub_first = takes.iter().map(|t| t.1).min().unwrap_or(0);
    let sub_last = takes.iter().map(|t| t.1).max().unwrap_or(0);
    let n = takes.len() as f64;
    Ok(FleetResult {
        nodes,
        tasks: a.tasks,
        submitted_per_s: n / ((sub_last - sub_first).max(1) as f64 / 1000.0),
        placements_per_s: n / ((last - first).max(1) as f64 / 1000.0),
        submit_to_take_p50_ms: percentile(&lat, 0.50),
        submit_to_take_p99_ms: percentile(&lat, 0.99),
        central_cpu_us_per_placement: central_cpu * 1e6 / n,
        redis_cpu_us_per_placement: (redis1 - redis0) * 1e6 / n,
        agents_cpu_us_per_placement: (self1 - self0) * 1e6 / n,
        redis_commands_per_placement: commands as f64 / n,
        wall_s,
    })
}

fn main() -> anyhow::Result<()> {
    let mut a = Args::parse();
    if !a.nodes.contains(&50) {
        a.nodes.insert(0, 50);
    }
    a.nodes.sort_unstable();
    a.nodes.dedup();
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    std::fs::write(dir.path().join("clip.mp4"), b"").context("writing a dummy input")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut results = Vec::new();
    for &n in &a.nodes {
        eprintln!("fleet of {n} nodes…");
        let r = rt.block_on(run_one(&a, n, dir.path()))?;
        if a.json {
            println!("{}", serde_json::to_string(&r)?);
        }
        results.push(r);
    }
    if a.json {
        return Ok(());
    }
    println!(
        "fleet benchmark: {} tasks (1 unit each) per fleet from {} dispatchers, {} units per node, durations {}–{} ms, {} central(s) ({} weigher, batch {}), simulated agents taking as tracekit-agent does (take_task_wait {} ms)",
        a.tasks,
        a.dispatchers,
        a.capacity,
        a.task_ms_min,
        a.task_ms_max,
        a.centrals,
        if a.weigher.is_empty() {
            "first-fit"
        } else {
            &a.weigher
        },
        a.batch,
        a.take_wait_ms
    );
    let cols: [(&str, Cell); 10] = [
        ("submitted/s", |r| format!("{:.0}", r.submitted_per_s)),
        ("placements/s", |r| format!("{:.0}", r.placements_per_s)),
        ("submit→take p50 ms", |r| {
            format!("{:.0}", r.submit_to_take_p50_ms)
        }),
        ("submit→take p99 ms", |r| {
            format!("{:.0}", r.submit_to_take_p99_ms)
        }),
        ("central CPU µs/placement", |r| {
            format!("{:.1}", r.central_cpu_us_per_placement)
        }),
        ("redis CPU µs/placement", |r| {
            format!("{:.1}", r.redis_cpu_us_per_placement)
        }),
        ("agents CPU µs/placement", |r| {
            format!("{:.1}", r.agents_cpu_us_per_placement)
        }),
        ("redis commands/placement", |r| {
            format!("{:.1}", r.redis_commands_per_placement)
        }),
        ("wall s", |r| format!("{:.1}", r.wall_s)),
        ("tasks", |r| r.tasks.to_string()),
    ];
    print!("{:<26}", "");
    for r in &results {
        print!("{:>14}", format!("{} nodes", r.nodes));
    }
    println!();
    for (name, f) in cols {
        print!("{name:<26}");
        for r in &results {
            print!("{:>14}", f(r));
        }
        println!();
    }
    Ok(())
}
