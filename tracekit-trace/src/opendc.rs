//! The OpenDC workload model: parquet schemas, how a task's samples become
//! fragments and how a task is sized, the topology and experiment files, and
//! what a task whose CPU nothing measured gets. Pure functions; the file work
//! is in [`crate::export`]. Why each mapping is what it is: `docs/opendc.md`.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, bail};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::Serialize;

use crate::schema::NodeInfo;

/// `tasks.parquet`
pub const TASKS_FILE: &str = "tasks.parquet";
/// `fragments.parquet`
pub const FRAGMENTS_FILE: &str = "fragments.parquet";
/// `small_datacenter.json`
pub const DATACENTER_FILE: &str = "small_datacenter.json";
/// `experiment.json`: what OpenDC's experiment runner reads.
pub const EXPERIMENT_FILE: &str = "experiment.json";

/// Lowest fragment usage written, in MHz: OpenDC tools choke on zeros.
pub const MIN_USAGE_MHZ: f64 = 0.1;
/// Lowest memory capacity written, in KiB.
pub const MIN_MEM_KB: u64 = 1024;
/// Cores the original export gave a task it had no CPU sample of: a one-core
/// task at 50 % (its invented capacity), whose single fragment ran at half
/// of that.
pub const ORIGINAL_UNMEASURED_CORES: f64 = 0.25;

/// Schema of `tasks.parquet`, in the column order of OpenDC's task schema
/// (`TaskSchemas.kt`, V2 and later). Required columns are declared required
/// because OpenDC's reader refuses a column less strict than its own; `name`
/// is optional there and null here when the trace has no `trace_id`.
/// `submission_time` carries OpenDC's own annotation (UTC timestamp in ms).
pub fn tasks_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int32, false),
        Field::new("name", DataType::Utf8, true),
        Field::new(
            "submission_time",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("duration", DataType::Int64, false),
        Field::new("cpu_count", DataType::Int32, false),
        Field::new("cpu_capacity", DataType::Float64, false),
        Field::new("mem_capacity", DataType::Int64, false),
    ]))
}

/// Schema of `fragments.parquet`; every column required.
pub fn fragments_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int32, false),
        Field::new("duration", DataType::Int64, false),
        Field::new("cpu_usage", DataType::Float64, false),
    ]))
}

/// How a task's `cpu_capacity` is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CpuSizing {
    /// The task's highest fragment usage: no fragment exceeds it, so the
    /// replay runs all the CPU the task used.
    #[default]
    Peak,
    /// The original's P95 of the task's fragment usages: the replay clips
    /// the fragments above it.
    P95,
}

impl std::fmt::Display for CpuSizing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CpuSizing::Peak => "peak",
            CpuSizing::P95 => "p95",
        })
    }
}

/// What a task gets whose CPU nothing measured (no exact total, no sample
/// interval of positive length).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum UnmeasuredCpu {
    /// Left out of the workload (its id stays unused).
    #[default]
    Skip,
    /// One fragment at the median rate of the measured tasks of the same
    /// command shape; skipped when no such task exists.
    ShapeMedian,
    /// What the original export wrote: one fragment at a quarter of a core.
    Original,
}

impl std::fmt::Display for UnmeasuredCpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UnmeasuredCpu::Skip => "skip",
            UnmeasuredCpu::ShapeMedian => "shape-median",
            UnmeasuredCpu::Original => "original",
        })
    }
}

/// The host a task ran on, as the export needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Host {
    /// The node's one frequency, whole MHz per core: the topology's
    /// `coreSpeed`, and what fragments and capacities are computed with.
    pub mhz: f64,
    pub cores: u32,
}

/// A node as the topology and the export see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeHost {
    pub host: Host,
    /// Memory, MiB.
    pub mem_mib: u64,
}

