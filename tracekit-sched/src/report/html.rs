//! `report.html`: one self-contained page (inline CSS and SVG, no script, no
//! network) with the report's numbers and charts.

use std::fmt::Write;

use super::model::Report;
use super::numbers::tables;
use crate::fmt::{num, utc};
use crate::svg::{self, Gantt, GanttBar, LineChart, Series, TimeUnit, esc};

/// The page's stylesheet, shared with `compare.html`.
pub const STYLE: &str = "body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;\
margin:24px auto;max-width:1000px;color:#222;padding:0 12px}\
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}\
.meta{color:#555;margin:0 0 12px}\
table{border-collapse:collapse;margin:6px 0 14px}th,td{padding:3px 10px;border-bottom:1px solid #eee;text-align:right}\
th{background:#f6f6f6}td:first-child,th:first-child{text-align:left}\
.ok{color:#1a7f37;font-weight:600}.bad{color:#c62828;font-weight:600}\
figure{margin:18px 0}figcaption{color:#555;font-size:13px;margin-top:2px}\
svg.chart{display:block;max-width:100%;height:auto;background:#fff}\
svg .title{font-size:15px;font-weight:600;fill:#222}svg .tick{font-size:11px;fill:#444}\
svg .label{font-size:12px;fill:#333}svg .legend text{font-size:12px;fill:#333}\
svg .axis line{stroke:#888;stroke-width:1}svg .grid line{stroke:#eee;stroke-width:1}\
svg .axis line.gridx{stroke:#f0f0f0}";

/// Render the page.
pub fn render(r: &Report) -> String {
    let mut out = String::with_capacity(64 * 1024 + r.tasks.len() * 220);
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Tracekit report: {run}</title><style>{STYLE}</style></head><body>\
         <h1>Tracekit report: run {run}</h1>\
         <p class=\"meta\">{input} · first submission {first} · last end {last} · \
         makespan {makespan} s</p>",
        run = esc(&r.run_id),
        input = esc(&r.input),
        first = utc(r.origin_ms),
        last = utc(r.end_ms),
        makespan = num(r.makespan_s, 1),
    );
    for line in &r.not_as_asked {
        let _ = write!(
            out,
            "<p class=\"bad\"><b>NOT AS ASKED:</b> {}</p>",
            esc(line)
        );
    }
    for line in &r.clock {
        let _ = write!(out, "<p class=\"meta\">Clock: {}</p>", esc(line));
    }
    numbers(&mut out, r);
    charts(&mut out, r);
    out.push_str("</body></html>\n");
    out
}

fn numbers(out: &mut String, r: &Report) {
    out.push_str("<section id=\"numbers\">");
    for t in tables(r) {
        let _ = write!(out, "<h2>{}</h2><table><tr>", esc(t.title));
        for h in &t.headers {
            let _ = write!(out, "<th>{}</th>", esc(h));
        }
        out.push_str("</tr>");
        for row in &t.rows {
            out.push_str("<tr>");
            for c in row {
                let _ = write!(out, "<td>{}</td>", esc(c));
            }
            out.push_str("</tr>");
        }
        out.push_str("</table>");
        if let Some(note) = &t.note {
            let _ = write!(out, "<p>{}</p>", esc(note));
        }
    }
    out.push_str("<h2>Audit</h2>");
    if r.audit_ok {
        out.push_str("<p class=\"ok\">No problems.</p>");
    } else {
        let _ = write!(
            out,
            "<p class=\"bad\">{} problem(s):</p><ul>",
            r.audit_problems.len()
        );
        for p in &r.audit_problems {
            let _ = write!(out, "<li>{}</li>", esc(p));
        }
        out.push_str("</ul>");
    }
    if !r.audit_warnings.is_empty() {
        out.push_str("<p>Warnings:</p><ul>");
        for w in &r.audit_warnings {
            let _ = write!(out, "<li>{}</li>", esc(w));
        }
        out.push_str("</ul>");
    }
    out.push_str("</section>");
}

fn figure(out: &mut String, svg: &str, caption: &str) {
    let _ = write!(
        out,
        "<figure>{svg}<figcaption>{}</figcaption></figure>",
        esc(caption)
    );
}

