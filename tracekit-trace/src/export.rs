//! Export of a node or run directory as an OpenDC workload:
//! `tasks.parquet`, `fragments.parquet` and `small_datacenter.json`.
//!
//! Two passes, linear in the input. Pass 1 reads every node's invocations
//! (small: one line per task), orders the tasks and assigns their ids. Pass 2
//! goes node by node: it streams the node's samples once, joins each to its
//! task by (pid, time) ([`TaskIndex`]), keeps 16 bytes per joined sample, then
//! cuts every task into fragments ([`build_fragments`]), appends them to
//! `fragments.parquet` in row groups and frees the node's samples before the
//! next node. Peak memory is therefore the largest node's samples at 16 bytes
//! each plus a few dozen bytes per task, never the JSON text.
//!
//! Files are written under temporary names and renamed at the end, so a failed
//! export leaves no half-written parquet behind.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use arrow_array::builder::{Float64Builder, Int32Builder, Int64Builder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::join::TaskIndex;
use crate::opendc::{
    DATACENTER_FILE, FRAGMENTS_FILE, Host, Interval, MIN_MEM_KB, Run, TASKS_FILE, build_fragments,
    datacenter, fragments_schema, tasks_schema,
};
use crate::reader::{NodeDir, discover};
use crate::schema::TaskTimes;
use crate::writer::write_json_atomic;

/// How task ids are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TaskIdMode {
    /// The PID when every task's PID is unique across the input, else
    /// sequential.
    #[default]
    Auto,
    /// The PID; an error when a PID names more than one task.
    Pid,
    /// 1, 2, … in task order.
    Sequential,
}

impl std::fmt::Display for TaskIdMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TaskIdMode::Auto => "auto",
            TaskIdMode::Pid => "pid",
            TaskIdMode::Sequential => "sequential",
        })
    }
}

/// Rows per record batch handed to the parquet writer.
const BATCH_ROWS: usize = 64 * 1024;
/// Rows per parquet row group (bounds the writer's buffered pages).
const ROW_GROUP_ROWS: usize = 1024 * 1024;

/// What an export did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExportReport {
    pub nodes: usize,
    pub tasks: usize,
    pub fragments: u64,
    /// The id mode actually used (`Pid` or `Sequential`).
    pub id_mode: TaskIdMode,
    /// Sample lines read, and of them: joined to a task, matching no task,
    /// lacking a field the export needs.
    pub samples: u64,
    pub samples_joined: u64,
    pub samples_unmatched: u64,
    pub samples_incomplete: u64,
    /// Invocation lines lacking pid or a time (not exported).
    pub invocations_incomplete: u64,
    /// Tasks no sample joined (one fragment at their exact rate).
    pub tasks_without_samples: usize,
    /// Tasks with neither samples nor an exact CPU total (usage floor only).
    pub tasks_without_cpu: usize,
    /// Time no sample covered, summed over tasks, ms.
    pub gap_ms: i64,
    /// Largest |fragment CPU − traced CPU| of a task, ms.
    pub max_cpu_deviation_ms: f64,
    /// Files whose torn last line was skipped, and bad lines skipped elsewhere.
    pub torn_tails: usize,
    pub bad_lines: u64,
    pub seconds: f64,
}

/// A task as pass 1 keeps it.
#[derive(Debug, Clone, Copy)]
struct Task {
    node: u32,
    times: TaskTimes,
    cpu_ms: Option<f64>,
    /// Peak RSS the agent recorded on the invocation, KiB.
    rss_peak_kb: Option<u64>,
    id: i32,
}

/// A joined sample, relative to its task's start.
#[derive(Debug, Clone, Copy)]
struct Compact {
    end_off: u32,
    dt: u32,
    cpu_ms: f64,
}

