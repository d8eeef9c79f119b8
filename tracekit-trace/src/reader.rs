//! Tolerant readers of node and run directories.
//!
//! JSONL files are streamed line by line, never held whole. What a crash or a
//! `kill -9` can leave behind is a torn *last* line: it is skipped with a
//! warning and counted in [`ReadStats::torn_tail`]. A bad line anywhere else is
//! not something a crash produces, so it is counted, logged with its
//! `file:line` and kept in [`ReadStats::bad_lines`]; reading goes on so that one
//! damaged line never costs the rest of a run, and the audit reports it as a
//! problem. Nothing is dropped silently.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;

use crate::sample_line::parse_sample;
use crate::schema::{
    CTS_DIR, INVOCATIONS_FILE, InvocationRecord, LEGACY_CTS_DIR, LEGACY_EVENTS_FILES,
    NODE_META_FILE, NODES_FILE, NodeInfo, NodeMeta, PROC_METRICS_FILE, SampleRecord,
    TRACER_STATS_FILE, TracerStats, WITHDRAWN_FILE, Withdrawn,
};

/// How many bad lines are kept verbatim per file (all are counted).
const KEPT_BAD_LINES: usize = 20;

/// A line that could not be parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct BadLine {
    pub file: PathBuf,
    /// 1-based line number.
    pub line: u64,
    pub error: String,
}

impl std::fmt::Display for BadLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.error)
    }
}

/// What reading one JSONL file found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadStats {
    /// Lines in the file, blank ones included.
    pub lines: u64,
    /// Records parsed and handed on.
    pub records: u64,
    /// The last line was torn (unparseable) and skipped.
    pub torn_tail: bool,
    /// Unparseable lines before the last one.
    pub bad_count: u64,
    /// The first [`KEPT_BAD_LINES`] of them.
    pub bad_lines: Vec<BadLine>,
    /// Bytes read.
    pub bytes: u64,
}

impl ReadStats {
    /// Add another file's counts (for totals over nodes).
    pub fn merge(&mut self, other: &ReadStats) {
        self.lines += other.lines;
        self.records += other.records;
        self.torn_tail |= other.torn_tail;
        self.bad_count += other.bad_count;
        for b in &other.bad_lines {
            if self.bad_lines.len() < KEPT_BAD_LINES {
                self.bad_lines.push(b.clone());
            }
        }
        self.bytes += other.bytes;
    }
}

/// Stream the records of a JSONL file into `f`, with the line number of each.
///
/// A missing file reads as empty (a node that ran no task has none); any other
/// I/O error, and any error `f` returns, ends the read with `file:line`
/// context. `progress` is called with the bytes read so far after every block.
pub fn read_jsonl<T, F>(path: &Path, f: F, progress: impl FnMut(u64, u64)) -> Result<ReadStats>
where
    T: DeserializeOwned + Send,
    F: FnMut(T, u64) -> Result<()>,
{
    read_jsonl_with(path, |line| serde_json::from_slice(line), f, progress)
}

/// [`read_jsonl`] with a given line parser.
///
/// The file is read in blocks of [`BLOCK_BYTES`]; the lines of a block are
/// parsed on every core while the next block is read, then handed to `f` in
/// file order on the calling thread, so `f` sees exactly what a line-by-line
/// read would give it.
pub fn read_jsonl_with<T, F>(
    path: &Path,
    parse: impl Fn(&[u8]) -> Result<T, serde_json::Error> + Sync,
    f: F,
    mut progress: impl FnMut(u64, u64),
) -> Result<ReadStats>
where
    T: Send,
    F: FnMut(T, u64) -> Result<()>,
{
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ReadStats::default()),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut blocks = Blocks::default();
    let mut block = blocks
        .next(&mut file)
        .with_context(|| format!("reading {}", path.display()))?;
    let mut to = Handing {
        path,
        f,
        stats: ReadStats::default(),
        pending_bad: None,
        spare: Vec::new(),
    };
    // The previous block's lines, parsed, not yet handed on.
    let mut ready: Vec<Parsed<T>> = Vec::new();
    while !block.is_empty() {
        let chunks = split_lines(&block, threads);
        let mut outs: Vec<Parsed<T>> = chunks
            .iter()
            .map(|_| to.spare.pop().unwrap_or_default())
            .collect();
        // Parse this block on worker threads while this one hands on the
        // previous block's lines and reads the next block; a block of one
        // chunk is parsed here.
        let (handed, next) = if let ([chunk], [out]) = (&chunks[..], &mut outs[..]) {
            parse_chunk(chunk, &parse, out);
            (to.hand_on(&mut ready), blocks.next(&mut file))
        } else {
            std::thread::scope(|s| {
                let parse = &parse;
                let workers: Vec<_> = chunks
                    .iter()
                    .zip(outs.iter_mut())
                    .map(|(chunk, out)| s.spawn(move || parse_chunk(chunk, parse, out)))
                    .collect();
                let handed = to.hand_on(&mut ready);
                let next = blocks.next(&mut file);
                for w in workers {
                    if let Err(panic) = w.join() {
                        std::panic::resume_unwind(panic);
                    }
                }
                (handed, next)
            })
        };
        handed?;
        ready = outs;
        to.stats.bytes += block.len() as u64;
        progress(to.stats.bytes, total);
        blocks.recycle(block);
        block = next.with_context(|| format!("reading {}", path.display()))?;
    }
    to.hand_on(&mut ready)?;
    let Handing {
        mut stats,
        pending_bad,
        ..
    } = to;
    if stats.bad_count > KEPT_BAD_LINES as u64 {
        tracing::warn!(
            "{}: {} unparseable lines skipped in all",
            path.display(),
            stats.bad_count
        );
    }
    if let Some(bad) = pending_bad {
        tracing::warn!(
            "{}:{}: skipping torn last line ({})",
            bad.file.display(),
            bad.line,
            bad.error
        );
        stats.torn_tail = true;
    }
    progress(stats.bytes, total);
    Ok(stats)
}

