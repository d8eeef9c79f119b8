//! Export of a node or run directory as an OpenDC workload:
//! `tasks.parquet`, `fragments.parquet`, `small_datacenter.json` and
//! `experiment.json`.
//!
//! Two passes, linear in the input. Pass 1 reads every node's invocations
//! (small: one line per task), orders the tasks and assigns their ids. Pass 2
//! goes node by node: it streams the node's samples once, parsing and joining
//! each to its task by (pid, time) ([`TaskIndex`]) on every core (the reader
//! hands them back in file order), keeps 16 bytes per joined sample, then
//! cuts every task into fragments ([`build_fragments`]), appends them to
//! `fragments.parquet` in row groups and frees the node's samples before the
//! next node. Tasks whose CPU nothing measured are set aside and settled once
//! every node is read (their estimate may need the whole run). Peak memory is
//! therefore the largest node's samples at 16 bytes each plus a few dozen
//! bytes per task and the reader's two blocks of lines, never the JSON text.
//!
//! Every file is written under a temporary name and the four are renamed only
//! once all are complete, so a failed export leaves no file of its own behind
//! and an earlier export in the same directory untouched.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use arrow_array::builder::{
    Float64Builder, Int32Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::clock::{ClockTally, NodeClock};
use crate::join::TaskIndex;
use crate::opendc::{
    CpuSizing, DATACENTER_FILE, EXPERIMENT_FILE, FRAGMENTS_FILE, Host, Interval, MIN_MEM_KB,
    NodeHost, ORIGINAL_UNMEASURED_CORES, Run, TASKS_FILE, UnmeasuredCpu, build_fragments,
    command_shape, cpu_count_for, datacenter, experiment, fits, fragments_schema, node_host,
    quantile, tasks_schema, usage_mhz,
};
use crate::reader::{NodeDir, discover};
use crate::schema::{InvocationRecord, NODES_FILE, NodeInfo, SampleRecord, TaskTimes};

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

/// The choices of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExportOptions {
    pub id_mode: TaskIdMode,
    pub cpu_sizing: CpuSizing,
    pub unmeasured: UnmeasuredCpu,
    /// Put every time on Redis's clock by the measured offsets ([`crate::clock`]).
    pub correct_clock: bool,
}

/// Rows per record batch handed to the parquet writer.
const BATCH_ROWS: usize = 64 * 1024;
/// Rows per parquet row group (bounds the writer's buffered pages).
const ROW_GROUP_ROWS: usize = 1024 * 1024;
/// "No name" / "no shape" in the packed per-task fields.
const NONE: u32 = u32::MAX;

/// What an export did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExportReport {
    pub nodes: usize,
    /// Tasks read (complete invocations), and of them written.
    pub tasks: usize,
    pub tasks_exported: usize,
    pub fragments: u64,
    /// The id mode actually used (`Pid` or `Sequential`).
    pub id_mode: TaskIdMode,
    pub cpu_sizing: CpuSizing,
    pub unmeasured_mode: UnmeasuredCpu,
    /// The experiment's name: the run id (several joined by `+`).
    pub run_name: String,
    /// Sample lines read, and of them: joined to a task, matching no task,
    /// lacking a field the export needs (never taken as a measurement).
    pub samples: u64,
    pub samples_joined: u64,
    pub samples_unmatched: u64,
    pub samples_incomplete: u64,
    /// Invocation lines lacking pid or a time (not exported).
    pub invocations_incomplete: u64,
    /// Tasks no sample joined.
    pub tasks_without_samples: usize,
    /// Tasks whose CPU nothing measured (no exact total, no sample interval
    /// of positive length), and what became of them: skipped, given the
    /// median rate of their command shape, given the original's quarter
    /// core; under `shape-median`, those skipped for want of a measured
    /// task of the same shape, or because no command shape was recorded.
    pub tasks_unmeasured: usize,
    pub unmeasured_skipped: usize,
    pub unmeasured_estimated: usize,
    pub unmeasured_original: usize,
    pub unmeasured_no_peer: usize,
    pub unmeasured_no_shape: usize,
    /// Time no sample covered, summed over measured tasks, ms.
    pub gap_ms: i64,
    /// Largest |fragment CPU − traced CPU| of a measured task, ms.
    pub max_cpu_deviation_ms: f64,
    /// CPU the written fragments carry, ms, and of it what the tasks'
    /// capacities clip in the replay (0 under peak sizing).
    pub cpu_ms: f64,
    pub clipped_cpu_ms: f64,
    /// CPU P95 sizing clips (whichever sizing was chosen), ms, and the tasks
    /// it clips.
    pub p95_clip_ms: f64,
    pub tasks_p95_clipped: usize,
    /// Files whose torn last line was skipped, and bad lines skipped elsewhere.
    pub torn_tails: usize,
    pub bad_lines: u64,
    /// With `correct_clock`: what the correction did, and what it could not.
    pub clock: Option<ClockTally>,
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
    /// `trace_id` as (start, len) in [`Names`], or `NONE`.
    name: (u32, u32),
    /// Command shape index, or `NONE` (only under `shape-median`).
    shape: u32,
}

