//! `tracekit-sched dispatch`: builds the task list (profiles, mix, seed) and
//! submits it — to `q:pending` (pulse or fifo arrival) or straight to
//! per-node queues (rr, duration-greedy, duration-online, drip).
//!
//! Submission goes through `Queue::submit`, which is exactly-once per
//! dispatcher run, so a Redis reconnect in the middle neither loses nor
//! duplicates a task. Each task carries the dispatcher's clock offset from
//! Redis `TIME` beside its submission time (see [`Clock`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use rand_core::RngCore;
use tracekit_proto::{Keys, Queue, SubmitTarget, Task};
use tracekit_trace::audit::CLOCK_SKEW_WARN_MS;
use tracekit_trace::clock::ClockTracker;

use crate::mix;
use crate::profiles::{Profile, Profiles};
use crate::progress::Progress;
use crate::py_random::PyRandom;
use crate::redis_conn::{RedisArgs, secs};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PendingMode {
    /// `--pulse-size` tasks per pulse, `--pulse-interval` seconds apart.
    Pulse,
    /// Keep q:pending below `--pending-max`, `--batch-size` per round.
    Fifo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Policy {
    /// Round robin over --nodes.
    #[value(alias = "rr3")]
    Rr,
    /// Longest processing time first by ffprobe duration (offline).
    #[value(alias = "lpt-duration")]
    DurationGreedy,
    /// Longest first, each to the node with the smallest backlog, then load
    /// (online, --backlog-limit per node).
    #[value(alias = "online-duration")]
    DurationOnline,
}

#[derive(Args, Debug)]
pub struct DispatchArgs {
    /// Directory of input videos (its *.mp4 files, sorted by name).
    #[arg(long)]
    pub inputs: PathBuf,
    /// Directory the outputs are named under.
    #[arg(long)]
    pub outputs: PathBuf,
    /// Profile weights, e.g. "medium480p=3,fast1080p=2".
    #[arg(long, default_value = "")]
    pub mix: String,
    /// Tasks to generate with --mix (0 = one task per input, profile drawn by weight).
    #[arg(long, default_value_t = 0)]
    pub total: u64,
    /// Seed of the task list (0 = unseeded). Same seed, same list.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// More profiles (JSON or .toml: name → {scale, vcodec, preset, crf, vthreads, fthreads, cpu_units}).
    #[arg(long)]
    pub profiles: Option<PathBuf>,
    /// Submit to the global pending list for the central scheduler.
    #[arg(long)]
    pub pending: bool,
    /// Name of the global pending list.
    #[arg(long, default_value = "q:pending")]
    pub pending_key: String,
    /// Arrival mode with --pending.
    #[arg(long, value_enum, default_value = "pulse")]
    pub pending_mode: PendingMode,
    /// Tasks per pulse.
    #[arg(long, default_value_t = 10)]
    pub pulse_size: usize,
    /// Seconds between pulses.
    #[arg(long, value_parser = secs, default_value = "300")]
    pub pulse_interval: Duration,
    /// Seconds between tasks inside a pulse.
    #[arg(long, value_parser = secs, default_value = "1")]
    pub pulse_spacing: Duration,
    /// fifo mode: keep q:pending shorter than this.
    #[arg(long, default_value_t = 6)]
    pub pending_max: usize,
    /// Tasks per round (fifo, drip, duration-online).
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Seconds between rounds (fifo, drip, duration-online).
    #[arg(long, value_parser = secs, default_value = "1")]
    pub dribble_interval: Duration,
    /// Nodes for the per-node modes (comma-separated).
    #[arg(long, default_value = "cloud0,cloud1,cloud2")]
    pub nodes: String,
    /// Per-node assignment policy (without --pending and --mix).
    #[arg(long, value_enum, default_value = "rr")]
    pub policy: Policy,
    /// Per-node modes: submit in small batches, at most --backlog-limit queued per node.
    #[arg(long)]
    pub drip: bool,
    /// Most queued tasks per node (drip, duration-online).
    #[arg(long, default_value_t = 1)]
    pub backlog_limit: usize,
    /// Scale of the policy modes (W:H).
    #[arg(long, default_value = "1280:720")]
    pub scale: String,
    /// Preset of the policy modes.
    #[arg(long, default_value = "veryfast")]
    pub preset: String,
    /// CRF of the policy modes.
    #[arg(long, default_value_t = 28)]
    pub crf: i64,
    /// The run to submit into: started if no run is current (default: the
    /// current run, or a new one named run-<UTC date>-<time>).
    #[arg(long, env = "RUN_ID")]
    pub run_id: Option<String>,
    /// Print the tasks as JSON lines instead of submitting them.
    #[arg(long)]
    pub dry_run: bool,
    /// For tests: pretend this host's clock is this many ms ahead (the
    /// submission times and the clock's measured offset both see it).
    #[arg(
        long,
        hide = true,
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    pub test_clock_skew_ms: f64,

    #[command(flatten)]
    pub redis: RedisArgs,
}

/// A task and, in the per-node modes, its node.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub task: Task,
    pub node: Option<String>,
    /// ffprobe duration, seconds (duration policies only).
    pub duration: f64,
}