/// Where parsed lines go, in file order: `f`, with the counts and bad lines.
struct Handing<'a, T, F> {
    path: &'a Path,
    f: F,
    stats: ReadStats,
    /// A bad line is only known to be "in the middle" once another line
    /// follows.
    pending_bad: Option<BadLine>,
    /// The parsed lines' vectors, kept from block to block.
    spare: Vec<Parsed<T>>,
}

impl<T, F: FnMut(T, u64) -> Result<()>> Handing<'_, T, F> {
    /// Hand on the lines of `parsed` (one block's chunks, in order).
    fn hand_on(&mut self, parsed: &mut Vec<Parsed<T>>) -> Result<()> {
        for mut out in parsed.drain(..) {
            for (line, record) in out.records.drain(..) {
                let line = self.stats.lines + u64::from(line);
                if let Some(bad) = self.pending_bad.take() {
                    record_middle_bad(&mut self.stats, bad);
                }
                match record {
                    Ok(record) => {
                        self.stats.records += 1;
                        (self.f)(record, line)
                            .with_context(|| format!("{}:{line}", self.path.display()))?;
                    }
                    Err(e) => {
                        self.pending_bad = Some(BadLine {
                            file: self.path.to_path_buf(),
                            line,
                            error: e.to_string(),
                        });
                    }
                }
            }
            self.stats.lines += out.lines;
            self.spare.push(out);
        }
        Ok(())
    }
}

/// Bytes read per block (more when one line is longer).
const BLOCK_BYTES: usize = 2 << 20;
/// The least a parsing thread is given: below, threads cost more than they save.
const MIN_CHUNK_BYTES: usize = 256 << 10;

/// A file read in blocks of whole lines (the last one may lack its newline).
#[derive(Default)]
struct Blocks {
    /// The start of a line the previous block cut.
    carry: Vec<u8>,
    /// A buffer handed back, to read the next block into.
    spare: Vec<u8>,
    eof: bool,
}

impl Blocks {
    /// The next block; empty at the end of the file.
    fn next(&mut self, file: &mut File) -> std::io::Result<Vec<u8>> {
        let mut block = std::mem::take(&mut self.spare);
        block.clear();
        block.append(&mut self.carry);
        let mut want = BLOCK_BYTES;
        loop {
            if !self.eof && block.len() < want {
                self.eof = !read_up_to(file, &mut block, want)?;
                continue;
            }
            if self.eof {
                // The rest of the file: its last line may lack the newline.
                return Ok(block);
            }
            match memchr::memrchr(b'\n', &block) {
                Some(last) => {
                    self.carry.extend_from_slice(&block[last + 1..]);
                    block.truncate(last + 1);
                    return Ok(block);
                }
                // One line longer than a block: read on.
                None => want = block.len() + BLOCK_BYTES,
            }
        }
    }

    fn recycle(&mut self, block: Vec<u8>) {
        self.spare = block;
    }
}