/// Every task's `trace_id` in one string: a task keeps 8 bytes, not a String.
#[derive(Default)]
struct Names {
    text: String,
}

impl Names {
    fn add(&mut self, name: Option<&str>) -> Result<(u32, u32)> {
        let Some(name) = name else {
            return Ok((NONE, 0));
        };
        let start = u32::try_from(self.text.len())
            .ok()
            .filter(|&s| s != NONE)
            .context("trace ids exceed 4 GiB")?;
        let len = u32::try_from(name.len()).context("a trace id exceeds 4 GiB")?;
        self.text.push_str(name);
        Ok((start, len))
    }

    fn get(&self, (start, len): (u32, u32)) -> Option<&str> {
        let (start, len) = (start as usize, len as usize);
        (start != NONE as usize).then(|| &self.text[start..start + len])
    }
}

/// A joined sample, relative to its task's start.
#[derive(Debug, Clone, Copy)]
struct Compact {
    end_off: u32,
    dt: u32,
    cpu_ms: f64,
}

/// A sample line as the join leaves it; `present` says which fields a line
/// lacking one has.
#[derive(Debug, Clone, Copy)]
enum JoinedSample {
    /// Without ts or pid.
    Incomplete { present: Option<[bool; 5]> },
    /// Of no task.
    Unmatched { present: Option<[bool; 5]> },
    /// Of the node's task `local`; `sample` when it measured CPU.
    Joined {
        present: Option<[bool; 5]>,
        local: u32,
        rss_kb: Option<u64>,
        sample: Option<Compact>,
    },
}

/// The computed part of a `tasks.parquet` row.
#[derive(Debug, Clone, Copy, Default)]
struct TaskRow {
    duration: i64,
    cpu_count: i32,
    cpu_capacity: f64,
    mem_kb: i64,
    /// Left out of the workload.
    skipped: bool,
}

/// A task whose CPU nothing measured, settled after every node is read.
struct Unmeasured {
    task: usize,
    host: Host,
}

/// Export `input` (a node directory or a run directory of node directories)
/// to `output` (created if needed) with the default sizing and handling of
/// unmeasured tasks.
pub fn export_opendc(input: &Path, output: &Path, mode: TaskIdMode) -> Result<ExportReport> {
    export_opendc_with(
        input,
        output,
        &ExportOptions {
            id_mode: mode,
            ..Default::default()
        },
    )
}

