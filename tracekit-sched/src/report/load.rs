//! Reading a run for the report: tracekit-trace's reader for the tasks and
//! samples, its join to put each sample on its task, and its audit.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use tracekit_trace::audit::{AuditOptions, CLOCK_SKEW_WARN_MS, audit_with};
use tracekit_trace::clock::{ClockTally, NodeClock};
use tracekit_trace::join::TaskIndex;
use tracekit_trace::reader::{NodeDir, discover};
use tracekit_trace::{CollectorKind, InvocationRecord};

/// A complete task (every required field present) as the report uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunTask {
    /// Index into [`RunData::nodes`].
    pub node: usize,
    pub trace_id: String,
    pub pid: u32,
    pub profile: Option<String>,
    pub ts_enqueue: i64,
    pub ts_start: i64,
    pub ts_end: i64,
    /// The exact total when the collector recorded one, else the sum of the
    /// task's samples, else none.
    pub cpu_ms: Option<f64>,
    /// The larger of the invocation's peak and its samples' largest RSS.
    pub peak_rss_kb: Option<u64>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

impl RunTask {
    pub fn failed(&self) -> bool {
        self.exit_code.is_some_and(|c| c != 0) || self.signal.is_some_and(|s| s != 0)
    }
}

/// A sample, as much as the charts need.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunSample {
    pub ts_ms: i64,
    pub dt_ms: i64,
    pub cpu_ms: f64,
    pub rss_kb: u64,
}

/// One node of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunNode {
    pub name: String,
    pub dir: PathBuf,
    pub cores: u32,
    pub mhz: f64,
    pub collector: Option<CollectorKind>,
    pub fallback_reason: Option<String>,
    pub interval_ms: Option<u64>,
    pub events_lost: u64,
    /// Samples of this node's processes (joined to a task or not: a traced
    /// process is using the node either way).
    pub samples: Vec<RunSample>,
}

/// A dead-lettered task, as `q:dead` holds it.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct DeadTask {
    pub reason: String,
    #[serde(default)]
    pub node: Option<String>,
    pub ts: i64,
    /// The task's JSON.
    pub task: String,
}

/// Everything the report is computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct RunData {
    pub input: PathBuf,
    pub run_ids: Vec<String>,
    pub nodes: Vec<RunNode>,
    pub tasks: Vec<RunTask>,
    /// Invocation lines lacking a field a task needs.
    pub incomplete: u64,
    /// The dead letters, when given.
    pub dead: Option<Vec<DeadTask>>,
    pub audit_ok: bool,
    pub audit_problems: Vec<String>,
    pub audit_warnings: Vec<String>,
    /// What the run was asked to do and did not (a collector fallback,
    /// tasks run unbound, privileges kept), each with its node: the
    /// report's first lines.
    pub not_as_asked: Vec<String>,
    /// With `--correct-clock`: what was corrected, then what could not be
    /// (`warning: …`).
    pub clock: Vec<String>,
}

/// How a run is read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadOptions {
    /// Put every time on Redis's clock (`tracekit_trace::clock`).
    pub correct_clock: bool,
    /// The audit's clock threshold, ms.
    pub clock_skew_warn_ms: f64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            correct_clock: false,
            clock_skew_warn_ms: CLOCK_SKEW_WARN_MS,
        }
    }
}

/// The complete tasks of a run, as [`read_tasks`] finds them.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadTasks {
    /// Node by node, in file order.
    pub tasks: Vec<RunTask>,
    /// Invocation lines left out for lack of a required field.
    pub incomplete: u64,
    /// With `correct_clock`: what the correction did.
    pub clock: Option<ClockTally>,
}