/// Read into `buf` until it holds `want` bytes; false when the file ended first.
fn read_up_to(file: &mut File, buf: &mut Vec<u8>, want: usize) -> std::io::Result<bool> {
    let missing = want.saturating_sub(buf.len()) as u64;
    // `read_to_end` fills the spare capacity without zeroing it first.
    file.take(missing).read_to_end(buf)?;
    Ok(buf.len() >= want)
}

/// `block` cut at line ends into at most `threads` chunks of similar size.
fn split_lines(block: &[u8], threads: usize) -> Vec<&[u8]> {
    let n = (block.len() / MIN_CHUNK_BYTES).clamp(1, threads.max(1));
    let mut chunks = Vec::with_capacity(n);
    let mut start = 0;
    for k in 1..n {
        let target = (block.len() * k / n).max(start);
        let end = match memchr::memchr(b'\n', &block[target..]) {
            Some(p) => target + p + 1,
            None => block.len(),
        };
        chunks.push(&block[start..end]);
        start = end;
    }
    chunks.push(&block[start..]);
    chunks
}

/// A chunk's non-blank lines, parsed, each with its line number within the
/// chunk (1-based), and how many lines the chunk has.
struct Parsed<T> {
    records: Vec<(u32, Result<T, serde_json::Error>)>,
    lines: u64,
}

impl<T> Default for Parsed<T> {
    fn default() -> Self {
        Parsed {
            records: Vec::new(),
            lines: 0,
        }
    }
}

fn parse_chunk<T>(
    chunk: &[u8],
    parse: &impl Fn(&[u8]) -> Result<T, serde_json::Error>,
    out: &mut Parsed<T>,
) {
    let mut lines = 0u32;
    let mut start = 0;
    // Each newline ends a line; so does the end of a chunk that lacks one.
    let ends = memchr::memchr_iter(b'\n', chunk)
        .chain((!chunk.is_empty() && !chunk.ends_with(b"\n")).then_some(chunk.len()));
    for end in ends {
        lines += 1;
        let line = trim_ascii(&chunk[start..end]);
        start = end + 1;
        if !line.is_empty() {
            out.records.push((lines, parse(line)));
        }
    }
    out.lines = u64::from(lines);
}

fn record_middle_bad(stats: &mut ReadStats, bad: BadLine) {
    stats.bad_count += 1;
    // Each of the first few is logged; the rest only counted (a file of
    // garbage must not flood the log).
    if stats.bad_lines.len() < KEPT_BAD_LINES {
        tracing::warn!("{bad}: unparseable line skipped");
        stats.bad_lines.push(bad);
    }
}

