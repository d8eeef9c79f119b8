//! Record types and file layout of a node's trace directory, `logs/<RUN_ID>/`.
//!
//! Field names, units and order follow SPEC.md ("Trace output"); richer fields
//! follow the required ones and are optional for readers, so traces of the
//! original system still parse.

use serde::{Deserialize, Serialize};

/// `node_meta.json`, at the top of a node directory.
pub const NODE_META_FILE: &str = "node_meta.json";
/// Sub-directory holding the CTS files.
pub const CTS_DIR: &str = "CTS";
/// `CTS/invocations.jsonl`: one line per task or traced process.
pub const INVOCATIONS_FILE: &str = "invocations.jsonl";
/// `CTS/proc_metrics.jsonl`: one line per traced PID per interval.
pub const PROC_METRICS_FILE: &str = "proc_metrics.jsonl";
/// `CTS/withdrawn.jsonl`: runs whose completion was refused (their node had
/// been declared dead and another node ran the task again): their lines in
/// `invocations.jsonl` stay for the record, and readers leave them out.
pub const WITHDRAWN_FILE: &str = "withdrawn.jsonl";
/// `CTS/nodes.json`: the node list, rounded as OpenDC wants it.
pub const NODES_FILE: &str = "nodes.json";
impl ProgramCost {
    pub fn new(program: String, run_count: u64, run_time_ns: u64) -> ProgramCost {
        ProgramCost {
            program,
            run_count,
            run_time_ns,
            ns_per_call: if run_count > 0 {
                run_time_ns as f64 / run_count as f64
            } else {
                0.0
            },
        }
    }
}

/// `CTS/tracer_stats.json`: the collector's own cost and losses.
pub const TRACER_STATS_FILE: &str = "tracer_stats.json";
/// `CTS/audit_report.md`.
pub const AUDIT_REPORT_FILE: &str = "audit_report.md";
/// What older traces of the original system called the CTS directory.
pub const LEGACY_CTS_DIR: &str = "cctf";
/// The original's event files at the top of a node directory, in the order
/// they are looked for: `events.jsonl` (merged by its `parse_sys.py`), else
/// the ffmpeg wrapper's own. Its `CTS/invocations.jsonl` keeps only the five
/// required fields, so a task's output name is only found here.
pub const LEGACY_EVENTS_FILES: [&str; 2] = ["events.jsonl", "events.ffmpeg.jsonl"];

/// Which collector produced a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CollectorKind {
    /// The eBPF tracer: exact exec/exit and kernel CPU accounting.
    Ebpf,
    /// `/proc` polling: misses short processes and each process's tail.
    Procfs,
}

impl std::fmt::Display for CollectorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CollectorKind::Ebpf => "ebpf",
            CollectorKind::Procfs => "procfs",
        })
    }
}

/// `node_meta.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeMeta {
    pub run_id: String,
    pub node: String,
    pub stage: String,
    pub host: String,
    pub iface: String,
    pub cpu_cores: u32,
    pub mem_mb: u64,
    pub cpu_model: String,
    pub cpu_freq_mhz: f64,
    /// Which collector ran (absent in the original's traces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector: Option<CollectorKind>,
    /// Why the eBPF tracer was not used, when it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    /// Sampling interval in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    /// `worker` or `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The `--match` regex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proc_match: Option<String>,
    /// The worker's `--cpu-binding` (absent in trace-only mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_binding: Option<String>,
    /// Why the binding asked for is not applied: tasks run unbound
    /// (`--allow-unbound`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding_error: Option<String>,
    /// The user tasks run as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<String>,
    /// Whether tasks run without the agent's privileges (false: they keep
    /// root's, `--run-as root`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privileges_dropped: Option<bool>,
    /// Which Tracekit wrote the trace: version and commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracekit: Option<String>,
    /// The kernel release (`uname -r`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// The first line of `ffmpeg -version`, when ffmpeg is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ffmpeg: Option<String>,
    /// libx264's version as ffmpeg links it ("core 164 r3095 baee400").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x264: Option<String>,
    /// libx265's version ("3.5+1-f0c1022b6").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x265: Option<String>,
    /// This node's clock against Redis `TIME` (the clock submissions are
    /// compared with), measured by the worker with its heartbeats; what
    /// `--correct-clock` moves the node's times by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<ClockSkew>,
}