/// The `*.mp4` files of `dir`, sorted by name.
pub fn list_inputs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading --inputs {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "mp4"))
        .collect();
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    if files.is_empty() {
        bail!("no *.mp4 files under {}", dir.display());
    }
    Ok(files)
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A task of profile `name`; the name travels with it (an unknown field to
/// the original's workers) so traces can be summarised per profile.
fn profile_task(input: &Path, output: PathBuf, name: &str, prof: &Profile, seq: u64) -> Task {
    Task {
        input: input.display().to_string(),
        output: output.display().to_string(),
        scale: Some(prof.scale.clone()),
        vcodec: Some(prof.vcodec.clone()),
        preset: Some(prof.preset.clone()),
        crf: Some(prof.crf),
        vthreads: Some(prof.vthreads),
        fthreads: Some(prof.fthreads),
        cpu_units: Some(prof.cpu_units),
        seq: Some(seq),
        ts_enqueue: None,
        ts_enqueue_offset_ms: None,
        cpuset: None,
        cpu_quota: None,
        cpu_weight: None,
        trace_id: None,
        profile: Some(name.to_string()),
        extra: serde_json::Map::new(),
    }
}

/// `--mix`: with `--total`, the split sequence shuffled by the seed and paired
/// with inputs cyclically; without, one task per input with a profile drawn
/// by weight. Nodes (per-node modes) round robin.
pub fn plan_mix(
    a: &DispatchArgs,
    files: &[PathBuf],
    profiles: &Profiles,
    nodes: &[String],
    rng: &mut PyRandom,
) -> anyhow::Result<Vec<Planned>> {
    let weights = mix::parse_mix(&a.mix)?;
    for (name, _) in &weights {
        profiles.get(name)?;
    }
    let names: Vec<String> = if a.total > 0 {
        mix::sequence(&weights, a.total, rng)
    } else {
        files
            .iter()
            .map(|_| mix::draw(&weights, rng).to_string())
            .collect()
    };
    let mut out = Vec::with_capacity(names.len());
    for (idx, name) in names.iter().enumerate() {
        let prof = profiles.get(name)?;
        let input = &files[idx % files.len()];
        let wh = prof.scale.replace(':', "x");
        let file = if a.total > 0 {
            format!(
                "{}_{wh}_{}_{}_n{idx:04}.mp4",
                stem(input),
                prof.vcodec,
                prof.preset
            )
        } else {
            format!("{}_{wh}_{}_{}.mp4", stem(input), prof.vcodec, prof.preset)
        };
        out.push(Planned {
            task: profile_task(input, a.outputs.join(file), name, prof, idx as u64),
            node: (!nodes.is_empty()).then(|| nodes[idx % nodes.len()].clone()),
            duration: 0.0,
        });
    }
    Ok(out)
}

fn policy_task(a: &DispatchArgs, input: &Path, seq: u64) -> Task {
    let file = format!(
        "{}_{}_crf{}.mp4",
        stem(input),
        a.scale.replace(':', "x"),
        a.crf
    );
    Task {
        input: input.display().to_string(),
        output: a.outputs.join(file).display().to_string(),
        scale: Some(a.scale.clone()),
        vcodec: None,
        preset: Some(a.preset.clone()),
        crf: Some(a.crf),
        vthreads: None,
        fthreads: None,
        cpu_units: None,
        seq: Some(seq),
        ts_enqueue: None,
        ts_enqueue_offset_ms: None,
        cpuset: None,
        cpu_quota: None,
        cpu_weight: None,
        trace_id: None,
        profile: None,
        extra: Default::default(),
    }
}

/// Seconds of media in `path` by ffprobe (0 when it cannot tell, with a warning).
pub fn probe_duration(path: &Path) -> f64 {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "default=nokey=1:noprint_wrappers=1",
        ])
        .arg(path)
        .output();
    match out {
        Ok(o) if o.status.success() => {
            match String::from_utf8_lossy(&o.stdout).trim().parse::<f64>() {
                Ok(d) if d.is_finite() && d >= 0.0 => d,
                _ => {
                    tracing::warn!(file = %path.display(), "ffprobe gave no duration: counting 0 s");
                    0.0
                }
            }
        }
        Ok(o) => {
            tracing::warn!(file = %path.display(), status = %o.status, "ffprobe failed: counting 0 s");
            0.0
        }
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot run ffprobe: counting 0 s");
            0.0
        }
    }
}