/// Export `input` (a node directory or a run directory of node directories)
/// to `output` (created if needed).
pub fn export_opendc(input: &Path, output: &Path, mode: TaskIdMode) -> Result<ExportReport> {
    let started = Instant::now();
    let nodes = discover(input)?;
    let mut report = ExportReport {
        nodes: nodes.len(),
        ..Default::default()
    };
    tracing::info!("export: {} node(s) under {}", nodes.len(), input.display());
    let mut run_ids: Vec<&str> = nodes.iter().map(|n| n.meta.run_id.as_str()).collect();
    run_ids.sort_unstable();
    run_ids.dedup();
    if run_ids.len() > 1 {
        tracing::warn!("export: the nodes come from different runs: {run_ids:?}");
    }

    let mut tasks = read_tasks(&nodes, &mut report)?;
    order_tasks(&mut tasks);
    report.id_mode = assign_ids(&mut tasks, mode)?;
    report.tasks = tasks.len();
    tracing::info!("export: {} task(s), ids by {}", tasks.len(), report.id_mode);

    std::fs::create_dir_all(output)
        .with_context(|| format!("creating output directory {}", output.display()))?;
    let frag_path = output.join(FRAGMENTS_FILE);
    let mut frags = RowSink::create(&frag_path, fragments_schema())?;
    let mut rows = vec![TaskRow::default(); tasks.len()];
    for (n, node) in nodes.iter().enumerate() {
        export_node(n as u32, node, &tasks, &mut rows, &mut frags, &mut report)?;
    }
    report.fragments = frags.rows;
    frags.finish()?;

    let mut task_sink = RowSink::create(&output.join(TASKS_FILE), tasks_schema())?;
    for (task, row) in tasks.iter().zip(&rows) {
        task_sink.push_task(task, row)?;
    }
    task_sink.finish()?;

    let dc = datacenter(nodes.iter().flat_map(|n| n.nodes.iter()));
    write_json_atomic(&output.join(DATACENTER_FILE), &dc)?;

    report.seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        "export: {} tasks, {} fragments in {:.2} s → {}",
        report.tasks,
        report.fragments,
        report.seconds,
        output.display()
    );
    Ok(report)
}

/// Pass 1: every node's complete invocations, in file order.
fn read_tasks(nodes: &[NodeDir], report: &mut ExportReport) -> Result<Vec<Task>> {
    let mut tasks = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        let mut incomplete = 0u64;
        let stats = node.read_invocations(|rec, _| {
            let Some(times) = rec.window() else {
                incomplete += 1;
                return Ok(());
            };
            if times.ts_end - times.ts_start > i64::from(u32::MAX) {
                bail!(
                    "task pid {} runs {} ms, longer than the export supports",
                    times.pid,
                    times.ts_end - times.ts_start
                );
            }
            tasks.push(Task {
                node: n as u32,
                times,
                cpu_ms: rec.cpu_ms,
                rss_peak_kb: rec.rss_peak_kb,
                id: 0,
            });
            Ok(())
        })?;
        if incomplete > 0 {
            tracing::warn!(
                "{}: {incomplete} invocation(s) lack pid or a time and are not exported",
                node.invocations_path().display()
            );
        }
        report.invocations_incomplete += incomplete;
        report.torn_tails += usize::from(stats.torn_tail);
        report.bad_lines += stats.bad_count;
    }
    Ok(tasks)
}

/// A task and the id the export gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskId {
    /// Index of the task's node in `nodes`.
    pub node: usize,
    pub times: TaskTimes,
    pub id: i32,
}

/// The ids an export of `nodes` under `mode` writes, with the mode actually
/// used, so that other tools (`compare`) match OpenDC's task ids to the
/// traces exactly as the export assigned them.
pub fn task_ids(nodes: &[NodeDir], mode: TaskIdMode) -> Result<(TaskIdMode, Vec<TaskId>)> {
    let mut tasks = read_tasks(nodes, &mut ExportReport::default())?;
    order_tasks(&mut tasks);
    let used = assign_ids(&mut tasks, mode)?;
    let ids = tasks
        .iter()
        .map(|t| TaskId {
            node: t.node as usize,
            times: t.times,
            id: t.id,
        })
        .collect();
    Ok((used, ids))
}

/// Task order of both files: by submission, then start, node and pid.
fn order_tasks(tasks: &mut [Task]) {
    tasks.sort_by_key(|t| {
        (
            t.times.ts_enqueue,
            t.times.ts_start,
            t.node,
            t.times.pid,
            t.times.ts_end,
        )
    });
}

/// Give every task its id; returns the mode used.
fn assign_ids(tasks: &mut [Task], mode: TaskIdMode) -> Result<TaskIdMode> {
    let mut pids: Vec<u32> = tasks.iter().map(|t| t.times.pid).collect();
    pids.sort_unstable();
    let duplicate = pids.windows(2).find(|w| w[0] == w[1]).map(|w| w[0]);
    let fits = pids.last().is_none_or(|&p| i32::try_from(p).is_ok());
    let used = match (mode, duplicate) {
        (TaskIdMode::Pid, Some(pid)) => bail!(
            "--task-id-mode pid: PID {pid} names more than one task (reused, or on \
             several nodes); use --task-id-mode sequential or auto"
        ),
        (TaskIdMode::Pid, None) if !fits => bail!("--task-id-mode pid: a PID exceeds INT32"),
        (TaskIdMode::Pid, None) => TaskIdMode::Pid,
        (TaskIdMode::Auto, None) if fits => TaskIdMode::Pid,
        _ => TaskIdMode::Sequential,
    };
    if used == TaskIdMode::Sequential && i32::try_from(tasks.len()).is_err() {
        bail!("{} tasks exceed INT32 ids", tasks.len());
    }
    for (i, t) in tasks.iter_mut().enumerate() {
        t.id = match used {
            // Checked above: every PID fits.
            TaskIdMode::Pid => t.times.pid as i32,
            _ => i as i32 + 1,
        };
    }
    Ok(used)
}

