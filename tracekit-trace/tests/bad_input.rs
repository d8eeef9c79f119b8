//! Bad input to the export: a column no record holds, an empty run, a node
//! whose description OpenDC could not use. Each is an error naming the file
//! and the column, and nothing is written: no file of the failed export, no
//! temporary file, and an earlier export in the same directory untouched.
#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use std::path::Path;

use tracekit_trace::export::{TaskIdMode, export_opendc};
use tracekit_trace::synth::{SynthNode, write_node};

const FILES: [&str; 4] = [
    "tasks.parquet",
    "fragments.parquet",
    "small_datacenter.json",
    "experiment.json",
];

fn node(dir: &Path) {
    let mut cfg = SynthNode::new("n", 6);
    cfg.samples_per_task = 3;
    cfg.interval_ms = 100;
    write_node(dir, &cfg).unwrap();
}

/// Rewrite every line of a JSONL file.
fn rewrite(path: &Path, f: impl Fn(&mut serde_json::Map<String, serde_json::Value>)) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        f(v.as_object_mut().unwrap());
        out.push_str(&v.to_string());
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
}

/// The export of `input` into `out` fails with a message holding every
/// needle, and leaves `out` as it was.
fn fails_cleanly(input: &Path, out: &Path, needles: &[&str]) {
    let before: Vec<Option<Vec<u8>>> = FILES
        .iter()
        .map(|f| std::fs::read(out.join(f)).ok())
        .collect();
    let err = format!(
        "{:#}",
        export_opendc(input, out, TaskIdMode::Auto).unwrap_err()
    );
    for n in needles {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
    let after: Vec<Option<Vec<u8>>> = FILES
        .iter()
        .map(|f| std::fs::read(out.join(f)).ok())
        .collect();
    assert_eq!(before, after, "the output directory changed");
    if out.exists() {
        for e in std::fs::read_dir(out).unwrap() {
            let name = e.unwrap().file_name();
            assert!(
                !name.to_string_lossy().ends_with(".tmp"),
                "{name:?} left behind"
            );
        }
    }
}

#[test]
fn a_missing_sample_column_names_file_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    node(&dir);
    let out = tmp.path().join("out");
    // A good export first: a failed one must leave it alone.
    export_opendc(&dir, &out, TaskIdMode::Auto).unwrap();
    rewrite(&dir.join("CTS/proc_metrics.jsonl"), |m| {
        m.remove("cpu_ms");
    });
    fails_cleanly(&dir, &out, &["CTS/proc_metrics.jsonl", "\"cpu_ms\""]);
}

#[test]
fn a_missing_invocation_column_names_file_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    node(&dir);
    rewrite(&dir.join("CTS/invocations.jsonl"), |m| {
        m.remove("ts_enqueue");
    });
    fails_cleanly(
        &dir,
        &tmp.path().join("out"),
        &["CTS/invocations.jsonl", "\"ts_enqueue\""],
    );
    assert!(!tmp.path().join("out/tasks.parquet").exists());
}

#[test]
fn an_empty_run_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    node(&dir);
    std::fs::write(dir.join("CTS/invocations.jsonl"), "").unwrap();
    fails_cleanly(
        &dir,
        &tmp.path().join("out"),
        &["nothing to export", "CTS/invocations.jsonl"],
    );
}

#[test]
fn a_run_of_only_unmeasured_tasks_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    node(&dir);
    // No exact totals and no samples: every task's CPU is unknown.
    rewrite(&dir.join("CTS/invocations.jsonl"), |m| {
        m.remove("cpu_ms");
    });
    std::fs::write(dir.join("CTS/proc_metrics.jsonl"), "").unwrap();
    fails_cleanly(
        &dir,
        &tmp.path().join("out"),
        &["no CPU measurement", "--unmeasured-cpu skip"],
    );
}

#[test]
fn a_node_without_frequency_or_memory_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    node(&dir);
    let nodes = dir.join("CTS/nodes.json");
    let text = std::fs::read_to_string(&nodes).unwrap();
    std::fs::write(&nodes, text.replace("\"mem_mb\": 16384", "\"mem_mb\": 0")).unwrap();
    fails_cleanly(&dir, &tmp.path().join("out"), &["CTS/nodes.json", "mem_mb"]);
}
