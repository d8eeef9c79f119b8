//! The tracer benchmark. Every figure is measured in this one run:
//!
//! 1. Overhead: the same ffmpeg encode with no tracer, with the eBPF tracer
//!    and with the procfs collector at the same interval, interleaved (the
//!    order rotates every round) with the same idle gap before each run;
//!    medians of wall time and of the encode's CPU time (wait4), and their
//!    ratios against no tracer.
//! 2. Cost: the agent's own CPU per minute at a 1 s interval with one traced
//!    process, with and without 1,000 idle untraced processes on the host
//!    (the agent process, plus the run time of the in-kernel sampler that
//!    works on its behalf, as it measures itself); the `sched_switch` program's mean
//!    ns per call (BPF stats); the agent's peak RSS.
//!
//! 3. The in-kernel sampler with 1, 100 and 1,000 traced sleeping processes
//!    at a 200 ms interval: its runs, mean and longest single run (as the
//!    sampler measures itself), and the agent's plus the sampler's CPU per
//!    minute; with `--before-agent`, the same rows for another build of the
//!    agent, interleaved with this one's.
//!
//! Beside every `sched_switch` figure, the same load is run once more with
//! only a do-nothing program on the hook (`bpf/floor.bpf.c`): the hook's own
//! cost on this machine, which no tracer can go below.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;

use crate::util::{self, median, wait4};

#[derive(Debug, Clone, Args)]
pub struct TracerBenchArgs {
    /// Rounds of the overhead comparison (each runs every variant once).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Idle seconds before every measured encode.
    #[arg(long, default_value_t = 1.0)]
    pub idle_s: f64,
    /// Seconds the agent's steady cost is measured for, per configuration.
    #[arg(long, default_value_t = 30)]
    pub steady_s: u64,
    /// Idle untraced processes for the scaling measurement.
    #[arg(long, default_value_t = 1000)]
    pub idle_procs: usize,
    /// Traced sleeping processes of the sampler rows.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 100, 1000])]
    pub traced: Vec<usize>,
    /// Rounds of the sampler rows (each runs every agent once per count).
    #[arg(long, default_value_t = 2)]
    pub sampler_rounds: usize,
    /// Another build of `tracekit-agent` (e.g. an older commit's) whose
    /// sampler rows are measured beside this one's, interleaved.
    #[arg(long)]
    pub before_agent: Option<PathBuf>,
    /// Run only this part: overhead, busy, steady or sampler.
    #[arg(long)]
    pub only: Option<Part>,
}

/// A part of the tracer benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Overhead,
    Busy,
    Steady,
    Sampler,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    None,
    Ebpf,
    Procfs,
    Floor,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::None => "no tracer",
            Variant::Ebpf => "eBPF tracer",
            Variant::Procfs => "procfs collector",
            Variant::Floor => "do-nothing sched_switch program",
        }
    }
    fn collector(self) -> Option<&'static str> {
        match self {
            Variant::None | Variant::Floor => None,
            Variant::Ebpf => Some("ebpf"),
            Variant::Procfs => Some("procfs"),
        }
    }
}

/// The do-nothing `sched_switch` program, attached by an `xtask hook-floor`
/// child for as long as this lives.
struct Floor {
    child: Child,
}

const FLOOR_PROGRAM: &str = "tk_switch_floor";

impl Floor {
    fn attach(object: &Path) -> Result<Floor> {
        use std::io::BufRead;
        let mut child = Command::new(std::env::current_exe()?)
            .arg("hook-floor")
            .arg(object)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the floor program's loader")?;
        let mut line = String::new();
        let stdout = child.stdout.as_mut().context("no stdout")?;
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .context("waiting for the floor program")?;
        if line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the floor program did not attach");
        }
        Ok(Floor { child })
    }

    /// Detach; calls and mean ns per call while attached.
    fn cost(mut self) -> Result<(u64, f64)> {
        drop(self.child.stdin.take());
        let mut out = String::new();
        std::io::Read::read_to_string(self.child.stdout.as_mut().context("no stdout")?, &mut out)
            .context("reading the floor program's cost")?;
        self.child.wait().context("waiting for the floor loader")?;
        let mut it = out.split_whitespace();
        let calls = it.next().and_then(|v| v.parse().ok());
        let ns = it.next().and_then(|v| v.parse().ok());
        match (calls, ns) {
            (Some(c), Some(n)) => Ok((c, n)),
            _ => bail!("unexpected output from the floor loader: {out:?}"),
        }
    }
}

