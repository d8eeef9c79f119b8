//! The report's plain-text summary, printed by `tracekit-sched report` (and
//! so by `cargo xtask demo`).

use std::fmt::Write;

use super::model::Report;
use crate::fmt::{num, opt};

/// How many audit problems the summary lists (report.md has them all).
const LISTED_PROBLEMS: usize = 8;

/// Render the summary.
pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let c = &r.counts;
    let _ = writeln!(
        o,
        "== Run {}: {} task(s): {} done, {} failed, {} dead-lettered; makespan {} s ==",
        r.run_id,
        c.tasks,
        c.done,
        c.failed,
        opt(c.dead),
        num(r.makespan_s, 1)
    );
    for line in &r.not_as_asked {
        let _ = writeln!(o, "NOT AS ASKED: {line}");
    }
    for line in &r.clock {
        let _ = writeln!(o, "Clock: {line}");
    }
    if c.incomplete > 0 {
        let _ = writeln!(
            o,
            "({} incomplete invocation line(s) left out)",
            c.incomplete
        );
    }
    o.push_str("\nTasks per node:\n");
    for n in &r.nodes {
        let _ = writeln!(
            o,
            "  {:<12} {:>6} task(s)  CPU {:>9} s  {:>5} cores busy on average  collector {} ({} ms, {} event(s) lost)",
            n.name,
            n.tasks,
            num(n.cpu_s, 1),
            num(n.mean_cores, 2),
            n.collector.as_deref().unwrap_or("unknown"),
            opt(n.interval_ms),
            n.events_lost
        );
    }
    let _ = writeln!(
        o,
        "\nWait (submitted → started): p50 {} s, p95 {} s, p99 {} s, max {} s",
        num(r.wait_s.p50, 2),
        num(r.wait_s.p95, 2),
        num(r.wait_s.p99, 2),
        num(r.wait_s.max, 2)
    );
    let _ = writeln!(
        o,
        "Run  (started → ended):     p50 {} s, p95 {} s, max {} s",
        num(r.run_s.p50, 2),
        num(r.run_s.p95, 2),
        num(r.run_s.max, 2)
    );
    let _ = writeln!(
        o,
        "Throughput: {} tasks/min over the makespan; at most {} ended in one minute",
        num(r.throughput.mean_per_minute, 2),
        r.throughput.max_per_minute
    );
    let _ = writeln!(
        o,
        "\n  {:<14} {:>6} {:>7} {:>10} {:>10} {:>7}",
        "profile", "tasks", "failed", "run p50 s", "CPU s", "cores"
    );
    for p in &r.profiles {
        let _ = writeln!(
            o,
            "  {:<14} {:>6} {:>7} {:>10} {:>10} {:>7}",
            p.name,
            p.tasks,
            p.failed,
            num(p.run_s.p50, 2),
            num(p.cpu_s, 1),
            num(p.mean_cores, 2)
        );
    }
    for d in &r.dead {
        let _ = writeln!(
            o,
            "  dead: {} ({})",
            d.reason,
            d.task.chars().take(80).collect::<String>()
        );
    }
    if r.audit_ok {
        o.push_str("\nAudit: no problems\n");
    } else {
        let _ = writeln!(o, "\nAudit: {} problem(s)", r.audit_problems.len());
        for p in r.audit_problems.iter().take(LISTED_PROBLEMS) {
            let _ = writeln!(o, "  {p}");
        }
    }
    o
}