/// Export `input` to `output` as `opts` say.
pub fn export_opendc_with(
    input: &Path,
    output: &Path,
    opts: &ExportOptions,
) -> Result<ExportReport> {
    let started = Instant::now();
    let nodes = discover(input)?;
    let mut report = ExportReport {
        nodes: nodes.len(),
        cpu_sizing: opts.cpu_sizing,
        unmeasured_mode: opts.unmeasured,
        ..Default::default()
    };
    tracing::info!("export: {} node(s) under {}", nodes.len(), input.display());
    let mut run_ids: Vec<&str> = nodes.iter().map(|n| n.meta.run_id.as_str()).collect();
    run_ids.sort_unstable();
    run_ids.dedup();
    if run_ids.len() > 1 {
        tracing::warn!("export: the nodes come from different runs: {run_ids:?}");
    }
    report.run_name = run_ids.join("+");
    let hosts: Vec<NodeHost> = nodes.iter().map(host_of).collect::<Result<_>>()?;

    report.clock = opts.correct_clock.then(ClockTally::default);
    let mut names = Names::default();
    let mut shapes = Shapes::default();
    let mut tasks = read_tasks(&nodes, opts, &mut names, &mut shapes, &mut report)?;
    if let Some(tally) = &report.clock {
        tracing::info!("export: {}", tally.note());
        for w in tally.warnings() {
            tracing::warn!("export: {w}");
        }
    }
    if tasks.is_empty() {
        let files: Vec<String> = nodes
            .iter()
            .map(|n| n.invocations_path().display().to_string())
            .collect();
        bail!(
            "nothing to export: no complete invocation (pid, ts_enqueue, ts_start, ts_end) in {}",
            files.join(", ")
        );
    }
    order_tasks(&mut tasks);
    report.id_mode = assign_ids(&mut tasks, opts.id_mode)?;
    report.tasks = tasks.len();
    tracing::info!("export: {} task(s), ids by {}", tasks.len(), report.id_mode);

    std::fs::create_dir_all(output)
        .with_context(|| format!("creating output directory {}", output.display()))?;
    let output = output
        .canonicalize()
        .with_context(|| format!("resolving {}", output.display()))?;
    let mut staged = Staged::default();
    let mut frags = FragmentSink::fragments(staged.add(&output.join(FRAGMENTS_FILE)))?;
    let mut rows = vec![TaskRow::default(); tasks.len()];
    let mut unmeasured = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        let ctx = NodeCtx {
            n: n as u32,
            node,
            host: hosts[n].host,
            sizing: opts.cpu_sizing,
            clock: opts.correct_clock.then(|| NodeClock::of(&node.meta)),
        };
        export_node(
            &ctx,
            &tasks,
            &mut rows,
            &mut frags,
            &mut shapes,
            &mut unmeasured,
            &mut report,
        )?;
    }
    settle_unmeasured(
        &unmeasured,
        opts,
        &tasks,
        &shapes,
        &mut rows,
        &mut frags,
        &mut report,
    )?;
    report.fragments = frags.rows;
    report.tasks_exported = rows.iter().filter(|r| !r.skipped).count();
    if report.tasks_exported == 0 {
        bail!(
            "nothing to export: all {} task(s) in {} have no CPU measurement and \
             --unmeasured-cpu {} left none (see the audit; --unmeasured-cpu shape-median or \
             original export them with an estimate)",
            report.tasks,
            input.display(),
            opts.unmeasured
        );
    }
    frags.finish()?;

    let mut task_sink = TaskSink::tasks(staged.add(&output.join(TASKS_FILE)))?;
    for (task, row) in tasks.iter().zip(&rows) {
        if !row.skipped {
            task_sink.task(task, names.get(task.name), row)?;
        }
    }
    task_sink.finish()?;

    let dc = datacenter(hosts.iter().copied());
    write_json(staged.add(&output.join(DATACENTER_FILE)), &dc)?;
    let exp = experiment(&report.run_name, &output)?;
    write_json(staged.add(&output.join(EXPERIMENT_FILE)), &exp)?;
    staged.commit()?;

    report.seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        "export: {} of {} tasks, {} fragments in {:.2} s → {}",
        report.tasks_exported,
        report.tasks,
        report.fragments,
        report.seconds,
        output.display()
    );
    Ok(report)
}