/// `xtask hook-floor`: see [`Floor`].
pub fn hook_floor(object: &Path) -> Result<()> {
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enabling BPF run-time statistics")?;
    let btf = aya::Btf::from_sys_fs().context("reading kernel BTF")?;
    let bytes = std::fs::read(object).with_context(|| format!("reading {}", object.display()))?;
    let mut bpf = aya::Ebpf::load(&bytes).context("loading the floor program")?;
    let program: &mut aya::programs::BtfTracePoint = bpf
        .program_mut(FLOOR_PROGRAM)
        .context("the floor program is missing from its object")?
        .try_into()
        .context("the floor program is not a BTF tracepoint")?;
    program
        .load("sched_switch", &btf)
        .context("loading the floor program")?;
    program.attach().context("attaching the floor program")?;
    println!("ready");
    let mut sink = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink).context("reading stdin")?;
    let info = program
        .info()
        .context("reading the floor program's statistics")?;
    let calls = info.run_count();
    let ns = info.run_time().as_nanos() as f64;
    println!(
        "{calls} {}",
        if calls > 0 { ns / calls as f64 } else { 0.0 }
    );
    Ok(())
}

struct Agent {
    child: Child,
    dir: PathBuf,
    started: Instant,
}

fn start_agent(
    agent: &Path,
    logs: &Path,
    run: &str,
    collector: &str,
    interval_ms: u64,
) -> Result<Agent> {
    start_agent_with(agent, logs, run, collector, interval_ms, &[])
}

fn start_agent_with(
    agent: &Path,
    logs: &Path,
    run: &str,
    collector: &str,
    interval_ms: u64,
    extra: &[&str],
) -> Result<Agent> {
    let child = Command::new(agent)
        .args(["trace", "--scope", "host", "--collector", collector])
        .args(extra)
        .args([
            "--interval-ms",
            &interval_ms.to_string(),
            "--run-id",
            run,
            "--logs",
        ])
        .arg(logs)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .context("starting the agent")?;
    let started = Instant::now();
    let dir = logs.join(run);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.join("node_meta.json").exists() {
        if Instant::now() > deadline {
            bail!("the agent did not start within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Agent {
        child,
        dir,
        started,
    })
}

impl Agent {
    fn stop(self) -> Result<(util::Usage, Value)> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let usage = wait4(self.child.id())?;
        std::mem::forget(self.child); // reaped by wait4
        let stats = std::fs::read_to_string(self.dir.join("CTS/tracer_stats.json"))
            .context("reading tracer_stats.json")?;
        Ok((usage, serde_json::from_str(&stats)?))
    }
}

