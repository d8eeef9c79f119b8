//! Appends a node's trace files as a run goes.
//!
//! Lines are written whole and flushed at every [`TraceWriter::flush`] (the
//! agent calls it every interval), and synced to disk at [`TraceWriter::sync`],
//! so after a `kill -9` every line written before is readable; a torn last line
//! is what readers skip.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::schema::{
    CTS_DIR, INVOCATIONS_FILE, Invocation, NODE_META_FILE, NODES_FILE, NodeInfo, NodeMeta,
    PROC_METRICS_FILE, ProcSample, TRACER_STATS_FILE, TracerStats,
};

/// Writer of one node directory, `logs/<RUN_ID>/`.
pub struct TraceWriter {
    dir: PathBuf,
    invocations: BufWriter<File>,
    metrics: BufWriter<File>,
    /// A sample line being formatted (kept: one allocation per writer).
    line: Vec<u8>,
}

impl TraceWriter {
    /// Create (or reopen for appending) the node directory `dir`, and write
    /// `node_meta.json` and `CTS/nodes.json`.
    pub fn create(dir: &Path, meta: &NodeMeta) -> Result<Self> {
        let cts = dir.join(CTS_DIR);
        std::fs::create_dir_all(&cts)
            .with_context(|| format!("creating trace directory {}", cts.display()))?;
        let open = |name: &str| -> Result<BufWriter<File>> {
            let path = cts.join(name);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            Ok(BufWriter::with_capacity(1 << 16, file))
        };
        let writer = TraceWriter {
            dir: dir.to_path_buf(),
            invocations: open(INVOCATIONS_FILE)?,
            metrics: open(PROC_METRICS_FILE)?,
            line: Vec::with_capacity(128),
        };
        writer.write_meta(meta)?;
        Ok(writer)
    }

    /// The node directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// (Re)write `node_meta.json` and `CTS/nodes.json` atomically.
    pub fn write_meta(&self, meta: &NodeMeta) -> Result<()> {
        write_json_atomic(&self.dir.join(NODE_META_FILE), meta)?;
        write_json_atomic(
            &self.dir.join(CTS_DIR).join(NODES_FILE),
            &[NodeInfo::from_meta(meta)],
        )
    }

    /// Rewrite `CTS/tracer_stats.json` atomically.
    pub fn write_stats(&self, stats: &TracerStats) -> Result<()> {
        write_json_atomic(&self.dir.join(CTS_DIR).join(TRACER_STATS_FILE), stats)
    }

    /// Append one invocation line.
    ///
    /// The samples written so far are handed to the kernel first, so an
    /// invocation is never on disk before its samples: after a kill, every
    /// recorded task is complete.
    pub fn invocation(&mut self, inv: &Invocation) -> Result<()> {
        self.metrics
            .flush()
            .context("flushing proc_metrics.jsonl")?;
        append_line(&mut self.invocations, inv).context("writing invocations.jsonl")
    }

    /// Append one sample line.
    pub fn sample(&mut self, sample: &ProcSample) -> Result<()> {
        self.line.clear();
        sample_line(sample, &mut self.line);
        self.metrics
            .write_all(&self.line)
            .context("writing proc_metrics.jsonl")
    }

    /// Hand buffered lines to the kernel (samples before invocations, see
    /// [`TraceWriter::invocation`]).
    pub fn flush(&mut self) -> Result<()> {
        self.metrics
            .flush()
            .context("flushing proc_metrics.jsonl")?;
        self.invocations
            .flush()
            .context("flushing invocations.jsonl")
    }

    /// Flush and sync both files to disk.
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        self.metrics
            .get_ref()
            .sync_data()
            .context("syncing proc_metrics.jsonl")?;
        self.invocations
            .get_ref()
            .sync_data()
            .context("syncing invocations.jsonl")
    }
}

/// `sample` as serde_json writes it, and a newline: the same keys in the
/// same order, integers through itoa and the float through zmij, as
/// serde_json does (a test checks the bytes are the same). A sample line is
/// written for every traced process every interval: serde_json's generic
/// path costs several times this.
pub fn sample_line(sample: &ProcSample, out: &mut Vec<u8>) {
    let mut int = itoa::Buffer::new();
    out.extend_from_slice(b"{\"ts_ms\":");
    out.extend_from_slice(int.format(sample.ts_ms).as_bytes());
    out.extend_from_slice(b",\"pid\":");
    out.extend_from_slice(int.format(sample.pid).as_bytes());
    out.extend_from_slice(b",\"dt_ms\":");
    out.extend_from_slice(int.format(sample.dt_ms).as_bytes());
    out.extend_from_slice(b",\"cpu_ms\":");
    if sample.cpu_ms.is_finite() {
        out.extend_from_slice(zmij::Buffer::new().format_finite(sample.cpu_ms).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
    out.extend_from_slice(b",\"rss_kb\":");
    out.extend_from_slice(int.format(sample.rss_kb).as_bytes());
    out.extend_from_slice(b"}\n");
}

fn append_line<T: Serialize>(out: &mut BufWriter<File>, record: &T) -> Result<()> {
    // Serialize to memory first so a line is handed to the buffer whole.
    let mut line = serde_json::to_vec(record)?;
    line.push(b'\n');
    out.write_all(&line)?;
    Ok(())
}

/// Write `value` as pretty JSON to `path` through a temporary file and rename,
/// so a reader never sees half a file.
pub fn write_json_atomic<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(value)?;
    std::fs::write(&tmp, body).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The hand-written sample line is serde_json's, byte for byte.
    #[test]
    fn sample_lines_are_serde_jsons() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut samples = vec![
            ProcSample {
                ts_ms: 0,
                pid: 0,
                dt_ms: 0,
                cpu_ms: 0.0,
                rss_kb: 0,
            },
            ProcSample {
                ts_ms: -5,
                pid: u32::MAX,
                dt_ms: i64::MIN,
                cpu_ms: -0.0,
                rss_kb: u64::MAX,
            },
            ProcSample {
                ts_ms: 1,
                pid: 1,
                dt_ms: 1,
                cpu_ms: f64::NAN,
                rss_kb: 1,
            },
            ProcSample {
                ts_ms: 1,
                pid: 1,
                dt_ms: 1,
                cpu_ms: 1e300,
                rss_kb: 1,
            },
            ProcSample {
                ts_ms: 1,
                pid: 1,
                dt_ms: 1,
                cpu_ms: 1e-7,
                rss_kb: 1,
            },
        ];
        for _ in 0..100_000 {
            let r = next();
            samples.push(ProcSample {
                ts_ms: (next() % 2_000_000_000_000) as i64,
                pid: next() as u32,
                dt_ms: (next() % 10_000) as i64,
                // As the agent computes it: whole µs / 1000; now and then a
                // raw float.
                cpu_ms: if r % 7 == 0 {
                    f64::from_bits(next())
                } else {
                    (r % 100_000_000_000) as f64 / 1000.0
                },
                rss_kb: next() % (1 << 40),
            });
        }
        let mut line = Vec::new();
        for s in &samples {
            line.clear();
            sample_line(s, &mut line);
            let mut expected = serde_json::to_vec(s).unwrap();
            expected.push(b'\n');
            assert_eq!(
                String::from_utf8_lossy(&line),
                String::from_utf8_lossy(&expected)
            );
        }
    }
}
