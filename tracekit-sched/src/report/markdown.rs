//! `report.md`: the report's numbers as markdown tables.

use std::fmt::Write;

use super::model::Report;
use super::numbers::tables;
use crate::fmt::{num, utc};

/// Render the markdown report.
pub fn render(r: &Report) -> String {
    let mut o = String::with_capacity(8 * 1024);
    let _ = writeln!(o, "# Tracekit report: run {}\n", r.run_id);
    for line in &r.not_as_asked {
        let _ = writeln!(o, "**NOT AS ASKED: {line}**  ");
    }
    if !r.not_as_asked.is_empty() {
        o.push('\n');
    }
    for line in &r.clock {
        let _ = writeln!(o, "Clock: {line}  ");
    }
    if !r.clock.is_empty() {
        o.push('\n');
    }
    let _ = writeln!(
        o,
        "Input `{}`; first submission {}, last end {}; makespan **{} s**.\n",
        r.input,
        utc(r.origin_ms),
        utc(r.end_ms),
        num(r.makespan_s, 1)
    );
    for t in tables(r) {
        let _ = writeln!(o, "## {}\n", t.title);
        let _ = writeln!(o, "| {} |", t.headers.join(" | "));
        // The first column is a name; numbers align right.
        let align: Vec<&str> = (0..t.headers.len())
            .map(|i| if i == 0 { "---" } else { "---:" })
            .collect();
        let _ = writeln!(o, "|{}|", align.join("|"));
        for row in &t.rows {
            let cells: Vec<String> = row.iter().map(|c| c.replace('|', "\\|")).collect();
            let _ = writeln!(o, "| {} |", cells.join(" | "));
        }
        if let Some(note) = &t.note {
            let _ = writeln!(o, "\n{note}");
        }
        o.push('\n');
    }
    o.push_str("## Audit\n\n");
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
    o.push_str("\nCharts: `report.html`. Every task: `tasks.csv`.\n");
    o
}