fn charts(out: &mut String, r: &Report) {
    out.push_str("<section id=\"charts\"><h2>Charts</h2>");
    let unit = TimeUnit::for_span(r.makespan_s);
    let x_label = format!("time since the first submission ({})", unit.name);
    let at = |ms: i64| (ms - r.origin_ms) as f64 / 1000.0 / unit.seconds;

    let groups: Vec<(String, usize)> = r.nodes.iter().map(|n| (n.name.clone(), n.lanes)).collect();
    let offsets: Vec<usize> = r
        .nodes
        .iter()
        .scan(0, |acc, n| {
            let o = *acc;
            *acc += n.lanes;
            Some(o)
        })
        .collect();
    let bars: Vec<GanttBar> = r
        .tasks
        .iter()
        .map(|t| GanttBar {
            lane: offsets[t.node_index] + t.lane,
            queued: at(t.ts_enqueue),
            start: at(t.ts_start),
            end: at(t.ts_end),
            class: t.profile_index,
            title: format!(
                "{} · {} on {} · waited {:.2} s, ran {:.2} s{}",
                t.trace_id,
                t.profile,
                t.node,
                t.wait_ms as f64 / 1000.0,
                t.run_ms as f64 / 1000.0,
                if t.status == "failed" {
                    " · FAILED"
                } else {
                    ""
                }
            ),
        })
        .collect();
    let classes: Vec<(String, String)> = r
        .profiles
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.clone(), svg::color(i).to_string()))
        .collect();
    figure(
        out,
        &svg::gantt(&Gantt {
            id: "chart-gantt",
            title: "Tasks per node: waiting (light) and running (solid), by profile",
            x_label: &x_label,
            groups: &groups,
            bars: &bars,
            classes: &classes,
            x_max: at(r.end_ms),
        }),
        "Each bar is a task from submission to end; hover a bar for its trace id.",
    );

    let g = r.series.grid;
    let xs: Vec<f64> = (0..g.buckets).map(|i| g.end_s(i) / unit.seconds).collect();
    // A bucket's value holds over the bucket: draw it from its start.
    let steps = |values: &[f64]| -> Vec<(f64, f64)> {
        let mut pts: Vec<(f64, f64)> = values
            .iter()
            .enumerate()
            .map(|(i, v)| (if i == 0 { 0.0 } else { xs[i - 1] }, *v))
            .collect();
        if let (Some(&(_, v)), Some(&x)) = (pts.last(), xs.last()) {
            pts.push((x, v));
        }
        pts
    };
    let per_node = |series: &[super::model::NamedSeries]| -> Vec<Series> {
        series
            .iter()
            .enumerate()
            .map(|(i, s)| Series {
                name: s.name.clone(),
                color: svg::color(i).into(),
                points: steps(&s.values),
                step: true,
                dashed: false,
            })
            .collect()
    };
    let chart = |id: &str, title: &str, y: &str, series: Vec<Series>| {
        svg::line_chart(&LineChart {
            id: id.into(),
            title: title.into(),
            x_label: x_label.clone(),
            y_label: y.into(),
            series,
            height: 300.0,
        })
    };
    let bucket = format!("averaged over {} ms buckets", g.width_ms);
    figure(
        out,
        &chart(
            "chart-cores",
            "Cores used per node",
            "cores",
            per_node(&r.series.cores),
        ),
        &format!("CPU time of the traced processes per bucket over its length, {bucket}."),
    );
    figure(
        out,
        &chart(
            "chart-rss",
            "Memory (RSS) of the traced processes per node",
            "MB",
            per_node(&r.series.rss_mb),
        ),
        &format!("Sum of the processes' resident set size, {bucket}."),
    );
    figure(
        out,
        &chart(
            "chart-tasks",
            "Tasks running and queued",
            "tasks",
            vec![
                Series {
                    name: "running".into(),
                    color: svg::color(0).into(),
                    points: steps(&r.series.running),
                    step: true,
                    dashed: false,
                },
                Series {
                    name: "queued (submitted, not started)".into(),
                    color: svg::color(1).into(),
                    points: steps(&r.series.queued),
                    step: true,
                    dashed: false,
                },
            ],
        ),
        &format!("Time-averaged counts, {bucket}."),
    );
    let completed: Vec<(f64, f64)> = std::iter::once((0.0, 0.0))
        .chain(
            r.series
                .completed
                .iter()
                .enumerate()
                .map(|(i, c)| (xs[i], *c as f64)),
        )
        .collect();
    figure(
        out,
        &chart(
            "chart-completions",
            "Cumulative completions",
            "tasks ended",
            vec![Series {
                name: "completed".into(),
                color: svg::color(4).into(),
                points: completed,
                step: false,
                dashed: false,
            }],
        ),
        &format!("Tasks ended by each time; {} in all.", r.counts.tasks),
    );
    let mut cdf = vec![(0.0, 0.0)];
    cdf.extend(r.wait_cdf.iter().copied());
    figure(
        out,
        &svg::line_chart(&LineChart {
            id: "chart-wait-cdf".into(),
            title: "Wait time (start − submission), cumulative distribution".into(),
            x_label: "wait (s)".into(),
            y_label: "fraction of tasks".into(),
            series: vec![Series {
                name: "wait".into(),
                color: svg::color(2).into(),
                points: cdf,
                step: true,
                dashed: false,
            }],
            height: 300.0,
        }),
        &format!(
            "p50 {} s, p95 {} s, p99 {} s, max {} s.",
            num(r.wait_s.p50, 2),
            num(r.wait_s.p95, 2),
            num(r.wait_s.p99, 2),
            num(r.wait_s.max, 2)
        ),
    );
    out.push_str("</section>");
}