/// The OpenDC host of a node, from its `nodes.json` entry (`source` names
/// the file in errors). The frequency is rounded to whole MHz, so that
/// `coreSpeed` (written as an integer) and the export use the same number.
pub fn node_host(info: &NodeInfo, source: &Path) -> Result<NodeHost> {
    let mhz = info.cpu_freq_mhz.round();
    if !(mhz.is_finite() && mhz >= 1.0) {
        bail!(
            "{}: node {:?} has cpu_freq_mhz {}; the export needs the node's frequency \
             (set CPU_FREQ_MHZ on the agent, or fix the file)",
            source.display(),
            info.node_id,
            info.cpu_freq_mhz
        );
    }
    if info.cpu_cores == 0 {
        bail!(
            "{}: node {:?} has cpu_cores 0",
            source.display(),
            info.node_id
        );
    }
    if info.mem_mb == 0 {
        bail!(
            "{}: node {:?} has mem_mb 0; OpenDC would fit no task on it",
            source.display(),
            info.node_id
        );
    }
    Ok(NodeHost {
        host: Host {
            mhz,
            cores: info.cpu_cores,
        },
        // nodes.json counts memory in MB of 1024 × 1024 bytes (whole GiB × 1024).
        mem_mib: info.mem_mb,
    })
}

/// One traced interval of a task: it ends at `ts_ms` and lasts `dt_ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub ts_ms: i64,
    pub dt_ms: i64,
    pub cpu_ms: f64,
}

/// A task's run as its invocation gives it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Run {
    pub ts_start: i64,
    pub ts_end: i64,
    /// Exact CPU time from the collector, when it recorded one.
    pub cpu_ms: Option<f64>,
}

impl Run {
    /// Duration written for the task: zero-length runs last 1 ms, so that
    /// every task has a fragment and the fragments still tile it.
    pub fn duration(&self) -> i64 {
        (self.ts_end - self.ts_start).max(1)
    }
}

/// One row of `fragments.parquet` (without the task id).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fragment {
    pub duration: i64,
    /// MHz summed over cores.
    pub cpu_usage: f64,
}

/// What the fragments say about a task (one row of `tasks.parquet` without
/// id, name and submission time).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskShape {
    pub duration: i64,
    pub cpu_count: i32,
    pub cpu_capacity: f64,
    /// CPU time the fragments carry, ms (after clamping and the usage floor).
    pub fragment_cpu_ms: f64,
    /// Time, ms, not covered by any sample and filled in.
    pub gap_ms: i64,
    /// Whether anything measured the task's CPU: an exact total, or a
    /// sample interval of positive length inside the run. A `dt_ms = 0`
    /// sample (the original collector's first sample of a process) is not a
    /// measurement.
    pub measured: bool,
    /// CPU time, ms, above the P95 capacity: what P95 sizing clips in the
    /// replay (whichever sizing was chosen).
    pub p95_clip_ms: f64,
}

