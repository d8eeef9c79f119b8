//! Benchmark of the OpenDC export: `cargo bench -p tracekit-trace --bench export`.
//!
//! For 1k, 5k, 20k and 100k tasks of 60 samples each (override with
//! `TRACEKIT_BENCH_TASKS=1000,5000`), writes a synthetic node directory in a
//! temporary directory, then runs the export in a child process (this binary
//! re-executed) so that its wall time, CPU time (user + system, all threads)
//! and peak RSS are the export's alone, read from the kernel with `wait4`.
//! Each size is exported `TRACEKIT_BENCH_ROUNDS` times (default 3); the table
//! shows the medians and the largest peak RSS.
//!
//! `TRACEKIT_BENCH_BASELINE=EXE` names this bench built from another commit
//! (`cargo xtask bench export --baseline REV` builds it): each round then
//! exports the same input with it too, alternating which goes first, and the
//! table shows both side by side. Its outputs must match the current
//! export's byte for byte in `tasks.parquet` and `fragments.parquet`.
//!
//! `TRACEKIT_BENCH_KEEP=DIR` keeps the traces and exports under `DIR/<tasks>/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use tracekit_trace::export::{TaskIdMode, export_opendc};
use tracekit_trace::synth::{SynthNode, write_node};

const CHILD_INPUT: &str = "TRACEKIT_BENCH_EXPORT_INPUT";
const CHILD_OUTPUT: &str = "TRACEKIT_BENCH_EXPORT_OUTPUT";

/// One export as measured from outside.
#[derive(Debug, Clone, Copy)]
struct Measure {
    wall_s: f64,
    cpu_s: f64,
    rss_kb: i64,
    fragments: u64,
}

fn main() -> Result<()> {
    if let (Ok(input), Ok(output)) = (std::env::var(CHILD_INPUT), std::env::var(CHILD_OUTPUT)) {
        return child(Path::new(&input), Path::new(&output));
    }
    let sizes: Vec<usize> = match std::env::var("TRACEKIT_BENCH_TASKS") {
        Ok(list) => list
            .split(',')
            .map(|s| s.trim().parse().context("TRACEKIT_BENCH_TASKS"))
            .collect::<Result<_>>()?,
        Err(_) => vec![1_000, 5_000, 20_000, 100_000],
    };
    let rounds: usize = match std::env::var("TRACEKIT_BENCH_ROUNDS") {
        Ok(n) => n.trim().parse().context("TRACEKIT_BENCH_ROUNDS")?,
        Err(_) => 3,
    };
    let baseline = std::env::var_os("TRACEKIT_BENCH_BASELINE").map(PathBuf::from);
    let current = std::env::current_exe().context("locating the bench binary")?;
    let mut variants = vec![("current", current)];
    if let Some(exe) = baseline {
        if !exe.is_file() {
            bail!("TRACEKIT_BENCH_BASELINE: {} is not a file", exe.display());
        }
        variants.insert(0, ("baseline", exe));
    }
    println!(
        "{:>8} {:>10} {:>9} {:>9} {:>9} {:>9} {:>11} {:>7}",
        "tasks", "fragments", "input MB", "variant", "wall s", "CPU s", "peak RSS MB", "gen s"
    );
    // TRACEKIT_BENCH_KEEP=DIR keeps the generated traces under DIR/<tasks>.
    let keep = std::env::var_os("TRACEKIT_BENCH_KEEP").map(PathBuf::from);
    for tasks in sizes {
        let tmp = tempfile::tempdir()?;
        let base = match &keep {
            Some(dir) => dir.join(tasks.to_string()),
            None => tmp.path().to_path_buf(),
        };
        let node_dir = base.join("node");
        let mut cfg = SynthNode::new("bench", tasks);
        cfg.samples_per_task = 60;
        cfg.slots = 8;
        cfg.short_every = 0;
        let gen_start = Instant::now();
        // The writer appends: start from an empty directory.
        if node_dir.exists() {
            std::fs::remove_dir_all(&node_dir)
                .with_context(|| format!("clearing {}", node_dir.display()))?;
        }
        // Only the count is kept: the truth must not sit in this process's
        // memory, which a spawned child's peak RSS may include.
        drop(write_node(&node_dir, &cfg)?);
        let gen_s = gen_start.elapsed().as_secs_f64();
        let input_mb = dir_bytes(&node_dir.join("CTS"))? as f64 / 1e6;
        let mut measured: Vec<Vec<Measure>> = vec![Vec::new(); variants.len()];
        for round in 0..rounds {
            for k in 0..variants.len() {
                // Alternate which variant goes first.
                let v = (k + round) % variants.len();
                let (name, exe) = &variants[v];
                let out_dir = base.join(format!("opendc-{name}"));
                measured[v].push(run_child(exe, &node_dir, &out_dir)?);
            }
        }
        if variants.len() > 1 {
            same_files(&base.join("opendc-baseline"), &base.join("opendc-current"))?;
        }
        for ((name, _), runs) in variants.iter().zip(&measured) {
            let median = |f: fn(&Measure) -> f64| {
                let mut v: Vec<f64> = runs.iter().map(f).collect();
                v.sort_by(f64::total_cmp);
                v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
            };
            let rss_kb = runs.iter().map(|m| m.rss_kb).max().unwrap_or(0);
            let fragments = runs.first().map_or(0, |m| m.fragments);
            println!(
                "{tasks:>8} {fragments:>10} {input_mb:>9.1} {name:>9} {:>9.3} {:>9.3} {:>11.1} {gen_s:>7.1}",
                median(|m| m.wall_s),
                median(|m| m.cpu_s),
                rss_kb as f64 / 1024.0
            );
        }
    }
    Ok(())
}

/// The export itself, in the child; reports seconds and fragments on stdout.
fn child(input: &Path, output: &Path) -> Result<()> {
    let report = export_opendc(input, output, TaskIdMode::Auto)?;
    println!("{} {}", report.seconds, report.fragments);
    Ok(())
}

/// Run the export with `exe` in a child process.
fn run_child(exe: &Path, input: &Path, output: &Path) -> Result<Measure> {
    let started = Instant::now();
    let child = Command::new(exe)
        .env(CHILD_INPUT, input)
        .env(CHILD_OUTPUT, output)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting the export child {}", exe.display()))?;
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.context("child stdout")?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut text).context("reading child output")?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for the kernel to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child and writes into the two locals above; std's
    // Child is not waited on afterwards (it is consumed above without waiting).
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if rc != pid {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    let wall_s = started.elapsed().as_secs_f64();
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("export child {} failed (status {status})", exe.display());
    }
    let fragments: u64 = text
        .split_whitespace()
        .nth(1)
        .context("child printed no fragment count")?
        .parse()
        .context("child fragments")?;
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    Ok(Measure {
        wall_s,
        cpu_s: secs(usage.ru_utime) + secs(usage.ru_stime),
        rss_kb: usage.ru_maxrss,
        fragments,
    })
}

/// The two exports' parquet files are identical.
fn same_files(a: &Path, b: &Path) -> Result<()> {
    for name in ["tasks.parquet", "fragments.parquet"] {
        let (pa, pb) = (a.join(name), b.join(name));
        let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        if read(&pa)? != read(&pb)? {
            bail!("{} and {} differ", pa.display(), pb.display());
        }
    }
    Ok(())
}

fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        total += entry?.metadata()?.len();
    }
    Ok(total)
}
