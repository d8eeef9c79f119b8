//! `cargo xtask demo`: a complete local experiment in one command, the way a
//! fleet runs it, on this machine: a password-protected redis-server on a
//! free loopback port, worker agents with distinct node ids (each tracing
//! only its own tasks), the central scheduler with a weigher, the seed's
//! task mix dispatched in pulses; then everything is stopped cleanly, the
//! run is audited and exported to OpenDC, and the run's report is written
//! and its summary printed. Exits non-zero if a task failed or the audit
//! found a problem.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};
use tracekit_proto::testing::RedisServer;

use crate::fleet::{self, AgentRun, AgentSpec, NetnsHost, Proc};
use crate::util;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Worker agents (nodes) to start on this machine.
    #[arg(long, default_value_t = 2)]
    pub nodes: u32,
    /// Tasks to dispatch.
    #[arg(long, default_value_t = 10)]
    pub total: u32,
    /// Profile mix (the seed's example).
    #[arg(long, default_value = "medium480p=3,fast1080p=2,hevc1080p=2,light1c=3")]
    pub mix: String,
    #[arg(long, default_value_t = 20250901)]
    pub seed: u64,
    /// Tasks per pulse.
    #[arg(long, default_value_t = 5)]
    pub pulse_size: u32,
    /// Seconds between pulses.
    #[arg(long, default_value_t = 10)]
    pub pulse_interval: u32,
    /// The tracer's sampling interval, ms.
    #[arg(long, default_value_t = 500)]
    pub interval_ms: u64,
    /// Central weigher: "", instances or vcpu.
    #[arg(long, default_value = "instances")]
    pub weigher: String,
    #[arg(long, default_value = "min")]
    pub weigher_order: String,
    /// CPU binding of the workers (agents sharing one host: shared).
    #[arg(long, default_value = "shared")]
    pub cpu_binding: String,
    /// Test videos: WxH, and their lengths in seconds.
    #[arg(long, default_value = "640x360")]
    pub resolution: String,
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub lengths: Vec<u32>,
    /// Frames per second of the test videos.
    #[arg(long, default_value_t = 10)]
    pub fps: u32,
    /// Where the run goes (default: target/demo/<RUN_ID>).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Build and run release binaries.
    #[arg(long)]
    pub release: bool,
    /// Give up if the tasks are not done after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout_s: u64,
    /// Use the binaries already built (the end-to-end test does).
    #[arg(long)]
    pub no_build: bool,
    /// Run each node in its own network namespace, reaching Redis over a
    /// veth link as a separate host would (needs root and iproute2).
    #[arg(long)]
    pub netns: bool,
}

fn run_id() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("demo-{secs}")
}

fn count_lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().filter(|l| !l.trim().is_empty()).count())
        .unwrap_or(0)
}

