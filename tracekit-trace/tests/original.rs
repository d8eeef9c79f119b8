//! Traces of the original (Python) system: `cctf/` directory, only the
//! required fields, `null`s, integer cpu_ms, a `dt_ms = 0` baseline as each
//! PID's first sample, no tracer_stats.json, no exact CPU totals. A task the
//! original collector saw only at its baseline has unknown CPU, never a
//! measured zero.
#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use common::{original_node, read_fragments, read_tasks};
use tracekit_trace::audit::audit;
use tracekit_trace::export::{ExportOptions, TaskIdMode, export_opendc, export_opendc_with};
use tracekit_trace::opendc::{CpuSizing, UnmeasuredCpu};

const MHZ: f64 = 2400.0;

fn opts(unmeasured: UnmeasuredCpu) -> ExportOptions {
    ExportOptions {
        unmeasured,
        ..Default::default()
    }
}

#[test]
fn original_traces_are_audited_with_unknown_cpu_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let node = tmp.path().join("20250922003");
    original_node(&node);

    let summary = audit(&node).unwrap();
    let c = &summary.totals;
    assert_eq!(c.invocations, 6);
    assert_eq!(c.samples, 10);
    assert_eq!(c.missing_invocation_fields, [1, 0, 0, 0, 0]);
    assert_eq!(c.missing_sample_fields, [0, 0, 0, 0, 1]);
    assert_eq!(c.distinct_pids_invocations, 5);
    assert_eq!(c.reused_pids, 1);
    assert_eq!(c.matched_pids, 4);
    assert_eq!(c.tasks_without_exact_cpu, 6);
    // t2 (no sample), t4 and t5 (a baseline only).
    assert_eq!(c.tasks_unmeasured_cpu, 3);
    assert_eq!(c.tasks_with_samples, 5);
    assert_eq!(c.cpu_reconciled, 0);
    assert!(
        summary
            .warnings
            .iter()
            .any(|w| w.contains("3 task(s) have no CPU measurement")),
        "{:?}",
        summary.warnings
    );
    assert!(
        summary
            .warnings
            .iter()
            .any(|w| w.contains("1 task(s) have no sample"))
    );
    assert!(summary.warnings.iter().any(|w| w.contains("lack rss_kb")));
    let md = &summary.nodes[0].markdown;
    assert!(
        md.contains("- tasks with no CPU measurement at all (no exact total, no sample with dt_ms > 0; CPU unknown): 3"),
        "{md}"
    );
    assert!(md.contains("- collector: unknown (not recorded)"));
    assert!(md.contains("sample unmatched PIDs: [200]"));
    summary.write_reports().unwrap();
    assert!(node.join("cctf/audit_report.md").exists());
}

