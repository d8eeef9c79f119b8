//! What both benchmarks measure the same way.

use anyhow::Context;

/// CPU seconds a process has run so far: the sum of its threads'
/// schedstat run times (ns resolution, unlike the tick counts of stat).
pub fn cpu_s(pid: u32) -> anyhow::Result<f64> {
    let dir = format!("/proc/{pid}/task");
    let mut ns = 0u64;
    for e in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = e?.path().join("schedstat");
        // A thread may exit between listing and reading.
        if let Ok(s) = std::fs::read_to_string(&path) {
            ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .with_context(|| format!("malformed {}", path.display()))?;
        }
    }
    Ok(ns as f64 / 1e9)
}
