//! What the report says about a run, computed from [`RunData`]: counts,
//! wait and run times, throughput, makespan, CPU per profile and per node,
//! time series on a common grid, and a lane per task for the Gantt chart.
//! Pure: no I/O.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use serde::Serialize;

use super::load::{RunData, RunTask};
use crate::stats::{Dist, Grid, quantile, sorted};

/// The time series have at most this many points.
pub const MAX_BUCKETS: usize = 600;
/// …and buckets at least this wide, ms.
pub const MIN_BUCKET_MS: i64 = 10;
/// The wait-time CDF has at most this many points.
pub const MAX_CDF_POINTS: usize = 1000;
/// Label of tasks without a profile.
pub const NO_PROFILE: &str = "(none)";

/// Task counts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Counts {
    /// Complete tasks (every required field present).
    pub tasks: usize,
    /// Exited 0.
    pub done: usize,
    /// Exited non-zero or by a signal.
    pub failed: usize,
    /// Dead-lettered (never ran); unknown without the dead letters.
    pub dead: Option<usize>,
    /// Invocation lines left out for lack of a required field.
    pub incomplete: u64,
}

/// One node's share of the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeRow {
    pub name: String,
    pub cores: u32,
    pub tasks: usize,
    pub done: usize,
    pub failed: usize,
    /// CPU time of its tasks, s.
    pub cpu_s: f64,
    /// cpu_s over the makespan: cores kept busy on average.
    pub mean_cores: f64,
    /// Highest time-averaged RSS of its traced processes in one bucket, MB.
    pub peak_rss_mb: f64,
    pub collector: Option<String>,
    pub fallback_reason: Option<String>,
    pub interval_ms: Option<u64>,
    pub events_lost: u64,
    /// Lanes of its band on the Gantt chart.
    pub lanes: usize,
}

/// One profile's tasks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProfileRow {
    pub name: String,
    pub tasks: usize,
    pub done: usize,
    pub failed: usize,
    pub wait_s: Dist,
    pub run_s: Dist,
    pub cpu_s: f64,
    /// CPU time over run time: cores a task of the profile used on average.
    pub mean_cores: f64,
}

/// Completions per minute since the first submission.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Throughput {
    /// Tasks that ended in minute i (the last one may be partial).
    pub per_minute: Vec<u64>,
    /// Tasks over the makespan, per minute (more than any one minute's
    /// count when the run is shorter than a minute).
    pub mean_per_minute: f64,
    pub max_per_minute: u64,
}

/// A named series of values on the grid.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NamedSeries {
    pub name: String,
    pub values: Vec<f64>,
}

/// The time series, one value per grid bucket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimeSeries {
    pub grid: Grid,
    /// Cores in use per node (CPU time in the bucket over its width).
    pub cores: Vec<NamedSeries>,
    /// Time-averaged RSS of the traced processes per node, MB.
    pub rss_mb: Vec<NamedSeries>,
    /// Time-averaged tasks running, and waiting (submitted, not started).
    pub running: Vec<f64>,
    pub queued: Vec<f64>,
    /// Tasks ended by the end of the bucket.
    pub completed: Vec<u64>,
}

/// A task as the report lists it (`tasks.csv`) and draws it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskRow {
    pub trace_id: String,
    pub node: String,
    pub profile: String,
    pub pid: u32,
    pub ts_enqueue: i64,
    pub ts_start: i64,
    pub ts_end: i64,
    pub wait_ms: i64,
    pub run_ms: i64,
    pub cpu_ms: Option<f64>,
    pub peak_rss_kb: Option<u64>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// `done` or `failed`.
    pub status: &'static str,
    /// Lane on its node's band of the Gantt chart.
    #[serde(skip)]
    pub lane: usize,
    #[serde(skip)]
    pub node_index: usize,
    #[serde(skip)]
    pub profile_index: usize,
}

/// A dead-lettered task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadRow {
    pub reason: String,
    pub node: Option<String>,
    pub ts: i64,
    pub task: String,
}