/// The node's OpenDC host: its `nodes.json` entry (the one named after the
/// node, else the only one), else the rounded form of `node_meta.json`.
fn host_of(node: &NodeDir) -> Result<NodeHost> {
    let path = node.cts.join(NODES_FILE);
    let named = node.nodes.iter().find(|i| i.node_id == node.meta.node);
    let entry = match (named, node.nodes.as_slice()) {
        (Some(e), _) => e.clone(),
        (None, [only]) => {
            tracing::warn!(
                "{}: its one entry is node {:?}, not {:?} as node_meta.json says; using it",
                path.display(),
                only.node_id,
                node.meta.node
            );
            only.clone()
        }
        (None, []) => NodeInfo::from_meta(&node.meta),
        (None, many) => bail!(
            "{}: {} entries, none for node {:?} of {}",
            path.display(),
            many.len(),
            node.meta.node,
            node.dir.display()
        ),
    };
    let source = if path.exists() {
        path
    } else {
        node.dir.join(crate::schema::NODE_META_FILE)
    };
    node_host(&entry, &source)
}

/// Command shapes, interned, and the measured rates (cores) of each.
#[derive(Default)]
struct Shapes {
    index: HashMap<String, u32>,
    rates: Vec<Vec<f64>>,
}

impl Shapes {
    fn intern(&mut self, shape: Option<String>) -> u32 {
        let Some(shape) = shape else {
            return NONE;
        };
        if let Some(&i) = self.index.get(&shape) {
            return i;
        }
        let i = self.rates.len() as u32;
        self.index.insert(shape, i);
        self.rates.push(Vec::new());
        i
    }
}

/// How many of a file's records lack each field (counted on the rare
/// incomplete record only, off the hot path).
#[derive(Default)]
struct Seen {
    records: u64,
    missing: [u64; 5],
}

impl Seen {
    fn miss(&mut self, present: [bool; 5]) {
        for (n, p) in self.missing.iter_mut().zip(present) {
            *n += u64::from(!p);
        }
    }

    /// A column no record holds is a trace of another format, not a gap:
    /// an error naming the file and the column.
    fn require(&self, path: &Path, names: &[&str; 5], required: &[usize]) -> Result<()> {
        if self.records == 0 {
            return Ok(());
        }
        for &i in required {
            if self.missing[i] == self.records {
                bail!(
                    "{}: no record has the column {:?} ({} record(s) read); the export needs it",
                    path.display(),
                    names[i],
                    self.records
                );
            }
        }
        Ok(())
    }
}