/// Files with durations, longest first (stable for equal durations).
fn by_duration(files: &[PathBuf], probe: &dyn Fn(&Path) -> f64) -> Vec<(f64, PathBuf)> {
    let mut v: Vec<(f64, PathBuf)> = files.iter().map(|f| (probe(f), f.clone())).collect();
    v.sort_by(|a, b| b.0.total_cmp(&a.0));
    v
}

/// The policy modes' plan. duration-greedy: longest first, each to the node
/// with the least assigned duration (ties: first in --nodes). duration-online:
/// longest first, nodes chosen at submission time.
pub fn plan_policy(
    a: &DispatchArgs,
    files: &[PathBuf],
    nodes: &[String],
    probe: &dyn Fn(&Path) -> f64,
) -> Vec<Planned> {
    match a.policy {
        Policy::Rr => files
            .iter()
            .enumerate()
            .map(|(i, f)| Planned {
                task: policy_task(a, f, i as u64),
                node: Some(nodes[i % nodes.len()].clone()),
                duration: 0.0,
            })
            .collect(),
        Policy::DurationGreedy => {
            let mut load = vec![0.0f64; nodes.len()];
            by_duration(files, probe)
                .into_iter()
                .enumerate()
                .map(|(i, (d, f))| {
                    let mut best = 0;
                    for (k, l) in load.iter().enumerate() {
                        if *l < load[best] {
                            best = k;
                        }
                    }
                    load[best] += d;
                    Planned {
                        task: policy_task(a, &f, i as u64),
                        node: Some(nodes[best].clone()),
                        duration: d,
                    }
                })
                .collect()
        }
        Policy::DurationOnline => by_duration(files, probe)
            .into_iter()
            .enumerate()
            .map(|(i, (d, f))| Planned {
                task: policy_task(a, &f, i as u64),
                node: None,
                duration: d,
            })
            .collect(),
    }
}

impl DispatchArgs {
    /// `--nodes a,b` as names.
    fn node_list(&self) -> Vec<String> {
        self.nodes
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(String::from)
            .collect()
    }
}

/// The whole plan, in submission order.
pub fn plan(a: &DispatchArgs, probe: &dyn Fn(&Path) -> f64) -> anyhow::Result<Vec<Planned>> {
    let files = list_inputs(&a.inputs)?;
    let mut profiles = Profiles::builtin();
    if let Some(p) = &a.profiles {
        profiles.load_file(p)?;
    }
    let nodes = a.node_list();
    if nodes.is_empty() && !a.pending {
        bail!("--nodes names no node");
    }
    tracekit_proto::task::parse_scale(&a.scale).context("--scale")?;
    let mut rng = mix::py_rng(a.seed);
    if !a.mix.trim().is_empty() {
        plan_mix(a, &files, &profiles, &nodes, &mut rng)
    } else {
        if nodes.is_empty() {
            bail!("--nodes names no node");
        }
        Ok(plan_policy(a, &files, &nodes, probe))
    }
}

/// Readings of the clock's offset when it starts submitting (the shortest
/// round trip of them is the first estimate).
const FIRST_READINGS: usize = 5;
/// While it submits, one more reading at most this often.
const READING_EVERY: Duration = Duration::from_secs(1);

