//! `tracekit-sched compare` driven as a user runs it, against OpenDC task
//! outputs built from a run: identical, shifted by a known amount, and bad.
#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod runs;

use std::path::Path;

use runs::{listing, opendc_of, sched, synth_run};
use serde_json::Value;

fn compare(run: &Path, sim: &Path, out: &Path) -> assert_cmd::assert::Assert {
    sched()
        .args(["compare", "--run"])
        .arg(run)
        .arg("--opendc")
        .arg(sim)
        .arg("--output")
        .arg(out)
        .assert()
}

fn json(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("compare.json")).unwrap()).unwrap()
}

fn verdict(j: &Value, prefix: &str) -> bool {
    j["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["metric"].as_str().unwrap().starts_with(prefix))
        .unwrap_or_else(|| panic!("no verdict {prefix}"))["pass"]
        .as_bool()
        .unwrap()
}

#[test]
fn an_identical_simulation_has_no_error_and_passes() {
    let dir = tempfile::tempdir().unwrap();
    let (run, _) = synth_run(dir.path(), 2, 50, 6, 500);
    let sim = dir.path().join("opendc");
    opendc_of(&run, &sim, true, 0, 1.0);
    let out = dir.path().join("cmp");
    let a = compare(&run, &sim, &out).success();
    let stdout = String::from_utf8_lossy(&a.get_output().stdout).into_owned();
    assert!(stdout.contains("Overall: PASS"), "{stdout}");
    assert_eq!(
        listing(&out),
        ["compare.html", "compare.json", "compare.md"]
    );
    let j = json(&out);
    assert_eq!(j["join"], "task_name");
    assert_eq!(j["matched"], 100);
    assert_eq!(
        (j["real_only"].as_u64(), j["sim_only"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(j["cumulative"]["rmse_pct"], 0.0);
    assert_eq!(j["cumulative"]["best_lag_s"], 0.0);
    assert_eq!(j["makespan"]["error_s"], 0.0);
    assert_eq!(j["wait"]["ks"]["statistic"], 0.0);
    assert_eq!(j["wait"]["ks"]["p_value"], 1.0);
    assert_eq!(j["wait"]["real_s"], j["wait"]["sim_s"]);
    assert_eq!(j["throughput"]["rmse_per_minute"], 0.0);
    assert_eq!(j["run_error"]["error_s"]["max"], 0.0);
    assert_eq!(j["pass"], true);
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert_eq!(md.matches("| PASS |").count(), 5, "{md}");
}

#[test]
fn without_names_tasks_are_joined_by_the_exports_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (run, _) = synth_run(dir.path(), 2, 20, 4, 500);
    let sim = dir.path().join("opendc");
    let real = opendc_of(&run, &sim, false, 0, 1.0);
    // The ids are the export's: the tasks.parquet it writes holds them.
    let export = dir.path().join("export");
    sched()
        .args(["export-opendc", "--input"])
        .arg(&run)
        .arg("--output")
        .arg(&export)
        .assert()
        .success();
    let file = std::fs::File::open(export.join("tasks.parquet")).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut exported: Vec<(i32, i64)> = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let ids = batch.column_by_name("id").unwrap();
        let ids = ids
            .as_any()
            .downcast_ref::<arrow_array::Int32Array>()
            .unwrap();
        let sub = batch.column_by_name("submission_time").unwrap();
        // The export annotates it as a UTC millisecond timestamp.
        let sub = sub
            .as_any()
            .downcast_ref::<arrow_array::TimestampMillisecondArray>()
            .unwrap();
        exported.extend(
            ids.values()
                .iter()
                .copied()
                .zip(sub.values().iter().copied()),
        );
    }
    exported.sort();
    let mut ours: Vec<(i32, i64)> = real.iter().map(|t| (t.id.unwrap(), t.ts_enqueue)).collect();
    ours.sort();
    assert_eq!(ours, exported);

    let out = dir.path().join("cmp");
    compare(&run, &sim, &out).success();
    let j = json(&out);
    assert_eq!(j["join"], "task_id");
    assert_eq!(j["matched"], 40);
    assert_eq!(j["pass"], true);
}

#[test]
fn a_known_shift_shows_as_that_error_and_fails_where_it_should() {
    let dir = tempfile::tempdir().unwrap();
    let (run, _) = synth_run(dir.path(), 2, 50, 6, 500);
    let sim = dir.path().join("opendc");
    // Every task starts (and so ends) 20 s later in the simulation.
    opendc_of(&run, &sim, true, 20_000, 1.0);
    let out = dir.path().join("cmp");
    let a = compare(&run, &sim, &out).success();
    assert!(String::from_utf8_lossy(&a.get_output().stdout).contains("Overall: FAIL"));
    let j = json(&out);
    assert_eq!(j["makespan"]["error_s"], 20.0);
    let wait_shift =
        j["wait"]["sim_s"]["p50"].as_f64().unwrap() - j["wait"]["real_s"]["p50"].as_f64().unwrap();
    assert!((wait_shift - 20.0).abs() < 1e-9, "{wait_shift}");
    let lag = j["cumulative"]["best_lag_s"].as_f64().unwrap();
    let step = j["cumulative"]["step_ms"].as_f64().unwrap() / 1000.0;
    assert!((lag - 20.0).abs() <= step, "lag {lag}, step {step}");
    assert!(j["cumulative"]["rmse_pct"].as_f64().unwrap() < 1.0);
    assert_eq!(j["run_error"]["error_s"]["max"], 0.0);
    assert!(verdict(&j, "cumulative"));
    assert!(!verdict(&j, "makespan"));
    assert!(!verdict(&j, "wait"));
    assert!(verdict(&j, "run-time"));
    assert_eq!(j["pass"], false);

    // A makespan limit above the shift passes it; --strict fails the command.
    let out2 = dir.path().join("cmp2");
    sched()
        .args([
            "compare",
            "--max-makespan-error-s",
            "20.5",
            "--strict",
            "--run",
        ])
        .arg(&run)
        .arg("--opendc")
        .arg(&sim)
        .arg("--output")
        .arg(&out2)
        .assert()
        .failure();
    assert!(verdict(&json(&out2), "makespan"));
}

#[test]
fn runs_ten_percent_longer_show_as_run_time_error() {
    let dir = tempfile::tempdir().unwrap();
    let (run, _) = synth_run(dir.path(), 1, 60, 6, 500);
    let sim = dir.path().join("opendc");
    opendc_of(&run, &sim, true, 0, 1.1);
    let out = dir.path().join("cmp");
    compare(&run, &sim, &out).success();
    let j = json(&out);
    let p50 = j["run_error"]["abs_error_pct"]["p50"].as_f64().unwrap();
    assert!((p50 - 10.0).abs() < 0.5, "{p50}");
    assert!(!verdict(&j, "run-time"));
}

#[test]
fn a_real_traced_run_compares_with_its_own_simulation() {
    // Two ffmpeg runs traced by the eBPF collector on a VM.
    let run = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tracekit-trace/tests/data/real/st");
    let dir = tempfile::tempdir().unwrap();
    let sim = dir.path().join("opendc");
    let real = opendc_of(&run, &sim, true, 0, 1.0);
    assert_eq!(real.len(), 2);
    let out = dir.path().join("cmp");
    compare(&run, &sim, &out).success();
    let j = json(&out);
    assert_eq!(j["matched"], 2);
    assert_eq!(j["makespan"]["error_s"], 0.0);
    assert_eq!(j["pass"], true);
}

#[test]
fn a_missing_column_is_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (run, _) = synth_run(dir.path(), 1, 5, 3, 500);
    let sim = dir.path().join("task.parquet");
    let schema = std::sync::Arc::new(arrow_schema::Schema::new(vec![
        arrow_schema::Field::new("task_id", arrow_schema::DataType::Int32, false),
        arrow_schema::Field::new("submission_time", arrow_schema::DataType::Int64, true),
    ]));
    let batch = arrow_array::RecordBatch::try_new(
        schema.clone(),
        vec![
            std::sync::Arc::new(arrow_array::Int32Array::from(vec![1])),
            std::sync::Arc::new(arrow_array::Int64Array::from(vec![0])),
        ],
    )
    .unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&sim).unwrap(), schema, None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let out = dir.path().join("cmp");
    let a = compare(&run, &sim, &out).failure();
    let stderr = String::from_utf8_lossy(&a.get_output().stderr).into_owned();
    assert!(stderr.contains(&sim.display().to_string()), "{stderr}");
    assert!(stderr.contains("no column `schedule_time`"), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn a_simulation_of_another_run_shares_no_task() {
    let dir = tempfile::tempdir().unwrap();
    let (run, _) = synth_run(dir.path(), 1, 5, 3, 500);
    let other_dir = dir.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let mut cfg = tracekit_trace::synth::SynthNode::new("elsewhere", 5);
    cfg.samples_per_task = 3;
    cfg.pid_base = 90_000;
    tracekit_trace::synth::write_node(&other_dir.join("run").join("elsewhere"), &cfg).unwrap();
    let sim = dir.path().join("opendc");
    opendc_of(&other_dir.join("run"), &sim, true, 0, 1.0);
    let out = dir.path().join("cmp");
    let a = compare(&run, &sim, &out).failure();
    let stderr = String::from_utf8_lossy(&a.get_output().stderr).into_owned();
    assert!(stderr.contains("share no task"), "{stderr}");
    assert!(stderr.contains("task.parquet"), "{stderr}");
    assert!(stderr.contains("elsewhere-000000"), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn an_empty_run_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (full, _) = synth_run(dir.path(), 1, 5, 3, 500);
    let sim = dir.path().join("opendc");
    opendc_of(&full, &sim, true, 0, 1.0);
    let empty = dir.path().join("empty");
    let mut cfg = tracekit_trace::synth::SynthNode::new("n1", 0);
    cfg.samples_per_task = 3;
    tracekit_trace::synth::write_node(&empty.join("n1"), &cfg).unwrap();
    let out = dir.path().join("cmp");
    let a = compare(&empty, &sim, &out).failure();
    let stderr = String::from_utf8_lossy(&a.get_output().stderr).into_owned();
    assert!(stderr.contains("the run is empty"), "{stderr}");
    assert!(stderr.contains("invocations.jsonl"), "{stderr}");
    assert!(!out.exists());
}