/// Cut a task's run into fragments that tile it exactly, and size the task.
///
/// `intervals` are the samples joined to the task, in any order (they are
/// sorted here). Each keeps the part of its interval inside the run and not
/// already covered by an earlier one, with its CPU scaled to the part kept.
/// Time no sample covers is a gap. Gaps share the CPU the samples do not
/// account for when the exact total is known (the eBPF tracer records it);
/// without it (the original's traces) a gap takes the rate of its
/// neighbouring interval, which is how the original filled its head gap.
/// A task without samples is one fragment at its exact average rate.
///
/// When the task is not [`TaskShape::measured`], what is pushed to `out` is
/// no measurement (the usage floor): the caller decides what it gets.
pub fn build_fragments(
    run: Run,
    intervals: &mut [Interval],
    host: Host,
    sizing: CpuSizing,
    out: &mut Vec<Fragment>,
) -> TaskShape {
    if !intervals.is_sorted_by_key(|i| i.ts_ms) {
        intervals.sort_by_key(|i| i.ts_ms);
    }
    let start = run.ts_start;
    let end = start + run.duration();

    // Pieces as (duration, cpu_ms or None for a gap).
    let mut pieces: Vec<(i64, Option<f64>)> = Vec::with_capacity(intervals.len() + 2);
    let mut cursor = start;
    let mut sampled_cpu = 0.0;
    let mut gap_ms = 0;
    for iv in intervals.iter() {
        let from = (iv.ts_ms - iv.dt_ms).max(cursor);
        let to = iv.ts_ms.min(end);
        if to <= from {
            // A zero-length sample at the cursor (the agent's exit sample in
            // the millisecond of the last tick) carries CPU of the piece
            // that ends there; it measures no rate of its own.
            if iv.dt_ms == 0
                && iv.ts_ms == cursor
                && let Some((_, Some(cpu))) = pieces.last_mut()
            {
                *cpu += iv.cpu_ms.max(0.0);
                sampled_cpu += iv.cpu_ms.max(0.0);
            }
            continue;
        }
        if from > cursor {
            pieces.push((from - cursor, None));
            gap_ms += from - cursor;
        }
        let kept = to - from;
        // dt_ms > 0 here since to > from.
        let cpu = iv.cpu_ms.max(0.0) * kept as f64 / iv.dt_ms as f64;
        sampled_cpu += cpu;
        pieces.push((kept, Some(cpu)));
        cursor = to;
    }
    if cursor < end {
        pieces.push((end - cursor, None));
        gap_ms += end - cursor;
    }
    let measured = run.cpu_ms.is_some() || pieces.iter().any(|p| p.1.is_some());

    let exact_gap_rate = run
        .cpu_ms
        .map(|total| ((total - sampled_cpu).max(0.0)) / gap_ms.max(1) as f64);
    let first = out.len();
    let mut fragment_cpu_ms = 0.0;
    for (k, &(dur, cpu)) in pieces.iter().enumerate() {
        let cores = match cpu {
            Some(cpu) => cpu / dur as f64,
            None => match exact_gap_rate {
                Some(rate) => rate,
                None => neighbour_rate(&pieces, k).unwrap_or(0.0),
            },
        };
        let usage = usage_mhz(cores, host);
        fragment_cpu_ms += usage / host.mhz * dur as f64;
        out.push(Fragment {
            duration: dur,
            cpu_usage: usage,
        });
    }
    let (cpu_capacity, cpu_count, p95_clip_ms) = size_task(&out[first..], host, sizing);
    TaskShape {
        duration: run.duration(),
        cpu_count,
        cpu_capacity,
        fragment_cpu_ms,
        gap_ms,
        measured,
        p95_clip_ms,
    }
}

/// Usage in MHz of `cores` busy cores on `host`: clamped to the host's
/// cores, at least [`MIN_USAGE_MHZ`].
pub fn usage_mhz(cores: f64, host: Host) -> f64 {
    (cores.clamp(0.0, host.cores as f64) * host.mhz).max(MIN_USAGE_MHZ)
}

/// `(cpu_capacity, cpu_count, CPU ms P95 sizing clips)` of a task's
/// fragments: capacity per `sizing`, and the fewest cores that carry it.
pub fn size_task(frags: &[Fragment], host: Host, sizing: CpuSizing) -> (f64, i32, f64) {
    let mut usages: Vec<f64> = Vec::with_capacity(frags.len());
    let mut peak: f64 = 0.0;
    for f in frags {
        usages.push(f.cpu_usage);
        peak = peak.max(f.cpu_usage);
    }
    // Interpolation can land an ulp above the largest value.
    let p95 = quantile(&mut usages, 0.95).min(peak);
    let p95_clip_ms = frags
        .iter()
        .map(|f| (f.cpu_usage - p95).max(0.0) / host.mhz * f.duration as f64)
        .sum();
    let capacity = match sizing {
        CpuSizing::Peak => peak,
        CpuSizing::P95 => p95,
    };
    (capacity, cpu_count_for(capacity, host), p95_clip_ms)
}

/// The fewest cores of `host` whose speed covers `capacity`, so that OpenDC's
/// filters fit the task on it: `capacity / cpu_count ≤ coreSpeed`
/// (VCpuCapacityFilter) and `cpu_count ≤ cores` (VCpuFilter). Capacities
/// come from usages clamped to `cores × mhz`, so the clamp to `cores` never
/// breaks the first condition.
pub fn cpu_count_for(capacity: f64, host: Host) -> i32 {
    let cores = host.cores.max(1);
    // NaN and negatives become 0, then 1.
    let mut n = ((capacity / host.mhz).ceil() as u32).clamp(1, cores);
    // The division above may round down across an integer.
    while n < cores && capacity / f64::from(n) > host.mhz {
        n += 1;
    }
    n as i32
}