#[test]
fn unmeasured_tasks_are_skipped_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let node = tmp.path().join("20250922003");
    original_node(&node);
    let out = tmp.path().join("opendc");
    let report = export_opendc(&node, &out, TaskIdMode::Auto).unwrap();
    // PID 100 names two tasks.
    assert_eq!(report.id_mode, TaskIdMode::Sequential);
    assert_eq!(report.tasks, 6);
    assert_eq!(report.tasks_unmeasured, 3);
    assert_eq!(report.unmeasured_skipped, 3);
    assert_eq!(report.tasks_exported, 3);
    let tasks = read_tasks(&out.join("tasks.parquet"));
    let frags = read_fragments(&out.join("fragments.parquet"));
    // Ids are given before skipping: t2, t4 and t5 leave theirs unused.
    assert_eq!(
        tasks.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![1, 3, 6]
    );
    assert_eq!(frags.len(), 3);
    // t1: head gap 1000..1500 at its neighbour's rate (1.2 cores, as the
    // original did), 1500..2500 at 1.2, 2500..3500 at 0.8, tail at 0.8.
    let f1 = &frags[&1];
    assert_eq!(
        f1.iter().map(|f| f.0).collect::<Vec<_>>(),
        vec![500, 1000, 1000, 1000]
    );
    for (f, e) in f1.iter().zip([1.2, 1.2, 0.8, 0.8]) {
        assert!((f.1 - e * MHZ).abs() < 1e-9, "{f:?} vs {e}");
    }
    assert_eq!(tasks[0].duration, 3500);
    assert_eq!(tasks[0].mem_capacity, 52000);
    // Peak sizing: 1.2 cores → capacity 2880 MHz on 2 cores of 2400.
    assert!((tasks[0].cpu_capacity - 1.2 * MHZ).abs() < 1e-9);
    assert_eq!(tasks[0].cpu_count, 2);
    // The pid-300 task (trace_id null): 3000..3400 gap, 3400..4400 at 0.5.
    assert_eq!(
        frags[&3].iter().map(|f| f.0).sum::<i64>(),
        tasks[1].duration
    );
    assert!(frags[&3].iter().all(|f| (f.1 - 0.5 * MHZ).abs() < 1e-9));
    // t6: 2 cores throughout, its baseline no measurement.
    assert!(frags[&6].iter().all(|f| (f.1 - 2.0 * MHZ).abs() < 1e-9));
    // The topology comes from the rounded nodes.json, memory with its unit,
    // and the fragments use the same 2400 MHz.
    let dc = std::fs::read_to_string(out.join("small_datacenter.json")).unwrap();
    assert!(dc.contains(r#""coreSpeed": 2400"#), "{dc}");
    assert!(dc.contains(r#""memorySize": "16384 MiB""#), "{dc}");
    let exp: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("experiment.json")).unwrap()).unwrap();
    assert_eq!(exp["name"], "20250922003");
}

#[test]
fn unmeasured_tasks_as_the_original_exported_them() {
    let tmp = tempfile::tempdir().unwrap();
    let node = tmp.path().join("20250922003");
    original_node(&node);
    let out = tmp.path().join("opendc");
    let report = export_opendc_with(&node, &out, &opts(UnmeasuredCpu::Original)).unwrap();
    assert_eq!(report.tasks_exported, 6);
    assert_eq!(report.unmeasured_original, 3);
    let tasks = read_tasks(&out.join("tasks.parquet"));
    let frags = read_fragments(&out.join("fragments.parquet"));
    // t2, t4, t5: one fragment over the run at a quarter of a core.
    for (id, duration) in [(2, 40), (4, 600), (5, 300)] {
        assert_eq!(frags[&id], vec![(duration, 0.25 * MHZ)], "task {id}");
        let row = tasks.iter().find(|t| t.id == id).unwrap();
        assert_eq!((row.cpu_count, row.cpu_capacity), (1, 0.25 * MHZ));
    }
    // RSS from a baseline sample is a measurement of memory.
    assert_eq!(tasks.iter().find(|t| t.id == 4).unwrap().mem_capacity, 9000);
}

#[test]
fn unmeasured_tasks_take_the_median_rate_of_their_command_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let node = tmp.path().join("20250922003");
    original_node(&node);
    let out = tmp.path().join("opendc");
    let report = export_opendc_with(&node, &out, &opts(UnmeasuredCpu::ShapeMedian)).unwrap();
    // t2 and t4 share t1's and t6's shape (1920x1080 h264 fast); t5 is the
    // only hevc task: no measured peer, skipped and counted.
    assert_eq!(report.tasks_unmeasured, 3);
    assert_eq!(report.unmeasured_estimated, 2);
    assert_eq!(report.unmeasured_no_peer, 1);
    assert_eq!(report.unmeasured_no_shape, 0);
    assert_eq!(report.unmeasured_skipped, 1);
    assert_eq!(report.tasks_exported, 5);
    let frags = read_fragments(&out.join("fragments.parquet"));
    assert!(!frags.contains_key(&5));
    // t1 carries 3400 ms over 3500 ms, t6 6000 ms over 3000 ms.
    let median = (3400.0 / 3500.0 + 2.0) / 2.0;
    for (id, duration) in [(2, 40), (4, 600)] {
        assert_eq!(frags[&id].len(), 1);
        assert_eq!(frags[&id][0].0, duration);
        assert!(
            (frags[&id][0].1 - median * MHZ).abs() < 1e-6,
            "{:?}",
            frags[&id]
        );
    }
    let tasks = read_tasks(&out.join("tasks.parquet"));
    let t2 = tasks.iter().find(|t| t.id == 2).unwrap();
    assert_eq!(t2.cpu_count, 2);

    // Without the wrapper's events file no shape is recorded: nothing to
    // estimate from, and the summary says so.
    std::fs::remove_file(node.join("events.jsonl")).unwrap();
    let report = export_opendc_with(&node, &out, &opts(UnmeasuredCpu::ShapeMedian)).unwrap();
    assert_eq!(report.unmeasured_no_shape, 3);
    assert_eq!(report.unmeasured_estimated, 0);
    assert_eq!(report.tasks_exported, 3);
}

#[test]
fn p95_sizing_is_kept_behind_a_flag_and_fits_every_task() {
    let tmp = tempfile::tempdir().unwrap();
    let node = tmp.path().join("20250922003");
    original_node(&node);
    let out = tmp.path().join("opendc");
    let opts = ExportOptions {
        cpu_sizing: CpuSizing::P95,
        ..Default::default()
    };
    let report = export_opendc_with(&node, &out, &opts).unwrap();
    // t1's fragments 1.2, 1.2, 0.8, 0.8 cores: P95 = 1.2 cores, nothing
    // clipped; the others are flat.
    assert_eq!(report.clipped_cpu_ms, 0.0);
    let tasks = read_tasks(&out.join("tasks.parquet"));
    for t in &tasks {
        assert!(t.cpu_count as f64 * MHZ >= t.cpu_capacity, "{t:?}");
        assert!(t.cpu_count <= 4);
    }
}