/// CPU seconds of all threads of `pid`, from their schedstat (ns precision).
fn threads_cpu_s(pid: u32) -> f64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    dir.flatten()
        .filter_map(|t| {
            let s = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
            s.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum::<f64>()
        / 1e9
}

pub fn run(args: &TracerBenchArgs) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the tracer benchmark needs root (eBPF)");
    }
    util::cargo(&["build", "--release", "-p", "tracekit-agent"])?;
    let agent = util::target_dir()?.join("release/tracekit-agent");
    let tmp = tempfile::tempdir().context("temp dir")?;
    let logs = tmp.path().join("logs");
    let input = tmp.path().join("input.mp4");
    eprintln!("generating the input video…");
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .args([
            "testsrc=size=1280x720:rate=25",
            "-t",
            "8",
            "-pix_fmt",
            "yuv420p",
        ])
        .args(["-c:v", "libx264", "-preset", "ultrafast"])
        .arg(&input)
        .status()
        .context("running ffmpeg (apt-get install -y ffmpeg)")?;
    if !status.success() {
        bail!("ffmpeg could not generate the input");
    }
    let floor_obj = tmp.path().join("floor.bpf.o");
    tracekit_ebpf::build::compile_source("floor.bpf.c", &floor_obj)?;
    let part = |p: Part| args.only.is_none_or(|o| o == p);
    if part(Part::Overhead) {
        overhead(args, &agent, &logs, &input, tmp.path(), &floor_obj)?;
    }
    if part(Part::Busy) {
        busy_switch_cost(&agent, &logs, &input, tmp.path(), &floor_obj)?;
    }
    if part(Part::Steady) {
        steady_cost(args, &agent, &logs, &floor_obj)?;
    }
    if part(Part::Sampler) {
        sampler_cost(args, &agent, &logs, tmp.path())?;
    }
    Ok(())
}

fn overhead(
    args: &TracerBenchArgs,
    agent: &Path,
    logs: &Path,
    input: &Path,
    tmp: &Path,
    floor_obj: &Path,
) -> Result<()> {
    let variants = [
        Variant::None,
        Variant::Ebpf,
        Variant::Procfs,
        Variant::Floor,
    ];
    let n = variants.len();
    let mut wall: Vec<Vec<f64>> = vec![Vec::new(); n];
    let (mut switch_ns, mut switch_rate) = (Vec::new(), Vec::new());
    let (mut floor_ns, mut floor_rate) = (Vec::new(), Vec::new());
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); n];
    let output = tmp.join("out.mp4");
    for round in 0..args.rounds {
        for k in 0..n {
            let i = (round + k) % n;
            let v = variants[i];
            eprintln!("round {}/{}: {}", round + 1, args.rounds, v.name());
            let a = match v.collector() {
                Some(c) => Some(start_agent(
                    agent,
                    logs,
                    &format!("ovh-{round}-{c}"),
                    c,
                    200,
                )?),
                None => None,
            };
            let floor = match v {
                Variant::Floor => Some(Floor::attach(floor_obj)?),
                _ => None,
            };
            std::thread::sleep(Duration::from_secs_f64(args.idle_s));
            let t0 = Instant::now();
            let child = Command::new("ffmpeg")
                .args(["-nostdin", "-loglevel", "error", "-y", "-i"])
                .arg(input)
                .args(["-c:v", "libx264", "-preset", "medium", "-threads", "2"])
                .arg(&output)
                .spawn()
                .context("running ffmpeg")?;
            let usage = wait4(child.id())?;
            std::mem::forget(child);
            let elapsed = t0.elapsed().as_secs_f64();
            if usage.status != 0 {
                bail!("the encode failed ({})", usage.status);
            }
            if let Some(f) = floor {
                let (calls, ns) = f.cost()?;
                floor_ns.push(ns);
                floor_rate.push(calls as f64 / elapsed);
            }
            if let Some(a) = a {
                let (_, stats) = a.stop()?;
                if let Some(p) = switch_program(&stats) {
                    switch_ns.push(p["ns_per_call"].as_f64().unwrap_or(0.0));
                    switch_rate.push(p["run_count"].as_f64().unwrap_or(0.0) / elapsed);
                }
            }
            wall[i].push(elapsed);
            cpu[i].push(usage.cpu_s);
        }
    }
    let base_wall = median(&wall[0]);
    let base_cpu = median(&cpu[0]);
    println!();
    println!(
        "## Tracer overhead: the same encode, {} interleaved rounds, {:.1} s idle before each run, 200 ms interval",
        args.rounds, args.idle_s
    );
    println!();
    println!("| variant | median wall s | median encode CPU s | wall ratio | CPU ratio |");
    println!("|---|---:|---:|---:|---:|");
    for (i, v) in variants.iter().enumerate() {
        println!(
            "| {} | {:.3} | {:.3} | {:.4} | {:.4} |",
            v.name(),
            median(&wall[i]),
            median(&cpu[i]),
            median(&wall[i]) / base_wall,
            median(&cpu[i]) / base_cpu
        );
    }
    println!();
    println!(
        "sched_switch program during the eBPF runs: median {:.0} ns per call at {:.0} calls/s \
         (do-nothing program, its own runs: {:.0} ns per call at {:.0} calls/s)",
        median(&switch_ns),
        median(&switch_rate),
        median(&floor_ns),
        median(&floor_rate)
    );
    println!();
    Ok(())
}

