//! The OpenDC workload model: parquet schemas, how a task's samples become
//! fragments, and the topology file. Pure functions; the file work is in
//! [`crate::export`].

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::Serialize;

use crate::schema::NodeInfo;

/// `tasks.parquet`
pub const TASKS_FILE: &str = "tasks.parquet";
/// `fragments.parquet`
pub const FRAGMENTS_FILE: &str = "fragments.parquet";
/// `small_datacenter.json`
pub const DATACENTER_FILE: &str = "small_datacenter.json";

/// Lowest fragment usage written, in MHz: OpenDC tools choke on zeros.
pub const MIN_USAGE_MHZ: f64 = 0.1;
/// Lowest memory capacity written, in KiB.
pub const MIN_MEM_KB: u64 = 1024;

/// Schema of `tasks.parquet`; every column required, as OpenDC's reader
/// declares them (it rejects a column that is less strict).
pub fn tasks_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int32, false),
        Field::new("submission_time", DataType::Int64, false),
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

/// The host a task ran on, as the export needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Host {
    /// The node's own frequency (`node_meta.json`), MHz per core.
    pub mhz: f64,
    pub cores: u32,
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
/// id and submission time).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskShape {
    pub duration: i64,
    pub cpu_count: i32,
    pub cpu_capacity: f64,
    /// CPU time the fragments carry, ms (after clamping and the usage floor).
    pub fragment_cpu_ms: f64,
    /// Time, ms, not covered by any sample and filled in.
    pub gap_ms: i64,
}

/// Cut a task's run into fragments that tile it exactly.
///
/// `intervals` are the samples joined to the task, in any order (they are
/// sorted here). Each keeps the part of its interval inside the run and not
/// already covered by an earlier one, with its CPU scaled to the part kept.
/// Time no sample covers is a gap. Gaps share the CPU the samples do not
/// account for when the exact total is known (the eBPF tracer records it);
/// without it (the original's traces) a gap takes the rate of its
/// neighbouring interval, which is how the original filled its head gap.
/// A task without samples is one fragment at its exact average rate.
pub fn build_fragments(
    run: Run,
    intervals: &mut [Interval],
    host: Host,
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
            // that ends there.
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
        let cores = cores.clamp(0.0, host.cores as f64);
        let usage = (cores * host.mhz).max(MIN_USAGE_MHZ);
        fragment_cpu_ms += usage / host.mhz * dur as f64;
        out.push(Fragment {
            duration: dur,
            cpu_usage: usage,
        });
    }

    let mut usages: Vec<f64> = out[first..].iter().map(|f| f.cpu_usage).collect();
    let cpu_capacity = quantile(&mut usages, 0.95);
    let cpu_count = (cpu_capacity / host.mhz)
        .round()
        .clamp(1.0, host.cores.max(1) as f64) as i32;
    TaskShape {
        duration: run.duration(),
        cpu_count,
        cpu_capacity,
        fragment_cpu_ms,
        gap_ms,
    }
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
    /// MHz (nodes.json rounds it to 100 MHz).
    pub core_speed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemorySpec {
    /// Bytes.
    pub memory_size: u64,
}

/// One cluster `C01` holding the nodes, identical hosts merged and named
/// H01, H02, … in order of (cores, speed, memory).
pub fn datacenter<'a>(nodes: impl IntoIterator<Item = &'a NodeInfo>) -> Datacenter {
    let mut counts: std::collections::BTreeMap<(u32, u64, u64), u32> = Default::default();
    for n in nodes {
        let key = (
            n.cpu_cores,
            n.cpu_freq_mhz.round().max(0.0) as u64,
            n.mem_mb * 1024 * 1024,
        );
        *counts.entry(key).or_default() += 1;
    }
    let hosts = counts
        .into_iter()
        .enumerate()
        .map(|(i, ((cores, mhz, bytes), count))| HostSpec {
            name: format!("H{:02}", i + 1),
            count,
            cpu: CpuSpec {
                core_count: cores,
                core_speed: mhz,
            },
            memory: MemorySpec { memory_size: bytes },
        })
        .collect();
    Datacenter {
        clusters: vec![Cluster {
            name: "C01".into(),
            hosts,
        }],
    }
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
        let shape = build_fragments(run, &mut ivs, HOST, &mut out);
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
        let shape = build_fragments(run, &mut ivs, HOST, &mut out);
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
        build_fragments(run, &mut ivs, HOST, &mut out);
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
        let shape = build_fragments(run, &mut ivs, HOST, &mut out);
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
        let shape = build_fragments(run, &mut ivs, HOST, &mut out);
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
        let shape = build_fragments(zero, &mut [iv(5, 0, 0.5)], host, &mut out);
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
        let shape = build_fragments(short, &mut [], host, &mut out);
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
        let shape = build_fragments(run, &mut ivs, HOST, &mut out);
        assert_eq!(out[0].cpu_usage, 4.0 * 2000.0);
        assert_eq!(out[1].cpu_usage, MIN_USAGE_MHZ);
        assert_eq!(shape.cpu_count, 4);
    }

    #[test]
    fn datacenter_merges_identical_hosts() {
        let n = |id: &str, cores| NodeInfo {
            node_id: id.into(),
            stage: "cloud".into(),
            cpu_cores: cores,
            mem_mb: 16384,
            cpu_model: "x".into(),
            cpu_freq_mhz: 2400.0,
        };
        let nodes = [n("a", 4), n("b", 2), n("c", 4)];
        let dc = datacenter(&nodes);
        let json = serde_json::to_string(&dc).unwrap();
        assert_eq!(
            json,
            r#"{"clusters":[{"name":"C01","hosts":[{"name":"H01","count":1,"cpu":{"coreCount":2,"coreSpeed":2400},"memory":{"memorySize":17179869184}},{"name":"H02","count":2,"cpu":{"coreCount":4,"coreSpeed":2400},"memory":{"memorySize":17179869184}}]}]}"#
        );
    }
}