pub fn run(args: &DemoArgs) -> Result<()> {
    let started = Instant::now();
    fleet::ensure_packages()?;
    let profile = if args.release { "release" } else { "debug" };
    let mut build = vec!["build", "-p", "tracekit-agent", "-p", "tracekit-sched"];
    if args.release {
        build.push("--release");
    }
    if !args.no_build {
        util::cargo(&build)?;
    }
    let bin = fleet::bin_dir(profile)?;
    let agent_bin = bin.join("tracekit-agent");
    let sched_bin = bin.join("tracekit-sched");

    let run = run_id();
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => util::workspace_root()?.join("target/demo").join(&run),
    };
    let inputs = dir.join("inputs");
    let outputs = dir.join("outputs");
    // Each agent writes its own node directory (as on its own machine),
    // agents/<node>/<RUN_ID>/<node>/, for the run the controller starts;
    // `gather` brings them together under logs/<RUN_ID>/<node>/.
    let agent_dirs = dir.join("agents");
    let logs = dir.join("logs").join(&run);
    for d in [&inputs, &outputs, &agent_dirs] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    println!("Tracekit demo {run} in {}", dir.display());

    // Test videos: the original's testsrc patterns, small by default.
    fleet::make_test_videos(&inputs, &args.resolution, args.fps, &args.lengths)?;

    // The seed's profiles, with cpu_units capped at this machine's cores so
    // every task fits a node (a worker accepts at most its cores).
    let cores = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let profiles = json!({
        "fast1080p": {"scale": "1920:1080", "vcodec": "h264", "preset": "fast", "crf": 28, "vthreads": 2, "fthreads": 2, "cpu_units": 2.min(cores)},
        "medium480p": {"scale": "854:480", "vcodec": "h264", "preset": "medium", "crf": 28, "vthreads": 2, "fthreads": 2, "cpu_units": 2.min(cores)},
        "hevc1080p": {"scale": "1920:1080", "vcodec": "hevc", "preset": "medium", "crf": 28, "vthreads": 4, "fthreads": 4, "cpu_units": 4.min(cores)},
        "light1c": {"scale": "854:480", "vcodec": "h264", "preset": "veryfast", "crf": 28, "vthreads": 1, "fthreads": 1, "cpu_units": 1},
    });
    let profiles_file = dir.join("profiles.json");
    std::fs::write(&profiles_file, serde_json::to_vec_pretty(&profiles)?)?;

    // Simulated hosts first: Redis binds their link addresses too.
    let hosts: Vec<NetnsHost> = if args.netns {
        (1..=args.nodes)
            .map(NetnsHost::create)
            .collect::<Result<_>>()?
    } else {
        Vec::new()
    };
    let bind = NetnsHost::redis_bind(&hosts);
    let bind: Vec<&str> = bind.iter().map(String::as_str).collect();
    let redis = RedisServer::start_with(&bind).context("starting redis-server")?;
    let url = redis.url_without_password();
    println!(
        "redis-server pid {} on 127.0.0.1:{} (password-protected)",
        redis.pid(),
        redis.port()
    );

    // The run belongs to the controller: the agents pick it up from Redis.
    let sched = |what: &[&str]| -> Result<()> {
        let status = Command::new(&sched_bin)
            .current_dir(&dir)
            .args(what)
            .args(["--redis", &url])
            .env("REDIS_PASSWORD", redis.password())
            .env_remove("RUN_ID")
            .status()
            .with_context(|| format!("running tracekit-sched {}", what.join(" ")))?;
        if !status.success() {
            bail!("tracekit-sched {} failed ({status})", what.join(" "));
        }
        Ok(())
    };
    sched(&["run", "start", "--id", &run])?;

    let mut agents = Vec::new();
    for i in 1..=args.nodes {
        let node = format!("node{i}");
        let host = hosts.get(i as usize - 1);
        if let Some(h) = host {
            println!(
                "{node}: network namespace {} (Redis at {}:{})",
                h.name,
                h.controller_ip,
                redis.port()
            );
        }
        let spec = AgentSpec {
            agent_bin: &agent_bin,
            dir: &dir,
            node: &node,
            run: AgentRun::Following {
                logs: agent_dirs.join(&node),
            },
            cpu_binding: &args.cpu_binding,
            interval_ms: args.interval_ms,
        };
        let mut cmd = spec.command(host, &redis);
        agents.push(Proc::spawn(
            &node,
            &mut cmd,
            &dir.join(format!("{node}.log")),
        )?);
    }
    let mut central = Command::new(&sched_bin);
    central
        .current_dir(&dir)
        .args(["central", "--redis", &url, "--weigher", &args.weigher])
        .args(["--weigher-order", &args.weigher_order])
        .env("REDIS_PASSWORD", redis.password());
    let mut central = Proc::spawn("central", &mut central, &dir.join("central.log"))?;

    // Wait for the nodes to register before submitting.
    let queue_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let queue = queue_rt.block_on(redis.queue())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = queue_rt.block_on(queue.snapshot(Duration::from_secs(5)))?;
        if s.nodes.iter().filter(|n| n.alive).count() == args.nodes as usize {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the agents did not register within 60 s (see {}/node*.log)",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    let mut dispatch = Command::new(&sched_bin);
    dispatch
        .current_dir(&dir)
        .args([
            "dispatch",
            "--redis",
            &url,
            "--inputs",
            "inputs",
            "--outputs",
            "outputs",
        ])
        .args(["--pending", "--pending-mode", "pulse"])
        .args(["--pulse-size", &args.pulse_size.to_string()])
        .args(["--pulse-interval", &args.pulse_interval.to_string()])
        .args(["--mix", &args.mix, "--total", &args.total.to_string()])
        .args(["--seed", &args.seed.to_string()])
        .arg("--profiles")
        .arg(&profiles_file)
        .env("REDIS_PASSWORD", redis.password())
        .env_remove("RUN_ID");
    let mut dispatcher = Proc::spawn("dispatch", &mut dispatch, &dir.join("dispatch.log"))?;

    // Progress until every task is done or dead-lettered.
    let total = args.total as usize;
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    let mut last = String::new();
    let mut dispatched = false;
    loop {
        if !dispatched && let Some(status) = dispatcher.try_wait()? {
            dispatched = true;
            if !status.success() {
                bail!(
                    "the dispatcher failed ({status}); see {}/dispatch.log",
                    dir.display()
                );
            }
        }
        let done: usize = (1..=args.nodes)
            .map(|i| {
                count_lines(
                    &agent_dirs.join(format!("node{i}/{run}/node{i}/CTS/invocations.jsonl")),
                )
            })
            .sum();
        let s = queue_rt.block_on(queue.snapshot(Duration::from_secs(5)))?;
        let running: usize = s.nodes.iter().map(|n| n.inflight).sum();
        let queued: usize = s.nodes.iter().map(|n| n.queued).sum();
        let line = format!(
            "[{:>4.0}s] done {done}/{total}  running {running}  queued {queued}  pending {}  dead {}",
            started.elapsed().as_secs_f64(),
            s.pending,
            s.dead
        );
        if line[7..] != last[last.len().min(7)..] {
            println!("{line}");
            last = line;
        }
        if dispatched && done + s.dead >= total && running == 0 && queued == 0 && s.pending == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "tasks not done after {} s; the run is in {}",
                args.timeout_s,
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let dead = queue_rt.block_on(queue.dead_letters(0, -1))?;

    // The run ends: every agent publishes its traces, and they are gathered
    // while the agents run on (as between two experiments).
    sched(&["run", "stop", "--timeout", "120"])?;
    sched(&["gather", "--run-id", &run, "--out", "logs"])?;

    // Stop everything cleanly: agents deregister and end.
    for mut a in agents {
        let name = a.name.clone();
        let status = a.stop(Duration::from_secs(30))?;
        if !status.success() {
            eprintln!("{name} exited with {status}");
        }
    }
    central.stop(Duration::from_secs(10))?;
    drop(queue);
    drop(redis);
    drop(hosts);

    // Audit and export, with the controller's own commands.
    let audit_ok = Command::new(&sched_bin)
        .args(["audit", "--write", "--strict", "--input"])
        .arg(&logs)
        .stdout(std::fs::File::create(dir.join("audit.log"))?)
        .status()
        .context("running the audit")?
        .success();
    let opendc = dir.join("opendc");
    let export = Command::new(&sched_bin)
        .args(["export-opendc", "--input"])
        .arg(&logs)
        .arg("--output")
        .arg(&opendc)
        .status()
        .context("running the export")?;
    if !export.success() {
        bail!("the OpenDC export failed");
    }

    let audit_text = std::fs::read_to_string(dir.join("audit.log")).unwrap_or_default();
    println!(
        "\nAudit ({}):",
        if audit_ok {
            "no problems"
        } else {
            "problems found"
        }
    );
    for line in audit_text.lines().take(12) {
        println!("  {line}");
    }
    let failed = report(&sched_bin, &logs, &dead, &dir, &opendc)?;
    if failed > 0 || !dead.is_empty() {
        bail!("{failed} task(s) failed and {} dead-lettered", dead.len());
    }
    if !audit_ok {
        bail!("the audit found problems: see {}/audit.log", dir.display());
    }
    Ok(())
}

/// Where the files are, then the run's report, written and summarised by
/// `tracekit-sched report` (the summary is the report's own, and the demo
/// ends with the report's path); returns how many tasks failed.
fn report(
    sched_bin: &Path,
    logs: &Path,
    dead: &[tracekit_proto::DeadLetter],
    dir: &Path,
    opendc: &Path,
) -> Result<u64> {
    let dead_file = dir.join("dead_letters.jsonl");
    let mut lines = String::new();
    for d in dead {
        let line = json!({"task": d.task, "reason": d.reason, "node": d.node, "ts": d.ts});
        lines.push_str(&format!("{line}\n"));
    }
    std::fs::write(&dead_file, lines)
        .with_context(|| format!("writing {}", dead_file.display()))?;
    let out = dir.join("report");
    println!("\nFiles:");
    println!(
        "  report    {}/ (report.html, report.md, report.json, tasks.csv, …)",
        out.display()
    );
    println!(
        "  traces    {}/<node>/ (gathered through Redis: node_meta.json, CTS/*.jsonl, CTS/audit_report.md, ffmpeg/)",
        logs.display()
    );
    println!(
        "  OpenDC    {}/ (tasks.parquet, fragments.parquet, small_datacenter.json)",
        opendc.display()
    );
    println!("  outputs   {}/outputs/", dir.display());
    println!(
        "  logs      {}/*.log (agents, central, dispatch, audit)",
        dir.display()
    );
    println!();
    let status = Command::new(sched_bin)
        .args(["report", "--input"])
        .arg(logs)
        .arg("--output")
        .arg(&out)
        .arg("--dead-letters")
        .arg(&dead_file)
        .status()
        .context("running the report")?;
    if !status.success() {
        bail!("the report failed ({status})");
    }
    let json: Value = serde_json::from_slice(
        &std::fs::read(out.join("report.json")).context("reading report.json")?,
    )
    .context("parsing report.json")?;
    json["counts"]["failed"]
        .as_u64()
        .context("report.json has no counts.failed")
}
