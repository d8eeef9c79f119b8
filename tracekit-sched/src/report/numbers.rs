//! The report's numbers as tables of text, in the order the page and
//! `report.md` show them; both renderers draw these same tables.

use super::model::Report;
use crate::fmt::{num, opt, utc};

/// A table: a heading, column names, and rows of cells.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub title: &'static str,
    pub headers: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
    /// A sentence shown under the table.
    pub note: Option<String>,
}

/// Every table of the report.
pub fn tables(r: &Report) -> Vec<Table> {
    let c = &r.counts;
    let mut out = vec![Table {
        title: "Tasks",
        headers: vec![
            "tasks",
            "done",
            "failed",
            "dead-lettered",
            "left out (incomplete)",
        ],
        rows: vec![vec![
            c.tasks.to_string(),
            c.done.to_string(),
            c.failed.to_string(),
            opt(c.dead),
            c.incomplete.to_string(),
        ]],
        note: None,
    }];
    out.push(Table {
        title: "Wait and run times (s)",
        headers: vec!["", "mean", "p50", "p95", "p99", "max"],
        rows: [
            ("wait (start − submission)", &r.wait_s),
            ("run (end − start)", &r.run_s),
        ]
        .iter()
        .map(|(name, d)| {
            vec![
                name.to_string(),
                num(d.mean, 2),
                num(d.p50, 2),
                num(d.p95, 2),
                num(d.p99, 2),
                num(d.max, 2),
            ]
        })
        .collect(),
        note: Some(format!(
            "Makespan {} s · throughput {} tasks/min over the makespan; at most {} ended in \
             one minute{}.",
            num(r.makespan_s, 1),
            num(r.throughput.mean_per_minute, 2),
            r.throughput.max_per_minute,
            if r.throughput.per_minute.len() <= 60 {
                format!(
                    " (per minute since the first submission: {})",
                    r.throughput
                        .per_minute
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                " (per minute: throughput.csv)".to_string()
            }
        )),
    });
    out.push(Table {
        title: "Per profile",
        headers: vec![
            "profile",
            "tasks",
            "done",
            "failed",
            "wait p50 s",
            "wait p95 s",
            "run mean s",
            "run p50 s",
            "run p95 s",
            "run max s",
            "CPU s",
            "cores",
        ],
        rows: r
            .profiles
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.tasks.to_string(),
                    p.done.to_string(),
                    p.failed.to_string(),
                    num(p.wait_s.p50, 2),
                    num(p.wait_s.p95, 2),
                    num(p.run_s.mean, 2),
                    num(p.run_s.p50, 2),
                    num(p.run_s.p95, 2),
                    num(p.run_s.max, 2),
                    num(p.cpu_s, 1),
                    num(p.mean_cores, 2),
                ]
            })
            .collect(),
        note: Some("cores: CPU time over run time, per task of the profile.".into()),
    });
    let fallbacks: Vec<String> = r
        .nodes
        .iter()
        .filter_map(|n| {
            n.fallback_reason
                .as_ref()
                .map(|why| format!("{}: eBPF not used: {why}", n.name))
        })
        .collect();
    out.push(Table {
        title: "Per node",
        headers: vec![
            "node",
            "cores",
            "tasks",
            "done",
            "failed",
            "CPU s",
            "mean cores busy",
            "peak RSS MB",
            "collector",
            "interval ms",
            "events lost",
        ],
        rows: r
            .nodes
            .iter()
            .map(|n| {
                vec![
                    n.name.clone(),
                    n.cores.to_string(),
                    n.tasks.to_string(),
                    n.done.to_string(),
                    n.failed.to_string(),
                    num(n.cpu_s, 1),
                    num(n.mean_cores, 2),
                    num(n.peak_rss_mb, 1),
                    n.collector.clone().unwrap_or_else(|| "unknown".into()),
                    opt(n.interval_ms),
                    n.events_lost.to_string(),
                ]
            })
            .collect(),
        note: (!fallbacks.is_empty()).then(|| fallbacks.join("; ")),
    });
    if !r.dead.is_empty() {
        out.push(Table {
            title: "Dead-lettered tasks",
            headers: vec!["reason", "node", "when"],
            rows: r
                .dead
                .iter()
                .map(|d| vec![d.reason.clone(), opt(d.node.as_deref()), utc(d.ts)])
                .collect(),
            note: None,
        });
    }
    out
}
