//! Helpers shared by the integration tests: generated runs, parquet read back,
//! and an independent reference for what the export must produce.
#![allow(clippy::unwrap_used)] // a panic is how a test fails
#![allow(dead_code)] // each test binary uses a different part

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use arrow_array::{
    Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
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
    pub name: Option<String>,
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
        let name = col::<StringArray>(&b, "name");
        let sub = col::<TimestampMillisecondArray>(&b, "submission_time");
        let dur = col::<Int64Array>(&b, "duration");
        let cnt = col::<Int32Array>(&b, "cpu_count");
        let cap = col::<Float64Array>(&b, "cpu_capacity");
        let mem = col::<Int64Array>(&b, "mem_capacity");
        for i in 0..b.num_rows() {
            assert_eq!(id.null_count() + dur.null_count(), 0);
            rows.push(TaskRow {
                id: id.value(i),
                name: (!name.is_null(i)).then(|| name.value(i).to_string()),
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

fn write_file(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("a parent directory")).expect("mkdir");
    std::fs::write(path, text).expect("writing a test file");
}

/// A node directory in the original (Python) system's format: `cctf/`, only
/// the five required invocation fields (one trace_id null), integer cpu_ms,
/// `rss_kb` sometimes missing, no exact CPU totals, no tracer_stats.json,
/// and its collector's baseline (`dt_ms: 0, cpu_ms: 0`) as each PID's first
/// sample. The wrapper's `events.jsonl` beside it holds the output names.
///
/// | task | pid | run | samples | output shape |
/// |---|---|---|---|---|
/// | t1 | 100 | 1000..4500 | baseline, 1.2 cores, 0.8 cores | h264 fast |
/// | t2 | 200 | 2000..2040 | none | h264 fast |
/// | (null) | 300 | 3000..5000 | baseline, 0.5 cores | none recorded |
/// | t4 | 400 | 5000..5600 | baseline only | h264 fast |
/// | t5 | 100 (reused) | 6000..6300 | baseline only | hevc medium |
/// | t6 | 500 | 7000..10000 | baseline, 2 cores, 2 cores | h264 fast |
///
/// t2, t4 and t5 have no CPU measurement: 3 of 6 tasks.
pub fn original_node(dir: &Path) {
    write_file(
        &dir.join("node_meta.json"),
        r#"{"run_id": "20250922003", "node": "vm0", "stage": "cloud", "host": "cloud3gxie", "iface": "ens2", "cpu_cores": 4, "mem_mb": 15997, "cpu_model": "QEMU Virtual CPU version 2.5+", "cpu_freq_mhz": 2399}"#,
    );
    write_file(
        &dir.join("cctf/nodes.json"),
        r#"[{"node_id": "vm0", "stage": "cloud", "cpu_cores": 4, "mem_mb": 16384, "cpu_model": "QEMU", "cpu_freq_mhz": 2400}]"#,
    );
    let invocations = [
        r#"{"trace_id": "t1", "pid": 100, "ts_enqueue": 900, "ts_start": 1000, "ts_end": 4500}"#,
        r#"{"trace_id": "t2", "pid": 200, "ts_enqueue": 950, "ts_start": 2000, "ts_end": 2040}"#,
        r#"{"trace_id": null, "pid": 300, "ts_enqueue": 990, "ts_start": 3000, "ts_end": 5000}"#,
        r#"{"trace_id": "t4", "pid": 400, "ts_enqueue": 4900, "ts_start": 5000, "ts_end": 5600}"#,
        r#"{"trace_id": "t5", "pid": 100, "ts_enqueue": 5900, "ts_start": 6000, "ts_end": 6300}"#,
        r#"{"trace_id": "t6", "pid": 500, "ts_enqueue": 6900, "ts_start": 7000, "ts_end": 10000}"#,
    ];
    write_file(
        &dir.join("cctf/invocations.jsonl"),
        &(invocations.join("\n") + "\n"),
    );
    let samples = [
        r#"{"ts_ms": 1500, "pid": 100, "dt_ms": 0, "cpu_ms": 0, "rss_kb": 30000}"#,
        r#"{"ts_ms": 2500, "pid": 100, "dt_ms": 1000, "cpu_ms": 1200, "rss_kb": 52000}"#,
        r#"{"ts_ms": 3400, "pid": 300, "dt_ms": 0, "cpu_ms": 0, "rss_kb": 10000}"#,
        r#"{"ts_ms": 3500, "pid": 100, "dt_ms": 1000, "cpu_ms": 800}"#,
        r#"{"ts_ms": 4400, "pid": 300, "dt_ms": 1000, "cpu_ms": 500, "rss_kb": 12000}"#,
        r#"{"ts_ms": 5300, "pid": 400, "dt_ms": 0, "cpu_ms": 0, "rss_kb": 9000}"#,
        r#"{"ts_ms": 6100, "pid": 100, "dt_ms": 0, "cpu_ms": 0, "rss_kb": 7000}"#,
        r#"{"ts_ms": 7200, "pid": 500, "dt_ms": 0, "cpu_ms": 0, "rss_kb": 20000}"#,
        r#"{"ts_ms": 8200, "pid": 500, "dt_ms": 1000, "cpu_ms": 2000, "rss_kb": 60000}"#,
        r#"{"ts_ms": 9200, "pid": 500, "dt_ms": 1000, "cpu_ms": 2000, "rss_kb": 61000}"#,
    ];
    write_file(
        &dir.join("cctf/proc_metrics.jsonl"),
        &(samples.join("\n") + "\n"),
    );
    let events: Vec<String> = [
        ("t1", 100, "h264_fast_n0000"),
        ("t2", 200, "h264_fast_n0001"),
        ("t4", 400, "h264_fast_n0003"),
        ("t5", 100, "hevc_medium_n0004"),
        ("t6", 500, "h264_fast_n0005"),
    ]
    .iter()
    .map(|(id, pid, tail)| {
        format!(
            r#"{{"trace_id": "{id}", "module_id": "ffmpeg", "pid": {pid}, "input": "gen_854x480_10s.mp4", "output": "gen_854x480_10s_1920x1080_{tail}.mp4", "status": 0}}"#
        )
    })
    .collect();
    write_file(&dir.join("events.jsonl"), &(events.join("\n") + "\n"));
}
