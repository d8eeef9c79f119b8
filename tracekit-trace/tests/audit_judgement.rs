//! The audit says first what a run was asked to do and did not (an eBPF
//! fallback, tasks run unbound, privileges kept), and finds intervals with no
//! sample while a process was alive.

use std::path::Path;

use serde_json::{Value, json};
use tracekit_trace::audit;

fn write_lines(path: &Path, values: &[Value]) {
    let text: String = values.iter().map(|v| format!("{v}\n")).collect();
    std::fs::write(path, text).expect("writing a trace file");
}

/// A node directory with `meta` (merged into a complete node_meta.json),
/// tasks and samples.
fn node(dir: &Path, meta: Value, invocations: &[Value], samples: &[Value]) {
    std::fs::create_dir_all(dir.join("CTS")).expect("CTS dir");
    let mut full = json!({
        "run_id": "r1", "node": "n1", "stage": "cloud", "host": "h", "iface": "eth0",
        "cpu_cores": 2, "mem_mb": 4096, "cpu_model": "x", "cpu_freq_mhz": 2000.0,
        "collector": "ebpf", "interval_ms": 100,
    });
    if let (Some(full), Some(extra)) = (full.as_object_mut(), meta.as_object()) {
        full.extend(extra.clone());
    }
    std::fs::write(dir.join("node_meta.json"), full.to_string()).expect("meta");
    write_lines(&dir.join("CTS/invocations.jsonl"), invocations);
    write_lines(&dir.join("CTS/proc_metrics.jsonl"), samples);
}

/// One task of pid `pid` from 1000 to `end`, sampled at `ticks` (each
/// sample from the previous one), its CPU the samples' sum.
fn task(pid: u32, ticks: &[i64], extra: Value) -> (Value, Vec<Value>) {
    let mut samples = Vec::new();
    let mut last = 1000;
    for &t in ticks {
        samples.push(
            json!({"ts_ms": t, "pid": pid, "dt_ms": t - last, "cpu_ms": 1.0, "rss_kb": 1000}),
        );
        last = t;
    }
    let mut inv = json!({
        "trace_id": format!("t{pid}"), "pid": pid, "ts_enqueue": 900, "ts_start": 1000,
        "ts_end": last, "cpu_ms": ticks.len() as f64, "exit_code": 0,
    });
    if let (Some(inv), Some(extra)) = (inv.as_object_mut(), extra.as_object()) {
        inv.extend(extra.clone());
    }
    (inv, samples)
}

#[test]
fn a_clean_node_has_no_gaps_and_nothing_not_as_asked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ticks: Vec<i64> = (1..=20).map(|i| 1000 + i * 100).collect();
    let (inv, samples) = task(7, &ticks, json!({}));
    node(tmp.path(), json!({}), &[inv], &samples);
    let a = audit(tmp.path()).expect("audit");
    assert!(a.ok, "{:?}", a.problems);
    assert_eq!(a.totals.processes_with_gaps, 0);
    assert!(a.nodes[0].not_as_asked.is_empty());
    assert!(!a.nodes[0].markdown.contains("Not as asked"));
}

#[test]
fn intervals_without_samples_are_found_per_process() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // pid 1: one skipped timer firing (a warning); pid 2: sampled only from
    // 2 s into a 3 s run (a problem).
    let mut ticks1: Vec<i64> = (1..=20).map(|i| 1000 + i * 100).collect();
    ticks1.retain(|&t| t != 1500);
    let (inv1, s1) = task(1, &ticks1, json!({}));
    let mut ticks2 = vec![3000];
    ticks2.extend((1..=10).map(|i| 3000 + i * 100));
    let (inv2, s2) = task(2, &ticks2, json!({}));
    node(tmp.path(), json!({}), &[inv1, inv2], &[s1, s2].concat());
    let a = audit(tmp.path()).expect("audit");
    let n = &a.nodes[0];
    assert_eq!(n.counts.processes_with_gaps, 2, "{:?}", n.gaps);
    assert_eq!(n.counts.missed_intervals, 1 + 19);
    assert_eq!(n.gaps[0].pid, 2);
    assert_eq!(n.gaps[0].trace_id.as_deref(), Some("t2"));
    assert_eq!(n.gaps[0].longest_ms, 2000);
    assert!(n.gaps[0].serious() && !n.gaps[1].serious());
    assert!(!a.ok);
    assert!(
        a.problems
            .iter()
            .any(|p| p.contains("interval(s) with no sample")),
        "{:?}",
        a.problems
    );
    assert!(n.markdown.contains("## Sampling gaps"), "{}", n.markdown);
    assert!(n.markdown.contains("| 2 | t2 | 19 |"), "{}", n.markdown);
}