/// Pass 1: every node's complete invocations, in file order.
fn read_tasks(
    nodes: &[NodeDir],
    opts: &ExportOptions,
    names: &mut Names,
    shapes: &mut Shapes,
    report: &mut ExportReport,
) -> Result<Vec<Task>> {
    let by_shape = opts.unmeasured == UnmeasuredCpu::ShapeMedian;
    let mut tasks = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        // The original's CTS invocations lack the output name; its event
        // file has it, by trace id.
        let legacy_outputs = if by_shape {
            legacy_outputs(node, report)?
        } else {
            HashMap::new()
        };
        let mut incomplete = 0u64;
        let mut seen = Seen::default();
        let clock = opts.correct_clock.then(|| NodeClock::of(&node.meta));
        if let (Some(clock), Some(tally)) = (clock, report.clock.as_mut()) {
            tally.node(node.name(), &node.dir, clock);
        }
        let stats = node.read_invocations(|mut rec, _| {
            seen.records += 1;
            if let Some(clock) = clock {
                let how = clock.invocation(&mut rec);
                if let Some(tally) = report.clock.as_mut() {
                    tally.task(&rec, how);
                }
            }
            let Some(times) = rec.window() else {
                seen.miss(rec.present());
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
            let shape = if by_shape {
                let output = rec.output.as_ref().and_then(|v| v.as_str()).or_else(|| {
                    rec.trace_id
                        .as_deref()
                        .and_then(|t| legacy_outputs.get(t).map(String::as_str))
                });
                shapes.intern(command_shape(
                    rec.comm.as_deref(),
                    rec.profile.as_ref(),
                    rec.cpu_units.as_ref(),
                    output,
                ))
            } else {
                NONE
            };
            tasks.push(Task {
                node: n as u32,
                times,
                cpu_ms: rec.cpu_ms,
                rss_peak_kb: rec.rss_peak_kb,
                id: 0,
                name: names.add(rec.trace_id.as_deref())?,
                shape,
            });
            Ok(())
        })?;
        seen.require(
            &node.invocations_path(),
            &InvocationRecord::REQUIRED,
            &[1, 2, 3, 4],
        )?;
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

/// trace_id → output name from the original's event file, if the node has
/// one; its damaged lines count with the others in `report`.
fn legacy_outputs(node: &NodeDir, report: &mut ExportReport) -> Result<HashMap<String, String>> {
    let mut map = HashMap::new();
    let stats = node.read_legacy_events(|rec, _| {
        if let (Some(id), Some(serde_json::Value::String(out))) = (rec.trace_id, rec.output) {
            map.insert(id, out);
        }
        Ok(())
    })?;
    if let Some(stats) = stats {
        report.torn_tails += usize::from(stats.torn_tail);
        report.bad_lines += stats.bad_count;
    }
    Ok(map)
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
/// traces exactly as the export assigned them (with `correct_clock`, as
/// `--correct-clock` orders them, and with their times corrected).
pub fn task_ids(
    nodes: &[NodeDir],
    mode: TaskIdMode,
    correct_clock: bool,
) -> Result<(TaskIdMode, Vec<TaskId>)> {
    // Ids do not depend on the sizing or on unmeasured tasks (those skipped
    // keep theirs unused), so the default options give the export's ids.
    let mut tasks = read_tasks(
        nodes,
        &ExportOptions {
            correct_clock,
            ..ExportOptions::default()
        },
        &mut Names::default(),
        &mut Shapes::default(),
        &mut ExportReport::default(),
    )?;
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

/// What pass 2 knows of the node it exports.
struct NodeCtx<'a> {
    n: u32,
    node: &'a NodeDir,
    host: Host,
    sizing: CpuSizing,
    /// Moves the node's sample times as its tasks' were moved (`--correct-clock`).
    clock: Option<NodeClock>,
}

/// Pass 2 for one node.
fn export_node(
    ctx: &NodeCtx,
    tasks: &[Task],
    rows: &mut [TaskRow],
    frags: &mut FragmentSink,
    shapes: &mut Shapes,
    unmeasured: &mut Vec<Unmeasured>,
    report: &mut ExportReport,
) -> Result<()> {
    let (node, host) = (ctx.node, ctx.host);
    // This node's tasks, in global order.
    let mine: Vec<usize> = (0..tasks.len())
        .filter(|&i| tasks[i].node == ctx.n)
        .collect();
    let index = TaskIndex::new(mine.iter().map(|&i| {
        let t = &tasks[i].times;
        (t.pid, t.ts_start, t.ts_end)
    }));
    let mut joined: Vec<Vec<Compact>> = vec![Vec::new(); mine.len()];
    let mut peak_rss = vec![0u64; mine.len()];

    let mut counts = (0u64, 0u64, 0u64, 0u64); // read, joined, unmatched, incomplete
    let mut seen = Seen::default();
    // The join needs no order: it runs on the threads that parse.
    let join = |s: SampleRecord| {
        // Only a sample lacking a field says which (rare).
        let complete = s.dt_ms.is_some() && s.cpu_ms.is_some();
        let present = if complete && s.ts_ms.is_some() && s.pid.is_some() {
            None
        } else {
            Some(s.present())
        };
        let (Some(ts), Some(pid)) = (s.ts_ms, s.pid) else {
            return JoinedSample::Incomplete { present };
        };
        let ts = ctx.clock.map_or(ts, |c| c.time(ts));
        let Some(local) = index.find(pid, ts, s.dt_ms.unwrap_or(0).max(0)) else {
            return JoinedSample::Unmatched { present };
        };
        let start = tasks[mine[local as usize]].times.ts_start;
        JoinedSample::Joined {
            present,
            local,
            rss_kb: s.rss_kb,
            // Without both, the sample measured no CPU: never a zero.
            sample: s.dt_ms.zip(s.cpu_ms).map(|(dt_ms, cpu_ms)| Compact {
                // ts is within [start, end], and a run fits in u32 ms (pass 1).
                end_off: (ts - start) as u32,
                dt: u32::try_from(dt_ms.max(0)).unwrap_or(u32::MAX),
                cpu_ms,
            }),
        }
    };
    let stats = node.read_samples_with(
        join,
        |j, _| {
            counts.0 += 1;
            seen.records += 1;
            let (JoinedSample::Incomplete { present }
            | JoinedSample::Unmatched { present }
            | JoinedSample::Joined { present, .. }) = j;
            if let Some(present) = present {
                seen.miss(present);
            }
            match j {
                JoinedSample::Incomplete { .. } => counts.3 += 1,
                JoinedSample::Unmatched { .. } => counts.2 += 1,
                JoinedSample::Joined {
                    local,
                    rss_kb,
                    sample,
                    ..
                } => {
                    let local = local as usize;
                    if let Some(rss) = rss_kb {
                        peak_rss[local] = peak_rss[local].max(rss);
                    }
                    match sample {
                        Some(c) => {
                            counts.1 += 1;
                            joined[local].push(c);
                        }
                        None => counts.3 += 1,
                    }
                }
            }
            Ok(())
        },
        crate::reader::log_progress(&node.samples_path()),
    )?;
    // rss_kb is optional (the original wrote it only when it had it).
    seen.require(&node.samples_path(), &SampleRecord::FIELDS, &[0, 1, 2, 3])?;
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
        }
        let run = Run {
            ts_start: start,
            ts_end: task.times.ts_end,
            cpu_ms: task.cpu_ms,
        };
        out.clear();
        let shape = build_fragments(run, &mut intervals, host, ctx.sizing, &mut out);
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
            skipped: false,
        };
        if !shape.measured {
            unmeasured.push(Unmeasured { task: g, host });
            continue;
        }
        let traced = task.cpu_ms.unwrap_or(sampled_cpu);
        report.max_cpu_deviation_ms = report
            .max_cpu_deviation_ms
            .max((shape.fragment_cpu_ms - traced).abs());
        report.gap_ms += shape.gap_ms;
        report.cpu_ms += shape.fragment_cpu_ms;
        report.p95_clip_ms += shape.p95_clip_ms;
        report.tasks_p95_clipped += usize::from(shape.p95_clip_ms > 0.0);
        if ctx.sizing == CpuSizing::P95 {
            report.clipped_cpu_ms += shape.p95_clip_ms;
        }
        if task.shape != NONE {
            shapes.rates[task.shape as usize].push(shape.fragment_cpu_ms / shape.duration as f64);
        }
        check_fits(task, &rows[g], host, node)?;
        for f in &out {
            frags.fragment(task.id, f.duration, f.cpu_usage)?;
        }
    }
    tracing::info!(
        "{}: {} task(s), {} sample(s) joined",
        node.dir.display(),
        mine.len(),
        counts.1
    );
    Ok(())
}

