//! The markdown form of a node's audit, `CTS/audit_report.md`. The first
//! sections keep the original's wording so old and new reports compare line by
//! line; what the original could not say follows.

use std::fmt::Write;

use super::{CPU_TOLERANCE_MS, CPU_TOLERANCE_REL, NodeAudit, TaskRef};
use crate::schema::{InvocationRecord, SampleRecord};

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        "0.00%".into()
    } else {
        format!("{:.2}%", part as f64 * 100.0 / whole as f64)
    }
}

fn task(t: &TaskRef) -> String {
    format!(
        "{} (pid {}, start {})",
        t.trace_id.as_deref().unwrap_or("-"),
        t.pid,
        t.ts_start
    )
}

/// Render `a` as markdown.
pub fn render(a: &NodeAudit) -> String {
    // Writing into a String cannot fail; the results are ignored for that reason.
    let mut md = String::new();
    let c = &a.counts;
    let _ = writeln!(md, "# CTS Audit Report\n");
    let _ = writeln!(md, "Node: {}  |  Stage: {}\n", a.node, a.stage);
    let verdict = if a.problems.is_empty() {
        "OK: no problems found".to_string()
    } else {
        format!("{} problem(s) found", a.problems.len())
    };
    let _ = writeln!(md, "**{verdict}**\n");

    let _ = writeln!(md, "## Summary\n");
    let _ = writeln!(md, "Invocations: {}  ", c.invocations);
    let _ = writeln!(md, "Proc metrics samples: {}  ", c.samples);
    let _ = writeln!(
        md,
        "Distinct PIDs (invocations): {}  ",
        c.distinct_pids_invocations
    );
    let _ = writeln!(
        md,
        "Distinct PIDs (proc_metrics): {}  ",
        c.distinct_pids_samples
    );
    let _ = writeln!(
        md,
        "PID match rate: {:.2}%  ",
        c.pid_match_rate() * 100.0
    );
    let _ = writeln!(
        md,
        "Tasks with samples (joined by pid and time): {} of {} ({})  ",
        c.tasks_with_samples,
        c.tasks,
        pct(c.tasks_with_samples, c.tasks)
    );
    let _ = writeln!(md, "PIDs reused by several tasks: {}\n", c.reused_pids);

    let _ = writeln!(md, "## Field completeness (missing counts / rate)\n");
    for (i, name) in InvocationRecord::REQUIRED.iter().enumerate() {
        let miss = c.missing_invocation_fields[i];
        let _ = writeln!(
            md,
            "- invocations.{name}: {miss} ({})",
            pct(miss, c.invocations)
        );
    }
    for (i, name) in SampleRecord::FIELDS.iter().enumerate() {
        let miss = c.missing_sample_fields[i];
        let _ = writeln!(
            md,
            "- proc_metrics.{name}: {miss} ({})",
            pct(miss, c.samples)
        );
    }

    let _ = writeln!(md, "\n## Temporal consistency\n");
    let _ = writeln!(
        md,
        "- invocations ts_enqueue ≤ ts_start ≤ ts_end violations: {}",
        c.order_violations
    );
    let _ = writeln!(
        md,
        "- proc_metrics per-pid strictly increasing ts_ms violations: {}",
        c.monotonic_violations
    );
    let _ = writeln!(
        md,
        "- proc_metrics records with dt_ms < 0: {}",
        c.negative_dt
    );

    let _ = writeln!(md, "\n## Cross-reference\n");
    let _ = writeln!(
        md,
        "- invocations without matching proc_metrics PID: {}",
        c.distinct_pids_invocations - c.matched_pids
    );
    if !a.unmatched_pids.is_empty() {
        let _ = writeln!(md, "  sample unmatched PIDs: {:?}", a.unmatched_pids);
    }
    let _ = writeln!(
        md,
        "- proc_metrics samples in no task's run: {}",
        c.samples_unmatched
    );

    let _ = writeln!(md, "\n## Collector\n");
    let _ = writeln!(
        md,
        "- collector: {}",
        a.collector
            .map(|k| k.to_string())
            .unwrap_or_else(|| "unknown (not recorded)".into())
    );
    if let Some(reason) = &a.fallback_reason {
        let _ = writeln!(md, "- eBPF not used because: {reason}");
    }
    if let Some(ms) = a.interval_ms {
        let _ = writeln!(md, "- sampling interval: {ms} ms");
    }
    match &a.tracer_stats {
        None => {
            let _ = writeln!(
                md,
                "- tracer_stats.json: absent (cost and losses unknown)"
            );
        }
        Some(s) => {
            let _ = writeln!(md, "- events lost: {}", s.events_lost);
            let _ = writeln!(md, "- map full (untracked processes): {}", s.map_full);
            let _ = writeln!(
                md,
                "- processes seen: {}, exits recorded: {}, exits recovered after a lost event: {}",
                s.processes_seen, s.exits_recorded, s.exits_recovered
            );
            let _ = writeln!(
                md,
                "- agent CPU time: {:.1} ms, agent peak RSS: {} KiB",
                s.agent_cpu_ms, s.agent_max_rss_kb
            );
            if !s.programs.is_empty() {
                let _ = writeln!(
                    md,
                    "\n| eBPF program | calls | run time (ns) | ns per call |\n|---|---:|---:|---:|"
                );
                for p in &s.programs {
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} | {:.1} |",
                        p.program, p.run_count, p.run_time_ns, p.ns_per_call
                    );
                }
            }
        }
    }

    let _ = writeln!(md, "\n## CPU time reconciliation\n");
    let _ = writeln!(
        md,
        "Each task's samples (sum of cpu_ms) against its exact total (invocation cpu_ms); \
         tolerance max({CPU_TOLERANCE_MS} ms, {:.1} %).\n",
        CPU_TOLERANCE_REL * 100.0
    );
    let _ = writeln!(md, "- tasks reconciled: {}", c.cpu_reconciled);
    let _ = writeln!(
        md,
        "- tasks without an exact total: {}",
        c.tasks_without_exact_cpu
    );
    let _ = writeln!(
        md,
        "- deviation |sampled − exact|: max {:.3} ms, mean {:.4} ms, max relative {:.4}%",
        c.cpu_max_abs_dev_ms,
        c.cpu_mean_abs_dev_ms(),
        c.cpu_max_rel_dev * 100.0
    );
    let _ = writeln!(md, "- offenders: {}", c.cpu_offenders);
    if !a.cpu_offenders.is_empty() {
        let _ = writeln!(
            md,
            "\n| task | samples | sampled ms | exact ms | deviation ms |\n|---|---:|---:|---:|---:|"
        );
        for o in &a.cpu_offenders {
            let _ = writeln!(
                md,
                "| {} | {} | {:.3} | {:.3} | {:+.3} |",
                task(&o.task),
                o.samples,
                o.sampled_ms,
                o.exact_ms,
                o.sampled_ms - o.exact_ms
            );
        }
    }

    let _ = writeln!(md, "\n## Samples tiling each run\n");
    let _ = writeln!(
        md,
        "A task's samples must cover [ts_start, ts_end] exactly: sum of dt_ms = ts_end − \
         ts_start, the first interval starting at ts_start, the last sample at ts_end.\n"
    );
    let _ = writeln!(
        md,
        "- tasks checked: {}, mismatches: {}",
        c.tasks_with_samples, c.tiling_mismatches
    );
    if !a.tiling_offenders.is_empty() {
        let _ = writeln!(
            md,
            "\n| task | samples | duration ms | sum dt ms | first from | last ts |\n|---|---:|---:|---:|---:|---:|"
        );
        for o in &a.tiling_offenders {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                task(&o.task),
                o.samples,
                o.duration_ms,
                o.sum_dt_ms,
                o.first_from,
                o.last_ts
            );
        }
    }

    let _ = writeln!(md, "\n## Failed tasks\n");
    let _ = writeln!(
        md,
        "- non-zero exit or killed by a signal: {}",
        c.failed_tasks
    );
    for f in &a.failed {
        let how = match (f.exit_code, f.signal) {
            (_, Some(sig)) if sig != 0 => format!("signal {sig}"),
            (Some(code), _) => format!("exit code {code}"),
            _ => "unknown".into(),
        };
        let _ = writeln!(md, "  - {}: {how}", task(&f.task));
    }

    let _ = writeln!(md, "\n## Files\n");
    for (name, r) in [
        ("invocations.jsonl", &a.invocations_read),
        ("proc_metrics.jsonl", &a.samples_read),
    ] {
        let _ = writeln!(
            md,
            "- {name}: {} line(s), {} record(s), torn last line skipped: {}, bad lines: {}",
            r.lines,
            r.records,
            if r.torn_tail { "yes" } else { "no" },
            r.bad_count
        );
        for b in &r.bad_lines {
            let _ = writeln!(md, "  - line {}: {}", b.line, b.error);
        }
    }

    let _ = writeln!(md, "\n## Problems\n");
    if a.problems.is_empty() {
        let _ = writeln!(md, "None.");
    }
    for p in &a.problems {
        let _ = writeln!(md, "- {p}");
    }
    let _ = writeln!(md, "\n## Warnings\n");
    if a.warnings.is_empty() {
        let _ = writeln!(md, "None.");
    }
    for w in &a.warnings {
        let _ = writeln!(md, "- {w}");
    }
    md
}