/// Whether a task of `cpu_count` cores and `capacity` MHz fits `host` under
/// OpenDC's VCpu and VCpuCapacity filters.
pub fn fits(capacity: f64, cpu_count: i32, host: Host) -> bool {
    cpu_count >= 1 && cpu_count as u32 <= host.cores && capacity / f64::from(cpu_count) <= host.mhz
}

/// Rate (cores) of the sampled piece next to gap `k`: the following one,
/// else the preceding one.
fn neighbour_rate(pieces: &[(i64, Option<f64>)], k: usize) -> Option<f64> {
    let rate = |p: &(i64, Option<f64>)| p.1.map(|cpu| cpu / p.0 as f64);
    pieces[k + 1..]
        .iter()
        .find_map(rate)
        .or_else(|| pieces[..k].iter().rev().find_map(rate))
}

/// The `q` quantile with linear interpolation between closest ranks (what
/// pandas and numpy do by default). `values` is reordered. Empty → 0.
pub fn quantile(values: &mut [f64], q: f64) -> f64 {
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    let pos = q.clamp(0.0, 1.0) * (n - 1) as f64;
    let lo = pos.floor() as usize;
    let frac = pos - lo as f64;
    let (_, lo_v, rest) = values.select_nth_unstable_by(lo, f64::total_cmp);
    let lo_v = *lo_v;
    if frac == 0.0 || rest.is_empty() {
        return lo_v;
    }
    // The next rank is the smallest of what lies above.
    let hi_v = rest.iter().copied().fold(f64::INFINITY, f64::min);
    lo_v + (hi_v - lo_v) * frac
}

/// The command shape of a task: the parameters that set its CPU rate, from
/// what its invocation records — `comm`, `profile`, `cpu_units`, and the
/// encode parameters the dispatcher writes into the output name
/// (`<stem>_<W>x<H>_<vcodec>_<preset>_n<idx>.mp4`, or `…_<W>x<H>_crf<C>.mp4`),
/// input stem and index left out. `None` when none of them is recorded.
pub fn command_shape(
    comm: Option<&str>,
    profile: Option<&serde_json::Value>,
    cpu_units: Option<&serde_json::Value>,
    output: Option<&str>,
) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    if let Some(c) = comm {
        parts.push(format!("comm={c}"));
    }
    let scalar = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    if let Some(p) = profile.and_then(scalar) {
        parts.push(format!("profile={p}"));
    }
    if let Some(u) = cpu_units.and_then(scalar) {
        parts.push(format!("units={u}"));
    }
    if let Some(o) = output.and_then(output_shape) {
        parts.push(format!("encode={o}"));
    }
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// The encode parameters in a dispatcher-made output name: from the last
/// `<W>x<H>` part on, without the extension and a trailing `n<idx>`.
fn output_shape(output: &str) -> Option<String> {
    let base = output.rsplit('/').next().unwrap_or(output);
    let stem = base.rsplit_once('.').map_or(base, |(s, _)| s);
    let mut parts: Vec<&str> = stem.split('_').collect();
    if parts.last().is_some_and(|p| {
        p.len() > 1 && p.starts_with('n') && p[1..].bytes().all(|b| b.is_ascii_digit())
    }) {
        parts.pop();
    }
    let is_scale = |p: &str| {
        p.split_once('x').is_some_and(|(w, h)| {
            !w.is_empty()
                && !h.is_empty()
                && w.bytes().all(|b| b.is_ascii_digit())
                && h.bytes().all(|b| b.is_ascii_digit())
        })
    };
    let at = parts.iter().rposition(|p| is_scale(p))?;
    Some(parts[at..].join("_"))
}

/// `small_datacenter.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Datacenter {
    pub clusters: Vec<Cluster>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cluster {
    pub name: String,
    pub hosts: Vec<HostSpec>,
}

