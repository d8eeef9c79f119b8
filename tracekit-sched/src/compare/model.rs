//! Real against simulated: joining the tasks, aligning the time origins,
//! and the metrics and verdicts of `compare`. Pure: no I/O.

use std::collections::HashMap;

use serde::Serialize;

use super::opendc_output::SimTask;
use crate::report::model::throughput;
use crate::stats::{Dist, KsTest, ks_2samp, rmse, sorted};

/// Points of the cumulative-completion grid.
pub const CUMULATIVE_POINTS: i64 = 2000;

/// A real task as `compare` needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct RealTask {
    pub trace_id: String,
    /// The id the OpenDC export gave it.
    pub id: Option<i32>,
    pub ts_enqueue: i64,
    pub ts_start: i64,
    pub ts_end: i64,
}

/// How tasks were matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinKey {
    /// OpenDC's `task_name` = the trace id.
    TaskName,
    /// OpenDC's `task_id` = the id the export gave the task.
    TaskId,
}

/// A matched pair, times in ms from each side's origin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pair {
    pub real: (i64, i64, i64),
    pub sim: (i64, i64, i64),
}

/// The tasks of both sides that match.
#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    pub key: JoinKey,
    pub pairs: Vec<Pair>,
    pub real_only: usize,
    pub sim_only: usize,
    /// Epoch ms (real) and simulation ms of the first submission among the
    /// matched tasks: each side's time zero.
    pub real_origin_ms: i64,
    pub sim_origin_ms: i64,
}

/// Match by `task_name` = trace id when names match any; else by
/// `task_id` = the export's id. `None` when no task matches either way.
pub fn join(real: &[RealTask], sim: &[SimTask]) -> Option<Joined> {
    let by_name: HashMap<&str, &SimTask> = sim
        .iter()
        .filter_map(|s| s.name.as_deref().map(|n| (n, s)))
        .collect();
    let named: Vec<(&RealTask, &SimTask)> = real
        .iter()
        .filter_map(|r| by_name.get(r.trace_id.as_str()).map(|s| (r, *s)))
        .collect();
    let (key, matched) = if named.is_empty() {
        let by_id: HashMap<i32, &SimTask> = sim.iter().map(|s| (s.id, s)).collect();
        let ided: Vec<(&RealTask, &SimTask)> = real
            .iter()
            .filter_map(|r| r.id.and_then(|id| by_id.get(&id)).map(|s| (r, *s)))
            .collect();
        (JoinKey::TaskId, ided)
    } else {
        (JoinKey::TaskName, named)
    };
    if matched.is_empty() {
        return None;
    }
    let real_origin = matched.iter().map(|(r, _)| r.ts_enqueue).min()?;
    let sim_origin = matched.iter().map(|(_, s)| s.submission_ms).min()?;
    let pairs = matched
        .iter()
        .map(|(r, s)| Pair {
            real: (
                r.ts_enqueue - real_origin,
                r.ts_start - real_origin,
                r.ts_end - real_origin,
            ),
            sim: (
                s.submission_ms - sim_origin,
                s.schedule_ms - sim_origin,
                s.finish_ms - sim_origin,
            ),
        })
        .collect();
    Some(Joined {
        key,
        real_only: real.len() - matched.len(),
        sim_only: sim.len() - matched.len(),
        pairs,
        real_origin_ms: real_origin,
        sim_origin_ms: sim_origin,
    })
}

/// The limits of the verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Thresholds {
    /// Cumulative-completion RMSE after best-lag alignment, % of the tasks.
    pub cumulative_rmse_pct: f64,
    /// Makespan error of a run at least `long_run_s` long, % of the real one.
    pub makespan_pct: f64,
    /// Makespan error of a shorter run, s.
    pub makespan_s: f64,
    pub long_run_s: f64,
    /// The wait distributions differ when the KS p-value is below this.
    pub ks_alpha: f64,
    /// Throughput RMSE, % of the real mean per minute.
    pub throughput_rmse_pct: f64,
    /// 95th percentile of the per-task run-time error, % of the real run
    /// time (at least 1 s).
    pub run_error_p95_pct: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            cumulative_rmse_pct: 3.0,
            makespan_pct: 1.0,
            makespan_s: 6.0,
            long_run_s: 600.0,
            ks_alpha: 0.05,
            throughput_rmse_pct: 10.0,
            run_error_p95_pct: 5.0,
        }
    }
}