fn trim_ascii(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

/// One node's trace directory, `logs/<RUN_ID>/` (or `logs/<RUN_ID>/<node>/`
/// in a gathered run), with its small files read.
#[derive(Debug, Clone)]
pub struct NodeDir {
    pub dir: PathBuf,
    /// `CTS/`, or `cctf/` in older traces of the original.
    pub cts: PathBuf,
    pub meta: NodeMeta,
    /// `CTS/nodes.json`, or the entry derived from `node_meta.json` when the
    /// file is missing.
    pub nodes: Vec<NodeInfo>,
    /// `CTS/tracer_stats.json` (absent in the original's traces).
    pub tracer_stats: Option<TracerStats>,
}

impl NodeDir {
    /// Read the node directory `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let meta_path = dir.join(NODE_META_FILE);
        let meta: NodeMeta = read_json(&meta_path)?;
        let cts = [CTS_DIR, LEGACY_CTS_DIR]
            .iter()
            .map(|d| dir.join(d))
            .find(|p| p.is_dir())
            .unwrap_or_else(|| dir.join(CTS_DIR));
        let nodes_path = cts.join(NODES_FILE);
        let nodes = if nodes_path.exists() {
            read_nodes_json(&nodes_path)?
        } else {
            vec![NodeInfo::from_meta(&meta)]
        };
        let stats_path = cts.join(TRACER_STATS_FILE);
        let tracer_stats = if stats_path.exists() {
            Some(read_json(&stats_path)?)
        } else {
            None
        };
        Ok(NodeDir {
            dir: dir.to_path_buf(),
            cts,
            meta,
            nodes,
            tracer_stats,
        })
    }

    /// The node's name as `node_meta.json` gives it.
    pub fn name(&self) -> &str {
        &self.meta.node
    }

    pub fn invocations_path(&self) -> PathBuf {
        self.cts.join(INVOCATIONS_FILE)
    }

    pub fn samples_path(&self) -> PathBuf {
        self.cts.join(PROC_METRICS_FILE)
    }

    /// Stream `CTS/invocations.jsonl`, without the withdrawn runs
    /// ([`NodeDir::withdrawn`]).
    pub fn read_invocations(
        &self,
        mut f: impl FnMut(InvocationRecord, u64) -> Result<()>,
    ) -> Result<ReadStats> {
        let withdrawn: std::collections::HashSet<String> =
            self.withdrawn()?.into_iter().map(|w| w.trace_id).collect();
        read_jsonl(
            &self.invocations_path(),
            |rec: InvocationRecord, line| {
                if rec.trace_id.as_ref().is_some_and(|t| withdrawn.contains(t)) {
                    return Ok(());
                }
                f(rec, line)
            },
            |_, _| {},
        )
    }

    /// `CTS/withdrawn.jsonl`: runs whose completion was refused (empty
    /// when the file is absent).
    pub fn withdrawn(&self) -> Result<Vec<Withdrawn>> {
        let path = self.cts.join(WITHDRAWN_FILE);
        let mut out = Vec::new();
        if path.is_file() {
            read_jsonl(
                &path,
                |w: Withdrawn, _| {
                    out.push(w);
                    Ok(())
                },
                |_, _| {},
            )?;
        }
        Ok(out)
    }

    /// The original's event file of this node, if it has one
    /// ([`LEGACY_EVENTS_FILES`]).
    pub fn legacy_events_path(&self) -> Option<PathBuf> {
        LEGACY_EVENTS_FILES
            .iter()
            .map(|f| self.dir.join(f))
            .find(|p| p.is_file())
    }

    /// Stream the original's event file (one line per invocation, with its
    /// output name), when the node has one.
    pub fn read_legacy_events(
        &self,
        f: impl FnMut(InvocationRecord, u64) -> Result<()>,
    ) -> Result<Option<ReadStats>> {
        match self.legacy_events_path() {
            Some(path) => read_jsonl(&path, f, |_, _| {}).map(Some),
            None => Ok(None),
        }
    }

    /// Stream `CTS/proc_metrics.jsonl`; `progress(bytes_read, total)`.
    pub fn read_samples(
        &self,
        f: impl FnMut(SampleRecord, u64) -> Result<()>,
        progress: impl FnMut(u64, u64),
    ) -> Result<ReadStats> {
        self.read_samples_with(|s| s, f, progress)
    }

    /// [`Self::read_samples`] with `map` applied to each sample on the
    /// threads that parse them (work that needs no order, such as the join).
    pub fn read_samples_with<U: Send>(
        &self,
        map: impl Fn(SampleRecord) -> U + Sync,
        f: impl FnMut(U, u64) -> Result<()>,
        progress: impl FnMut(u64, u64),
    ) -> Result<ReadStats> {
        let parse = |line: &[u8]| parse_sample(line).map(&map);
        read_jsonl_with(&self.samples_path(), parse, f, progress)
    }
}

/// A progress callback for [`NodeDir::read_samples`] that logs how far the
/// read of `path` is every 10 %: large runs take a while.
pub fn log_progress(path: &Path) -> impl FnMut(u64, u64) + use<> {
    let label = path.display().to_string();
    let mut next_pct = 10;
    move |read, total| {
        if total > 0 && read * 100 >= total * next_pct {
            tracing::info!("{label}: {}% read", read * 100 / total);
            while read * 100 >= total * next_pct {
                next_pct += 10;
            }
        }
    }
}

/// `nodes.json` is a list; the original sometimes wrote a single object.
fn read_nodes_json(path: &Path) -> Result<Vec<NodeInfo>> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<NodeInfo>),
        One(NodeInfo),
    }
    Ok(match read_json::<OneOrMany>(path)? {
        OneOrMany::Many(v) => v,
        OneOrMany::One(n) => vec![n],
    })
}

/// Read a whole (small) JSON file.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let body = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&body).with_context(|| format!("parsing {}", path.display()))
}