/// One kind of host; field order is what OpenDC's template shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostSpec {
    pub name: String,
    pub count: u32,
    pub cpu: CpuSpec,
    pub memory: MemorySpec,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuSpec {
    pub core_count: u32,
    /// A bare number: OpenDC's `Frequency` reads it as MHz.
    pub core_speed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemorySpec {
    /// `"<N> MiB"`: OpenDC's `DataSize` reads a bare number as MiB, so the
    /// unit is written out.
    pub memory_size: String,
}

/// One cluster `C01` holding one host per node, identical hosts merged and
/// named H01, H02, … in order of (cores, speed, memory).
pub fn datacenter(nodes: impl IntoIterator<Item = NodeHost>) -> Datacenter {
    let mut counts: std::collections::BTreeMap<(u32, u64, u64), u32> = Default::default();
    for n in nodes {
        // Whole MHz by construction (node_host).
        let key = (n.host.cores, n.host.mhz as u64, n.mem_mib);
        *counts.entry(key).or_default() += 1;
    }
    let hosts = counts
        .into_iter()
        .enumerate()
        .map(|(i, ((cores, mhz, mib), count))| HostSpec {
            name: format!("H{:02}", i + 1),
            count,
            cpu: CpuSpec {
                core_count: cores,
                core_speed: mhz,
            },
            memory: MemorySpec {
                memory_size: format!("{mib} MiB"),
            },
        })
        .collect();
    Datacenter {
        clusters: vec![Cluster {
            name: "C01".into(),
            hosts,
        }],
    }
}

/// `experiment.json` in the format of OpenDC's experiment runner
/// (`ExperimentSpec` of opendc-experiments-base): the run as its name, the
/// topology and the workload directory. Everything else keeps OpenDC's
/// defaults.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Experiment {
    pub name: String,
    pub topologies: Vec<TopologyPath>,
    pub workloads: Vec<WorkloadPath>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopologyPath {
    pub path_to_file: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadPath {
    pub path_to_file: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// The experiment of the export in `dir`. OpenDC resolves the paths against
/// its working directory, so they are absolute: `dir` must be.
pub fn experiment(name: &str, dir: &Path) -> Result<Experiment> {
    if !dir.is_absolute() {
        bail!("experiment paths must be absolute, not {}", dir.display());
    }
    let text = |p: &Path| -> Result<String> {
        match p.to_str() {
            Some(s) => Ok(s.to_string()),
            None => bail!(
                "{} is not valid UTF-8; OpenDC cannot be given it",
                p.display()
            ),
        }
    };
    Ok(Experiment {
        name: name.to_string(),
        topologies: vec![TopologyPath {
            path_to_file: text(&dir.join(DATACENTER_FILE))?,
        }],
        workloads: vec![WorkloadPath {
            path_to_file: text(dir)?,
            kind: "ComputeWorkload".into(),
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: Host = Host {
        mhz: 2000.0,
        cores: 4,
    };

    fn iv(ts_ms: i64, dt_ms: i64, cpu_ms: f64) -> Interval {
        Interval {
            ts_ms,
            dt_ms,
            cpu_ms,
        }
    }

    fn total(frags: &[Fragment]) -> i64 {
        frags.iter().map(|f| f.duration).sum()
    }

    #[test]
    fn quantile_matches_pandas() {
        // pandas.Series([1,2,3,4,10]).quantile(0.95) == 8.8
        let mut v = vec![10.0, 1.0, 3.0, 2.0, 4.0];
        assert!((quantile(&mut v, 0.95) - 8.8).abs() < 1e-12);
        assert_eq!(quantile(&mut [5.0], 0.95), 5.0);
        assert_eq!(quantile(&mut [], 0.95), 0.0);
        let mut v = vec![1.0, 2.0];
        assert!((quantile(&mut v, 0.5) - 1.5).abs() < 1e-12);
    }

    #[test]
    fn exact_samples_tile_the_run() {
        let run = Run {
            ts_start: 1000,
            ts_end: 1250,
            cpu_ms: Some(300.0),
        };
        let mut ivs = vec![
            iv(1250, 50, 100.0),
            iv(1100, 100, 50.0),
            iv(1200, 100, 150.0),
        ];
        let mut out = Vec::new();
        let shape = build_fragments(run, &mut ivs, HOST, CpuSizing::Peak, &mut out);
        assert_eq!(
            out.iter().map(|f| f.duration).collect::<Vec<_>>(),
            vec![100, 100, 50]
        );
        assert_eq!(out[0].cpu_usage, 0.5 * 2000.0);
        assert_eq!(out[2].cpu_usage, 2.0 * 2000.0);
        assert_eq!(shape.gap_ms, 0);
        assert!((shape.fragment_cpu_ms - 300.0).abs() < 1e-9);
        assert_eq!(shape.cpu_count, 2);
    }

    #[test]
    fn gaps_take_the_unsampled_exact_cpu() {
        let run = Run {
            ts_start: 0,
            ts_end: 300,
            cpu_ms: Some(250.0),
        };
        // Head gap 0..100, sampled 100..200 (50 ms), tail gap 200..300.
        let mut ivs = vec![iv(200, 100, 50.0)];
        let mut out = Vec::new();
        let shape = build_fragments(run, &mut ivs, HOST, CpuSizing::Peak, &mut out);
        assert_eq!(total(&out), 300);
        assert_eq!(shape.gap_ms, 200);
        assert!((shape.fragment_cpu_ms - 250.0).abs() < 1e-9);
        assert_eq!(out[0].cpu_usage, 1.0 * 2000.0);
    }

    #[test]
    fn original_head_gap_takes_neighbour_rate() {
        let run = Run {
            ts_start: 0,
            ts_end: 300,
            cpu_ms: None,
        };
        // The original's placeholder first sample (dt 0) then real ones.
        let mut ivs = vec![iv(100, 0, 0.0), iv(200, 100, 100.0), iv(300, 100, 50.0)];
        let mut out = Vec::new();
        build_fragments(run, &mut ivs, HOST, CpuSizing::Peak, &mut out);
        assert_eq!(total(&out), 300);
        assert_eq!(out[0].cpu_usage, 2000.0);
        assert_eq!(out[1].cpu_usage, 2000.0);
        assert_eq!(out[2].cpu_usage, 1000.0);
    }

    #[test]
    fn zero_length_exit_sample_joins_the_last_piece() {
        let run = Run {
            ts_start: 0,
            ts_end: 200,
            cpu_ms: Some(100.5),
        };
        let mut ivs = vec![iv(100, 100, 50.0), iv(200, 100, 50.0), iv(200, 0, 0.5)];
        let mut out = Vec::new();
        let shape = build_fragments(run, &mut ivs, HOST, CpuSizing::Peak, &mut out);
        assert_eq!(out.len(), 2);
        assert!((shape.fragment_cpu_ms - 100.5).abs() < 1e-9);
        assert_eq!(out[1].cpu_usage, 0.505 * 2000.0);
    }

    #[test]
    fn overlaps_and_outside_parts_are_clipped() {
        let run = Run {
            ts_start: 100,
            ts_end: 300,
            cpu_ms: Some(200.0),
        };
        // Starts before the run; the second overlaps the first by 50 ms.
        let mut ivs = vec![iv(200, 200, 200.0), iv(300, 150, 150.0)];
        let mut out = Vec::new();
        let shape = build_fragments(run, &mut ivs, HOST, CpuSizing::Peak, &mut out);
        assert_eq!(
            out.iter().map(|f| f.duration).collect::<Vec<_>>(),
            vec![100, 100]
        );
        assert_eq!(shape.gap_ms, 0);
        assert_eq!(out[0].cpu_usage, 2000.0);
    }

    #[test]
    fn zero_length_and_unsampled_tasks_get_one_fragment() {
        let host = HOST;
        let mut out = Vec::new();
        let zero = Run {
            ts_start: 5,
            ts_end: 5,
            cpu_ms: Some(0.5),
        };
        let shape = build_fragments(zero, &mut [iv(5, 0, 0.5)], host, CpuSizing::Peak, &mut out);
        assert_eq!(shape.duration, 1);
        assert_eq!(
            out,
            vec![Fragment {
                duration: 1,
                cpu_usage: 1000.0
            }]
        );
        out.clear();
        let short = Run {
            ts_start: 0,
            ts_end: 40,
            cpu_ms: Some(20.0),
        };
        let shape = build_fragments(short, &mut [], host, CpuSizing::Peak, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].duration, 40);
        assert_eq!(out[0].cpu_usage, 1000.0);
        assert_eq!(shape.cpu_count, 1);
    }

    #[test]
    fn usage_is_clamped_to_cores_and_floored() {
        let run = Run {
            ts_start: 0,
            ts_end: 200,
            cpu_ms: None,
        };
        let mut ivs = vec![iv(100, 100, 1000.0), iv(200, 100, 0.0)];
        let mut out = Vec::new();
        let shape = build_fragments(run, &mut ivs, HOST, CpuSizing::Peak, &mut out);
        assert_eq!(out[0].cpu_usage, 4.0 * 2000.0);
        assert_eq!(out[1].cpu_usage, MIN_USAGE_MHZ);
        assert_eq!(shape.cpu_count, 4);
    }

    #[test]
    fn datacenter_merges_identical_hosts_and_writes_memory_in_mib() {
        let n = |cores| NodeHost {
            host: Host { mhz: 2400.0, cores },
            mem_mib: 16384,
        };
        let dc = datacenter([n(4), n(2), n(4)]);
        let json = serde_json::to_string(&dc).unwrap();
        assert_eq!(
            json,
            r#"{"clusters":[{"name":"C01","hosts":[{"name":"H01","count":1,"cpu":{"coreCount":2,"coreSpeed":2400},"memory":{"memorySize":"16384 MiB"}},{"name":"H02","count":2,"cpu":{"coreCount":4,"coreSpeed":2400},"memory":{"memorySize":"16384 MiB"}}]}]}"#
        );
    }

    #[test]
    fn node_host_rounds_to_whole_mhz_and_refuses_what_opendc_cannot_use() {
        let info = |mhz: f64, cores, mem| NodeInfo {
            node_id: "n".into(),
            stage: "cloud".into(),
            cpu_cores: cores,
            mem_mb: mem,
            cpu_model: "x".into(),
            cpu_freq_mhz: mhz,
        };
        let p = Path::new("CTS/nodes.json");
        let h = node_host(&info(2599.998, 2, 8192), p).unwrap();
        assert_eq!(h.host.mhz, 2600.0);
        assert_eq!(h.mem_mib, 8192);
        for (bad, field) in [
            (info(0.0, 2, 8192), "cpu_freq_mhz"),
            (info(f64::NAN, 2, 8192), "cpu_freq_mhz"),
            (info(2400.0, 0, 8192), "cpu_cores"),
            (info(2400.0, 2, 0), "mem_mb"),
        ] {
            let err = node_host(&bad, p).unwrap_err().to_string();
            assert!(
                err.contains(field) && err.contains("CTS/nodes.json"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_baseline_sample_is_no_measurement() {
        // The original collector's first (and for a short task only) sample.
        let run = Run {
            ts_start: 0,
            ts_end: 300,
            cpu_ms: None,
        };
        let mut out = Vec::new();
        let shape = build_fragments(run, &mut [iv(150, 0, 0.0)], HOST, CpuSizing::Peak, &mut out);
        assert!(!shape.measured);
        // A sample whose interval ends at the run's start measures nothing either.
        let shape = build_fragments(
            run,
            &mut [iv(0, 100, 50.0)],
            HOST,
            CpuSizing::Peak,
            &mut out,
        );
        assert!(!shape.measured);
        let shape = build_fragments(
            run,
            &mut [iv(150, 0, 0.0), iv(250, 100, 10.0)],
            HOST,
            CpuSizing::Peak,
            &mut out,
        );
        assert!(shape.measured);
        let exact = Run {
            cpu_ms: Some(0.0),
            ..run
        };
        assert!(build_fragments(exact, &mut [], HOST, CpuSizing::Peak, &mut out).measured);
    }

    #[test]
    fn peak_sizing_conserves_cpu_and_p95_reports_what_it_clips() {
        let run = Run {
            ts_start: 0,
            ts_end: 400,
            cpu_ms: None,
        };
        // 0.5, 0.5, 0.5 and 3 cores for 100 ms each.
        let mut ivs = vec![
            iv(100, 100, 50.0),
            iv(200, 100, 50.0),
            iv(300, 100, 50.0),
            iv(400, 100, 300.0),
        ];
        let mut out = Vec::new();
        let peak = build_fragments(run, &mut ivs, HOST, CpuSizing::Peak, &mut out);
        assert_eq!(peak.cpu_capacity, 6000.0);
        assert_eq!(peak.cpu_count, 3);
        assert!(out.iter().all(|f| f.cpu_usage <= peak.cpu_capacity));
        // P95 of [1000, 1000, 1000, 6000] = 1000 + 5000 × 0.85.
        let p95 = 1000.0 + 5000.0 * 0.85;
        assert!((peak.p95_clip_ms - (6000.0 - p95) / 2000.0 * 100.0).abs() < 1e-9);
        out.clear();
        let sized = build_fragments(run, &mut ivs, HOST, CpuSizing::P95, &mut out);
        assert!((sized.cpu_capacity - p95).abs() < 1e-9);
        assert_eq!(sized.cpu_count, 3);
        assert_eq!(sized.p95_clip_ms, peak.p95_clip_ms);
        assert!(fits(sized.cpu_capacity, sized.cpu_count, HOST));
    }

    #[test]
    fn cpu_count_fits_opendc_filters() {
        // round(P95 / MHz) let 1.4 cores' worth run on one core; ceil does not.
        assert_eq!(cpu_count_for(2800.0, HOST), 2);
        assert_eq!(cpu_count_for(2000.0, HOST), 1);
        assert_eq!(cpu_count_for(2000.5, HOST), 2);
        assert_eq!(cpu_count_for(0.1, HOST), 1);
        assert_eq!(cpu_count_for(8000.0, HOST), 4);
        assert_eq!(cpu_count_for(f64::NAN, HOST), 1);
        let odd = Host {
            mhz: 2599.0,
            cores: 7,
        };
        for k in 1..=7u32 {
            for frac in [0.0, 1e-12, 0.3, 0.999_999_999] {
                let cap = ((f64::from(k) - 1.0 + frac) * odd.mhz).max(MIN_USAGE_MHZ);
                let n = cpu_count_for(cap, odd);
                assert!(fits(cap, n, odd), "{cap} on {n}");
                assert!(
                    n == 1 || cap / f64::from(n - 1) > odd.mhz,
                    "{cap}: {n} is not the fewest"
                );
            }
        }
        assert!(fits(
            usage_mhz(7.0, odd),
            cpu_count_for(usage_mhz(9.0, odd), odd),
            odd
        ));
    }

    #[test]
    fn command_shape_keeps_the_encode_parameters_only() {
        let s = |o| command_shape(None, None, None, Some(o));
        assert_eq!(
            s("gen_1920x1080_10s_1920x1080_h264_fast_n0007.mp4").as_deref(),
            Some("encode=1920x1080_h264_fast")
        );
        assert_eq!(
            s("/out/clip_854x480_crf28.mp4").as_deref(),
            Some("encode=854x480_crf28")
        );
        assert_eq!(s("plain.mp4"), None);
        assert_eq!(command_shape(None, None, None, None), None);
        let units = serde_json::json!(2);
        let profile = serde_json::json!("fast1080p");
        assert_eq!(
            command_shape(
                Some("ffmpeg"),
                Some(&profile),
                Some(&units),
                Some("a_1x2_x_n1.mp4")
            )
            .as_deref(),
            Some("comm=ffmpeg profile=fast1080p units=2 encode=1x2_x")
        );
    }

    #[test]
    fn experiment_names_the_run_and_absolute_paths() {
        let e = experiment("run7", Path::new("/data/out")).unwrap();
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"name":"run7",
                "topologies":[{"pathToFile":"/data/out/small_datacenter.json"}],
                "workloads":[{"pathToFile":"/data/out","type":"ComputeWorkload"}]})
        );
        assert!(experiment("r", Path::new("out")).is_err());
    }
}