/// One metric's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub metric: &'static str,
    /// The value measured, in `unit`.
    pub value: f64,
    pub unit: &'static str,
    /// The limit, as text (`≤ 3 %`).
    pub limit: String,
    pub pass: bool,
}

/// Wait times of both sides.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WaitCompare {
    pub real_s: Dist,
    pub sim_s: Dist,
    pub ks: KsTest,
}

/// Completions per minute of both sides.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThroughputCompare {
    pub real_per_minute: Vec<u64>,
    pub sim_per_minute: Vec<u64>,
    pub real_mean_per_minute: f64,
    pub sim_mean_per_minute: f64,
    /// Over minutes (the shorter side padded with zeros), tasks/min.
    pub rmse_per_minute: f64,
    pub rmse_pct: f64,
}

/// Cumulative completions of both sides.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CumulativeCompare {
    /// Grid step, ms.
    pub step_ms: i64,
    /// Shift of the simulated curve that fits best: positive when the
    /// simulation finishes later, s.
    pub best_lag_s: f64,
    /// RMSE of the fraction of tasks completed, %, at the best lag and
    /// without a shift.
    pub rmse_pct: f64,
    pub rmse_unshifted_pct: f64,
    /// Fractions completed at each grid point, real and simulated.
    pub real: Vec<f64>,
    pub sim: Vec<f64>,
}

/// Makespans, s, from each side's first submission.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MakespanCompare {
    pub real_s: f64,
    pub sim_s: f64,
    /// sim − real.
    pub error_s: f64,
    pub error_pct: f64,
}

/// Per-task run time (sim − real).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunErrorCompare {
    /// Signed error, s.
    pub error_s: Dist,
    /// |error| / max(real run, 1 s), %.
    pub abs_error_pct: Dist,
}

/// The comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub join: JoinKey,
    pub matched: usize,
    pub real_only: usize,
    pub sim_only: usize,
    pub real_origin_ms: i64,
    pub sim_origin_ms: i64,
    pub wait: WaitCompare,
    pub throughput: ThroughputCompare,
    pub cumulative: CumulativeCompare,
    pub makespan: MakespanCompare,
    pub run_error: RunErrorCompare,
    pub thresholds: Thresholds,
    pub verdicts: Vec<Verdict>,
    /// Every verdict passes.
    pub pass: bool,
    /// Sorted waits, s, for the CDF chart.
    #[serde(skip)]
    pub real_waits: Vec<f64>,
    #[serde(skip)]
    pub sim_waits: Vec<f64>,
    /// Sorted per-task run-time errors (sim − real), s, for the CDF chart.
    #[serde(skip)]
    pub run_errors: Vec<f64>,
}

