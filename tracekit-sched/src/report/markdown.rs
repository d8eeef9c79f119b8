//! `report.md`: the report's numbers as markdown tables.

use std::fmt::Write;

use super::model::Report;
use crate::fmt::{num, opt, utc};

/// Render the markdown report.
pub fn render(r: &Report) -> String {
    let mut o = String::with_capacity(8 * 1024);
    let c = &r.counts;
    let _ = writeln!(o, "# Tracekit report: run {}\n", r.run_id);
    let _ = writeln!(
        o,
        "Input `{}`; first submission {}, last end {}; makespan **{} s**.\n",
        r.input,
        utc(r.origin_ms),
        utc(r.end_ms),
        num(r.makespan_s, 1)
    );
    o.push_str("## Tasks\n\n| tasks | done | failed | dead-lettered | left out (incomplete) |\n|---:|---:|---:|---:|---:|\n");
    let _ = writeln!(
        o,
        "| {} | {} | {} | {} | {} |\n",
        c.tasks,
        c.done,
        c.failed,
        opt(c.dead),
        c.incomplete
    );
    o.push_str("## Wait and run times (s)\n\n| | mean | p50 | p95 | p99 | max |\n|---|---:|---:|---:|---:|---:|\n");
    for (name, d) in [
        ("wait (start − submission)", &r.wait_s),
        ("run (end − start)", &r.run_s),
    ] {
        let _ = writeln!(
            o,
            "| {name} | {} | {} | {} | {} | {} |",
            num(d.mean, 2),
            num(d.p50, 2),
            num(d.p95, 2),
            num(d.p99, 2),
            num(d.max, 2)
        );
    }
    let _ = writeln!(
        o,
        "\nThroughput: {} tasks/min over the makespan; at most {} ended in one \
         minute (per minute since the first submission: {}).\n",
        num(r.throughput.mean_per_minute, 2),
        r.throughput.max_per_minute,
        if r.throughput.per_minute.len() <= 60 {
            r.throughput
                .per_minute
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            "see throughput.csv".to_string()
        }
    );
    o.push_str("## Per profile\n\n| profile | tasks | done | failed | wait p50 s | wait p95 s | run mean s | run p50 s | run p95 s | run max s | CPU s | cores |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for p in &r.profiles {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            p.name,
            p.tasks,
            p.done,
            p.failed,
            num(p.wait_s.p50, 2),
            num(p.wait_s.p95, 2),
            num(p.run_s.mean, 2),
            num(p.run_s.p50, 2),
            num(p.run_s.p95, 2),
            num(p.run_s.max, 2),
            num(p.cpu_s, 1),
            num(p.mean_cores, 2)
        );
    }
    o.push_str("\n## Per node\n\n| node | cores | tasks | done | failed | CPU s | mean cores busy | peak RSS MB | collector | interval ms | events lost |\n|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|\n");
    for n in &r.nodes {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            n.name,
            n.cores,
            n.tasks,
            n.done,
            n.failed,
            num(n.cpu_s, 1),
            num(n.mean_cores, 2),
            num(n.peak_rss_mb, 1),
            n.collector.as_deref().unwrap_or("unknown"),
            opt(n.interval_ms),
            n.events_lost
        );
    }
    for n in r.nodes.iter().filter(|n| n.fallback_reason.is_some()) {
        let _ = writeln!(
            o,
            "\n{}: eBPF not used: {}",
            n.name,
            n.fallback_reason.as_deref().unwrap_or("")
        );
    }
    o.push_str("\n## Audit\n\n");
    if r.audit_ok {
        o.push_str("No problems.\n");
    } else {
        let _ = writeln!(o, "{} problem(s):\n", r.audit_problems.len());
        for p in &r.audit_problems {
            let _ = writeln!(o, "- {p}");
        }
    }
    if !r.audit_warnings.is_empty() {
        o.push_str("\nWarnings:\n\n");
        for w in &r.audit_warnings {
            let _ = writeln!(o, "- {w}");
        }
    }
    if !r.dead.is_empty() {
        o.push_str("\n## Dead-lettered tasks\n\n| reason | node | when |\n|---|---|---|\n");
        for d in &r.dead {
            let _ = writeln!(
                o,
                "| {} | {} | {} |",
                d.reason,
                opt(d.node.as_deref()),
                utc(d.ts)
            );
        }
    }
    o.push_str("\nCharts: `report.html`. Every task: `tasks.csv`.\n");
    o
}