/// Read the run (or node) directory `input`, audit it, and read the dead
/// letters from `dead` (JSON lines) when given.
pub fn load(input: &Path, dead: Option<&Path>, opts: &LoadOptions) -> Result<RunData> {
    let dirs = discover(input)?;
    let ReadTasks {
        mut tasks,
        incomplete,
        clock,
    } = read_tasks(&dirs, opts.correct_clock)?;
    let clock_lines = clock.map_or_else(Vec::new, |tally| {
        let warnings = tally.warnings();
        for w in &warnings {
            tracing::warn!("{w}");
        }
        std::iter::once(tally.note())
            .chain(warnings.into_iter().map(|w| format!("warning: {w}")))
            .collect()
    });
    if incomplete > 0 {
        tracing::warn!(
            "{}: {incomplete} invocation(s) lack a required field and are left out",
            input.display()
        );
    }
    // The audit's own findings, as `tracekit-sched audit` reports them.
    let audit = audit_with(
        input,
        &AuditOptions {
            clock_skew_warn_ms: opts.clock_skew_warn_ms,
        },
    )
    .with_context(|| format!("auditing {}", input.display()))?;
    let mut run_ids: Vec<String> = Vec::new();
    let mut nodes = Vec::with_capacity(dirs.len());
    let mut first = 0;
    for (n, dir) in dirs.iter().enumerate() {
        if !run_ids.contains(&dir.meta.run_id) {
            run_ids.push(dir.meta.run_id.clone());
        }
        // Tasks come node by node (read_tasks).
        let end = first + tasks[first..].iter().take_while(|t| t.node == n).count();
        let clock = opts.correct_clock.then(|| NodeClock::of(&dir.meta));
        nodes.push(read_node(dir, &mut tasks[first..end], clock)?);
        first = end;
    }
    let mut data = RunData {
        input: input.to_path_buf(),
        run_ids,
        nodes,
        tasks: Vec::new(),
        incomplete,
        dead: None,
        audit_ok: audit.ok,
        not_as_asked: audit
            .nodes
            .iter()
            .flat_map(|n| {
                n.not_as_asked
                    .iter()
                    .map(move |l| format!("{}: {l}", n.node))
            })
            .collect(),
        audit_problems: audit.problems,
        audit_warnings: audit.warnings,
        clock: clock_lines,
    };
    data.tasks = tasks;
    if let Some(path) = dead {
        data.dead = Some(read_dead(path)?);
    }
    Ok(data)
}

/// Every complete task of `dirs`, node by node in file order, and the count
/// of invocation lines left out for lack of a required field; with
/// `correct_clock`, their times on Redis's clock. Not a single complete
/// task is an error naming the files and the fields missing.
pub fn read_tasks(dirs: &[NodeDir], correct_clock: bool) -> Result<ReadTasks> {
    let mut tasks = Vec::new();
    let mut incomplete = 0u64;
    let mut missing = [0u64; 5];
    let mut lines = 0u64;
    let mut tally = correct_clock.then(ClockTally::default);
    for (n, dir) in dirs.iter().enumerate() {
        let clock = correct_clock.then(|| NodeClock::of(&dir.meta));
        if let (Some(clock), Some(tally)) = (clock, tally.as_mut()) {
            tally.node(dir.name(), &dir.dir, clock);
        }
        dir.read_invocations(|mut rec: InvocationRecord, _| {
            lines += 1;
            if let Some(clock) = clock {
                let how = clock.invocation(&mut rec);
                if let Some(tally) = tally.as_mut() {
                    tally.task(&rec, how);
                }
            }
            for (i, present) in rec.present().into_iter().enumerate() {
                missing[i] += u64::from(!present);
            }
            match (rec.window(), rec.trace_id) {
                (Some(w), Some(trace_id)) => tasks.push(RunTask {
                    node: n,
                    trace_id,
                    pid: w.pid,
                    profile: rec
                        .profile
                        .as_ref()
                        .and_then(|p| p.as_str())
                        .map(str::to_string),
                    ts_enqueue: w.ts_enqueue,
                    ts_start: w.ts_start,
                    ts_end: w.ts_end,
                    cpu_ms: rec.cpu_ms,
                    peak_rss_kb: rec.rss_peak_kb,
                    exit_code: rec.exit_code,
                    signal: rec.signal,
                }),
                _ => incomplete += 1,
            }
            Ok(())
        })?;
    }
    if tasks.is_empty() {
        let files: Vec<String> = dirs
            .iter()
            .map(|d| d.invocations_path().display().to_string())
            .collect();
        if lines == 0 {
            bail!(
                "the run is empty: no task in {} (no line at all)",
                files.join(", ")
            );
        }
        let lacking: Vec<String> = InvocationRecord::REQUIRED
            .iter()
            .zip(missing)
            .filter(|(_, m)| *m > 0)
            .map(|(name, m)| format!("{m} lack `{name}`"))
            .collect();
        bail!(
            "no complete task in {}: {lines} line(s), of which {}",
            files.join(", "),
            lacking.join(", ")
        );
    }
    Ok(ReadTasks {
        tasks,
        incomplete,
        clock: tally,
    })
}

