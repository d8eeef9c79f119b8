//! Small helpers for xtask: running cargo and processes, reading usage.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The workspace root (the parent of xtask's manifest directory).
pub fn workspace_root() -> Result<PathBuf> {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .context("xtask has no parent directory")
}

/// Where cargo builds: `CARGO_TARGET_DIR` when set, else the workspace's
/// `target`.
pub fn target_dir() -> Result<PathBuf> {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => Ok(PathBuf::from(dir)),
        _ => Ok(workspace_root()?.join("target")),
    }
}

/// Run cargo with `args`, failing on a non-zero exit.
pub fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .status()
        .with_context(|| format!("running {cargo} {}", args.join(" ")))?;
    if !status.success() {
        bail!("{cargo} {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Resource usage of a reaped child.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub status: i32,
    pub cpu_s: f64,
    pub max_rss_kb: u64,
}

/// wait4 `pid` and return its status and usage.
pub fn wait4(pid: u32) -> Result<Usage> {
    let mut status = 0;
    // SAFETY: wait4 on our own child, out-params we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid as i32, &mut status, 0, &mut ru) };
    if r != pid as i32 {
        return Err(std::io::Error::last_os_error()).context("wait4");
    }
    let s = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    Ok(Usage {
        status,
        cpu_s: s(ru.ru_utime) + s(ru.ru_stime),
        max_rss_kb: ru.ru_maxrss as u64,
    })
}

/// Median of a non-empty list.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
