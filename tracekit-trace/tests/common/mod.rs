//! Helpers shared by the integration tests: generated runs, parquet read back,
//! and an independent reference for what the export must produce.
#![allow(clippy::unwrap_used)] // a panic is how a test fails
#![allow(dead_code)] // each test binary uses a different part

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use arrow_array::{Array, Float64Array, Int32Array, Int64Array, RecordBatch};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tracekit_trace::synth::{SynthNode, TruthTask, write_node};

/// A run directory of `nodes`, each a sub-directory named after the node.
pub fn write_run(run_dir: &Path, nodes: &[SynthNode]) -> Vec<TruthTask> {
    let mut truth = Vec::new();
    for cfg in nodes {
        truth.extend(write_node(&run_dir.join(&cfg.node), cfg).expect("writing a node"));
    }
    truth
}

/// Two nodes whose PIDs overlap (so auto ids are sequential) and are reused.
pub fn two_node_run(run_dir: &Path, tasks_each: usize) -> Vec<TruthTask> {
    let mut a = SynthNode::new("node-a", tasks_each);
    a.samples_per_task = 12;
    a.interval_ms = 200;
    a.pid_span = 1;
    a.zero_every = 11;
    a.fail_every = 0;
    let mut b = SynthNode::new("node-b", tasks_each);
    b.samples_per_task = 8;
    b.interval_ms = 500;
    b.cores = 2;
    b.mhz = 3100.0;
    b.mem_mb = 7900;
    b.slots = 2;
    b.pid_span = 2;
    b.seed = 7;
    write_run(run_dir, &[a, b])
}

/// Rows of `tasks.parquet`.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    pub id: i32,
    pub submission_time: i64,
    pub duration: i64,
    pub cpu_count: i32,
    pub cpu_capacity: f64,
    pub mem_capacity: i64,
}

fn batches(path: &Path) -> Vec<RecordBatch> {
    let file = File::open(path).expect("opening parquet");
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("parquet reader")
        .build()
        .expect("parquet reader");
    reader.map(|b| b.expect("batch")).collect()
}

fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> &'a T {
    b.column_by_name(name)
        .unwrap_or_else(|| panic!("column {name}"))
        .as_any()
        .downcast_ref::<T>()
        .unwrap_or_else(|| panic!("type of column {name}"))
}

pub fn read_tasks(path: &Path) -> Vec<TaskRow> {
    let mut rows = Vec::new();
    for b in batches(path) {
        let id = col::<Int32Array>(&b, "id");
        let sub = col::<Int64Array>(&b, "submission_time");
        let dur = col::<Int64Array>(&b, "duration");
        let cnt = col::<Int32Array>(&b, "cpu_count");
        let cap = col::<Float64Array>(&b, "cpu_capacity");
        let mem = col::<Int64Array>(&b, "mem_capacity");
        for i in 0..b.num_rows() {
            assert_eq!(id.null_count() + dur.null_count(), 0);
            rows.push(TaskRow {
                id: id.value(i),
                submission_time: sub.value(i),
                duration: dur.value(i),
                cpu_count: cnt.value(i),
                cpu_capacity: cap.value(i),
                mem_capacity: mem.value(i),
            });
        }
    }
    rows
}

/// Fragments per task id, in file order; also checks a task's fragments are
/// contiguous in the file.
pub fn read_fragments(path: &Path) -> HashMap<i32, Vec<(i64, f64)>> {
    let mut out: HashMap<i32, Vec<(i64, f64)>> = HashMap::new();
    let mut last_id = None;
    for b in batches(path) {
        let id = col::<Int32Array>(&b, "id");
        let dur = col::<Int64Array>(&b, "duration");
        let usage = col::<Float64Array>(&b, "cpu_usage");
        for i in 0..b.num_rows() {
            let task = id.value(i);
            if last_id != Some(task) {
                assert!(
                    !out.contains_key(&task),
                    "fragments of task {task} are not contiguous"
                );
            }
            last_id = Some(task);
            out.entry(task)
                .or_default()
                .push((dur.value(i), usage.value(i)));
        }
    }
    out
}

/// Truth in the export's documented task order: submission, start, node
/// (run directories are read in name order), pid, end.
pub fn in_export_order(truth: &[TruthTask]) -> Vec<TruthTask> {
    let mut t = truth.to_vec();
    t.sort_by(|a, b| {
        (a.ts_enqueue, a.ts_start, &a.node, a.pid, a.ts_end).cmp(&(
            b.ts_enqueue,
            b.ts_start,
            &b.node,
            b.pid,
            b.ts_end,
        ))
    });
    t
}

/// numpy/pandas default quantile, written out independently of the crate.
pub fn p95(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = 0.95 * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// A run directory holding copies of real node traces recorded by the eBPF
/// tracer on this kind of machine (`tests/data/real/<node>`): a 0.4 s encode
/// (`r1`), and two short ffmpeg runs of which one failed (`st`).
pub fn real_run(dest: &Path) -> std::path::PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/real");
    for node in ["r1", "st"] {
        copy_dir(&src.join(node), &dest.join(node));
    }
    dest.to_path_buf()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
