//! Traces of the original (Python) system: `cctf/` directory, only the
//! required fields, `null`s, integer cpu_ms, a `dt_ms = 0` placeholder as each
//! PID's first sample, no tracer_stats.json, no exact CPU totals.
#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use std::path::Path;

use common::{read_fragments, read_tasks};
use tracekit_trace::audit::audit;
use tracekit_trace::export::{TaskIdMode, export_opendc};

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn original_node(dir: &Path) {
    write(
        &dir.join("node_meta.json"),
        r#"{"run_id": "20250922003", "node": "vm0", "stage": "cloud", "host": "cloud3gxie", "iface": "ens2", "cpu_cores": 4, "mem_mb": 15997, "cpu_model": "QEMU Virtual CPU version 2.5+", "cpu_freq_mhz": 2399}"#,
    );
    write(
        &dir.join("cctf/nodes.json"),
        r#"[{"node_id": "vm0", "stage": "cloud", "cpu_cores": 4, "mem_mb": 16384, "cpu_model": "QEMU", "cpu_freq_mhz": 2400}]"#,
    );
    // Task 100 runs 1000..4500 and has samples; 200 has none (too short for
    // the poller); 300's trace_id is null.
    write(
        &dir.join("cctf/invocations.jsonl"),
        concat!(
            r#"{"trace_id": "t1", "pid": 100, "ts_enqueue": 900, "ts_start": 1000, "ts_end": 4500}"#,
            "\n",
            r#"{"trace_id": "t2", "pid": 200, "ts_enqueue": 950, "ts_start": 2000, "ts_end": 2040}"#,
            "\n",
            r#"{"trace_id": null, "pid": 300, "ts_enqueue": 990, "ts_start": 3000, "ts_end": 5000}"#,
            "\n",
        ),
    );
    write(
        &dir.join("cctf/proc_metrics.jsonl"),
        concat!(
            r#"{"ts_ms": 1500, "pid": 100, "dt_ms": 0, "cpu_ms": 0, "rss_kb": 30000}"#,
            "\n",
            r#"{"ts_ms": 2500, "pid": 100, "dt_ms": 1000, "cpu_ms": 1200, "rss_kb": 52000}"#,
            "\n",
            r#"{"ts_ms": 3500, "pid": 100, "dt_ms": 1000, "cpu_ms": 800}"#,
            "\n",
            r#"{"ts_ms": 3400, "pid": 300, "dt_ms": 0, "cpu_ms": 0, "rss_kb": 10000}"#,
            "\n",
            r#"{"ts_ms": 4400, "pid": 300, "dt_ms": 1000, "cpu_ms": 500, "rss_kb": 12000}"#,
            "\n",
        ),
    );
}

#[test]
fn original_traces_are_audited_and_exported() {
    let tmp = tempfile::tempdir().unwrap();
    let node = tmp.path().join("20250922003");
    original_node(&node);

    let summary = audit(&node).unwrap();
    let c = &summary.totals;
    assert_eq!(c.invocations, 3);
    assert_eq!(c.samples, 5);
    assert_eq!(c.missing_invocation_fields, [1, 0, 0, 0, 0]);
    assert_eq!(c.missing_sample_fields, [0, 0, 0, 0, 1]);
    assert_eq!(c.distinct_pids_invocations, 3);
    assert_eq!(c.matched_pids, 2);
    assert_eq!(c.tasks_without_exact_cpu, 3);
    assert_eq!(c.cpu_reconciled, 0);
    // The poller's samples start late and end early: neither task tiles.
    assert_eq!(c.tiling_mismatches, 2);
    assert!(
        summary
            .warnings
            .iter()
            .any(|w| w.contains("no tracer_stats.json"))
    );
    assert!(
        summary
            .warnings
            .iter()
            .any(|w| w.contains("1 task(s) have no sample"))
    );
    assert!(summary.warnings.iter().any(|w| w.contains("lack rss_kb")));
    let md = &summary.nodes[0].markdown;
    assert!(md.contains("PID match rate: 66.67%"), "{md}");
    assert!(md.contains("- collector: unknown (not recorded)"));
    assert!(md.contains("sample unmatched PIDs: [200]"));
    summary.write_reports().unwrap();
    assert!(node.join("cctf/audit_report.md").exists());

    let out = tmp.path().join("opendc");
    let report = export_opendc(&node, &out, TaskIdMode::Auto).unwrap();
    assert_eq!(report.id_mode, TaskIdMode::Pid);
    assert_eq!(report.tasks_without_cpu, 1);
    let tasks = read_tasks(&out.join("tasks.parquet"));
    let frags = read_fragments(&out.join("fragments.parquet"));
    assert_eq!(
        tasks.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![100, 200, 300]
    );
    let mhz = 2399.0;
    // Task 100: head gap 1000..1500 at its neighbour's rate (1.2 cores, as the
    // original did), 1500..2500 at 1.2, 2500..3500 at 0.8, tail 3500..4500 at 0.8.
    let f100 = &frags[&100];
    assert_eq!(
        f100.iter().map(|f| f.0).collect::<Vec<_>>(),
        vec![500, 1000, 1000, 1000]
    );
    let expect = [1.2 * mhz, 1.2 * mhz, 0.8 * mhz, 0.8 * mhz];
    for (f, e) in f100.iter().zip(expect) {
        assert!((f.1 - e).abs() < 1e-9, "{f:?} vs {e}");
    }
    assert_eq!(tasks[0].duration, 3500);
    assert_eq!(tasks[0].mem_capacity, 52000);
    assert_eq!(tasks[0].cpu_count, 1);
    // Task 200: no data at all, one fragment at the floor, not an invented 50 %.
    assert_eq!(frags[&200], vec![(40, 0.1)]);
    assert_eq!(tasks[1].mem_capacity, 1024);
    // Task 300: 3000..3400 gap, 3400..4400 at 0.5, tail gap to 5000.
    assert_eq!(
        frags[&300].iter().map(|f| f.0).sum::<i64>(),
        tasks[2].duration
    );
    // The topology comes from the rounded nodes.json.
    let dc = std::fs::read_to_string(out.join("small_datacenter.json")).unwrap();
    assert!(dc.contains(r#""coreSpeed": 2400"#), "{dc}");
    assert!(dc.contains(r#""memorySize": 17179869184"#), "{dc}");
}
