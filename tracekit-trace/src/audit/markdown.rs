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
    let mut md = String::new();
    // Writing into a String cannot fail.
    let _ = write_report(&mut md, a);
    md
}

fn write_report(md: &mut String, a: &NodeAudit) -> std::fmt::Result {
    let c = &a.counts;
    writeln!(md, "# CTS Audit Report\n")?;
    writeln!(md, "Node: {}  |  Stage: {}\n", a.node, a.stage)?;
    let verdict = if a.problems.is_empty() {
        "OK: no problems found".to_string()
    } else {
        format!("{} problem(s) found", a.problems.len())
    };
    writeln!(md, "**{verdict}**\n")?;
    if !a.not_as_asked.is_empty() {
        writeln!(md, "## Not as asked\n")?;
        for line in &a.not_as_asked {
            writeln!(md, "- **{line}**")?;
        }
        writeln!(md)?;
    }

    writeln!(md, "## Summary\n")?;
    writeln!(md, "Invocations: {}  ", c.invocations)?;
    writeln!(md, "Proc metrics samples: {}  ", c.samples)?;
    writeln!(
        md,
        "Distinct PIDs (invocations): {}  ",
        c.distinct_pids_invocations
    )?;
    writeln!(
        md,
        "Distinct PIDs (proc_metrics): {}  ",
        c.distinct_pids_samples
    )?;
    writeln!(md, "PID match rate: {:.2}%  ", c.pid_match_rate() * 100.0)?;
    writeln!(
        md,
        "Tasks with samples (joined by pid and time): {} of {} ({})  ",
        c.tasks_with_samples,
        c.tasks,
        pct(c.tasks_with_samples, c.tasks)
    )?;
    writeln!(md, "PIDs reused by several tasks: {}\n", c.reused_pids)?;

    writeln!(md, "## Field completeness (missing counts / rate)\n")?;
    for (i, name) in InvocationRecord::REQUIRED.iter().enumerate() {
        let miss = c.missing_invocation_fields[i];
        writeln!(
            md,
            "- invocations.{name}: {miss} ({})",
            pct(miss, c.invocations)
        )?;
    }
    for (i, name) in SampleRecord::FIELDS.iter().enumerate() {
        let miss = c.missing_sample_fields[i];
        writeln!(
            md,
            "- proc_metrics.{name}: {miss} ({})",
            pct(miss, c.samples)
        )?;
    }

    writeln!(md, "\n## Temporal consistency\n")?;
    writeln!(
        md,
        "- invocations ts_enqueue ≤ ts_start ≤ ts_end violations: {}",
        c.order_violations
    )?;
    writeln!(
        md,
        "- proc_metrics per-pid strictly increasing ts_ms violations: {} \
         (a dt_ms = 0 sample in the same ms is not one)",
        c.monotonic_violations
    )?;
    writeln!(
        md,
        "- proc_metrics records with dt_ms < 0: {}",
        c.negative_dt
    )?;

    writeln!(md, "\n## Cross-reference\n")?;
    writeln!(
        md,
        "- invocations without matching proc_metrics PID: {}",
        c.distinct_pids_invocations - c.matched_pids
    )?;
    if !a.unmatched_pids.is_empty() {
        writeln!(md, "  sample unmatched PIDs: {:?}", a.unmatched_pids)?;
    }
    writeln!(
        md,
        "- proc_metrics samples in no task's run: {}",
        c.samples_unmatched
    )?;

    writeln!(md, "\n## Collector\n")?;
    writeln!(
        md,
        "- collector: {}",
        a.collector
            .map(|k| k.to_string())
            .unwrap_or_else(|| "unknown (not recorded)".into())
    )?;
    if let Some(reason) = &a.fallback_reason {
        writeln!(md, "- eBPF not used because: {reason}")?;
    }
    if let Some(ms) = a.interval_ms {
        writeln!(md, "- sampling interval: {ms} ms")?;
    }
    match &a.tracer_stats {
        None => {
            writeln!(md, "- tracer_stats.json: absent (cost and losses unknown)")?;
        }
        Some(s) => {
            writeln!(md, "- events lost: {}", s.events_lost)?;
            writeln!(md, "- map full (untracked processes): {}", s.map_full)?;
            writeln!(
                md,
                "- processes seen: {}, exits recorded: {}, exits recovered after a lost event: {}",
                s.processes_seen, s.exits_recorded, s.exits_recovered
            )?;
            writeln!(
                md,
                "- agent CPU time: {:.1} ms, agent peak RSS: {} KiB",
                s.agent_cpu_ms, s.agent_max_rss_kb
            )?;
            if !s.programs.is_empty() {
                writeln!(
                    md,
                    "\n| eBPF program | calls | run time (ns) | ns per call |\n|---|---:|---:|---:|"
                )?;
                for p in &s.programs {
                    writeln!(
                        md,
                        "| {} | {} | {} | {:.1} |",
                        p.program, p.run_count, p.run_time_ns, p.ns_per_call
                    )?;
                }
            }
        }
    }

    writeln!(md, "\n## Sampling gaps\n")?;
    match a.interval_ms {
        None => writeln!(md, "- interval not recorded: gaps not checked")?,
        Some(ms) => {
            writeln!(
                md,
                "- processes with intervals of {ms} ms that have no sample while alive: {}, \
                 intervals missed: {}",
                c.processes_with_gaps, c.missed_intervals
            )?;
            if !a.gaps.is_empty() {
                writeln!(
                    md,
                    "\n| pid | task | intervals missed | of | longest gap ms |\n|---:|---|---:|---:|---:|"
                )?;
                for g in a.gaps.iter().take(super::LISTED) {
                    writeln!(
                        md,
                        "| {} | {} | {} | {} | {} |",
                        g.pid,
                        g.trace_id.as_deref().unwrap_or("-"),
                        g.missed,
                        g.intervals,
                        g.longest_ms
                    )?;
                }
            }
        }
    }

    writeln!(md, "\n## CPU time reconciliation\n")?;
    writeln!(
        md,
        "Each task's samples (sum of cpu_ms) against its exact total (invocation cpu_ms); \
         tolerance max({CPU_TOLERANCE_MS} ms, {:.1} %).\n",
        CPU_TOLERANCE_REL * 100.0
    )?;
    writeln!(md, "- tasks reconciled: {}", c.cpu_reconciled)?;
    writeln!(
        md,
        "- tasks without an exact total: {}",
        c.tasks_without_exact_cpu
    )?;
    writeln!(
        md,
        "- tasks with no CPU measurement at all (no exact total, no sample with dt_ms > 0; \
         CPU unknown): {}",
        c.tasks_unmeasured_cpu
    )?;
    writeln!(
        md,
        "- deviation |sampled − exact|: max {:.3} ms, mean {:.4} ms, max relative {:.4}%",
        c.cpu_max_abs_dev_ms,
        c.cpu_mean_abs_dev_ms(),
        c.cpu_max_rel_dev * 100.0
    )?;
    writeln!(md, "- offenders: {}", c.cpu_offenders)?;
    if !a.cpu_offenders.is_empty() {
        writeln!(
            md,
            "\n| task | samples | sampled ms | exact ms | deviation ms |\n|---|---:|---:|---:|---:|"
        )?;
        for o in &a.cpu_offenders {
            writeln!(
                md,
                "| {} | {} | {:.3} | {:.3} | {:+.3} |",
                task(&o.task),
                o.samples,
                o.sampled_ms,
                o.exact_ms,
                o.sampled_ms - o.exact_ms
            )?;
        }
    }

    writeln!(md, "\n## Samples tiling each run\n")?;
    writeln!(
        md,
        "A task's samples must cover [ts_start, ts_end] exactly: sum of dt_ms = ts_end − \
         ts_start, the first interval starting at ts_start, the last sample at ts_end.\n"
    )?;
    writeln!(
        md,
        "- tasks checked: {}, mismatches: {}",
        c.tasks_with_samples, c.tiling_mismatches
    )?;
    if !a.tiling_offenders.is_empty() {
        writeln!(
            md,
            "\n| task | samples | duration ms | sum dt ms | first from | last ts |\n|---|---:|---:|---:|---:|---:|"
        )?;
        for o in &a.tiling_offenders {
            writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                task(&o.task),
                o.samples,
                o.duration_ms,
                o.sum_dt_ms,
                o.first_from,
                o.last_ts
            )?;
        }
    }

    writeln!(md, "\n## Failed tasks\n")?;
    writeln!(
        md,
        "- non-zero exit or killed by a signal: {}",
        c.failed_tasks
    )?;
    for f in &a.failed {
        let how = match (f.exit_code, f.signal) {
            (_, Some(sig)) if sig != 0 => format!("signal {sig}"),
            (Some(code), _) => format!("exit code {code}"),
            _ => "unknown".into(),
        };
        writeln!(md, "  - {}: {how}", task(&f.task))?;
    }

    writeln!(md, "\n## Files\n")?;
    for (name, r) in [
        ("invocations.jsonl", &a.invocations_read),
        ("proc_metrics.jsonl", &a.samples_read),
    ] {
        writeln!(
            md,
            "- {name}: {} line(s), {} record(s), torn last line skipped: {}, bad lines: {}",
            r.lines,
            r.records,
            if r.torn_tail { "yes" } else { "no" },
            r.bad_count
        )?;
        for b in &r.bad_lines {
            writeln!(md, "  - line {}: {}", b.line, b.error)?;
        }
    }

    writeln!(md, "\n## Problems\n")?;
    if a.problems.is_empty() {
        writeln!(md, "None.")?;
    }
    for p in &a.problems {
        writeln!(md, "- {p}")?;
    }
    writeln!(md, "\n## Warnings\n")?;
    if a.warnings.is_empty() {
        writeln!(md, "None.")?;
    }
    for w in &a.warnings {
        writeln!(md, "- {w}")?;
    }
    Ok(())
}