/// The computed part of a `tasks.parquet` row.
#[derive(Debug, Clone, Copy, Default)]
struct TaskRow {
    duration: i64,
    cpu_count: i32,
    cpu_capacity: f64,
    mem_kb: i64,
}

/// Pass 2 for one node.
fn export_node(
    n: u32,
    node: &NodeDir,
    tasks: &[Task],
    rows: &mut [TaskRow],
    frags: &mut RowSink,
    report: &mut ExportReport,
) -> Result<()> {
    let host = host_of(node)?;
    // This node's tasks, in global order.
    let mine: Vec<usize> = (0..tasks.len()).filter(|&i| tasks[i].node == n).collect();
    let index = TaskIndex::new(mine.iter().map(|&i| {
        let t = &tasks[i].times;
        (t.pid, t.ts_start, t.ts_end)
    }));
    let mut joined: Vec<Vec<Compact>> = vec![Vec::new(); mine.len()];
    let mut peak_rss = vec![0u64; mine.len()];

    let label = node.samples_path();
    let mut next_pct = 10;
    let mut counts = (0u64, 0u64, 0u64, 0u64); // read, joined, unmatched, incomplete
    let stats = node.read_samples(
        |s, _| {
            counts.0 += 1;
            let (Some(ts), Some(pid)) = (s.ts_ms, s.pid) else {
                counts.3 += 1;
                return Ok(());
            };
            let dt = s.dt_ms.unwrap_or(0).max(0);
            let Some(local) = index.find(pid, ts, dt) else {
                counts.2 += 1;
                return Ok(());
            };
            counts.1 += 1;
            let local = local as usize;
            let start = tasks[mine[local]].times.ts_start;
            if let Some(rss) = s.rss_kb {
                peak_rss[local] = peak_rss[local].max(rss);
            }
            joined[local].push(Compact {
                // ts is within [start, end], and a run fits in u32 ms (pass 1).
                end_off: (ts - start) as u32,
                dt: u32::try_from(dt).unwrap_or(u32::MAX),
                cpu_ms: s.cpu_ms.unwrap_or(0.0),
            });
            Ok(())
        },
        |read, total| {
            if total > 0 && read * 100 >= total * next_pct {
                tracing::info!("{}: {}% read", label.display(), read * 100 / total);
                while read * 100 >= total * next_pct {
                    next_pct += 10;
                }
            }
        },
    )?;
    report.samples += counts.0;
    report.samples_joined += counts.1;
    report.samples_unmatched += counts.2;
    report.samples_incomplete += counts.3;
    report.torn_tails += usize::from(stats.torn_tail);
    report.bad_lines += stats.bad_count;

    let mut intervals: Vec<Interval> = Vec::new();
    let mut out = Vec::new();
    for (local, &g) in mine.iter().enumerate() {
        let task = &tasks[g];
        let samples = std::mem::take(&mut joined[local]);
        let start = task.times.ts_start;
        intervals.clear();
        intervals.extend(samples.iter().map(|c| Interval {
            ts_ms: start + i64::from(c.end_off),
            dt_ms: i64::from(c.dt),
            cpu_ms: c.cpu_ms,
        }));
        drop(samples);
        let sampled_cpu: f64 = intervals.iter().map(|i| i.cpu_ms).sum();
        if intervals.is_empty() {
            report.tasks_without_samples += 1;
            if task.cpu_ms.is_none() {
                report.tasks_without_cpu += 1;
            }
        }
        let run = Run {
            ts_start: start,
            ts_end: task.times.ts_end,
            cpu_ms: task.cpu_ms,
        };
        out.clear();
        let shape = build_fragments(run, &mut intervals, host, &mut out);
        let traced = task.cpu_ms.unwrap_or(sampled_cpu);
        report.max_cpu_deviation_ms = report
            .max_cpu_deviation_ms
            .max((shape.fragment_cpu_ms - traced).abs());
        report.gap_ms += shape.gap_ms;
        for f in &out {
            frags.push_fragment(task.id, f.duration, f.cpu_usage)?;
        }
        rows[g] = TaskRow {
            duration: shape.duration,
            cpu_count: shape.cpu_count,
            cpu_capacity: shape.cpu_capacity,
            mem_kb: i64::try_from(
                peak_rss[local]
                    .max(task.rss_peak_kb.unwrap_or(0))
                    .max(MIN_MEM_KB),
            )
            .unwrap_or(i64::MAX),
        };
    }
    tracing::info!(
        "{}: {} task(s), {} sample(s) joined",
        node.dir.display(),
        mine.len(),
        counts.1
    );
    Ok(())
}

