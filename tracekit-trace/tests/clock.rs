//! `--correct-clock`: a run whose node and dispatcher clocks were off, with
//! their offsets recorded, exports exactly as the same run on one clock
//! would; without the flag nothing moves; what was not measured is said.
//! The audit's clock threshold is an option.
#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tracekit_trace::audit::{AuditOptions, audit_with};
use tracekit_trace::export::{ExportOptions, TaskIdMode, export_opendc_with, task_ids};
use tracekit_trace::reader::discover;
use tracekit_trace::synth::{SynthNode, write_node};

/// Node 1 runs `NODE1_AHEAD_MS` ahead of Redis (its agent measured
/// 700.3 ms); the dispatcher ran 250 ms behind (it measured -250.2 ms).
const NODE1_AHEAD_MS: i64 = 700;
const DISPATCHER_AHEAD_MS: i64 = -250;

fn synth_run(dir: &Path) -> PathBuf {
    let run = dir.join("run");
    for (n, node) in ["node1", "node2"].into_iter().enumerate() {
        let mut cfg = SynthNode::new(node, 12);
        cfg.samples_per_task = 4;
        cfg.interval_ms = 200;
        cfg.slots = 2;
        cfg.seed = 3 + n as u64;
        cfg.pid_base = 4000 + 1000 * n as u32;
        write_node(&run.join(node), &cfg).unwrap();
    }
    run
}

fn edit_lines(path: &Path, f: impl Fn(&mut serde_json::Map<String, Value>)) {
    let text = std::fs::read_to_string(path).unwrap();
    let out: String = text
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            f(v.as_object_mut().unwrap());
            format!("{v}\n")
        })
        .collect();
    std::fs::write(path, out).unwrap();
}

fn shift(m: &mut serde_json::Map<String, Value>, field: &str, by: i64) {
    let t = m[field].as_i64().unwrap();
    m.insert(field.into(), json!(t + by));
}

/// `run` as the clocks above would have recorded it: the dispatcher's
/// stamps and each node's times moved, each offset measured.
fn skew(run: &Path, measured_node2: bool) {
    for node in ["node1", "node2"] {
        let ahead = if node == "node1" { NODE1_AHEAD_MS } else { 0 };
        let dir = run.join(node);
        edit_lines(&dir.join("CTS/invocations.jsonl"), |m| {
            shift(m, "ts_enqueue", DISPATCHER_AHEAD_MS);
            m.insert("ts_enqueue_offset_ms".into(), json!(-250.2));
            shift(m, "ts_start", ahead);
            shift(m, "ts_end", ahead);
        });
        edit_lines(&dir.join("CTS/proc_metrics.jsonl"), |m| {
            shift(m, "ts_ms", ahead)
        });
        let offset = if node == "node1" { 700.3 } else { 0.4 };
        if node == "node1" || measured_node2 {
            let path = dir.join("node_meta.json");
            let mut meta: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            meta["clock"] = json!({"offset_ms": offset, "rtt_ms": 0.2, "samples": 9, "max_abs_offset_ms": offset});
            std::fs::write(&path, meta.to_string()).unwrap();
        }
    }
}

fn export(run: &Path, out: &Path, correct_clock: bool) -> tracekit_trace::ExportReport {
    let opts = ExportOptions {
        correct_clock,
        ..ExportOptions::default()
    };
    export_opendc_with(run, out, &opts).unwrap()
}

fn bytes(dir: &Path, file: &str) -> Vec<u8> {
    std::fs::read(dir.join(file)).unwrap()
}

#[test]
fn corrected_export_equals_the_run_on_one_clock() {
    let tmp = tempfile::tempdir().unwrap();
    let truth = synth_run(&tmp.path().join("truth"));
    let skewed = synth_run(&tmp.path().join("skewed"));
    skew(&skewed, true);

    let o_truth = tmp.path().join("o-truth");
    let o_raw = tmp.path().join("o-raw");
    let o_fixed = tmp.path().join("o-fixed");
    let plain = export(&truth, &o_truth, false);
    let raw = export(&skewed, &o_raw, false);
    let fixed = export(&skewed, &o_fixed, true);
    assert_eq!(raw.clock, None, "without the flag, no correction");
    for f in [
        "tasks.parquet",
        "fragments.parquet",
        "small_datacenter.json",
    ] {
        assert_eq!(bytes(&o_truth, f), bytes(&o_fixed, f), "{f}");
    }
    // Uncorrected, the submission times are the dispatcher's: they differ.
    assert_ne!(
        bytes(&o_truth, "tasks.parquet"),
        bytes(&o_raw, "tasks.parquet")
    );
    // Shifting a node's times as a whole keeps every fragment.
    assert_eq!(
        bytes(&o_truth, "fragments.parquet"),
        bytes(&o_raw, "fragments.parquet")
    );
    assert_eq!(
        (fixed.tasks, fixed.fragments),
        (plain.tasks, plain.fragments)
    );
    // compare --correct-clock matches the ids the export gave, at the
    // corrected times.
    let ids = |run: &Path, correct: bool| {
        task_ids(&discover(run).unwrap(), TaskIdMode::Sequential, correct).unwrap()
    };
    assert_eq!(ids(&skewed, true), ids(&truth, false));
    assert_ne!(ids(&skewed, false), ids(&truth, false));
    let tally = fixed.clock.unwrap();
    let note = tally.note();
    assert!(note.contains("node1 -700 ms, node2 +0 ms"), "{note}");
    assert!(
        note.contains("24 submission time(s) by their dispatcher's (+250 ms)"),
        "{note}"
    );
    assert!(tally.warnings().is_empty(), "{:?}", tally.warnings());
}

#[test]
fn a_node_without_a_measurement_is_said_and_left_as_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let skewed = synth_run(tmp.path());
    skew(&skewed, false);
    // A task of an older dispatcher: no offset.
    edit_lines(&skewed.join("node1/CTS/invocations.jsonl"), |m| {
        if m["trace_id"].as_str().is_some_and(|t| t.ends_with("000")) {
            m.remove("ts_enqueue_offset_ms");
        }
    });
    let r = export(&skewed, &tmp.path().join("out"), true);
    let tally = r.clock.unwrap();
    assert!(
        tally.note().contains("node2 not measured"),
        "{}",
        tally.note()
    );
    let w = tally.warnings();
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].starts_with("clock of node node2 not corrected"),
        "{w:?}"
    );
    assert!(
        w[1].starts_with("1 submission time(s) not corrected"),
        "{w:?}"
    );
}

#[test]
fn the_audit_warns_about_clocks_beyond_its_threshold() {
    let tmp = tempfile::tempdir().unwrap();
    let skewed = synth_run(tmp.path());
    skew(&skewed, true);
    let warned = |ms: f64| {
        let a = audit_with(
            &skewed,
            &AuditOptions {
                clock_skew_warn_ms: ms,
            },
        )
        .unwrap();
        let node = a
            .warnings
            .iter()
            .filter(|w| w.contains("this node's clock is +700 ms off Redis TIME"))
            .count();
        let dispatcher = a
            .warnings
            .iter()
            .filter(|w| w.contains("a dispatcher's clock was up to 250 ms off"))
            .count();
        (node, dispatcher)
    };
    // The default (50 ms): node1's clock, and the dispatcher's on both nodes.
    assert_eq!(warned(AuditOptions::default().clock_skew_warn_ms), (1, 2));
    assert_eq!(warned(300.0), (1, 0));
    assert_eq!(warned(1000.0), (0, 0));
}