/// The report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub run_id: String,
    pub input: String,
    /// Epoch ms of the first submission: time zero of every series.
    pub origin_ms: i64,
    /// Epoch ms of the last end.
    pub end_ms: i64,
    /// From the first submission to the last end, s.
    pub makespan_s: f64,
    pub counts: Counts,
    /// start − enqueue over all tasks, s.
    pub wait_s: Dist,
    /// end − start over all tasks, s.
    pub run_s: Dist,
    pub throughput: Throughput,
    pub nodes: Vec<NodeRow>,
    pub profiles: Vec<ProfileRow>,
    pub audit_ok: bool,
    pub audit_problems: Vec<String>,
    pub audit_warnings: Vec<String>,
    /// What was asked and not done: shown before everything else.
    pub not_as_asked: Vec<String>,
    /// With `--correct-clock`: what moved onto Redis's clock, then what
    /// could not (each `warning: …`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub clock: Vec<String>,
    pub dead: Vec<DeadRow>,
    pub series: TimeSeries,
    /// (wait s, fraction of tasks waiting at most that long).
    pub wait_cdf: Vec<(f64, f64)>,
    /// Every task, in submission order (in `tasks.csv`, not in report.json).
    #[serde(skip)]
    pub tasks: Vec<TaskRow>,
}

impl Report {
    /// Total lanes of the Gantt chart.
    pub fn lanes(&self) -> usize {
        self.nodes.iter().map(|n| n.lanes).sum()
    }
}