/// The dispatcher's clock: submission times (epoch ms, strictly increasing
/// within this dispatcher) and its offset from Redis `TIME`, which each
/// task carries (`ts_enqueue_offset_ms`) so that `--correct-clock` can put
/// its submission time on Redis's clock wherever the trace is read.
struct Clock {
    last: i64,
    /// Added to the system clock (`--test-clock-skew-ms`), µs.
    skew_us: i64,
    offset: ClockTracker,
    read_at: Option<Instant>,
}

impl Clock {
    fn new(skew_ms: f64) -> Clock {
        Clock {
            last: 0,
            skew_us: (skew_ms * 1000.0).round() as i64,
            offset: ClockTracker::default(),
            read_at: None,
        }
    }

    fn now_us(&self) -> i64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        now + self.skew_us
    }

    fn next(&mut self) -> i64 {
        let now = self.now_us().div_euclid(1000);
        self.last = now.max(self.last + 1);
        self.last
    }

    /// Takes `readings` readings of the offset (a failed one is logged and
    /// skipped: the estimate so far stands).
    async fn read(&mut self, queue: &Queue, readings: usize) {
        for _ in 0..readings {
            match queue.clock_offset_of(|| self.now_us() as f64).await {
                Ok((offset, rtt)) => {
                    self.offset.add(offset, rtt);
                }
                Err(e) => tracing::warn!("reading Redis TIME for this host's clock offset: {e}"),
            }
        }
        self.read_at = Some(Instant::now());
    }

    /// A reading when the last is older than [`READING_EVERY`].
    async fn read_now_and_then(&mut self, queue: &Queue) {
        if self.read_at.is_none_or(|t| t.elapsed() >= READING_EVERY) {
            self.read(queue, 1).await;
        }
    }

    /// The estimate a task carries, ms (µs precision: more would be noise).
    fn offset_ms(&self) -> Option<f64> {
        self.offset
            .estimate()
            .map(|e| (e.offset_ms * 1000.0).round() / 1000.0)
    }

    /// Says what was measured (warns when no reading succeeded, or the
    /// clock is far off: the audit's default threshold).
    fn log(&self, when: &str) {
        match self.offset.estimate() {
            Some(e) if e.offset_ms.abs() > CLOCK_SKEW_WARN_MS => tracing::warn!(
                "{when}: this host's clock is {:+.1} ms off Redis TIME (±{:.1} ms, {} reading(s)); \
                 submission times carry it (export/report --correct-clock put them on Redis's clock)",
                e.offset_ms,
                e.rtt_ms / 2.0,
                e.samples
            ),
            Some(e) => tracing::info!(
                "{when}: this host's clock is {:+.1} ms off Redis TIME (±{:.1} ms, {} reading(s))",
                e.offset_ms,
                e.rtt_ms / 2.0,
                e.samples
            ),
            None => tracing::warn!(
                "{when}: no reading of Redis TIME succeeded: submission times carry no clock \
                 offset, and --correct-clock will say it cannot correct them"
            ),
        }
    }
}

/// Submits tasks exactly once (see `Queue::submit`), stamping `ts_enqueue`.
struct Submitter {
    queue: Queue,
    /// The run the tasks are submitted into.
    run: String,
    id: String,
    next_index: u64,
    clock: Clock,
    submitted: usize,
    total: usize,
    progress: Progress,
}

impl Submitter {
    async fn send(&mut self, target: SubmitTarget<'_>, tasks: &mut [Task]) -> anyhow::Result<()> {
        // Pulses can be minutes apart: the run may have been stopped since.
        let current = self
            .queue
            .current_run()
            .await
            .context("reading the current run")?;
        if current.as_deref() != Some(self.run.as_str()) {
            anyhow::bail!(
                "run {} was stopped while dispatching ({}): {} of {} task(s) submitted, the rest not",
                self.run,
                current.map_or_else(
                    || "no run is current".into(),
                    |c| format!("run {c} is current")
                ),
                self.submitted,
                self.total
            );
        }
        self.clock.read_now_and_then(&self.queue).await;
        let offset = self.clock.offset_ms();
        let mut items = Vec::with_capacity(tasks.len());
        for t in tasks.iter_mut() {
            t.ts_enqueue = Some(self.clock.next());
            t.ts_enqueue_offset_ms = offset;
            items.push((self.next_index, t.to_json()));
            self.next_index += 1;
        }
        self.queue
            .submit(&self.id, target, &items)
            .await
            .context("submitting tasks")?;
        self.submitted += tasks.len();
        self.progress
            .update(self.submitted as u64, self.total as u64, "");
        Ok(())
    }