/// A node's clock offset from Redis `TIME`: the offset of the measurement
/// with the shortest round trip (its error is at most half that round trip).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClockSkew {
    /// This node's clock minus Redis's, ms (positive: the node is ahead).
    pub offset_ms: f64,
    /// Round trip of that measurement, ms.
    pub rtt_ms: f64,
    /// Measurements taken.
    pub samples: u64,
    /// The largest |offset| measured (any round trip), ms.
    pub max_abs_offset_ms: f64,
}

/// One entry of `CTS/nodes.json`: frequency rounded to 100 MHz, memory to whole
/// GiB (expressed in MB).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node_id: String,
    pub stage: String,
    pub cpu_cores: u32,
    pub mem_mb: u64,
    pub cpu_model: String,
    pub cpu_freq_mhz: f64,
}

impl NodeInfo {
    /// The rounded form of `meta` that `nodes.json` holds.
    pub fn from_meta(meta: &NodeMeta) -> Self {
        NodeInfo {
            node_id: meta.node.clone(),
            stage: meta.stage.clone(),
            cpu_cores: meta.cpu_cores,
            mem_mb: round_mem_mb_to_gib(meta.mem_mb),
            cpu_model: meta.cpu_model.clone(),
            cpu_freq_mhz: round_freq_mhz(meta.cpu_freq_mhz),
        }
    }
}

/// Frequency rounded to the nearest 100 MHz.
pub fn round_freq_mhz(mhz: f64) -> f64 {
    (mhz / 100.0).round() * 100.0
}

/// Memory rounded to whole GiB, expressed in MB (1 GiB = 1024 MB here, as the
/// original did), at least 1 GiB.
pub fn round_mem_mb_to_gib(mb: u64) -> u64 {
    let gib = ((mb as f64) / 1024.0).round().max(1.0) as u64;
    gib * 1024
}

/// One line of `CTS/withdrawn.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Withdrawn {
    pub trace_id: String,
    pub reason: String,
    /// When the run was withdrawn, epoch ms.
    pub ts: i64,
}

/// One line of `CTS/invocations.jsonl`: a task (worker) or a traced process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invocation {
    pub trace_id: String,
    pub pid: u32,
    /// Epoch ms when the task was submitted (= ts_start for processes the
    /// agent did not launch).
    pub ts_enqueue: i64,
    /// Epoch ms of exec.
    pub ts_start: i64,
    /// Epoch ms of exit.
    pub ts_end: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ppid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// Exact total CPU time of the process in ms (user + system), from the
    /// collector. For procfs this is the last value seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<f64>,
    /// Exit code when the process exited normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Signal number when the process was killed by a signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector: Option<CollectorKind>,
    /// Fields the worker adds for a task (input, output, cpuset, bytes, ...).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// One line of `CTS/proc_metrics.jsonl`: one traced PID over one interval.
///
/// The samples of a process tile its run: the first starts at ts_start, each
/// `dt_ms` is the distance to the previous sample, the last ends at ts_end,
/// and their `cpu_ms` add up to the process's total CPU time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcSample {
    /// Epoch ms at the end of the interval.
    pub ts_ms: i64,
    pub pid: u32,
    /// Length of the interval in ms.
    pub dt_ms: i64,
    /// CPU time used in the interval, ms (summed over threads and cores).
    pub cpu_ms: f64,
    /// Resident set size at the end of the interval, KiB.
    pub rss_kb: u64,
}

/// One eBPF program's cost, from the kernel's BPF statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgramCost {
    pub program: String,
    pub run_count: u64,
    pub run_time_ns: u64,
    pub ns_per_call: f64,
}

