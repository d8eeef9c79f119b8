//! `cargo xtask chaos`: a fault schedule against real processes. A local
//! fleet (Redis with an fsynced append-only file, agents in network
//! namespaces where available, two or three centrals, a dispatcher feeding
//! short real ffmpeg encodes) runs while a seeded schedule kills -9 and
//! SIGTERMs agents and centrals, stops Redis for short and long outages and
//! SIGSTOPs agents past the heartbeat timeout. Everything is then restored,
//! the run left to settle, and the invariants checked on the evidence the
//! run left (Redis's append-only file, the agents' traces, the outputs,
//! Redis's counters, samples taken during the run, /proc). Prints the
//! schedule and a table; exits non-zero on any violation.

mod aof;
mod invariants;
mod sampler;
mod schedule;

use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use serde_json::json;
use tracekit_proto::testing::RedisServer;
use tracekit_proto::{DeadLetter, Queue, RedisConn, RedisOptions, Snapshot};

use crate::fleet::{self, AgentRun, AgentSpec, NetnsHost, Proc};
use crate::util;
use sampler::{AgentPids, Sampler};
use schedule::{Fault, Kind, Params, Schedule, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// CI: about two minutes of faults, every kind at least once.
    Short,
    /// Release checks: several minutes, long Redis outages of minutes.
    Long,
}

#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// The schedule's defaults; the flags below override them.
    #[arg(long, value_enum, default_value = "short")]
    pub schedule: Preset,
    /// Seed of the fault schedule (default: drawn, and printed for replay).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Seconds of faults (short: 100, long: 420).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Worker agents (short: 3, long: 4).
    #[arg(long)]
    pub agents: Option<usize>,
    /// Central schedulers (short: 2, long: 3).
    #[arg(long)]
    pub centrals: Option<usize>,
    /// Tasks to dispatch (short: 60, long: 240).
    #[arg(long)]
    pub tasks: Option<u64>,
    /// Mean seconds between faults (short: 7, long: 10).
    #[arg(long)]
    pub mean_gap: Option<f64>,
    /// Longest long Redis outage, seconds (short: 20, long: 150).
    #[arg(long)]
    pub long_outage_max: Option<u64>,
    /// No Redis outage longer than the heartbeat timeout.
    #[arg(long)]
    pub no_long_outage: bool,
    /// The centrals' heartbeat timeout, seconds.
    #[arg(long, default_value_t = 10)]
    pub heartbeat_timeout: u64,
    /// Seconds to wait, after the faults, for every task to finish (short:
    /// 240, long: 600).
    #[arg(long)]
    pub settle_timeout: Option<u64>,
    /// Agents share the host's network (default: a network namespace each
    /// when running as root with iproute2).
    #[arg(long)]
    pub no_netns: bool,
    /// Where the run goes (default: target/chaos/<RUN_ID>).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Build and run release binaries.
    #[arg(long)]
    pub release: bool,
    /// Use the binaries already built.
    #[arg(long)]
    pub no_build: bool,
}

/// The schedule's figures once the preset and the flags are combined.
struct Plan {
    params: Params,
    tasks: u64,
    settle_timeout: Duration,
}

impl ChaosArgs {
    fn plan(&self) -> Result<Plan> {
        let long = self.schedule == Preset::Long;
        let pick = |v: Option<u64>, short: u64, long_v: u64| {
            v.unwrap_or(if long { long_v } else { short })
        };
        let seed = match self.seed {
            Some(s) => s,
            None => {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .context("reading the clock")?;
                t.as_nanos() as u64 % 1_000_000_007
            }
        };
        let agents = self.agents.unwrap_or(if long { 4 } else { 3 });
        let centrals = self.centrals.unwrap_or(if long { 3 } else { 2 });
        if agents == 0 {
            bail!("--agents must be at least 1");
        }
        Ok(Plan {
            params: Params {
                seed,
                duration: Duration::from_secs(pick(self.duration, 100, 420)),
                agents,
                centrals,
                heartbeat_timeout: Duration::from_secs(self.heartbeat_timeout),
                long_outage_max: Duration::from_secs(pick(self.long_outage_max, 20, 150)),
                long_outage: !self.no_long_outage,
                mean_gap: Duration::from_secs_f64(self.mean_gap.unwrap_or(if long {
                    10.0
                } else {
                    7.0
                })),
            },
            tasks: pick(self.tasks, 60, 240),
            settle_timeout: Duration::from_secs(pick(self.settle_timeout, 240, 600)),
        })
    }
}