/// Compare the matched tasks of `j`.
pub fn compare(j: &Joined, th: Thresholds) -> Comparison {
    let s = |ms: i64| ms as f64 / 1000.0;
    let real_waits = sorted(j.pairs.iter().map(|p| s(p.real.1 - p.real.0)).collect());
    let sim_waits = sorted(j.pairs.iter().map(|p| s(p.sim.1 - p.sim.0)).collect());
    let wait = WaitCompare {
        real_s: Dist::of(&real_waits),
        sim_s: Dist::of(&sim_waits),
        ks: ks_2samp(&real_waits, &sim_waits),
    };

    let real_end = j.pairs.iter().map(|p| p.real.2).max().unwrap_or(0);
    let sim_end = j.pairs.iter().map(|p| p.sim.2).max().unwrap_or(0);
    let tr = throughput(j.pairs.iter().map(|p| p.real.2), 0, real_end);
    let ts = throughput(j.pairs.iter().map(|p| p.sim.2), 0, sim_end);
    let minutes = tr.per_minute.len().max(ts.per_minute.len());
    let pad = |v: &[u64]| -> Vec<f64> {
        (0..minutes)
            .map(|i| v.get(i).copied().unwrap_or(0) as f64)
            .collect()
    };
    let tp_rmse = rmse(&pad(&tr.per_minute), &pad(&ts.per_minute));
    let throughput = ThroughputCompare {
        rmse_pct: pct(tp_rmse, tr.mean_per_minute),
        rmse_per_minute: tp_rmse,
        real_mean_per_minute: tr.mean_per_minute,
        sim_mean_per_minute: ts.mean_per_minute,
        real_per_minute: tr.per_minute,
        sim_per_minute: ts.per_minute,
    };

    let cumulative = cumulative(
        j.pairs.iter().map(|p| p.real.2).collect(),
        j.pairs.iter().map(|p| p.sim.2).collect(),
    );

    let makespan = MakespanCompare {
        real_s: s(real_end),
        sim_s: s(sim_end),
        error_s: s(sim_end - real_end),
        error_pct: pct(s(sim_end - real_end), s(real_end)),
    };

    let errors = sorted(
        j.pairs
            .iter()
            .map(|p| s((p.sim.2 - p.sim.1) - (p.real.2 - p.real.1)))
            .collect(),
    );
    let rel = sorted(
        j.pairs
            .iter()
            .map(|p| {
                let err = ((p.sim.2 - p.sim.1) - (p.real.2 - p.real.1)).abs();
                100.0 * err as f64 / (p.real.2 - p.real.1).max(1000) as f64
            })
            .collect(),
    );
    let run_error = RunErrorCompare {
        error_s: Dist::of(&errors),
        abs_error_pct: Dist::of(&rel),
    };

    let long = makespan.real_s >= th.long_run_s;
    let verdicts = vec![
        Verdict {
            metric: "cumulative completions RMSE (best lag)",
            value: cumulative.rmse_pct,
            unit: "%",
            limit: format!("≤ {} %", th.cumulative_rmse_pct),
            pass: cumulative.rmse_pct <= th.cumulative_rmse_pct,
        },
        if long {
            Verdict {
                metric: "makespan error",
                value: makespan.error_pct.abs(),
                unit: "%",
                limit: format!("≤ {} % (run ≥ {} s)", th.makespan_pct, th.long_run_s),
                pass: makespan.error_pct.abs() <= th.makespan_pct,
            }
        } else {
            Verdict {
                metric: "makespan error",
                value: makespan.error_s.abs(),
                unit: "s",
                limit: format!("≤ {} s (run < {} s)", th.makespan_s, th.long_run_s),
                pass: makespan.error_s.abs() <= th.makespan_s,
            }
        },
        Verdict {
            metric: "wait distribution (KS p-value)",
            value: wait.ks.p_value,
            unit: "",
            limit: format!("≥ {}", th.ks_alpha),
            pass: wait.ks.p_value >= th.ks_alpha,
        },
        Verdict {
            metric: "throughput per minute RMSE",
            value: throughput.rmse_pct,
            unit: "%",
            limit: format!("≤ {} % of the real mean", th.throughput_rmse_pct),
            pass: throughput.rmse_pct <= th.throughput_rmse_pct,
        },
        Verdict {
            metric: "run-time error p95",
            value: run_error.abs_error_pct.p95,
            unit: "%",
            limit: format!("≤ {} %", th.run_error_p95_pct),
            pass: run_error.abs_error_pct.p95 <= th.run_error_p95_pct,
        },
    ];
    Comparison {
        join: j.key,
        matched: j.pairs.len(),
        real_only: j.real_only,
        sim_only: j.sim_only,
        real_origin_ms: j.real_origin_ms,
        sim_origin_ms: j.sim_origin_ms,
        wait,
        throughput,
        cumulative,
        makespan,
        run_error,
        thresholds: th,
        pass: verdicts.iter().all(|v| v.pass),
        verdicts,
        real_waits,
        sim_waits,
        run_errors: errors,
    }
}

/// 100 · a / b, 0 when b is 0 and a too, infinite when only b is.
fn pct(a: f64, b: f64) -> f64 {
    if b != 0.0 {
        100.0 * a / b
    } else if a == 0.0 {
        0.0
    } else {
        f64::INFINITY
    }
}