/// `CTS/tracer_stats.json`: the collector's own cost and losses, rewritten
/// every minute and at stop.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TracerStats {
    pub collector: Option<CollectorKind>,
    /// Ring-buffer reservations that failed (events lost).
    pub events_lost: u64,
    /// Map insertions that failed because a map was full.
    pub map_full: u64,
    /// Processes seen (exec/fork) and exits recorded.
    pub processes_seen: u64,
    pub exits_recorded: u64,
    /// Exits recovered from the kernel map after their event was lost.
    pub exits_recovered: u64,
    /// Samples short of some CPU because the process had more threads than
    /// the kernel walks per sample (its exit total is still exact).
    #[serde(default)]
    pub samples_cut: u64,
    /// Samples the kernel did not take because the ring buffer was 3/4 full
    /// (kept for exec and exit events); the next sample covers the gap.
    #[serde(default)]
    pub samples_dropped: u64,
    /// The CPU whose timer takes the kernel's samples (eBPF).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler_cpu: Option<u32>,
    /// Times sampling moved to another CPU because its CPU went offline.
    #[serde(default)]
    pub sampler_moves: u64,
    /// Sampling had stopped (no CPU left to take it over) when this was
    /// written: processes got only their exit line meanwhile.
    #[serde(default)]
    pub sampler_stalled: bool,
    /// Runs of the in-kernel sampler (eBPF), their total run time and the
    /// longest single run, ns, as the sampler measures itself.
    #[serde(default)]
    pub sampler_runs: u64,
    #[serde(default)]
    pub sampler_run_ns: u64,
    #[serde(default)]
    pub sampler_max_run_ns: u64,
    /// Runs of the sampler longer than 100 µs.
    #[serde(default)]
    pub sampler_slow_runs: u64,
    /// The agent's own CPU time (user + sys) in ms so far.
    pub agent_cpu_ms: f64,
    /// The agent's peak RSS in KiB.
    pub agent_max_rss_kb: u64,
    pub programs: Vec<ProgramCost>,
}

impl TracerStats {
    /// What accrued since `base` (an earlier reading of the same agent): an
    /// agent that records run after run writes each run's own share. The
    /// gauges (collector, sampler CPU, stall, longest run, peak RSS) stay
    /// as read now.
    pub fn since(&self, base: &TracerStats) -> TracerStats {
        let programs = self
            .programs
            .iter()
            .map(|p| {
                let before = base.programs.iter().find(|b| b.program == p.program);
                let run_count = p.run_count - before.map_or(0, |b| b.run_count.min(p.run_count));
                let run_time_ns =
                    p.run_time_ns - before.map_or(0, |b| b.run_time_ns.min(p.run_time_ns));
                ProgramCost::new(p.program.clone(), run_count, run_time_ns)
            })
            .collect();
        TracerStats {
            events_lost: self.events_lost.saturating_sub(base.events_lost),
            map_full: self.map_full.saturating_sub(base.map_full),
            processes_seen: self.processes_seen.saturating_sub(base.processes_seen),
            exits_recorded: self.exits_recorded.saturating_sub(base.exits_recorded),
            exits_recovered: self.exits_recovered.saturating_sub(base.exits_recovered),
            samples_cut: self.samples_cut.saturating_sub(base.samples_cut),
            samples_dropped: self.samples_dropped.saturating_sub(base.samples_dropped),
            sampler_moves: self.sampler_moves.saturating_sub(base.sampler_moves),
            sampler_runs: self.sampler_runs.saturating_sub(base.sampler_runs),
            sampler_run_ns: self.sampler_run_ns.saturating_sub(base.sampler_run_ns),
            sampler_slow_runs: self
                .sampler_slow_runs
                .saturating_sub(base.sampler_slow_runs),
            agent_cpu_ms: (self.agent_cpu_ms - base.agent_cpu_ms).max(0.0),
            programs,
            ..self.clone()
        }
    }
}

/// A line of `CTS/invocations.jsonl` as readers take it: every field optional,
/// because traces of the original may hold `null` or lack fields, and the audit
/// counts what is missing instead of failing. Unknown fields are ignored.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct InvocationRecord {
    #[serde(default)]
    pub trace_id: Option<String>,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub ts_enqueue: Option<i64>,
    #[serde(default)]
    pub ts_start: Option<i64>,
    #[serde(default)]
    pub ts_end: Option<i64>,
    #[serde(default)]
    pub cpu_ms: Option<f64>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
    #[serde(default)]
    pub comm: Option<String>,
    /// Peak RSS the agent saw for the process, KiB (a richer field the agent
    /// adds after the required ones).
    #[serde(default)]
    pub rss_peak_kb: Option<u64>,
    /// Why the task ran without the CPU binding it asked for (the agent
    /// adds it only then).
    #[serde(default)]
    pub binding_error: Option<String>,
    /// What describes the task's command, when recorded (the export's command
    /// shape). Any JSON value: a line must not be lost over a field only
    /// the shape uses.
    #[serde(default)]
    pub output: Option<serde_json::Value>,
    #[serde(default)]
    pub profile: Option<serde_json::Value>,
    #[serde(default)]
    pub cpu_units: Option<serde_json::Value>,
    /// The clock offset (its clock minus Redis `TIME`, ms) of the dispatcher
    /// that stamped `ts_enqueue`, when it measured one.
    #[serde(default)]
    pub ts_enqueue_offset_ms: Option<f64>,
}

