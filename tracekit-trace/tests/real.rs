//! Round trip over real traces recorded by the eBPF tracer: audit, then export.

mod common;

use common::{read_fragments, read_tasks, real_run};
use tracekit_trace::audit::audit;
use tracekit_trace::export::{TaskIdMode, export_opendc};

#[test]
fn real_traces_audit_and_export() {
    let tmp = tempfile::tempdir().unwrap();
    let run = real_run(&tmp.path().join("run"));

    let summary = audit(&run).unwrap();
    let r1 = &summary.nodes[0];
    assert!(r1.ok(), "{:?}", r1.problems);
    assert_eq!(r1.counts.invocations, 1);
    assert_eq!(r1.counts.samples, 4);
    assert_eq!(r1.counts.cpu_reconciled, 1);
    assert!(r1.counts.cpu_max_abs_dev_ms < 1e-9);
    assert_eq!(r1.counts.tiling_mismatches, 0);
    assert!(
        r1.markdown
            .contains("| tk_switch | 1561 | 1068975 | 684.8 |")
    );
    let st = &summary.nodes[1];
    assert_eq!(st.counts.failed_tasks, 1);
    assert_eq!(st.problems.len(), 1, "{:?}", st.problems);
    assert!(!summary.ok);

    let out = tmp.path().join("opendc");
    let report = export_opendc(&run, &out, TaskIdMode::Auto).unwrap();
    assert_eq!(report.id_mode, TaskIdMode::Pid);
    assert_eq!(report.tasks, 3);
    assert_eq!(report.gap_ms, 0);
    // Only the 0.1 MHz floor of the CPU-less exec sample adds anything.
    assert!(report.max_cpu_deviation_ms < 1e-3);
    let tasks = read_tasks(&out.join("tasks.parquet"));
    let frags = read_fragments(&out.join("fragments.parquet"));
    // The node's one frequency: nodes.json's 2600 MHz (node_meta says 2599.998).
    let mhz = 2600.0;
    // (pid, duration, exact cpu_ms, rss_peak_kb) from the invocations.
    for (pid, duration, cpu, peak) in [
        (12563, 419, 615.394, 114540),
        (32294, 96, 84.633, 3564),
        (32295, 108, 84.05, 43176),
    ] {
        let row = tasks.iter().find(|t| t.id == pid).unwrap();
        assert_eq!(row.duration, duration);
        assert_eq!(row.mem_capacity, peak);
        let f = &frags[&pid];
        assert_eq!(f.iter().map(|x| x.0).sum::<i64>(), duration);
        let carried: f64 = f.iter().map(|&(d, u)| u / mhz * d as f64).sum();
        assert!((carried - cpu).abs() < 1e-3, "{pid}: {carried} vs {cpu}");
    }
    // The encode's exec sample (1 ms, no CPU yet) sits at the floor.
    assert_eq!(frags[&12563][0], (1, 0.1));
}
