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
        append_line(&mut self.metrics, sample).context("writing proc_metrics.jsonl")
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