impl InvocationRecord {
    /// Names of the fields SPEC.md requires, in its order.
    pub const REQUIRED: [&'static str; 5] = ["trace_id", "pid", "ts_enqueue", "ts_start", "ts_end"];

    /// Whether each of [`Self::REQUIRED`] is present.
    pub fn present(&self) -> [bool; 5] {
        [
            self.trace_id.is_some(),
            self.pid.is_some(),
            self.ts_enqueue.is_some(),
            self.ts_start.is_some(),
            self.ts_end.is_some(),
        ]
    }

    /// The task's times, when pid and all three times are present.
    pub fn window(&self) -> Option<TaskTimes> {
        Some(TaskTimes {
            pid: self.pid?,
            ts_enqueue: self.ts_enqueue?,
            ts_start: self.ts_start?,
            ts_end: self.ts_end?,
        })
    }

    /// Whether the task failed: a non-zero exit code or a killing signal.
    pub fn failed(&self) -> bool {
        self.exit_code.is_some_and(|c| c != 0) || self.signal.is_some_and(|s| s != 0)
    }
}

/// The times that place a task: what the export and the join need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskTimes {
    pub pid: u32,
    pub ts_enqueue: i64,
    pub ts_start: i64,
    pub ts_end: i64,
}

/// A line of `CTS/proc_metrics.jsonl` as readers take it: every field optional
/// (the original wrote `rss_kb` only when it had it, and integer `cpu_ms`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
pub struct SampleRecord {
    #[serde(default)]
    pub ts_ms: Option<i64>,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub dt_ms: Option<i64>,
    #[serde(default)]
    pub cpu_ms: Option<f64>,
    #[serde(default)]
    pub rss_kb: Option<u64>,
}

impl SampleRecord {
    /// Names of the fields SPEC.md lists, in its order.
    pub const FIELDS: [&'static str; 5] = ["ts_ms", "pid", "dt_ms", "cpu_ms", "rss_kb"];

    /// Whether each of [`Self::FIELDS`] is present.
    pub fn present(&self) -> [bool; 5] {
        [
            self.ts_ms.is_some(),
            self.pid.is_some(),
            self.dt_ms.is_some(),
            self.cpu_ms.is_some(),
            self.rss_kb.is_some(),
        ]
    }
}

/// What the worker adds to a task's invocation line, after the process's
/// own fields: the one typed list of a task's fields in a trace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskFields {
    /// Input and output file names (base names).
    pub input: String,
    pub output: String,
    pub cpu_units: u32,
    /// Cores held (exclusive binding), as a CPU list; empty otherwise.
    pub cpuset: String,
    /// `--cpu-binding`.
    pub binding: String,
    /// Why the task ran without its binding (`--allow-unbound`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding_error: Option<String>,
    /// The binding read back from the task's cgroup while it ran: the group,
    /// its CPUs, its weight and its quota (`cpu.max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus_allowed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_max: Option<String>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The dispatcher's submission number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The dispatcher's profile name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The dispatcher's clock minus Redis `TIME` when it stamped
    /// `ts_enqueue`, ms (the task's own field): what `--correct-clock`
    /// moves the submission time by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts_enqueue_offset_ms: Option<f64>,
}

impl TaskFields {
    /// As JSON fields to append to an [`Invocation`]'s `extra`.
    pub fn into_extra(self) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(map)) => map,
            // A struct of strings and integers serializes to an object.
            _ => serde_json::Map::new(),
        }
    }
}