/// The sizing promises every task a host of its node; a breach is a bug,
/// and is said so rather than written.
fn check_fits(task: &Task, row: &TaskRow, host: Host, node: &NodeDir) -> Result<()> {
    if !fits(row.cpu_capacity, row.cpu_count, host) {
        bail!(
            "task pid {} of {}: cpu_capacity {} MHz on {} core(s) does not fit a host of \
             {} cores at {} MHz (an export bug)",
            task.times.pid,
            node.dir.display(),
            row.cpu_capacity,
            row.cpu_count,
            host.cores,
            host.mhz
        );
    }
    Ok(())
}

/// Give each task whose CPU nothing measured what `opts.unmeasured` says.
fn settle_unmeasured(
    unmeasured: &[Unmeasured],
    opts: &ExportOptions,
    tasks: &[Task],
    shapes: &Shapes,
    rows: &mut [TaskRow],
    frags: &mut FragmentSink,
    report: &mut ExportReport,
) -> Result<()> {
    report.tasks_unmeasured = unmeasured.len();
    if unmeasured.is_empty() {
        return Ok(());
    }
    let medians: Vec<Option<f64>> = shapes
        .rates
        .iter()
        .map(|r| {
            let mut r = r.clone();
            (!r.is_empty()).then(|| quantile(&mut r, 0.5))
        })
        .collect();
    for u in unmeasured {
        let task = &tasks[u.task];
        let row = &mut rows[u.task];
        let cores = match opts.unmeasured {
            UnmeasuredCpu::Skip => None,
            UnmeasuredCpu::Original => Some(ORIGINAL_UNMEASURED_CORES),
            UnmeasuredCpu::ShapeMedian if task.shape == NONE => {
                report.unmeasured_no_shape += 1;
                None
            }
            UnmeasuredCpu::ShapeMedian => {
                let median = medians.get(task.shape as usize).copied().flatten();
                if median.is_none() {
                    report.unmeasured_no_peer += 1;
                }
                median
            }
        };
        let Some(cores) = cores else {
            row.skipped = true;
            report.unmeasured_skipped += 1;
            continue;
        };
        match opts.unmeasured {
            UnmeasuredCpu::Original => report.unmeasured_original += 1,
            _ => report.unmeasured_estimated += 1,
        }
        // One fragment: the whole run at the one rate; its capacity is that
        // usage under either sizing.
        let usage = usage_mhz(cores, u.host);
        row.cpu_capacity = usage;
        row.cpu_count = cpu_count_for(usage, u.host);
        if !fits(row.cpu_capacity, row.cpu_count, u.host) {
            bail!(
                "task pid {}: estimated {usage} MHz on {} core(s) does not fit its host \
                 (an export bug)",
                task.times.pid,
                row.cpu_count
            );
        }
        report.cpu_ms += usage / u.host.mhz * row.duration as f64;
        frags.fragment(task.id, row.duration, usage)?;
    }
    tracing::info!(
        "export: {} task(s) without CPU measurement: {} skipped, {} estimated, {} as the original",
        report.tasks_unmeasured,
        report.unmeasured_skipped,
        report.unmeasured_estimated,
        report.unmeasured_original
    );
    Ok(())
}