/// Set by Ctrl-C or SIGTERM: the run stops, and every process goes with it.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Sleeps until `until`, failing at once when interrupted.
fn sleep_until(until: Instant) -> Result<()> {
    loop {
        if INTERRUPTED.load(Ordering::Relaxed) {
            bail!("interrupted: stopping every process of the run");
        }
        let now = Instant::now();
        if now >= until {
            return Ok(());
        }
        std::thread::sleep((until - now).min(Duration::from_millis(100)));
    }
}

/// The processes of the run. Dropped (on success, failure or interrupt) in
/// field order: agents, centrals, dispatcher, then Redis, then the hosts.
struct Fleet {
    agents: Vec<Proc>,
    centrals: Vec<Proc>,
    dispatcher: Option<Proc>,
    redis: RedisServer,
    hosts: Vec<NetnsHost>,
    pids: AgentPids,
    agent_bin: PathBuf,
    sched_bin: PathBuf,
    dir: PathBuf,
    run: String,
    heartbeat_timeout: Duration,
}

impl Fleet {
    /// Agent `i`'s node id: `node<i+1>` and this run's tag, because an
    /// agent's cgroups are named after its node id, and another fleet on this
    /// machine (the demo, a test) has a `node1` too.
    fn node(i: usize) -> String {
        format!("node{}-{}", i + 1, std::process::id() % 100_000)
    }

    fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.join("agents").join(Self::node(i))
    }

    fn spawn_agent(&self, i: usize) -> Result<Proc> {
        let node = Self::node(i);
        let spec = AgentSpec {
            agent_bin: &self.agent_bin,
            dir: &self.dir,
            node: &node,
            run: AgentRun::Own {
                run: &self.run,
                node_dir: self.node_dir(i),
            },
            cpu_binding: "shared",
            interval_ms: 500,
        };
        let mut cmd = spec.command(self.hosts.get(i), &self.redis);
        Proc::spawn(&node, &mut cmd, &self.dir.join(format!("{node}.log")))
    }

    fn spawn_central(&self, j: usize) -> Result<Proc> {
        let name = format!("central{}", j + 1);
        let mut cmd = Command::new(&self.sched_bin);
        cmd.current_dir(&self.dir)
            .args(["central", "--redis", &self.redis.url_without_password()])
            .args(["--weigher", "instances"])
            .args([
                "--heartbeat-timeout",
                &self.heartbeat_timeout.as_secs_f64().to_string(),
            ])
            .env("REDIS_PASSWORD", self.redis.password());
        Proc::spawn(&name, &mut cmd, &self.dir.join(format!("{name}.log")))
    }

    /// Tells the sampler which processes are the agents now.
    fn publish_pids(&mut self) {
        let live: HashSet<u32> = self
            .agents
            .iter_mut()
            .filter_map(|a| matches!(a.try_wait(), Ok(None)).then(|| a.pid()))
            .collect();
        if let Ok(mut p) = self.pids.lock() {
            *p = live;
        }
    }

    fn proc_mut(&mut self, t: Target) -> Option<&mut Proc> {
        match t {
            Target::Agent(i) => self.agents.get_mut(i),
            Target::Central(j) => self.centrals.get_mut(j),
            Target::Redis => None,
        }
    }
}

/// An injection or a restoration, at a time from the schedule's start.
#[derive(Debug, PartialEq)]
struct Action {
    at: Duration,
    fault: usize,
    restore: bool,
    /// Times a restoration waited for its process to exit.
    waited: u32,
}

impl Eq for Action {}

impl Ord for Action {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // BinaryHeap is a max-heap: the earliest action first.
        (other.at, other.restore, other.fault).cmp(&(self.at, self.restore, self.fault))
    }
}

