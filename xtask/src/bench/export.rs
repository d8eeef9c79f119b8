//! `cargo xtask bench export`: the OpenDC export's time and memory, and with
//! `--baseline REV` the same bench built from commit REV beside it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::util;

/// Options of `bench export`.
#[derive(Debug, Clone, Args)]
pub struct ExportBenchArgs {
    /// A commit whose export runs beside the current one on the same
    /// inputs, interleaved (built once into `<target>/baseline`).
    #[arg(long, value_name = "REV")]
    pub baseline: Option<String>,
}

pub fn run(args: &ExportBenchArgs) -> Result<()> {
    let bench = ["bench", "-p", "tracekit-trace", "--bench", "export"];
    let Some(rev) = &args.baseline else {
        return util::cargo(&bench);
    };
    let exe = build_baseline(rev)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(bench)
        .env("TRACEKIT_BENCH_BASELINE", &exe)
        .status()
        .with_context(|| format!("running {cargo} {}", bench.join(" ")))?;
    if !status.success() {
        bail!("{cargo} {} failed ({status})", bench.join(" "));
    }
    Ok(())
}

/// The export bench of `rev`, built from a copy of that commit's tree in its
/// own target directory (sharing one would let the two builds' artifacts of
/// the same name replace each other).
fn build_baseline(rev: &str) -> Result<PathBuf> {
    let root = util::workspace_root()?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("baseline");
    let src = target.join("src");
    if src.exists() {
        std::fs::remove_dir_all(&src).with_context(|| format!("clearing {}", src.display()))?;
    }
    std::fs::create_dir_all(&src).with_context(|| format!("creating {}", src.display()))?;
    extract(&root, rev, &src)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .args(["bench", "--no-run", "--message-format=json"])
        .args(["-p", "tracekit-trace", "--bench", "export"])
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", &target)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("building the export bench of {rev}"))?;
    if !out.status.success() {
        bail!("building the export bench of {rev} failed ({})", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "export")
        .and_then(|m| m["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("cargo named no export bench executable for {rev}"))
}

/// Write commit `rev`'s tree into `dir` (`git archive | tar -x`).
fn extract(root: &Path, rev: &str, dir: &Path) -> Result<()> {
    let mut git = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["archive", "--format=tar", rev])
        .stdout(Stdio::piped())
        .spawn()
        .context("running git archive")?;
    let tar_in = git.stdout.take().context("git archive's output")?;
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(dir)
        .stdin(tar_in)
        .status()
        .context("running tar")?;
    let git_status = git.wait().context("waiting for git archive")?;
    if !git_status.success() {
        bail!("git archive {rev} failed ({git_status}): is {rev} a commit here?");
    }
    if !tar.success() {
        bail!("tar -x into {} failed ({tar})", dir.display());
    }
    Ok(())
}