/// Read a node's samples, join them to its tasks for each task's sampled
/// CPU and peak RSS; `clock` moves their times as the tasks' were moved.
fn read_node(dir: &NodeDir, tasks: &mut [RunTask], clock: Option<NodeClock>) -> Result<RunNode> {
    let index = TaskIndex::new(tasks.iter().map(|t| (t.pid, t.ts_start, t.ts_end)));
    let mut sampled_cpu = vec![(0u64, 0.0f64, 0u64); tasks.len()];
    let mut samples = Vec::new();
    dir.read_samples(
        |s, _| {
            let (Some(ts), Some(pid)) = (s.ts_ms, s.pid) else {
                return Ok(());
            };
            let ts = clock.map_or(ts, |c| c.time(ts));
            let dt = s.dt_ms.unwrap_or(0).max(0);
            let cpu = s.cpu_ms.unwrap_or(0.0).max(0.0);
            let rss = s.rss_kb.unwrap_or(0);
            samples.push(RunSample {
                ts_ms: ts,
                dt_ms: dt,
                cpu_ms: cpu,
                rss_kb: rss,
            });
            if let Some(t) = index.find(pid, ts, dt) {
                let a = &mut sampled_cpu[t as usize];
                a.0 += 1;
                a.1 += cpu;
                a.2 = a.2.max(rss);
            }
            Ok(())
        },
        tracekit_trace::reader::log_progress(&dir.samples_path()),
    )?;
    for (t, (count, cpu, rss)) in tasks.iter_mut().zip(sampled_cpu) {
        if count > 0 {
            t.cpu_ms = t.cpu_ms.or(Some(cpu));
            t.peak_rss_kb = Some(t.peak_rss_kb.unwrap_or(0).max(rss));
        }
    }
    tracing::info!(
        "{}: {} task(s), {} sample(s)",
        dir.dir.display(),
        tasks.len(),
        samples.len()
    );
    Ok(RunNode {
        name: dir.name().to_string(),
        dir: dir.dir.clone(),
        cores: dir.meta.cpu_cores,
        mhz: dir.meta.cpu_freq_mhz,
        collector: dir
            .meta
            .collector
            .or(dir.tracer_stats.as_ref().and_then(|s| s.collector)),
        fallback_reason: dir.meta.fallback_reason.clone(),
        interval_ms: dir.meta.interval_ms,
        events_lost: dir.tracer_stats.as_ref().map_or(0, |s| s.events_lost),
        samples,
    })
}

/// Dead letters, one JSON object per line (`{task, reason, node, ts}`, as
/// `q:dead` holds them).
fn read_dead(path: &Path) -> Result<Vec<DeadTask>> {
    if !path.is_file() {
        bail!("{}: no such file (--dead-letters)", path.display());
    }
    let mut out = Vec::new();
    let stats = tracekit_trace::reader::read_jsonl(
        path,
        |d: DeadTask, _| {
            out.push(d);
            Ok(())
        },
        |_, _| {},
    )?;
    if stats.bad_count > 0 || stats.torn_tail {
        bail!(
            "{}: {} line(s) are not dead letters ({{task, reason, node, ts}})",
            path.display(),
            stats.bad_count + u64::from(stats.torn_tail)
        );
    }
    Ok(out)
}