/// The `sched_switch` program on a busy host: four encodes at once keep
/// both CPUs switching, so its caches stay warm (the per-call cost on an
/// idle VM is dominated by cold caches after every idle period). Then the
/// same with only the do-nothing program.
fn busy_switch_cost(
    agent: &Path,
    logs: &Path,
    input: &Path,
    tmp: &Path,
    floor_obj: &Path,
) -> Result<()> {
    let busy = || -> Result<f64> {
        let t0 = Instant::now();
        let encodes: Vec<Child> = (0..4)
            .map(|i| {
                Command::new("ffmpeg")
                    .args(["-nostdin", "-loglevel", "error", "-y", "-i"])
                    .arg(input)
                    .args(["-c:v", "libx264", "-preset", "medium", "-threads", "4"])
                    .arg(tmp.join(format!("busy{i}.mp4")))
                    .spawn()
                    .context("running ffmpeg")
            })
            .collect::<Result<_>>()?;
        for mut e in encodes {
            e.wait().context("waiting for an encode")?;
        }
        Ok(t0.elapsed().as_secs_f64())
    };
    let a = start_agent(agent, logs, "busy-ebpf", "ebpf", 200)?;
    let elapsed = busy()?;
    let (_, stats) = a.stop()?;
    let floor = Floor::attach(floor_obj)?;
    let floor_elapsed = busy()?;
    let (floor_calls, floor_ns) = floor.cost()?;
    if let Some(p) = switch_program(&stats) {
        println!(
            "sched_switch program on a busy host (4 encodes at once): {:.0} ns per call at {:.0} calls/s \
             (do-nothing program, its own run: {floor_ns:.0} ns per call at {:.0} calls/s)",
            p["ns_per_call"].as_f64().unwrap_or(0.0),
            p["run_count"].as_f64().unwrap_or(0.0) / elapsed,
            floor_calls as f64 / floor_elapsed
        );
        println!();
    }
    Ok(())
}

/// The in-kernel sampler's CPU-s per minute over an agent's life of
/// `lifetime_s` (it runs at the same pace from start to stop), from its own
/// accounting in tracer_stats.json; `None` without one (procfs).
fn sampler_cpu_min(stats: &Value, lifetime_s: f64) -> Option<f64> {
    let ns = stats["sampler_run_ns"].as_f64()?;
    (stats["sampler_runs"].as_u64()? > 0).then(|| ns / 1e9 / lifetime_s * 60.0)
}

/// The `tk_switch` entry of tracer_stats.json.
fn switch_program(stats: &Value) -> Option<Value> {
    stats["programs"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["program"] == "tk_switch"))
        .cloned()
}

