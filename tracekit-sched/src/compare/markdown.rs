//! `compare.md`: the comparison's numbers and verdicts as markdown.

use std::fmt::Write;

use super::Context;
use super::model::{Comparison, JoinKey};
use crate::fmt::{num, utc};

fn join_name(k: JoinKey) -> &'static str {
    match k {
        JoinKey::TaskName => "task_name = trace id",
        JoinKey::TaskId => "task_id = the export's task id",
    }
}

/// The verdict table, shared with the command's output.
pub fn verdicts(c: &Comparison) -> String {
    let mut o = String::from("| metric | value | limit | verdict |\n|---|---:|---|---|\n");
    for v in &c.verdicts {
        let _ = writeln!(
            o,
            "| {} | {} {} | {} | {} |",
            v.metric,
            num(v.value, 3),
            v.unit,
            v.limit,
            if v.pass { "PASS" } else { "FAIL" }
        );
    }
    o
}

/// Render the markdown comparison.
pub fn render(c: &Comparison, ctx: &Context) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# Real run vs OpenDC simulation\n");
    let _ = writeln!(
        o,
        "Run `{}` vs `{}`. Joined by {}: {} task(s) matched, {} only in the run, \
         {} only in the simulation{}.\n",
        ctx.run,
        ctx.sim,
        join_name(c.join),
        c.matched,
        c.real_only,
        c.sim_only,
        if ctx.not_completed.is_empty() {
            String::new()
        } else {
            format!("; not completed in the simulation: {}", ctx.not_completed)
        }
    );
    let _ = writeln!(
        o,
        "Time zero: the first submission on each side (real {}, simulated {} ms).\n",
        utc(c.real_origin_ms),
        c.sim_origin_ms
    );
    let _ = writeln!(o, "**Overall: {}**\n", if c.pass { "PASS" } else { "FAIL" });
    o.push_str(&verdicts(c));
    o.push_str("\n## Wait (start − submission), s\n\n| | mean | p50 | p95 | p99 | max |\n|---|---:|---:|---:|---:|---:|\n");
    for (name, d) in [("real", &c.wait.real_s), ("simulated", &c.wait.sim_s)] {
        let _ = writeln!(
            o,
            "| {name} | {} | {} | {} | {} | {} |",
            num(d.mean, 3),
            num(d.p50, 3),
            num(d.p95, 3),
            num(d.p99, 3),
            num(d.max, 3)
        );
    }
    let _ = writeln!(
        o,
        "\nKolmogorov–Smirnov: D = {}, p = {} (asymptotic).\n",
        num(c.wait.ks.statistic, 4),
        num(c.wait.ks.p_value, 4)
    );
    let _ = writeln!(
        o,
        "## Throughput\n\nReal {} tasks/min, simulated {} tasks/min on average; \
         RMSE over minutes {} tasks/min ({} % of the real mean).\n",
        num(c.throughput.real_mean_per_minute, 2),
        num(c.throughput.sim_mean_per_minute, 2),
        num(c.throughput.rmse_per_minute, 3),
        num(c.throughput.rmse_pct, 2)
    );
    let _ = writeln!(
        o,
        "## Cumulative completions\n\nRMSE {} % of the tasks after shifting the simulation by \
         {} s (best lag; {} % without a shift), on a {} ms grid.\n",
        num(c.cumulative.rmse_pct, 3),
        num(c.cumulative.best_lag_s, 3),
        num(c.cumulative.rmse_unshifted_pct, 3),
        c.cumulative.step_ms
    );
    let _ = writeln!(
        o,
        "## Makespan\n\nReal {} s, simulated {} s: error {} s ({} %).\n",
        num(c.makespan.real_s, 3),
        num(c.makespan.sim_s, 3),
        num(c.makespan.error_s, 3),
        num(c.makespan.error_pct, 3)
    );
    o.push_str("## Per-task run time, simulated − real\n\n| | mean | p50 | p95 | p99 | max |\n|---|---:|---:|---:|---:|---:|\n");
    for (name, d, dec) in [
        ("error, s", &c.run_error.error_s, 3),
        (
            "|error|, % of the real run (≥ 1 s)",
            &c.run_error.abs_error_pct,
            2,
        ),
    ] {
        let _ = writeln!(
            o,
            "| {name} | {} | {} | {} | {} | {} |",
            num(d.mean, dec),
            num(d.p50, dec),
            num(d.p95, dec),
            num(d.p99, dec),
            num(d.max, dec)
        );
    }
    o
}