/// Cumulative completion curves on a common grid and the lag of the
/// simulated one that fits the real one best (every lag of ± the span, in
/// grid steps).
fn cumulative(mut real_ends: Vec<i64>, mut sim_ends: Vec<i64>) -> CumulativeCompare {
    real_ends.sort_unstable();
    sim_ends.sort_unstable();
    let n = real_ends.len().max(1) as f64;
    let span = real_ends
        .last()
        .copied()
        .unwrap_or(0)
        .max(sim_ends.last().copied().unwrap_or(0))
        .max(1);
    let step = ((span + CUMULATIVE_POINTS - 1) / CUMULATIVE_POINTS).max(1);
    let g = ((span + step - 1) / step) as usize + 1;
    // Fraction ended by k·step for k in [lo, hi].
    let curve = |ends: &[i64], lo: i64, hi: i64| -> Vec<f64> {
        let mut out = Vec::with_capacity((hi - lo + 1) as usize);
        let mut i = 0;
        for k in lo..=hi {
            let t = k * step;
            while i < ends.len() && ends[i] <= t {
                i += 1;
            }
            out.push(i as f64 / n);
        }
        out
    };
    let gi = g as i64;
    let real = curve(&real_ends, 0, gi - 1);
    // The simulated curve over [−span, 2·span] so every shift is covered.
    let sim_ext = curve(&sim_ends, -gi, 2 * gi - 1);
    let at = |lag: i64| -> f64 {
        let from = (gi + lag) as usize;
        rmse(&real, &sim_ext[from..from + g])
    };
    let unshifted = at(0);
    let (mut best_lag, mut best) = (0i64, unshifted);
    for lag in -gi..gi {
        let e = at(lag);
        if e < best || (e == best && lag.abs() < best_lag.abs()) {
            best = e;
            best_lag = lag;
        }
    }
    CumulativeCompare {
        step_ms: step,
        best_lag_s: (best_lag * step) as f64 / 1000.0,
        rmse_pct: 100.0 * best,
        rmse_unshifted_pct: 100.0 * unshifted,
        real,
        sim: sim_ext[g..2 * g].to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::opendc_output::replay;

    fn real(n: usize) -> Vec<RealTask> {
        (0..n)
            .map(|i| {
                let q = 1_000_000 + i as i64 * 2000;
                RealTask {
                    trace_id: format!("t{i}"),
                    id: Some(i as i32 + 1),
                    ts_enqueue: q,
                    ts_start: q + 500 + (i as i64 % 7) * 100,
                    ts_end: q + 10_000 + (i as i64 % 5) * 1000,
                }
            })
            .collect()
    }

    #[test]
    fn identical_runs_have_no_error_and_pass() {
        let r = real(300);
        let j = join(&r, &replay(&r, true, 0, 1.0)).unwrap();
        assert_eq!(j.key, JoinKey::TaskName);
        let c = compare(&j, Thresholds::default());
        assert_eq!(c.matched, 300);
        assert_eq!(c.cumulative.rmse_pct, 0.0);
        assert_eq!(c.cumulative.best_lag_s, 0.0);
        assert_eq!(c.makespan.error_s, 0.0);
        assert_eq!(c.wait.ks.statistic, 0.0);
        assert_eq!(c.throughput.rmse_per_minute, 0.0);
        assert_eq!(c.run_error.error_s.max, 0.0);
        assert!(c.pass, "{:?}", c.verdicts);
    }

    #[test]
    fn a_shift_shows_as_lag_and_makespan_error() {
        let r = real(300);
        let j = join(&r, &replay(&r, false, 20_000, 1.0)).unwrap();
        assert_eq!(j.key, JoinKey::TaskId);
        let c = compare(&j, Thresholds::default());
        assert_eq!(c.makespan.error_s, 20.0);
        assert!((c.cumulative.best_lag_s - 20.0).abs() <= c.cumulative.step_ms as f64 / 1000.0);
        assert!(c.cumulative.rmse_pct < 0.5, "{}", c.cumulative.rmse_pct);
        assert!(c.cumulative.rmse_unshifted_pct > 3.0);
        assert!((c.wait.sim_s.p50 - c.wait.real_s.p50 - 20.0).abs() < 1e-9);
        assert_eq!(c.wait.ks.statistic, 1.0);
        let verdict = |m: &str| {
            c.verdicts
                .iter()
                .find(|v| v.metric.starts_with(m))
                .unwrap()
                .pass
        };
        assert!(verdict("cumulative"));
        assert!(!verdict("makespan"));
        assert!(!verdict("wait"));
        assert!(verdict("run-time"));
        assert!(!c.pass);
    }

    #[test]
    fn longer_runs_show_as_run_time_error() {
        let r = real(100);
        let c = compare(
            &join(&r, &replay(&r, true, 0, 1.1)).unwrap(),
            Thresholds::default(),
        );
        assert!((c.run_error.abs_error_pct.p50 - 10.0).abs() < 0.1);
        assert!(!c.verdicts[4].pass);
    }

    #[test]
    fn no_shared_task_is_none() {
        let r = real(3);
        let mut s = replay(&r, true, 0, 1.0);
        for t in &mut s {
            t.name = Some("other".into());
            t.id += 100;
        }
        assert!(join(&r, &s).is_none());
    }
}
