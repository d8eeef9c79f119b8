//! Benchmark of the OpenDC export: `cargo bench -p tracekit-trace --bench export`.
//!
//! For 1k, 5k, 20k and 100k tasks of 60 samples each (override with
//! `TRACEKIT_BENCH_TASKS=1000,5000`), writes a synthetic node directory in a
//! temporary directory, then runs the export in a child process (this binary
//! re-executed) so that its peak RSS is the export's alone, read from the
//! kernel with `wait4`. Prints one table row per size.
//! `TRACEKIT_BENCH_KEEP=DIR` keeps the traces and exports under `DIR/<tasks>/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use tracekit_trace::export::{TaskIdMode, export_opendc};
use tracekit_trace::synth::{SynthNode, write_node};

const CHILD_INPUT: &str = "TRACEKIT_BENCH_EXPORT_INPUT";
const CHILD_OUTPUT: &str = "TRACEKIT_BENCH_EXPORT_OUTPUT";

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
    println!(
        "{:>8} {:>10} {:>10} {:>9} {:>9} {:>11} {:>9}",
        "tasks", "samples", "fragments", "input MB", "seconds", "peak RSS MB", "gen s"
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
        let truth = write_node(&node_dir, &cfg)?;
        let gen_s = gen_start.elapsed().as_secs_f64();
        let samples: usize = truth.iter().map(|t| t.samples).sum();
        let input_mb = dir_bytes(&node_dir.join("CTS"))? as f64 / 1e6;
        let out_dir = base.join("opendc");
        let (seconds, rss_kb, fragments) = run_child(&node_dir, &out_dir)?;
        println!(
            "{tasks:>8} {samples:>10} {fragments:>10} {input_mb:>9.1} {seconds:>9.3} {:>11.1} {gen_s:>9.1}",
            rss_kb as f64 / 1024.0
        );
    }
    Ok(())
}

/// The export itself, in the child; reports seconds and fragments on stdout.
fn child(input: &Path, output: &Path) -> Result<()> {
    let report = export_opendc(input, output, TaskIdMode::Auto)?;
    println!("{} {}", report.seconds, report.fragments);
    Ok(())
}

/// Run the export in a child process; (export seconds, peak RSS KiB, fragments).
fn run_child(input: &Path, output: &Path) -> Result<(f64, i64, u64)> {
    let exe: PathBuf = std::env::current_exe().context("locating the bench binary")?;
    let child = Command::new(exe)
        .env(CHILD_INPUT, input)
        .env(CHILD_OUTPUT, output)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting the export child")?;
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
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("export child failed (status {status})");
    }
    let mut parts = text.split_whitespace();
    let seconds: f64 = parts
        .next()
        .context("child printed no time")?
        .parse()
        .context("child time")?;
    let fragments: u64 = parts
        .next()
        .context("child printed no fragment count")?
        .parse()
        .context("child fragments")?;
    Ok((seconds, usage.ru_maxrss, fragments))
}

fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        total += entry?.metadata()?.len();
    }
    Ok(total)
}