/// The temporary files of an export, renamed into place together by
/// [`Staged::commit`]; removed if the export fails before.
#[derive(Default)]
struct Staged {
    files: Vec<(PathBuf, PathBuf)>,
    committed: bool,
}

impl Staged {
    /// Stage `path`; returns its temporary name.
    fn add(&mut self, path: &Path) -> (PathBuf, PathBuf) {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let pair = (PathBuf::from(tmp), path.to_path_buf());
        self.files.push(pair.clone());
        pair
    }

    fn commit(mut self) -> Result<()> {
        for (tmp, path) in &self.files {
            std::fs::rename(tmp, path)
                .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for (tmp, _) in &self.files {
            if let Err(e) = std::fs::remove_file(tmp)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!("removing {}: {e}", tmp.display());
            }
        }
    }
}

/// Write `value` as pretty JSON to the staged temporary file.
fn write_json<T: serde::Serialize>((tmp, _): (PathBuf, PathBuf), value: &T) -> Result<()> {
    let body = serde_json::to_vec_pretty(value)
        .with_context(|| format!("serializing {}", tmp.display()))?;
    std::fs::write(&tmp, body).with_context(|| format!("writing {}", tmp.display()))
}

/// A parquet file being written to its temporary name.
struct ParquetFile {
    tmp: PathBuf,
    schema: SchemaRef,
    writer: ArrowWriter<File>,
}

impl ParquetFile {
    fn create((tmp, _): (PathBuf, PathBuf), schema: SchemaRef) -> Result<Self> {
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_created_by(format!("tracekit-trace {}", env!("CARGO_PKG_VERSION")))
            .build();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .with_context(|| format!("starting {}", tmp.display()))?;
        Ok(ParquetFile {
            tmp,
            schema,
            writer,
        })
    }

    fn write(&mut self, columns: Vec<ArrayRef>) -> Result<()> {
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .with_context(|| format!("building a batch for {}", self.tmp.display()))?;
        self.writer
            .write(&batch)
            .with_context(|| format!("writing {}", self.tmp.display()))
    }

    fn close(self) -> Result<()> {
        self.writer
            .close()
            .with_context(|| format!("closing {}", self.tmp.display()))?;
        Ok(())
    }
}

/// The column builders of one parquet file's rows.
trait Columns {
    /// The rows appended since the last call, as arrays in schema order.
    fn finish(&mut self) -> Vec<ArrayRef>;
}