    async fn pending_len(&self) -> anyhow::Result<usize> {
        self.queue
            .pending_len()
            .await
            .context("reading the length of the pending list")
    }

    async fn queue_len(&self, node: &str) -> anyhow::Result<usize> {
        self.queue
            .queue_len(node)
            .await
            .with_context(|| format!("reading the length of {node}'s queue"))
    }
}

pub async fn run(a: DispatchArgs) -> anyhow::Result<()> {
    let planned = plan(&a, &probe_duration)?;
    if a.dry_run {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for p in &planned {
            writeln!(out, "{}", p.task.to_json()).context("writing to stdout")?;
        }
        return Ok(());
    }
    let _ = std::fs::create_dir_all(&a.outputs);
    let queue = a
        .redis
        .queue_for_run(Keys {
            pending: a.pending_key.clone(),
            ..Keys::default()
        })
        .await?;
    let run = crate::run::ensure_current(&queue, a.run_id.as_deref()).await?;
    let id = format!("{:016x}", mix::rng(0).next_u64());
    tracing::info!(redis = %queue.conn().url(), %run, dispatcher = %id, tasks = planned.len(), "dispatching");
    let mut clock = Clock::new(a.test_clock_skew_ms);
    clock.read(&queue, FIRST_READINGS).await;
    clock.log("before submitting");
    let mut s = Submitter {
        queue,
        run,
        id,
        next_index: 0,
        clock,
        submitted: 0,
        total: planned.len(),
        progress: Progress::bar_only("tasks submitted", planned.len() as u64),
    };
    let total = planned.len();
    if a.pending {
        let mut tasks: Vec<Task> = planned.into_iter().map(|p| p.task).collect();
        match a.pending_mode {
            PendingMode::Pulse => pulse(&a, &mut s, &mut tasks).await?,
            PendingMode::Fifo => fifo(&a, &mut s, &mut tasks).await?,
        }
    } else if a.mix.trim().is_empty() && a.policy == Policy::DurationOnline {
        online(&a, &mut s, planned).await?;
    } else if a.drip {
        drip(&a, &mut s, planned).await?;
    } else {
        let mut per_node: Vec<(String, Vec<Task>)> = Vec::new();
        for p in planned {
            let node = p.node.unwrap_or_default();
            match per_node.iter_mut().find(|(n, _)| *n == node) {
                Some((_, v)) => v.push(p.task),
                None => per_node.push((node, vec![p.task])),
            }
        }
        for (node, tasks) in &mut per_node {
            s.send(SubmitTarget::Node(node), tasks).await?;
        }
        let counts: Vec<String> = per_node
            .iter()
            .map(|(n, t)| format!("{n}={}", t.len()))
            .collect();
        tracing::info!("enqueued {} tasks: {}", s.submitted, counts.join(", "));
    }
    s.progress.finish();
    s.clock.log("after submitting");
    tracing::info!(submitted = s.submitted, total, "done");
    Ok(())
}

async fn pulse(a: &DispatchArgs, s: &mut Submitter, tasks: &mut [Task]) -> anyhow::Result<()> {
    let size = a.pulse_size.max(1);
    let pulses = tasks.len().div_ceil(size);
    let total = tasks.len();
    for (p, chunk) in tasks.chunks_mut(size).enumerate() {
        let n = chunk.len();
        for i in 0..n {
            s.send(SubmitTarget::Pending, &mut chunk[i..i + 1]).await?;
            if i + 1 < n {
                tokio::time::sleep(a.pulse_spacing).await;
            }
        }
        if p + 1 < pulses {
            tracing::info!(
                "pulse {}/{pulses}: submitted {}/{total}, next pulse in {:.1} s",
                p + 1,
                s.submitted,
                a.pulse_interval.as_secs_f64()
            );
            tokio::time::sleep(a.pulse_interval).await;
        } else {
            tracing::info!(
                "pulse {}/{pulses}: submitted {}/{total}",
                p + 1,
                s.submitted
            );
        }
    }
    Ok(())
}

