//! `compare.html`: the verdicts and the real and simulated curves overlaid,
//! one self-contained page.

use std::fmt::Write;

use super::Context;
use super::model::Comparison;
use crate::fmt::num;
use crate::report::html::STYLE;
use crate::svg::{self, LineChart, Series, TimeUnit, esc};

fn series(name: &str, color: usize, points: Vec<(f64, f64)>, step: bool, dashed: bool) -> Series {
    Series {
        name: name.into(),
        color: svg::color(color).into(),
        points,
        step,
        dashed,
    }
}

/// Render the page.
pub fn render(c: &Comparison, ctx: &Context) -> String {
    let mut o = String::with_capacity(256 * 1024);
    let _ = write!(
        o,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Tracekit: real vs simulated</title><style>{STYLE}</style></head><body>\
         <h1>Real run vs OpenDC simulation</h1><p class=\"meta\">{} vs {} · {} task(s) matched \
         ({} only real, {} only simulated) · overall <span class=\"{}\">{}</span></p>",
        esc(&ctx.run),
        esc(&ctx.sim),
        c.matched,
        c.real_only,
        c.sim_only,
        if c.pass { "ok" } else { "bad" },
        if c.pass { "PASS" } else { "FAIL" }
    );
    o.push_str("<section id=\"verdicts\"><table><tr><th>metric</th><th>value</th><th>limit</th><th>verdict</th></tr>");
    for v in &c.verdicts {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{} {}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
            esc(v.metric),
            num(v.value, 3),
            esc(v.unit),
            esc(&v.limit),
            if v.pass { "ok" } else { "bad" },
            if v.pass { "PASS" } else { "FAIL" }
        );
    }
    let _ = write!(
        o,
        "</table><p>Wait p50/p95/p99: real {}/{}/{} s, simulated {}/{}/{} s; KS D = {}, p = {}. \
         Makespan: real {} s, simulated {} s. Best lag {} s.</p></section>",
        num(c.wait.real_s.p50, 2),
        num(c.wait.real_s.p95, 2),
        num(c.wait.real_s.p99, 2),
        num(c.wait.sim_s.p50, 2),
        num(c.wait.sim_s.p95, 2),
        num(c.wait.sim_s.p99, 2),
        num(c.wait.ks.statistic, 4),
        num(c.wait.ks.p_value, 4),
        num(c.makespan.real_s, 2),
        num(c.makespan.sim_s, 2),
        num(c.cumulative.best_lag_s, 2)
    );

    o.push_str("<section id=\"charts\">");
    let span = c.makespan.real_s.max(c.makespan.sim_s);
    let unit = TimeUnit::for_span(span);
    let x_label = format!("time since the first submission ({})", unit.name);
    let step_s = c.cumulative.step_ms as f64 / 1000.0;
    let curve = |v: &[f64], shift_s: f64| -> Vec<(f64, f64)> {
        v.iter()
            .enumerate()
            .map(|(i, f)| ((i as f64 * step_s - shift_s) / unit.seconds, 100.0 * f))
            .filter(|(x, _)| *x >= 0.0)
            .collect()
    };
    let mut cum = vec![
        series("real", 0, curve(&c.cumulative.real, 0.0), true, false),
        series("simulated", 1, curve(&c.cumulative.sim, 0.0), true, true),
    ];
    if c.cumulative.best_lag_s != 0.0 {
        cum.push(series(
            &format!(
                "simulated, shifted by {} s",
                num(-c.cumulative.best_lag_s, 1)
            ),
            2,
            curve(&c.cumulative.sim, c.cumulative.best_lag_s),
            true,
            true,
        ));
    }
    let chart = |id: &str, title: &str, x: &str, y: &str, s: Vec<Series>| {
        svg::line_chart(&LineChart {
            id: id.into(),
            title: title.into(),
            x_label: x.into(),
            y_label: y.into(),
            series: s,
            height: 320.0,
        })
    };
    let _ = write!(
        o,
        "<figure>{}<figcaption>RMSE {} % after the best lag, {} % without a shift.</figcaption></figure>",
        chart(
            "chart-cumulative",
            "Cumulative completions, real and simulated",
            &x_label,
            "% of tasks completed",
            cum
        ),
        num(c.cumulative.rmse_pct, 2),
        num(c.cumulative.rmse_unshifted_pct, 2)
    );
    let minutes = |v: &[u64]| -> Vec<(f64, f64)> {
        let mut pts: Vec<(f64, f64)> = v
            .iter()
            .enumerate()
            .map(|(i, n)| (i as f64, *n as f64))
            .collect();
        if let Some(&(x, y)) = pts.last() {
            pts.push((x + 1.0, y));
        }
        pts
    };
    let _ = write!(
        o,
        "<figure>{}<figcaption>Tasks ended in each minute; RMSE {} tasks/min.</figcaption></figure>",
        chart(
            "chart-throughput",
            "Throughput per minute, real and simulated",
            "minutes since the first submission",
            "tasks per minute",
            vec![
                series(
                    "real",
                    0,
                    minutes(&c.throughput.real_per_minute),
                    true,
                    false
                ),
                series(
                    "simulated",
                    1,
                    minutes(&c.throughput.sim_per_minute),
                    true,
                    true
                ),
            ]
        ),
        num(c.throughput.rmse_per_minute, 2)
    );
    let cdf = |v: &[f64]| -> Vec<(f64, f64)> {
        let mut pts = vec![(0.0, 0.0)];
        pts.extend(crate::report::model::cdf(v));
        pts
    };
    let _ = write!(
        o,
        "<figure>{}<figcaption>KS D = {}, p = {}.</figcaption></figure>",
        chart(
            "chart-wait-cdf",
            "Wait time, cumulative distribution, real and simulated",
            "wait (s)",
            "fraction of tasks",
            vec![
                series("real", 0, cdf(&c.real_waits), true, false),
                series("simulated", 1, cdf(&c.sim_waits), true, true),
            ]
        ),
        num(c.wait.ks.statistic, 4),
        num(c.wait.ks.p_value, 4)
    );
    let _ = write!(
        o,
        "<figure>{}<figcaption>p50 {} s, p95 {} s, max {} s; |error| p95 {} % of the real run \
         (at least 1 s).</figcaption></figure>",
        svg::line_chart(&LineChart {
            id: "chart-run-error".into(),
            title: "Per-task run time, simulated − real, cumulative distribution".into(),
            x_label: "run-time error (s)".into(),
            y_label: "fraction of tasks".into(),
            series: vec![series(
                "simulated − real",
                2,
                crate::report::model::cdf(&c.run_errors),
                true,
                false
            )],
            height: 320.0,
        }),
        num(c.run_error.error_s.p50, 3),
        num(c.run_error.error_s.p95, 3),
        num(c.run_error.error_s.max, 3),
        num(c.run_error.abs_error_pct.p95, 2)
    );
    o.push_str("</section></body></html>\n");
    o
}
