//! `cargo xtask bench report`: `tracekit-sched report` on a run of 10,000
//! tasks × 60 samples and `compare` of that run with an OpenDC output of
//! 10,000 tasks, side by side with 1,000 tasks, through the release binary
//! as a user runs it. The inputs are synthetic (tracekit-trace's synth);
//! the OpenDC output reproduces the run, with a row every 30 s per task.

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use tracekit_sched::compare::opendc_output;
use tracekit_sched::compare::real_tasks;
use tracekit_trace::TaskIdMode;
use tracekit_trace::synth::{SynthNode, write_node};

use crate::util::{self, median, wait4};

/// Nodes the tasks are spread over.
const NODES: usize = 4;
/// Interleaved rounds per size; the table shows medians.
const ROUNDS: usize = 3;

/// One measured run of the binary.
struct Measure {
    wall_s: f64,
    cpu_s: f64,
    max_rss_mb: f64,
}

fn measure(bin: &Path, args: &[&OsStr]) -> Result<Measure> {
    let started = Instant::now();
    let mut child = Command::new(bin)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .spawn()
        .with_context(|| format!("running {}", bin.display()))?;
    let mut log = String::new();
    if let Some(mut err) = child.stderr.take() {
        err.read_to_string(&mut log)
            .with_context(|| format!("reading the log of {}", bin.display()))?;
    }
    let usage = wait4(child.id())?;
    let wall_s = started.elapsed().as_secs_f64();
    if usage.status != 0 {
        bail!(
            "{} {args:?} failed (status {}): {log}",
            bin.display(),
            usage.status
        );
    }
    // The child's own VmHWM, from its log: rusage's maxrss would include
    // what this process had resident when it forked the child.
    let max_rss_mb = log
        .lines()
        .filter_map(|l| l.split("peak RSS ").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse::<f64>().ok())
        .next_back()
        .with_context(|| format!("no peak RSS in the log of {}: {log}", bin.display()))?;
    Ok(Measure {
        wall_s,
        cpu_s: usage.cpu_s,
        max_rss_mb,
    })
}

/// A synthetic run of `tasks` tasks × 60 samples and its OpenDC output.
fn inputs(dir: &Path, tasks: usize) -> Result<(PathBuf, PathBuf, u64)> {
    let run = dir.join(format!("run-{tasks}"));
    for n in 0..NODES {
        let mut cfg = SynthNode::new(&format!("node{}", n + 1), tasks / NODES);
        cfg.seed = 11 + n as u64;
        cfg.pid_base = 10_000 + 10_000 * n as u32;
        write_node(&run.join(&cfg.node), &cfg)?;
    }
    let bytes = dir_bytes(&run)?;
    let real = real_tasks(&run, TaskIdMode::Auto, false)?;
    let rows: Vec<_> = opendc_output::replay(&real, true, 0, 1.0)
        .iter()
        .flat_map(|t| opendc_output::rows_of(t, 30_000))
        .collect();
    let sim = dir.join(format!("opendc-{tasks}.parquet"));
    opendc_output::write(&sim, &rows)?;
    Ok((run, sim, bytes))
}

fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

pub fn run() -> Result<()> {
    util::cargo(&["build", "--release", "-p", "tracekit-sched"])?;
    let bin = crate::fleet::bin_dir("release")?.join("tracekit-sched");
    let tmp = tempfile::tempdir().context("creating a temp dir")?;
    let mut rows = Vec::new();
    for tasks in [1_000usize, 10_000] {
        println!("generating {tasks} tasks × 60 samples on {NODES} nodes…");
        let (run, sim, bytes) = inputs(tmp.path(), tasks)?;
        let out = tmp.path().join(format!("out-{tasks}"));
        let (mut rep, mut cmp) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            println!("  round {}/{ROUNDS}", round + 1);
            let os = OsStr::new;
            rep.push(measure(
                &bin,
                &[
                    os("report"),
                    os("--input"),
                    run.as_os_str(),
                    os("--output"),
                    out.as_os_str(),
                ],
            )?);
            cmp.push(measure(
                &bin,
                &[
                    os("compare"),
                    os("--run"),
                    run.as_os_str(),
                    os("--opendc"),
                    sim.as_os_str(),
                    os("--output"),
                    out.as_os_str(),
                ],
            )?);
        }
        let html = std::fs::metadata(out.join("report.html"))?.len();
        let sim_bytes = std::fs::metadata(&sim)?.len();
        rows.push((tasks, bytes, sim_bytes, html, rep, cmp));
    }
    let med = |v: &[Measure], f: fn(&Measure) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
    println!(
        "\n{:<9} {:>7} {:>14} {:>10} {:>9} {:>12} {:>14}",
        "command", "tasks", "input", "wall s", "CPU s", "peak RSS MB", "output"
    );
    for (tasks, bytes, sim_bytes, html, rep, cmp) in &rows {
        println!(
            "{:<9} {:>7} {:>11.1} MB {:>10.3} {:>9.3} {:>12.1} {:>11.2} MB",
            "report",
            tasks,
            *bytes as f64 / 1e6,
            med(rep, |m| m.wall_s),
            med(rep, |m| m.cpu_s),
            med(rep, |m| m.max_rss_mb),
            *html as f64 / 1e6
        );
        println!(
            "{:<9} {:>7} {:>11.1} MB {:>10.3} {:>9.3} {:>12.1} {:>14}",
            "compare",
            tasks,
            *sim_bytes as f64 / 1e6,
            med(cmp, |m| m.wall_s),
            med(cmp, |m| m.cpu_s),
            med(cmp, |m| m.max_rss_mb),
            "compare.*"
        );
    }
    println!(
        "\nmedians of {ROUNDS} interleaved rounds; input: the run's trace files (report) or the \
         OpenDC task.parquet (compare); output: report.html. Targets at 10,000 tasks: report \
         ≤ 2 s with report.html ≤ 10 MB, compare ≤ 1 s."
    );
    Ok(())
}