/// A parquet file written in batches of [`BATCH_ROWS`] rows.
struct Sink<C: Columns> {
    file: ParquetFile,
    columns: C,
    pending: usize,
    rows: u64,
}

impl<C: Columns> Sink<C> {
    fn create(staged: (PathBuf, PathBuf), schema: SchemaRef, columns: C) -> Result<Self> {
        Ok(Sink {
            file: ParquetFile::create(staged, schema)?,
            columns,
            pending: 0,
            rows: 0,
        })
    }

    /// Append one row with `append`.
    fn push(&mut self, append: impl FnOnce(&mut C)) -> Result<()> {
        append(&mut self.columns);
        self.pending += 1;
        self.rows += 1;
        if self.pending >= BATCH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending == 0 {
            return Ok(());
        }
        self.file.write(self.columns.finish())?;
        self.pending = 0;
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        self.flush()?;
        self.file.close()
    }
}

/// `fragments.parquet`'s columns.
struct FragmentColumns {
    id: Int32Builder,
    duration: Int64Builder,
    usage: Float64Builder,
}

impl Columns for FragmentColumns {
    fn finish(&mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.id.finish()),
            Arc::new(self.duration.finish()),
            Arc::new(self.usage.finish()),
        ]
    }
}

type FragmentSink = Sink<FragmentColumns>;

impl FragmentSink {
    fn fragments(staged: (PathBuf, PathBuf)) -> Result<Self> {
        let columns = FragmentColumns {
            id: Int32Builder::with_capacity(BATCH_ROWS),
            duration: Int64Builder::with_capacity(BATCH_ROWS),
            usage: Float64Builder::with_capacity(BATCH_ROWS),
        };
        Sink::create(staged, fragments_schema(), columns)
    }

    fn fragment(&mut self, id: i32, duration: i64, usage: f64) -> Result<()> {
        self.push(|c| {
            c.id.append_value(id);
            c.duration.append_value(duration);
            c.usage.append_value(usage);
        })
    }
}

/// `tasks.parquet`'s columns.
struct TaskColumns {
    id: Int32Builder,
    name: StringBuilder,
    submission: TimestampMillisecondBuilder,
    duration: Int64Builder,
    cpu_count: Int32Builder,
    cpu_capacity: Float64Builder,
    mem: Int64Builder,
}

impl Columns for TaskColumns {
    fn finish(&mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.id.finish()),
            Arc::new(self.name.finish()),
            Arc::new(self.submission.finish()),
            Arc::new(self.duration.finish()),
            Arc::new(self.cpu_count.finish()),
            Arc::new(self.cpu_capacity.finish()),
            Arc::new(self.mem.finish()),
        ]
    }
}

type TaskSink = Sink<TaskColumns>;

impl TaskSink {
    fn tasks(staged: (PathBuf, PathBuf)) -> Result<Self> {
        let columns = TaskColumns {
            id: Int32Builder::with_capacity(BATCH_ROWS),
            name: StringBuilder::with_capacity(BATCH_ROWS, BATCH_ROWS * 32),
            submission: TimestampMillisecondBuilder::with_capacity(BATCH_ROWS).with_timezone("UTC"),
            duration: Int64Builder::with_capacity(BATCH_ROWS),
            cpu_count: Int32Builder::with_capacity(BATCH_ROWS),
            cpu_capacity: Float64Builder::with_capacity(BATCH_ROWS),
            mem: Int64Builder::with_capacity(BATCH_ROWS),
        };
        Sink::create(staged, tasks_schema(), columns)
    }

    fn task(&mut self, task: &Task, name: Option<&str>, row: &TaskRow) -> Result<()> {
        self.push(|c| {
            c.id.append_value(task.id);
            c.name.append_option(name);
            c.submission.append_value(task.times.ts_enqueue);
            c.duration.append_value(row.duration);
            c.cpu_count.append_value(row.cpu_count);
            c.cpu_capacity.append_value(row.cpu_capacity);
            c.mem.append_value(row.mem_kb);
        })
    }
}