impl PartialOrd for Action {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// How long a SIGTERMed process may take to exit, beyond the longest Redis
/// outage (an agent hands its tasks back through Redis before it exits),
/// before it is killed (and the fact noted).
const TERM_GRACE: Duration = Duration::from_secs(60);

/// Injects the schedule's faults, restoring each after its outage; returns
/// notes on what did not go as planned.
fn inject(
    fleet: &mut Fleet,
    sched: &Schedule,
    long_outage_max: Duration,
    t0: Instant,
) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let mut heap: BinaryHeap<Action> = sched
        .faults
        .iter()
        .enumerate()
        .flat_map(|(i, f)| {
            [
                Action {
                    at: f.at,
                    fault: i,
                    restore: false,
                    waited: 0,
                },
                Action {
                    at: f.at + f.down,
                    fault: i,
                    restore: true,
                    waited: 0,
                },
            ]
        })
        .collect();
    let stamp = |t0: Instant| format!("[{:>6.1}s]", t0.elapsed().as_secs_f64());
    // The process each fault hit: a restoration restores that one only (an
    // earlier fault's late restoration may have replaced it already).
    let mut hit: Vec<Option<u32>> = vec![None; sched.faults.len()];
    let grace = (TERM_GRACE + long_outage_max).as_secs() as u32;
    while let Some(mut a) = heap.pop() {
        sleep_until(t0 + a.at)?;
        let f: Fault = sched.faults[a.fault];
        let target = f.target;
        if !a.restore {
            match f.kind {
                Kind::RedisShort | Kind::RedisLong => {
                    let sig = if f.hard { libc::SIGKILL } else { libc::SIGTERM };
                    println!(
                        "{} {} ({}): stopping redis-server pid {} for {:.1}s",
                        stamp(t0),
                        f.kind.name(),
                        if f.hard { "kill -9" } else { "SIGTERM" },
                        fleet.redis.pid(),
                        f.down.as_secs_f64()
                    );
                    fleet.redis.stop_with(sig)?;
                }
                kind => {
                    let sig = match kind {
                        Kind::KillAgent | Kind::KillCentral => libc::SIGKILL,
                        Kind::TermAgent | Kind::TermCentral => libc::SIGTERM,
                        _ => libc::SIGSTOP,
                    };
                    let p = fleet.proc_mut(target).context("no such target")?;
                    println!(
                        "{} {}: {target} pid {} for {:.1}s",
                        stamp(t0),
                        kind.name(),
                        p.pid(),
                        f.down.as_secs_f64()
                    );
                    p.signal(sig)?;
                    hit[a.fault] = Some(p.pid());
                }
            }
            fleet.publish_pids();
            continue;
        }
        match f.kind {
            Kind::RedisShort | Kind::RedisLong => {
                fleet.redis.restart().context("restarting redis-server")?;
                println!("{} redis-server back, pid {}", stamp(t0), fleet.redis.pid());
            }
            _ if fleet.proc_mut(target).map(|p| p.pid()) != hit[a.fault] => {
                println!("{} {target} was restarted already", stamp(t0));
            }
            Kind::StopAgent => {
                let p = fleet.proc_mut(target).context("no such target")?;
                p.signal(libc::SIGCONT)?;
                println!("{} {target} resumed (SIGCONT)", stamp(t0));
            }
            _ => {
                let exited = fleet
                    .proc_mut(target)
                    .context("no such target")?
                    .try_wait()?
                    .is_some();
                if !exited {
                    if a.waited < grace {
                        // Not exited yet (a SIGTERMed agent hands its work
                        // back first): look again in a second.
                        a.waited += 1;
                        a.at += Duration::from_secs(1);
                        heap.push(a);
                        continue;
                    }
                    let note = format!("{target} had not exited {grace} s after SIGTERM: killed");
                    println!("{} {note}", stamp(t0));
                    notes.push(note);
                    fleet.proc_mut(target).context("no such target")?.kill()?;
                }
                if a.waited > 0 {
                    notes.push(format!(
                        "{target} took {} s more than its outage to exit after {}",
                        a.waited,
                        f.kind.name()
                    ));
                }
                let fresh = match target {
                    Target::Agent(i) => fleet.spawn_agent(i)?,
                    Target::Central(j) => fleet.spawn_central(j)?,
                    Target::Redis => bail!("unreachable: Redis is restarted above"),
                };
                println!("{} {target} restarted, pid {}", stamp(t0), fresh.pid());
                let slot = fleet.proc_mut(target).context("no such target")?;
                // The old process is reaped; the new one takes its place.
                *slot = fresh;
            }
        }
        fleet.publish_pids();
    }
    Ok(notes)
}

/// The run's profiles: encodes of the small test videos that take a second
/// or two (so faults find tasks running), one and two units (capped at this
/// machine's cores).
fn profiles() -> serde_json::Value {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    json!({
        "small1": {"scale": "640:360", "vcodec": "h264", "preset": "slower", "crf": 28, "vthreads": 1, "fthreads": 1, "cpu_units": 1},
        "small2": {"scale": "640:360", "vcodec": "h264", "preset": "slower", "crf": 28, "vthreads": 2, "fthreads": 2, "cpu_units": 2.min(cores)},
    })
}

