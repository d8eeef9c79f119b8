//! `tracekit-sched report` driven as a user runs it.

mod runs;

use runs::{listing, sched, synth_run};
use serde_json::Value;

#[test]
fn report_writes_every_file_with_the_runs_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let (run, truth) = synth_run(dir.path(), 2, 40, 5, 200);
    let dead = dir.path().join("dead.jsonl");
    std::fs::write(
        &dead,
        r#"{"task":"{\"input\":\"x.mp4\"}","reason":"input not found","node":"node1","ts":1760000000000}"#,
    )
    .unwrap();
    let out = dir.path().join("report");
    let assert = sched()
        .args(["report", "--input"])
        .arg(&run)
        .arg("--output")
        .arg(&out)
        .arg("--dead-letters")
        .arg(&dead)
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&assert.get_output().stdout).into_owned();
    assert!(
        stdout.contains("80 task(s): 80 done, 0 failed, 1 dead-lettered"),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("Report: {}", out.join("report.html").display())));
    assert_eq!(
        listing(&out),
        [
            "nodes.csv",
            "profiles.csv",
            "report.html",
            "report.json",
            "report.md",
            "tasks.csv",
            "throughput.csv"
        ]
    );
    let json: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["counts"]["tasks"], 80);
    assert_eq!(json["counts"]["dead"], 1);
    assert_eq!(json["nodes"].as_array().unwrap().len(), 2);
    assert_eq!(json["profiles"].as_array().unwrap().len(), 4);
    let origin = truth.iter().map(|t| t.ts_enqueue).min().unwrap();
    let end = truth.iter().map(|t| t.ts_end).max().unwrap();
    assert_eq!(
        json["makespan_s"].as_f64().unwrap(),
        (end - origin) as f64 / 1000.0
    );
    let max_wait = truth
        .iter()
        .map(|t| t.ts_start - t.ts_enqueue)
        .max()
        .unwrap();
    assert_eq!(
        json["wait_s"]["max"].as_f64().unwrap(),
        max_wait as f64 / 1000.0
    );
    // CPU per node is the exact totals of its tasks.
    let cpu1: f64 = truth
        .iter()
        .filter(|t| t.node == "node1")
        .map(|t| t.cpu_ms)
        .sum();
    assert!((json["nodes"][0]["cpu_s"].as_f64().unwrap() - cpu1 / 1000.0).abs() < 1e-6);

    let csv = std::fs::read_to_string(out.join("tasks.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "trace_id,node,profile,pid,ts_enqueue,ts_start,ts_end,wait_ms,run_ms,cpu_ms,peak_rss_kb,exit_code,signal,status"
    );
    assert_eq!(lines.count(), 80);
    let t = &truth[0];
    let row = csv.lines().find(|l| l.starts_with(&t.trace_id)).unwrap();
    assert!(
        row.contains(&format!(",{},{},{},", t.ts_enqueue, t.ts_start, t.ts_end)),
        "{row}"
    );
    assert!(row.contains(&format!(",{},", t.peak_rss_kb)), "{row}");

    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for id in [
        "chart-gantt",
        "chart-cores",
        "chart-rss",
        "chart-tasks",
        "chart-completions",
        "chart-wait-cdf",
    ] {
        assert!(html.contains(&format!(r#"<svg id="{id}""#)), "{id} missing");
    }
    assert_eq!(html.matches(r#"<g class="task "#).count(), 80);
    assert!(html.contains(&format!("<title>{} · ", t.trace_id)));
    assert!(
        !html.contains("http://")
            || html.matches("http://").count()
                == html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count(),
        "no network resources"
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| medium480p | 20 |"), "{md}");
    assert!(md.contains("input not found"));
}

#[test]
fn failed_tasks_and_audit_problems_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut cfg = tracekit_trace::synth::SynthNode::new("n1", 30);
    cfg.samples_per_task = 4;
    cfg.fail_every = 5;
    cfg.events_lost = 3;
    tracekit_trace::synth::write_node(&run, &cfg).unwrap();
    let out = dir.path().join("out");
    sched()
        .args(["report", "--input"])
        .arg(&run)
        .arg("--output")
        .arg(&out)
        .assert()
        .success();
    let json: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["counts"]["failed"], 6);
    assert_eq!(json["counts"]["done"], 24);
    assert_eq!(json["counts"]["dead"], Value::Null);
    assert_eq!(json["nodes"][0]["events_lost"], 3);
    assert_eq!(json["audit_ok"], false);
    let problems = json["audit_problems"].to_string();
    assert!(problems.contains("lost 3 event"), "{problems}");
    assert!(problems.contains("6 task(s) failed"), "{problems}");
}

#[test]
fn an_empty_run_is_an_error_naming_the_file_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut cfg = tracekit_trace::synth::SynthNode::new("n1", 0);
    cfg.samples_per_task = 3;
    tracekit_trace::synth::write_node(&run.join("n1"), &cfg).unwrap();
    let out = dir.path().join("out");
    let assert = sched()
        .args(["report", "--input"])
        .arg(&run)
        .arg("--output")
        .arg(&out)
        .assert()
        .failure();
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(stderr.contains("the run is empty"), "{stderr}");
    assert!(stderr.contains("n1/CTS/invocations.jsonl"), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn a_missing_field_is_an_error_naming_the_file_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let (run, _) = synth_run(dir.path(), 1, 5, 3, 200);
    let inv = run.join("node1/CTS/invocations.jsonl");
    let body = std::fs::read_to_string(&inv).unwrap();
    let stripped: String = body
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("ts_enqueue");
            format!("{v}\n")
        })
        .collect();
    std::fs::write(&inv, stripped).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let assert = sched()
        .args(["report", "--input"])
        .arg(&run)
        .arg("--output")
        .arg(&out)
        .assert()
        .failure();
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(stderr.contains("5 lack `ts_enqueue`"), "{stderr}");
    assert!(stderr.contains(&inv.display().to_string()), "{stderr}");
    assert!(listing(&out).is_empty());
}