#[test]
fn what_was_not_done_as_asked_comes_first() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ticks: Vec<i64> = (1..=5).map(|i| 1000 + i * 100).collect();
    let why = "CPU binding not applied (--allow-unbound): no usable cgroup hierarchy";
    let (inv, samples) = task(3, &ticks, json!({"binding_error": why}));
    node(
        tmp.path(),
        json!({
            "collector": "procfs",
            "fallback_reason": "missing privilege",
            "run_as": "root",
            "privileges_dropped": false,
        }),
        &[inv],
        &samples,
    );
    let a = audit(tmp.path()).expect("audit");
    let n = &a.nodes[0];
    assert!(!a.ok);
    assert!(n.problems[0].contains("fell back to /proc polling (missing privilege)"));
    assert!(
        n.problems[1].contains("1 task(s) ran without the CPU binding they asked for")
            && n.problems[1].contains(why),
        "{:?}",
        n.problems
    );
    assert!(n.warnings[0].contains("--run-as root"), "{:?}", n.warnings);
    assert_eq!(a.totals.unbound_tasks, 1);
    // In the report's first lines, right under the verdict.
    let head: Vec<&str> = n.markdown.lines().take(12).collect();
    let head = head.join("\n");
    for needle in [
        "## Not as asked",
        "/proc polling",
        "without the CPU binding",
        "--run-as root",
    ] {
        assert!(
            head.contains(needle),
            "{needle} not in the first lines:\n{head}"
        );
    }
}

/// A run whose completion was refused (its node had been declared dead and
/// the task ran again elsewhere) is left out of the trace by every reader,
/// and the audit says so.
#[test]
fn withdrawn_runs_are_left_out() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ticks: Vec<i64> = (1..=10).map(|i| 1000 + i * 100).collect();
    let (kept, mut samples) = task(7, &ticks, json!({}));
    let (refused, more) = task(8, &ticks, json!({}));
    samples.extend(more);
    node(tmp.path(), json!({}), &[kept, refused], &samples);
    write_lines(
        &tmp.path().join("CTS/withdrawn.jsonl"),
        &[json!({"trace_id": "t8", "reason": "completion refused", "ts": 5000})],
    );
    let dir = tracekit_trace::reader::NodeDir::open(tmp.path()).expect("node dir");
    let mut seen = Vec::new();
    dir.read_invocations(|rec, _| {
        seen.push(rec.trace_id.unwrap_or_default());
        Ok(())
    })
    .expect("invocations");
    assert_eq!(seen, vec!["t7".to_string()]);
    let a = audit(tmp.path()).expect("audit");
    assert_eq!(a.nodes[0].withdrawn, 1);
    assert!(
        a.nodes[0]
            .warnings
            .iter()
            .any(|w| w.contains("1 run(s) withdrawn")),
        "{:?}",
        a.nodes[0].warnings
    );
}

/// A node clock far from Redis's is a warning that names the offset.
#[test]
fn a_skewed_clock_is_a_warning() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ticks: Vec<i64> = (1..=10).map(|i| 1000 + i * 100).collect();
    let (inv, samples) = task(7, &ticks, json!({}));
    let clock =
        json!({"offset_ms": -120.4, "rtt_ms": 0.6, "samples": 30, "max_abs_offset_ms": 121.0});
    node(tmp.path(), json!({ "clock": clock }), &[inv], &samples);
    let a = audit(tmp.path()).expect("audit");
    assert!(
        a.nodes[0]
            .warnings
            .iter()
            .any(|w| w.contains("-120 ms off Redis TIME")),
        "{:?}",
        a.nodes[0].warnings
    );
    let (inv, samples) = task(7, &ticks, json!({}));
    let near = json!({"offset_ms": 3.0, "rtt_ms": 0.6, "samples": 30, "max_abs_offset_ms": 4.0});
    node(tmp.path(), json!({ "clock": near }), &[inv], &samples);
    let a = audit(tmp.path()).expect("audit");
    assert!(!a.nodes[0].warnings.iter().any(|w| w.contains("Redis TIME")));
}