/// Compute the report of `data` (which holds at least one task).
pub fn compute(data: &RunData) -> Report {
    let origin = data.tasks.iter().map(|t| t.ts_enqueue).min().unwrap_or(0);
    let end = data.tasks.iter().map(|t| t.ts_end).max().unwrap_or(origin);
    let makespan_s = (end - origin) as f64 / 1000.0;

    // Profiles by name, tasks without one last.
    let mut names: Vec<&str> = data
        .tasks
        .iter()
        .map(|t| t.profile.as_deref().unwrap_or(NO_PROFILE))
        .collect();
    names.sort_unstable_by_key(|n| (*n == NO_PROFILE, *n));
    names.dedup();
    let profile_index: BTreeMap<&str, usize> =
        names.iter().enumerate().map(|(i, n)| (*n, i)).collect();

    let mut order: Vec<&RunTask> = data.tasks.iter().collect();
    order.sort_by_key(|t| (t.ts_enqueue, t.ts_start, t.node, t.pid));
    let lanes = assign_lanes(&order, data.nodes.len());
    let tasks: Vec<TaskRow> = order
        .iter()
        .zip(&lanes.of_task)
        .map(|(t, &lane)| {
            let profile = t.profile.as_deref().unwrap_or(NO_PROFILE);
            TaskRow {
                trace_id: t.trace_id.clone(),
                node: data.nodes[t.node].name.clone(),
                profile: profile.to_string(),
                pid: t.pid,
                ts_enqueue: t.ts_enqueue,
                ts_start: t.ts_start,
                ts_end: t.ts_end,
                wait_ms: t.ts_start - t.ts_enqueue,
                run_ms: t.ts_end - t.ts_start,
                cpu_ms: t.cpu_ms,
                peak_rss_kb: t.peak_rss_kb,
                exit_code: t.exit_code,
                signal: t.signal,
                status: if t.failed() { "failed" } else { "done" },
                lane,
                node_index: t.node,
                profile_index: profile_index[profile],
            }
        })
        .collect();

    let failed = tasks.iter().filter(|t| t.status == "failed").count();
    let counts = Counts {
        tasks: tasks.len(),
        done: tasks.len() - failed,
        failed,
        dead: data.dead.as_ref().map(Vec::len),
        incomplete: data.incomplete,
    };
    let secs = |ms: i64| ms as f64 / 1000.0;
    let waits = sorted(tasks.iter().map(|t| secs(t.wait_ms)).collect());
    let runs = sorted(tasks.iter().map(|t| secs(t.run_ms)).collect());

    let series = time_series(data, &tasks, origin, end);
    let nodes = data
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mine = tasks.iter().filter(|t| t.node_index == i);
            let (count, failed, cpu_ms) = mine.fold((0, 0, 0.0), |(c, f, cpu), t| {
                (
                    c + 1,
                    f + usize::from(t.status == "failed"),
                    cpu + t.cpu_ms.unwrap_or(0.0),
                )
            });
            let cpu_s = cpu_ms / 1000.0;
            NodeRow {
                name: n.name.clone(),
                cores: n.cores,
                tasks: count,
                done: count - failed,
                failed,
                cpu_s,
                mean_cores: if makespan_s > 0.0 {
                    cpu_s / makespan_s
                } else {
                    0.0
                },
                peak_rss_mb: series.rss_mb[i].values.iter().copied().fold(0.0, f64::max),
                collector: n.collector.map(|c| c.to_string()),
                fallback_reason: n.fallback_reason.clone(),
                interval_ms: n.interval_ms,
                events_lost: n.events_lost,
                lanes: lanes.per_node[i],
            }
        })
        .collect();

    let profiles = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mine: Vec<&TaskRow> = tasks.iter().filter(|t| t.profile_index == i).collect();
            let failed = mine.iter().filter(|t| t.status == "failed").count();
            let cpu_s = mine.iter().map(|t| t.cpu_ms.unwrap_or(0.0)).sum::<f64>() / 1000.0;
            let run_total: f64 = mine.iter().map(|t| secs(t.run_ms)).sum();
            ProfileRow {
                name: name.to_string(),
                tasks: mine.len(),
                done: mine.len() - failed,
                failed,
                wait_s: Dist::of(&sorted(mine.iter().map(|t| secs(t.wait_ms)).collect())),
                run_s: Dist::of(&sorted(mine.iter().map(|t| secs(t.run_ms)).collect())),
                cpu_s,
                mean_cores: if run_total > 0.0 {
                    cpu_s / run_total
                } else {
                    0.0
                },
            }
        })
        .collect();

    let throughput = throughput(tasks.iter().map(|t| t.ts_end), origin, end);
    let wait_cdf = cdf(&waits);
    Report {
        run_id: data.run_ids.join(", "),
        input: data.input.display().to_string(),
        origin_ms: origin,
        end_ms: end,
        makespan_s,
        counts,
        wait_s: Dist::of(&waits),
        run_s: Dist::of(&runs),
        throughput,
        nodes,
        profiles,
        audit_ok: data.audit_ok,
        audit_problems: data.audit_problems.clone(),
        audit_warnings: data.audit_warnings.clone(),
        not_as_asked: data.not_as_asked.clone(),
        clock: data.clock.clone(),
        dead: data
            .dead
            .iter()
            .flatten()
            .map(|d| DeadRow {
                reason: d.reason.clone(),
                node: d.node.clone(),
                ts: d.ts,
                task: d.task.clone(),
            })
            .collect(),
        series,
        wait_cdf,
        tasks,
    }
}

/// Lanes of the Gantt chart.
struct Lanes {
    of_task: Vec<usize>,
    per_node: Vec<usize>,
}

/// Put each task (in submission order) on the first lane of its node that
/// is free from its submission on, so that no two tasks' wait-and-run bars
/// overlap.
fn assign_lanes(order: &[&RunTask], nodes: usize) -> Lanes {
    // Per node: lanes by the time they are free again (min-heap).
    let mut free: Vec<BinaryHeap<Reverse<(i64, usize)>>> = vec![BinaryHeap::new(); nodes];
    let mut per_node = vec![0usize; nodes];
    let mut of_task = Vec::with_capacity(order.len());
    for t in order {
        let heap = &mut free[t.node];
        let lane = match heap.peek() {
            Some(Reverse((at, lane))) if *at <= t.ts_enqueue => {
                let lane = *lane;
                heap.pop();
                lane
            }
            _ => {
                per_node[t.node] += 1;
                per_node[t.node] - 1
            }
        };
        heap.push(Reverse((t.ts_end.max(t.ts_enqueue + 1), lane)));
        of_task.push(lane);
    }
    Lanes { of_task, per_node }
}