async fn fifo(a: &DispatchArgs, s: &mut Submitter, tasks: &mut [Task]) -> anyhow::Result<()> {
    let total = tasks.len();
    let mut idx = 0;
    while idx < total {
        let qlen = s.pending_len().await?;
        let room = a.pending_max.saturating_sub(qlen);
        let n = room.min(a.batch_size.max(1)).min(total - idx);
        if n > 0 {
            s.send(SubmitTarget::Pending, &mut tasks[idx..idx + n])
                .await?;
            idx += n;
            tracing::info!("submitted {}/{total}, q:pending was {qlen}", s.submitted);
        }
        if idx < total {
            tokio::time::sleep(a.dribble_interval).await;
        }
    }
    Ok(())
}

/// Per-node drip: batches in plan order, never more than --backlog-limit
/// queued on a node. The original skipped (lost) a task whose node was full;
/// here the batch stops and the task waits for the next round.
async fn drip(a: &DispatchArgs, s: &mut Submitter, planned: Vec<Planned>) -> anyhow::Result<()> {
    let total = planned.len();
    let mut it = planned.into_iter().peekable();
    while it.peek().is_some() {
        let mut backlog: HashMap<String, usize> = HashMap::new();
        let mut sent = 0;
        while sent < a.batch_size.max(1) {
            let Some(p) = it.peek() else { break };
            let node = p.node.clone().unwrap_or_default();
            let b = match backlog.get(&node) {
                Some(b) => *b,
                None => s.queue_len(&node).await?,
            };
            if b >= a.backlog_limit {
                break;
            }
            let Some(mut p) = it.next() else { break };
            s.send(SubmitTarget::Node(&node), std::slice::from_mut(&mut p.task))
                .await?;
            backlog.insert(node, b + 1);
            sent += 1;
        }
        tracing::info!("[drip] batch={sent}, submitted {}/{total}", s.submitted);
        if it.peek().is_some() {
            tokio::time::sleep(a.dribble_interval).await;
        }
    }
    Ok(())
}

/// duration-online: longest first, each to a node under --backlog-limit with
/// the smallest backlog, then the least assigned duration.
async fn online(a: &DispatchArgs, s: &mut Submitter, planned: Vec<Planned>) -> anyhow::Result<()> {
    let nodes = a.node_list();
    let total = planned.len();
    let mut load: HashMap<&str, f64> = HashMap::new();
    let mut it = planned.into_iter().peekable();
    while it.peek().is_some() {
        let mut backlog: Vec<usize> = Vec::with_capacity(nodes.len());
        for n in &nodes {
            backlog.push(s.queue_len(n).await?);
        }
        let mut sent = 0;
        while sent < a.batch_size.max(1) && it.peek().is_some() {
            let best = (0..nodes.len())
                .filter(|&k| backlog[k] < a.backlog_limit)
                .min_by(|&x, &y| {
                    backlog[x].cmp(&backlog[y]).then_with(|| {
                        let (lx, ly) = (load.get(nodes[x].as_str()), load.get(nodes[y].as_str()));
                        lx.unwrap_or(&0.0).total_cmp(ly.unwrap_or(&0.0))
                    })
                });
            let Some(k) = best else { break };
            let Some(mut p) = it.next() else { break };
            s.send(
                SubmitTarget::Node(&nodes[k]),
                std::slice::from_mut(&mut p.task),
            )
            .await?;
            backlog[k] += 1;
            *load.entry(nodes[k].as_str()).or_default() += p.duration.max(0.0);
            sent += 1;
        }
        let bl: Vec<String> = nodes
            .iter()
            .zip(&backlog)
            .map(|(n, b)| format!("{n}:{b}"))
            .collect();
        tracing::info!(
            "[online] batch={sent}, submitted {}/{total}, backlog {}",
            s.submitted,
            bl.join(", ")
        );
        if it.peek().is_some() {
            tokio::time::sleep(a.dribble_interval).await;
        }
    }
    Ok(())
}