/// The node directories under `input`: `input` itself when it holds
/// `node_meta.json`, else its sub-directories that do, sorted by name.
pub fn discover(input: &Path) -> Result<Vec<NodeDir>> {
    if input.join(NODE_META_FILE).is_file() {
        return Ok(vec![NodeDir::open(input)?]);
    }
    let entries =
        std::fs::read_dir(input).with_context(|| format!("listing {}", input.display()))?;
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", input.display()))?;
        let path = entry.path();
        if path.is_dir() && path.join(NODE_META_FILE).is_file() {
            dirs.push(path);
        }
    }
    if dirs.is_empty() {
        bail!(
            "{} is neither a node directory (no {NODE_META_FILE}) nor a run directory \
             (no sub-directory holds one)",
            input.display()
        );
    }
    dirs.sort();
    dirs.iter().map(|d| NodeDir::open(d)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn read_all(path: &Path) -> (Vec<SampleRecord>, ReadStats) {
        let mut out = Vec::new();
        let stats = read_jsonl(
            path,
            |r: SampleRecord, _| {
                out.push(r);
                Ok(())
            },
            |_, _| {},
        )
        .unwrap();
        (out, stats)
    }

    #[test]
    fn torn_tail_is_skipped_and_middle_bad_line_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        let mut f = File::create(&path).unwrap();
        writeln!(
            f,
            r#"{{"ts_ms":1,"pid":2,"dt_ms":3,"cpu_ms":4.5,"rss_kb":6}}"#
        )
        .unwrap();
        writeln!(f, "garbage").unwrap();
        writeln!(f).unwrap();
        writeln!(
            f,
            r#"{{"ts_ms":2,"pid":2,"dt_ms":1,"cpu_ms":1,"rss_kb":6}}"#
        )
        .unwrap();
        write!(f, r#"{{"ts_ms":3,"pid":2,"dt"#).unwrap();
        drop(f);
        let (recs, stats) = read_all(&path);
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1].cpu_ms, Some(1.0));
        assert!(stats.torn_tail);
        assert_eq!(stats.bad_count, 1);
        assert_eq!(stats.bad_lines[0].line, 2);
        assert_eq!(stats.lines, 5);
    }

    #[test]
    fn complete_last_line_without_newline_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        std::fs::write(&path, r#"{"ts_ms":1,"pid":2,"dt_ms":0,"cpu_ms":0}"#).unwrap();
        let (recs, stats) = read_all(&path);
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].rss_kb, None);
        assert!(!stats.torn_tail);
    }

    /// A file of many blocks, read on several threads, gives what a plain
    /// line-by-line read gives: records in order with their line numbers,
    /// the bad lines, the blank ones counted, a line longer than a block.
    #[test]
    fn blocks_read_as_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        let mut text = String::new();
        let mut want: Vec<(u64, i64)> = Vec::new();
        let mut bad = Vec::new();
        let mut line = 0u64;
        for i in 0..120_000i64 {
            line += 1;
            match i % 9_973 {
                17 => {
                    text.push_str("not json\n");
                    bad.push(line);
                }
                18 => text.push_str("   \n"),
                19 => {
                    // Longer than a block: a field the reader ignores.
                    let pad = "x".repeat(BLOCK_BYTES + 10);
                    text.push_str(&format!("{{\"ts_ms\":{i},\"pad\":\"{pad}\"}}\n"));
                    want.push((line, i));
                }
                _ => {
                    text.push_str(&format!(
                        "{{\"ts_ms\":{i},\"pid\":2,\"dt_ms\":3,\"cpu_ms\":4.5}}\n"
                    ));
                    want.push((line, i));
                }
            }
        }
        line += 1;
        text.push_str(r#"{"ts_ms":1,"pid"#);
        std::fs::write(&path, &text).unwrap();
        assert!(text.len() > 4 * BLOCK_BYTES);

        let mut got = Vec::new();
        let stats = read_jsonl(
            &path,
            |r: SampleRecord, n| {
                got.push((n, r.ts_ms.unwrap()));
                Ok(())
            },
            |_, _| {},
        )
        .unwrap();
        assert_eq!(got, want);
        assert_eq!(stats.lines, line);
        assert_eq!(stats.records, want.len() as u64);
        assert_eq!(stats.bytes, text.len() as u64);
        assert!(stats.torn_tail);
        assert_eq!(stats.bad_count, bad.len() as u64);
        let lines: Vec<u64> = stats.bad_lines.iter().map(|b| b.line).collect();
        assert_eq!(lines, bad);
    }

    #[test]
    fn an_error_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        let line = r#"{"ts_ms":1,"pid":2,"dt_ms":3,"cpu_ms":4.5}"#;
        std::fs::write(&path, format!("{line}\n\n{line}\n")).unwrap();
        let err = read_jsonl(
            &path,
            |_: SampleRecord, n| if n == 3 { bail!("stop") } else { Ok(()) },
            |_, _| {},
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("m.jsonl:3: stop"), "{err:#}");
    }

    #[test]
    fn missing_file_reads_empty() {
        let dir = tempfile::tempdir().unwrap();
        let (recs, stats) = read_all(&dir.path().join("none.jsonl"));
        assert!(recs.is_empty());
        assert_eq!(stats, ReadStats::default());
    }
}