fn time_series(data: &RunData, tasks: &[TaskRow], origin: i64, end: i64) -> TimeSeries {
    let grid = Grid::covering(origin, end, MAX_BUCKETS, MIN_BUCKET_MS);
    let b = grid.buckets;
    let width_s = grid.width_ms as f64 / 1000.0;
    let mut cores = Vec::with_capacity(data.nodes.len());
    let mut rss_mb = Vec::with_capacity(data.nodes.len());
    for n in &data.nodes {
        let mut cpu_ms = vec![0.0; b];
        let mut rss_kb = vec![0.0; b];
        for s in &n.samples {
            grid.spread(&mut cpu_ms, s.ts_ms - s.dt_ms, s.ts_ms, s.cpu_ms, true);
            grid.spread(
                &mut rss_kb,
                s.ts_ms - s.dt_ms,
                s.ts_ms,
                s.rss_kb as f64,
                false,
            );
        }
        cores.push(NamedSeries {
            name: n.name.clone(),
            values: cpu_ms.iter().map(|ms| ms / 1000.0 / width_s).collect(),
        });
        rss_mb.push(NamedSeries {
            name: n.name.clone(),
            values: rss_kb.iter().map(|kb| kb / 1024.0).collect(),
        });
    }
    let mut running = vec![0.0; b];
    let mut queued = vec![0.0; b];
    let mut ended = vec![0u64; b];
    for t in tasks {
        grid.spread(&mut queued, t.ts_enqueue, t.ts_start, 1.0, false);
        grid.spread(&mut running, t.ts_start, t.ts_end, 1.0, false);
        let i = ((t.ts_end - origin) / grid.width_ms).clamp(0, b as i64 - 1);
        ended[i as usize] += 1;
    }
    let completed = ended
        .iter()
        .scan(0u64, |acc, n| {
            *acc += n;
            Some(*acc)
        })
        .collect();
    TimeSeries {
        grid,
        cores,
        rss_mb,
        running,
        queued,
        completed,
    }
}

/// Completions per minute from `origin`.
pub fn throughput(ends: impl Iterator<Item = i64>, origin: i64, end: i64) -> Throughput {
    let minutes = ((end - origin) / 60_000 + 1).max(1) as usize;
    let mut per_minute = vec![0u64; minutes];
    for e in ends {
        let m = ((e - origin).max(0) / 60_000) as usize;
        per_minute[m.min(minutes - 1)] += 1;
    }
    let span_min = ((end - origin) as f64 / 60_000.0).max(1.0 / 60.0);
    Throughput {
        mean_per_minute: per_minute.iter().sum::<u64>() as f64 / span_min,
        max_per_minute: per_minute.iter().copied().max().unwrap_or(0),
        per_minute,
    }
}

