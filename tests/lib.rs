//! Helpers shared by Tracekit's tests that drive real binaries: privilege
//! checks that fail loudly in CI, test videos, trace readers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;

/// Whether this process runs as root. Outside CI a test that needs root
/// prints why it is skipped and returns false; in CI (`CI` set) it panics,
/// so a missing privilege never passes vacuously.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test} needs root (eBPF, cgroups) and CI is set: run the tests as root");
    }
    eprintln!("SKIPPED {test}: needs root (eBPF, cgroups); run as root to test for real");
    false
}

/// Whether `tool` runs (`ffmpeg -version`, `redis-server --version`, …);
/// panics in CI when it is missing.
pub fn require_tool(test: &str, tool: &str) -> bool {
    let flag = if tool.starts_with("ff") {
        "-version"
    } else {
        "--version"
    };
    let ok = Command::new(tool)
        .arg(flag)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("{test} needs {tool} and CI is set: install it (see .ci/run)");
        }
        eprintln!("SKIPPED {test}: {tool} is not installed");
    }
    ok
}

/// A generated test video (testsrc pattern), made once per test binary and
/// kept in a directory that lives as long as the process.
pub fn test_video(width: u32, height: u32, seconds: u32) -> Result<PathBuf> {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("creating a temp dir"));
    let path = dir
        .path()
        .join(format!("testsrc_{width}x{height}_{seconds}s.mp4"));
    if path.exists() {
        return Ok(path);
    }
    make_video(&path, width, height, seconds)?;
    Ok(path)
}

/// Write an H.264 test pattern video to `path`.
pub fn make_video(path: &Path, width: u32, height: u32, seconds: u32) -> Result<()> {
    let tmp = path.with_extension("part.mp4");
    let status = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg(format!("testsrc=size={width}x{height}:rate=25"))
        .args([
            "-t",
            &seconds.to_string(),
            "-pix_fmt",
            "yuv420p",
            "-c:v",
            "libx264",
        ])
        .args(["-preset", "ultrafast"])
        .arg(&tmp)
        .status()
        .context("running ffmpeg to make a test video")?;
    if !status.success() {
        bail!("ffmpeg could not make {}", path.display());
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// Every line of a JSONL file, parsed.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}

/// Read a JSON file.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Current epoch ms.
pub fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Wait until `path` exists (a started agent writes node_meta.json once its
/// collector is attached).
pub fn wait_for_file(path: &Path, timeout: std::time::Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    while !path.exists() {
        if std::time::Instant::now() > deadline {
            bail!("{} did not appear within {timeout:?}", path.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

/// A CPU taken offline for a test, back online when dropped, however the
/// test ends.
pub struct Offline(u32);

impl Offline {
    /// Take `cpu` offline (CPU hotplug); `None` if the machine refuses.
    pub fn take(cpu: u32) -> Option<Offline> {
        let path = format!("/sys/devices/system/cpu/cpu{cpu}/online");
        std::fs::write(&path, "0").ok()?;
        Some(Offline(cpu))
    }
}

impl Drop for Offline {
    fn drop(&mut self) {
        let path = format!("/sys/devices/system/cpu/cpu{}/online", self.0);
        if let Err(e) = std::fs::write(&path, "1") {
            eprintln!("bringing CPU {} back online: {e}", self.0);
        }
    }
}