fn steady_cost(args: &TracerBenchArgs, agent: &Path, logs: &Path, floor_obj: &Path) -> Result<()> {
    println!(
        "## Agent cost at a 1 s interval, {} s per configuration, one traced ffmpeg (realtime encode)",
        args.steady_s
    );
    println!();
    println!(
        "| collector | idle untraced processes | agent CPU-s per minute (process + in-kernel sampler) | process | sampler | floor: a process waking once a second | sched_switch ns/call | sched_switch calls/s | agent peak RSS MB | loader peak RSS MB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for idle in [0, args.idle_procs] {
        let mut sleepers = Vec::new();
        for _ in 0..idle {
            sleepers.push(
                Command::new("sleep")
                    .arg("3600")
                    .stdin(Stdio::null())
                    .spawn()
                    .context("starting an idle process")?,
            );
        }
        for collector in ["ebpf", "procfs"] {
            eprintln!("steady cost: {collector}, {idle} idle processes");
            let run = format!("steady-{collector}-{idle}");
            let a = start_agent(agent, logs, &run, collector, 1000)?;
            let mut ffmpeg = realtime_encode(args.steady_s)?;
            // Measured beside the agent: on a VM the kernel charges every
            // wake-up, so even an idle once-a-second loop costs something.
            let mut ticker = Command::new(std::env::current_exe()?)
                .arg("ticker")
                .stdin(Stdio::null())
                .spawn()
                .context("starting the baseline ticker")?;
            std::thread::sleep(Duration::from_secs(3));
            let pid = a.child.id();
            let (c0, f0) = (threads_cpu_s(pid), threads_cpu_s(ticker.id()));
            let t0 = Instant::now();
            std::thread::sleep(Duration::from_secs(args.steady_s));
            let (c1, f1) = (threads_cpu_s(pid), threads_cpu_s(ticker.id()));
            let secs = t0.elapsed().as_secs_f64();
            let per_min = (c1 - c0) / secs * 60.0;
            let floor = (f1 - f0) / secs * 60.0;
            let _ = ticker.kill();
            let _ = ticker.wait();
            let _ = ffmpeg.kill();
            let _ = ffmpeg.wait();
            let started = a.started;
            let (usage, stats) = a.stop()?;
            // The kernel samples on the agent's behalf (eBPF): its run time
            // counts as the agent's.
            let sampler_min = sampler_cpu_min(&stats, started.elapsed().as_secs_f64());
            let total = per_min + sampler_min.unwrap_or(0.0);
            let switch = switch_program(&stats).unwrap_or(Value::Null);
            let agent_rss = stats["agent_max_rss_kb"].as_f64().unwrap_or(0.0) / 1024.0;
            let fmt_opt = |v: Option<f64>, prec: usize| {
                v.map(|x| format!("{x:.prec$}"))
                    .unwrap_or_else(|| "–".into())
            };
            let calls_per_s = switch["run_count"]
                .as_f64()
                .map(|c| c / (args.steady_s as f64 + 4.0));
            println!(
                "| {collector} | {idle} | {total:.4} | {per_min:.4} | {} | {floor:.4} | {} | {} | {agent_rss:.1} | {} |",
                fmt_opt(sampler_min, 4),
                fmt_opt(switch["ns_per_call"].as_f64(), 0),
                fmt_opt(calls_per_s, 0),
                // wait4's maxrss covers the agent and its reaped loader.
                if collector == "ebpf" {
                    format!("{:.1}", usage.max_rss_kb as f64 / 1024.0)
                } else {
                    "–".into()
                },
            );
        }
        // The same load with only the do-nothing program on the hook.
        eprintln!("steady cost: do-nothing sched_switch program, {idle} idle processes");
        let mut ffmpeg = realtime_encode(args.steady_s)?;
        std::thread::sleep(Duration::from_secs(3));
        let floor = Floor::attach(floor_obj)?;
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs(args.steady_s));
        let secs = t0.elapsed().as_secs_f64();
        let (calls, ns) = floor.cost()?;
        let _ = ffmpeg.kill();
        let _ = ffmpeg.wait();
        println!(
            "| do-nothing sched_switch program, no agent | {idle} | – | – | – | – | {ns:.0} | {:.0} | – | – |",
            calls as f64 / secs
        );
        for mut s in sleepers {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
    println!();
    Ok(())
}

/// One ffmpeg encoding a test pattern at its real pace for `secs` + 10 s.
fn realtime_encode(secs: u64) -> Result<Child> {
    Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-re", "-f", "lavfi", "-i"])
        .arg("testsrc=size=640x360:rate=25")
        .args(["-t", &(secs + 10).to_string()])
        .args(["-c:v", "libx264", "-preset", "veryfast", "-f", "null", "-"])
        .stdin(Stdio::null())
        .spawn()
        .context("running ffmpeg")
}

/// The in-kernel sampler against the number of traced processes: that many
/// sleeping processes (a copy of `sleep` under a name of its own), traced by
/// an agent at a 200 ms interval for `steady_s`, per agent build, the builds
/// interleaved round by round.
fn sampler_cost(args: &TracerBenchArgs, agent: &Path, logs: &Path, tmp: &Path) -> Result<()> {
    const COMM: &str = "tksampled";
    let sleeper = tmp.join(COMM);
    std::fs::copy("/bin/sleep", &sleeper).context("copying /bin/sleep")?;
    let mut agents: Vec<(&str, &Path)> = vec![("this build", agent)];
    if let Some(before) = &args.before_agent {
        agents.insert(0, ("before", before.as_path()));
    }
    println!(
        "## In-kernel sampler, traced sleeping processes at a 200 ms interval, {} s per run, {} interleaved rounds",
        args.steady_s, args.sampler_rounds
    );
    println!();
    println!(
        "| agent | traced processes | sampler runs/s | mean µs per run | max µs per run | runs over 100 µs | sampler CPU-s/min | agent process CPU-s/min | agent + sampler CPU-s/min |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &args.traced {
        let mut sleepers = Vec::new();
        for _ in 0..n {
            sleepers.push(
                Command::new(&sleeper)
                    .arg("3600")
                    .stdin(Stdio::null())
                    .spawn()
                    .context("starting a traced sleeping process")?,
            );
        }
        let match_arg = format!("^{COMM}$");
        for round in 0..args.sampler_rounds {
            for k in 0..agents.len() {
                let (name, bin) = agents[(round + k) % agents.len()];
                eprintln!("sampler: {name}, {n} traced processes, round {}", round + 1);
                let run = format!("sampler-{n}-{round}-{k}");
                let a = start_agent_with(bin, logs, &run, "ebpf", 200, &["--match", &match_arg])?;
                // Adoption of the running processes, then the steady state.
                std::thread::sleep(Duration::from_secs(3));
                let pid = a.child.id();
                let c0 = threads_cpu_s(pid);
                let t0 = Instant::now();
                std::thread::sleep(Duration::from_secs(args.steady_s));
                let c1 = threads_cpu_s(pid);
                let secs = t0.elapsed().as_secs_f64();
                let started = a.started;
                let (_, stats) = a.stop()?;
                let lifetime = started.elapsed().as_secs_f64();
                let process_min = (c1 - c0) / secs * 60.0;
                let runs = stats["sampler_runs"].as_f64().unwrap_or(0.0);
                let run_ns = stats["sampler_run_ns"].as_f64().unwrap_or(0.0);
                let max_ns = stats["sampler_max_run_ns"].as_f64().unwrap_or(0.0);
                // Builds before the slow-run counter have none.
                let slow = stats["sampler_slow_runs"]
                    .as_u64()
                    .map_or_else(|| "–".to_string(), |s| format!("{s} of {runs:.0}"));
                let seen = stats["processes_seen"].as_u64().unwrap_or(0);
                if seen < n as u64 {
                    bail!("{name}: {seen} of {n} processes traced");
                }
                let sampler_min = sampler_cpu_min(&stats, lifetime).unwrap_or(0.0);
                println!(
                    "| {name} | {n} | {:.1} | {:.1} | {:.1} | {slow} | {sampler_min:.4} | {process_min:.4} | {:.4} |",
                    runs / lifetime,
                    if runs > 0.0 { run_ns / runs / 1e3 } else { 0.0 },
                    max_ns / 1e3,
                    sampler_min + process_min
                );
            }
        }
        for mut s in sleepers {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
    println!();
    Ok(())
}