/// The node's own frequency and cores.
fn host_of(node: &NodeDir) -> Result<Host> {
    let mhz = node.meta.cpu_freq_mhz;
    if !(mhz.is_finite() && mhz > 0.0) {
        bail!(
            "{}: cpu_freq_mhz is {mhz}; the export needs the node's frequency \
             (set CPU_FREQ_MHZ on the agent, or fix node_meta.json)",
            node.dir.display()
        );
    }
    Ok(Host {
        mhz,
        cores: node.meta.cpu_cores.max(1),
    })
}

/// Column builders feeding one parquet file, flushed every [`BATCH_ROWS`].
struct RowSink {
    path: PathBuf,
    tmp: PathBuf,
    schema: SchemaRef,
    writer: ArrowWriter<File>,
    ints: Vec<Int32Builder>,
    longs: Vec<Int64Builder>,
    doubles: Vec<Float64Builder>,
    pending: usize,
    rows: u64,
}

impl RowSink {
    fn create(path: &Path, schema: SchemaRef) -> Result<Self> {
        let tmp = path.with_extension("parquet.tmp");
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_created_by(format!("tracekit-trace {}", env!("CARGO_PKG_VERSION")))
            .build();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .with_context(|| format!("starting {}", tmp.display()))?;
        let count = |t: &arrow_schema::DataType| {
            schema
                .fields()
                .iter()
                .filter(|f| f.data_type() == t)
                .count()
        };
        let ints = (0..count(&arrow_schema::DataType::Int32))
            .map(|_| Int32Builder::with_capacity(BATCH_ROWS))
            .collect();
        let longs = (0..count(&arrow_schema::DataType::Int64))
            .map(|_| Int64Builder::with_capacity(BATCH_ROWS))
            .collect();
        let doubles = (0..count(&arrow_schema::DataType::Float64))
            .map(|_| Float64Builder::with_capacity(BATCH_ROWS))
            .collect();
        Ok(RowSink {
            path: path.to_path_buf(),
            tmp,
            schema,
            writer,
            ints,
            longs,
            doubles,
            pending: 0,
            rows: 0,
        })
    }

    fn push_fragment(&mut self, id: i32, duration: i64, usage: f64) -> Result<()> {
        self.ints[0].append_value(id);
        self.longs[0].append_value(duration);
        self.doubles[0].append_value(usage);
        self.row_done()
    }

    fn push_task(&mut self, task: &Task, row: &TaskRow) -> Result<()> {
        self.ints[0].append_value(task.id);
        self.longs[0].append_value(task.times.ts_enqueue);
        self.longs[1].append_value(row.duration);
        self.ints[1].append_value(row.cpu_count);
        self.doubles[0].append_value(row.cpu_capacity);
        self.longs[2].append_value(row.mem_kb);
        self.row_done()
    }

    fn row_done(&mut self) -> Result<()> {
        self.pending += 1;
        self.rows += 1;
        if self.pending >= BATCH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    /// Hand the buffered rows to the writer as one batch, columns in schema
    /// order (the schema's field names decide which builder is which).
    fn flush(&mut self) -> Result<()> {
        if self.pending == 0 {
            return Ok(());
        }
        let (mut i, mut l, mut d) = (0, 0, 0);
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for field in self.schema.fields() {
            let array: ArrayRef = match field.data_type() {
                arrow_schema::DataType::Int32 => {
                    i += 1;
                    Arc::new(self.ints[i - 1].finish())
                }
                arrow_schema::DataType::Int64 => {
                    l += 1;
                    Arc::new(self.longs[l - 1].finish())
                }
                arrow_schema::DataType::Float64 => {
                    d += 1;
                    Arc::new(self.doubles[d - 1].finish())
                }
                other => bail!("unexpected column type {other} in {}", self.path.display()),
            };
            columns.push(array);
        }
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .with_context(|| format!("building a batch for {}", self.path.display()))?;
        self.writer
            .write(&batch)
            .with_context(|| format!("writing {}", self.tmp.display()))?;
        self.pending = 0;
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        self.flush()?;
        self.writer
            .close()
            .with_context(|| format!("closing {}", self.tmp.display()))?;
        std::fs::rename(&self.tmp, &self.path)
            .with_context(|| format!("renaming to {}", self.path.display()))
    }
}