async fn sampler_queue(redis: &RedisServer) -> Result<Queue> {
    let conn = RedisConn::connect(&RedisOptions {
        url: redis.url(),
        password: None,
        // Samples during an outage fail fast and are counted as missed.
        retry_for: Some(Duration::from_millis(500)),
        ca_file: None,
    })
    .await?;
    Ok(Queue::new(conn, tracekit_proto::Keys::default()))
}

fn done_runs(fleet: &Fleet, agents: usize) -> usize {
    (0..agents)
        .map(|i| {
            std::fs::read_to_string(fleet.node_dir(i).join("CTS/invocations.jsonl"))
                .map(|s| s.lines().filter(|l| l.contains("\"exit_code\":0")).count())
                .unwrap_or(0)
        })
        .sum()
}

pub fn run(args: &ChaosArgs) -> Result<()> {
    let plan = args.plan()?;
    let p = &plan.params;
    fleet::ensure_packages()?;
    let profile = if args.release { "release" } else { "debug" };
    if !args.no_build {
        let mut build = vec!["build", "-p", "tracekit-agent", "-p", "tracekit-sched"];
        if args.release {
            build.push("--release");
        }
        util::cargo(&build)?;
    }
    let bin = fleet::bin_dir(profile)?;
    let sched = Schedule::draw(p);
    let run = format!(
        "chaos-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    );
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => util::workspace_root()?.join("target/chaos").join(&run),
    };
    let (inputs, outputs) = (dir.join("inputs"), dir.join("outputs"));
    for d in [&inputs, &outputs, &dir.join("agents")] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    let outputs = dir.join("outputs");
    println!(
        "Tracekit chaos {run} in {}\n{} agents, {} centrals, {} tasks; replay with: cargo xtask chaos --schedule {} --seed {}{}",
        dir.display(),
        p.agents,
        p.centrals,
        plan.tasks,
        if args.schedule == Preset::Long {
            "long"
        } else {
            "short"
        },
        p.seed,
        if args.no_long_outage {
            " --no-long-outage"
        } else {
            ""
        }
    );
    sched.print(p);
    let missing: Vec<&str> = sched
        .counts()
        .into_iter()
        .filter(|(k, n)| *n == 0 && (p.long_outage || *k != Kind::RedisLong))
        .map(|(k, _)| k.name())
        .collect();
    if !missing.is_empty() {
        println!(
            "note: no room in this window for: {} (a longer --duration fits them)",
            missing.join(", ")
        );
    }

    fleet::make_test_videos(&inputs, "640x360", 25, &[2, 4, 6])?;
    let profiles_file = dir.join("profiles.json");
    std::fs::write(&profiles_file, serde_json::to_vec_pretty(&profiles())?)?;

    // Ctrl-C and SIGTERM end the run; the guards below stop every process.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.spawn(async {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        INTERRUPTED.store(true, Ordering::Relaxed);
    });

    let netns = !args.no_netns && fleet::is_root();
    if !args.no_netns && !netns {
        println!("network namespaces: not running as root, agents share the host's network");
    }
    let hosts: Vec<NetnsHost> = if netns {
        (1..=p.agents as u32)
            .map(NetnsHost::create)
            .collect::<Result<_>>()?
    } else {
        Vec::new()
    };
    let mut redis_args = NetnsHost::redis_bind(&hosts);
    // Every applied write on disk before its reply; no rewrite, so the file
    // keeps the whole run's history (the evidence of accepted completions).
    redis_args.extend(
        [
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--auto-aof-rewrite-percentage",
            "0",
        ]
        .map(String::from),
    );
    let redis_args: Vec<&str> = redis_args.iter().map(String::as_str).collect();
    let redis = RedisServer::start_with(&redis_args).context("starting redis-server")?;
    println!(
        "redis-server pid {} on port {} (AOF, appendfsync always){}",
        redis.pid(),
        redis.port(),
        if netns {
            format!(
                "; agents in network namespaces {}",
                hosts
                    .iter()
                    .map(|h| h.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            String::new()
        }
    );
    println!(
        "agents node1…node{} have node ids node<i>-{} (this run's own cgroups)",
        p.agents,
        std::process::id() % 100_000
    );
    let mut fleet = Fleet {
        agents: Vec::new(),
        centrals: Vec::new(),
        dispatcher: None,
        redis,
        hosts,
        pids: Arc::new(Mutex::new(HashSet::new())),
        agent_bin: bin.join("tracekit-agent"),
        sched_bin: bin.join("tracekit-sched"),
        dir: dir.clone(),
        run: run.clone(),
        heartbeat_timeout: p.heartbeat_timeout,
    };
    for i in 0..p.agents {
        let a = fleet.spawn_agent(i)?;
        fleet.agents.push(a);
    }
    for j in 0..p.centrals {
        let c = fleet.spawn_central(j)?;
        fleet.centrals.push(c);
    }
    fleet.publish_pids();
    let queue = rt.block_on(fleet.redis.queue())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = rt.block_on(queue.snapshot(p.heartbeat_timeout))?;
        if s.nodes.iter().filter(|n| n.alive).count() == p.agents {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the agents did not register within 60 s (see {}/node*.log)",
                dir.display()
            );
        }
        sleep_until(Instant::now() + Duration::from_millis(200))?;
    }

    // Submissions spread over most of the window, in pulses.
    let pulse_interval = 5.0;
    let pulses = ((p.duration.as_secs_f64() * 0.7 / pulse_interval).ceil() as u64).max(1);
    let pulse_size = plan.tasks.div_ceil(pulses).max(1);
    let mut dispatch = Command::new(&fleet.sched_bin);
    dispatch
        .current_dir(&dir)
        .args(["dispatch", "--redis", &fleet.redis.url_without_password()])
        .args(["--inputs", "inputs", "--outputs", "outputs"])
        .args(["--pending", "--pending-mode", "pulse"])
        .args(["--pulse-size", &pulse_size.to_string()])
        .args(["--pulse-interval", &pulse_interval.to_string()])
        .args(["--pulse-spacing", "0.05"])
        .args([
            "--mix",
            "small1=2,small2=1",
            "--total",
            &plan.tasks.to_string(),
        ])
        .args(["--seed", &p.seed.to_string()])
        .arg("--profiles")
        .arg(&profiles_file)
        .env("REDIS_PASSWORD", fleet.redis.password());
    let t0 = Instant::now();
    let t0_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    fleet.dispatcher = Some(Proc::spawn(
        "dispatch",
        &mut dispatch,
        &dir.join("dispatch.log"),
    )?);
    let sampler = Sampler::start(
        rt.block_on(sampler_queue(&fleet.redis))?,
        p.heartbeat_timeout,
        outputs.clone(),
        fleet.pids.clone(),
        t0,
    )?;
    println!(
        "[{:>6.1}s] dispatching {} tasks in pulses of {pulse_size}",
        0.0, plan.tasks
    );

    let notes = inject(&mut fleet, &sched, p.long_outage_max, t0)?;
    sleep_until(t0 + p.duration)?;
    println!(
        "[{:>6.1}s] faults over, everything restored: waiting for the tasks (at most {} s)",
        t0.elapsed().as_secs_f64(),
        plan.settle_timeout.as_secs()
    );

    // Settle: the dispatcher done, nothing pending, queued or in flight.
    let settle_deadline = Instant::now() + plan.settle_timeout;
    let mut last = String::new();
    let mut settled = false;
    let mut quiet_since: Option<Instant> = None;
    while Instant::now() < settle_deadline {
        let dispatched = match fleet.dispatcher.as_mut() {
            Some(d) => d.try_wait()?.is_some(),
            None => true,
        };
        let s = rt.block_on(queue.snapshot(p.heartbeat_timeout));
        let quiet = match &s {
            Ok(s) => {
                let busy: usize = s.nodes.iter().map(|n| n.inflight + n.queued).sum();
                let line = format!(
                    "done {}  pending {}  queued+in flight {busy}  dead {}",
                    done_runs(&fleet, p.agents),
                    s.pending,
                    s.dead
                );
                if line != last {
                    println!("[{:>6.1}s] {line}", t0.elapsed().as_secs_f64());
                    last = line;
                }
                dispatched && busy == 0 && s.pending == 0
            }
            Err(_) => false,
        };
        // Quiet for a few seconds: a hand-back in transit would show.
        match (quiet, quiet_since) {
            (true, Some(q)) if q.elapsed() >= Duration::from_secs(3) => {
                settled = true;
                break;
            }
            (true, None) => quiet_since = Some(Instant::now()),
            (false, _) => quiet_since = None,
            _ => {}
        }
        sleep_until(Instant::now() + Duration::from_secs(1))?;
    }
    if !settled {
        println!(
            "[{:>6.1}s] not settled after {} s: checking as it stands",
            t0.elapsed().as_secs_f64(),
            plan.settle_timeout.as_secs()
        );
    }
    let end: Result<(Snapshot, Vec<DeadLetter>)> = rt.block_on(async {
        Ok((
            queue.snapshot(p.heartbeat_timeout).await?,
            queue.dead_letters(0, -1).await?,
        ))
    });

    // Stop the fleet cleanly: agents first (they deregister), then centrals.
    for a in fleet.agents.iter_mut() {
        let status = a.stop(Duration::from_secs(30))?;
        if !status.success() {
            println!("{} exited with {status}", a.name);
        }
    }
    fleet.publish_pids();
    for c in fleet.centrals.iter_mut() {
        c.stop(Duration::from_secs(10))?;
    }
    let samples = sampler.finish();
    let left: Vec<u32> = sampler::run_ffmpegs(&outputs).into_keys().collect();
    for pid in &left {
        // Descendants of this run's agents, found by their working directory.
        // SAFETY: kill(2) on a pid we just found running ffmpeg in our outputs.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }

    let aof_dir = fleet.redis.dir().join("appendonlydir");
    let accepted = aof::read(&aof_dir, "q:pending");
    // Keep the file with the run.
    let kept = dir.join("redis-aof");
    let _ = std::fs::create_dir_all(&kept);
    if let Ok(files) = std::fs::read_dir(&aof_dir) {
        for f in files.filter_map(|f| f.ok()) {
            let _ = std::fs::copy(f.path(), kept.join(f.file_name()));
        }
    }
    let _ = std::fs::copy(fleet.redis.dir().join("redis.log"), dir.join("redis.log"));
    drop(queue);
    let node_dirs: Vec<(String, PathBuf)> = (0..p.agents)
        .map(|i| (Fleet::node(i), fleet.node_dir(i)))
        .collect();
    drop(fleet);

    let rows = invariants::check(&invariants::Evidence {
        tasks: plan.tasks,
        dir: &dir,
        outputs: &outputs,
        node_dirs: &node_dirs,
        accepted: &accepted,
        end: &end,
        samples: &samples,
        left_running: &left,
        faults: &sched.faults,
        t0_ms,
    });
    summary(&sched, p, &notes, accepted.as_ref().ok(), &dir);
    invariants::print(&rows);
    let failed: Vec<&str> = rows.iter().filter(|r| !r.ok).map(|r| r.invariant).collect();
    let report = json!({
        "seed": p.seed, "tasks": plan.tasks, "agents": p.agents, "centrals": p.centrals,
        "duration_s": p.duration.as_secs(), "settled": settled,
        "faults": sched.faults.iter().map(|f| json!({"at_s": f.at.as_secs_f64(), "kind": f.kind.name(), "target": f.target.to_string(), "down_s": f.down.as_secs_f64()})).collect::<Vec<_>>(),
        "invariants": rows.iter().map(|r| json!({"invariant": r.invariant, "ok": r.ok, "evidence": r.evidence, "detail": r.detail})).collect::<Vec<_>>(),
        "notes": notes,
    });
    std::fs::write(dir.join("chaos.json"), serde_json::to_vec_pretty(&report)?)?;
    println!(
        "\nThe run: {} (chaos.json, *.log, agents/, redis-aof/)",
        dir.display()
    );
    if !failed.is_empty() {
        bail!(
            "{} invariant(s) violated: {} (seed {})",
            failed.len(),
            failed.join("; "),
            p.seed
        );
    }
    Ok(())
}

/// The faults injected, by kind, and what did not go as planned.
fn summary(
    sched: &Schedule,
    p: &Params,
    notes: &[String],
    acc: Option<&aof::Accepted>,
    dir: &Path,
) {
    let counts: BTreeMap<&str, usize> = sched
        .counts()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| (k.name(), n))
        .collect();
    println!(
        "\nFaults injected (seed {}): {}",
        p.seed,
        counts
            .iter()
            .map(|(k, n)| format!("{k} ×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for n in notes {
        println!("  note: {n}");
    }
    if let Some(a) = acc {
        println!(
            "Redis AOF: {} transactions read (kept in {}/redis-aof)",
            a.transactions,
            dir.display()
        );
    }
}