/// The empirical CDF of `sorted` as (value, fraction ≤ value), thinned to
/// at most [`MAX_CDF_POINTS`] quantiles.
pub fn cdf(sorted: &[f64]) -> Vec<(f64, f64)> {
    let n = sorted.len();
    if n == 0 {
        return Vec::new();
    }
    if n <= MAX_CDF_POINTS {
        return sorted
            .iter()
            .enumerate()
            .map(|(i, v)| (*v, (i + 1) as f64 / n as f64))
            .collect();
    }
    (1..=MAX_CDF_POINTS)
        .map(|k| {
            let p = k as f64 / MAX_CDF_POINTS as f64;
            (quantile(sorted, p), p)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::load::{RunNode, RunSample};
    use std::path::PathBuf;

    fn task(node: usize, id: &str, profile: &str, q: i64, s: i64, e: i64) -> RunTask {
        RunTask {
            node,
            trace_id: id.into(),
            pid: 100,
            profile: Some(profile.into()),
            ts_enqueue: q,
            ts_start: s,
            ts_end: e,
            cpu_ms: Some((e - s) as f64),
            peak_rss_kb: Some(1024),
            exit_code: Some(0),
            signal: None,
        }
    }

    fn node(name: &str, samples: Vec<RunSample>) -> RunNode {
        RunNode {
            name: name.into(),
            dir: PathBuf::from(name),
            cores: 2,
            mhz: 2000.0,
            collector: Some(tracekit_trace::CollectorKind::Ebpf),
            fallback_reason: None,
            interval_ms: Some(1000),
            events_lost: 0,
            samples,
        }
    }

    fn data(tasks: Vec<RunTask>, nodes: Vec<RunNode>) -> RunData {
        RunData {
            input: PathBuf::from("run"),
            run_ids: vec!["r".into()],
            nodes,
            tasks,
            incomplete: 0,
            dead: None,
            audit_ok: true,
            audit_problems: vec![],
            audit_warnings: vec![],
            not_as_asked: vec![],
            clock: vec![],
        }
    }

    #[test]
    fn counts_waits_makespan_and_profiles() {
        let mut t3 = task(1, "c", "b", 0, 30_000, 90_000);
        t3.exit_code = Some(1);
        let samples = vec![RunSample {
            ts_ms: 10_000,
            dt_ms: 10_000,
            cpu_ms: 20_000.0,
            rss_kb: 2048,
        }];
        let d = data(
            vec![
                task(0, "a", "a", 0, 0, 10_000),
                task(0, "b", "a", 0, 10_000, 20_000),
                t3,
            ],
            vec![node("n1", samples), node("n2", vec![])],
        );
        let r = compute(&d);
        assert_eq!((r.counts.tasks, r.counts.done, r.counts.failed), (3, 2, 1));
        assert_eq!(r.counts.dead, None);
        assert_eq!(r.makespan_s, 90.0);
        assert_eq!(r.wait_s.max, 30.0);
        assert_eq!(r.wait_s.p50, 10.0);
        assert_eq!(r.profiles.len(), 2);
        assert_eq!(r.profiles[0].name, "a");
        assert_eq!(r.profiles[0].run_s.mean, 10.0);
        assert_eq!(r.profiles[1].failed, 1);
        assert_eq!(r.profiles[1].mean_cores, 1.0);
        assert_eq!(r.nodes[0].tasks, 2);
        assert_eq!(r.nodes[0].cpu_s, 20.0);
        // Two tasks on n1 submitted together: two lanes.
        assert_eq!(r.nodes[0].lanes, 2);
        assert_eq!(r.throughput.per_minute, vec![2, 1]);
        // The sample used 2 cores for its 10 s.
        let g = r.series.grid;
        let first = &r.series.cores[0].values;
        let used: f64 = first.iter().sum::<f64>() * g.width_ms as f64 / 1000.0;
        assert!((used - 20.0).abs() < 1e-9, "{used}");
        assert!((first[0] - 2.0).abs() < 1e-9);
        assert_eq!(*r.series.completed.last().unwrap(), 3);
        assert_eq!(r.wait_cdf.last(), Some(&(30.0, 1.0)));
    }

    #[test]
    fn lanes_are_reused_when_free() {
        let d = data(
            vec![
                task(0, "a", "a", 0, 0, 10),
                task(0, "b", "a", 10, 10, 20),
                task(0, "c", "a", 15, 20, 30),
            ],
            vec![node("n1", vec![])],
        );
        let r = compute(&d);
        let lanes: Vec<usize> = r.tasks.iter().map(|t| t.lane).collect();
        assert_eq!(lanes, vec![0, 0, 1]);
        assert_eq!(r.lanes(), 2);
    }

    #[test]
    fn cdf_is_thinned() {
        let v: Vec<f64> = (0..5000).map(f64::from).collect();
        let c = cdf(&v);
        assert_eq!(c.len(), MAX_CDF_POINTS);
        assert_eq!(c.last(), Some(&(4999.0, 1.0)));
        assert_eq!(cdf(&[2.0, 1.0][..1]), vec![(2.0, 1.0)]);
    }
}
