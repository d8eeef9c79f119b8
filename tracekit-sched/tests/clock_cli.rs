//! `--correct-clock` on a run whose clocks were off, against a real Redis:
//! `dispatch` runs with its clock pretended 3 s ahead (its test flag: the
//! submission stamps and its measurement of Redis `TIME` both see it); the
//! test plays the central and a worker whose clock is 1.5 s behind: it takes
//! the tasks through the queue protocol, stamps their start and end on that
//! clock, measures that clock against Redis as an agent does, and writes the
//! node's trace through tracekit-trace's writer. `report`, `export-opendc`
//! and `audit` then run on the trace.
#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use tracekit_proto::testing::RedisServer;
use tracekit_proto::{PlaceOptions, Take, Task};
use tracekit_trace::clock::ClockTracker;
use tracekit_trace::node::{NodeIdentity, detect};
use tracekit_trace::{CollectorKind, Invocation, NodeMeta, ProcSample, TaskFields, TraceWriter};

const DISPATCHER_AHEAD_MS: i64 = 3000;
const NODE_BEHIND_MS: i64 = 1500;
const TASKS: usize = 4;

fn epoch_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

fn meta(node: &str) -> NodeMeta {
    let id = NodeIdentity {
        run_id: "clock-run".into(),
        node: node.into(),
        stage: "cloud".into(),
    };
    let mut m = detect(&id, Some(2400.0));
    m.collector = Some(CollectorKind::Ebpf);
    m.interval_ms = Some(100);
    m
}

fn invocation(pid: u32, trace_id: String, times: (i64, i64, i64), extra: TaskFields) -> Invocation {
    Invocation {
        trace_id,
        pid,
        ts_enqueue: times.0,
        ts_start: times.1,
        ts_end: times.2,
        ppid: None,
        comm: Some("ffmpeg".into()),
        filename: None,
        cpu_ms: Some(10.0),
        exit_code: Some(0),
        signal: None,
        node: None,
        stage: None,
        collector: Some(CollectorKind::Ebpf),
        extra: extra.into_extra(),
    }
}

/// The worker: takes every task placed on it, "runs" each for a moment,
/// and writes its trace on a clock `NODE_BEHIND_MS` behind. Returns each
/// task's true wait (on one clock), by trace id.
async fn work(server: &RedisServer, dir: &Path) -> HashMap<String, i64> {
    let q = queue(server).await;
    q.register(&reg("w1", 4, 0)).await.unwrap();
    q.place(&PlaceOptions {
        batch: 100,
        ..PlaceOptions::default()
    })
    .await
    .unwrap();
    let node_us = || (epoch_us() - NODE_BEHIND_MS * 1000) as f64;
    let mut clock = ClockTracker::default();
    for _ in 0..5 {
        let (offset, rtt) = q.clock_offset_of(node_us).await.unwrap();
        clock.add(offset, rtt);
    }
    let mut meta = meta("w1");
    meta.clock = clock.estimate();
    let mut w = TraceWriter::create(dir, &meta).unwrap();
    let mut truth = HashMap::new();
    let mut pid = 100;
    while let Take::Task(raw) = q.take_task("w1", "tok-w1").await.unwrap() {
        let task = Task::parse(&raw).unwrap();
        let start = epoch_us() / 1000;
        tokio::time::sleep(Duration::from_millis(120)).await;
        let end = epoch_us() / 1000;
        let stamped = task.ts_enqueue.unwrap();
        let trace_id = format!("w1-{}", task.seq.unwrap());
        truth.insert(trace_id.clone(), start - (stamped - DISPATCHER_AHEAD_MS));
        let times = (stamped, start - NODE_BEHIND_MS, end - NODE_BEHIND_MS);
        pid += 1;
        w.sample(&ProcSample {
            ts_ms: times.2,
            pid,
            dt_ms: times.2 - times.1,
            cpu_ms: 10.0,
            rss_kb: 1000,
        })
        .unwrap();
        // What the agent adds to a task's line, the dispatcher's offset too.
        let fields = TaskFields {
            input: "clip.mp4".into(),
            output: "out.mp4".into(),
            cpu_units: 1,
            binding: "shared".into(),
            seq: task.seq,
            profile: task.profile.clone(),
            ts_enqueue_offset_ms: task.ts_enqueue_offset_ms,
            ..TaskFields::default()
        };
        w.invocation(&invocation(pid, trace_id, times, fields))
            .unwrap();
        q.complete_task("w1", &raw).await.unwrap();
    }
    w.flush().unwrap();
    assert_eq!(truth.len(), TASKS, "every task placed and taken");
    truth
}

/// A node whose agent never measured its clock: one traced process.
fn unmeasured(dir: &Path) {
    let mut w = TraceWriter::create(dir, &meta("w2")).unwrap();
    let now = epoch_us() / 1000;
    w.sample(&ProcSample {
        ts_ms: now + 100,
        pid: 7,
        dt_ms: 100,
        cpu_ms: 10.0,
        rss_kb: 1000,
    })
    .unwrap();
    w.invocation(&invocation(
        7,
        "w2-1".into(),
        (now, now, now + 100),
        TaskFields::default(),
    ))
    .unwrap();
    w.flush().unwrap();
}

fn ok(out: Output) -> String {
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    stdout
}

/// wait_ms of each task in a report's tasks.csv, by trace id.
fn waits(report: &Path) -> HashMap<String, i64> {
    let text = std::fs::read_to_string(report.join("tasks.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (id, wait) = (col("trace_id"), col("wait_ms"));
    lines
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            (cells[id].to_string(), cells[wait].parse().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn wait_times_are_put_on_redis_clock() {
    let server = RedisServer::start().expect("redis");
    let tmp = tempfile::tempdir().unwrap();
    let inputs = tmp.path().join("inputs");
    std::fs::create_dir_all(&inputs).unwrap();
    std::fs::write(inputs.join("clip.mp4"), b"").unwrap();
    let dispatched = sched(&server)
        .arg("dispatch")
        .arg("--inputs")
        .arg(&inputs)
        .arg("--outputs")
        .arg(tmp.path().join("outputs"))
        .args(["--mix", "light1c=1", "--total", &TASKS.to_string()])
        .args(["--pending", "--pulse-size", "2", "--pulse-interval", "0.3"])
        .args(["--pulse-spacing", "0.1"])
        .args(["--test-clock-skew-ms", &DISPATCHER_AHEAD_MS.to_string()])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&dispatched.stderr).into_owned();
    ok(dispatched);
    // It measured what it was pretended to be, and said so.
    assert!(log.contains("this host's clock is +300"), "{log}");
    let run = tmp.path().join("run");
    let truth = work(&server, &run.join("w1")).await;
    unmeasured(&run.join("w2"));

    let report = |flag: &[&str], out: &str| {
        let dir = tmp.path().join(out);
        let stdout = ok(sched(&server)
            .arg("report")
            .arg("--input")
            .arg(&run)
            .arg("--output")
            .arg(&dir)
            .args(flag)
            .output()
            .unwrap());
        (stdout, dir)
    };
    let (raw_summary, raw) = report(&[], "report-raw");
    let (summary, fixed) = report(&["--correct-clock"], "report-fixed");
    let (raw, fixed) = (waits(&raw), waits(&fixed));
    for (id, true_wait) in &truth {
        // Uncorrected: the dispatcher's 3 s ahead and the node's 1.5 s
        // behind both count against the wait.
        assert!(
            raw[id] < true_wait - 4000,
            "{id}: raw {} vs {true_wait}",
            raw[id]
        );
        // Corrected: within the measurements' error (loopback: sub-ms).
        assert!(
            (fixed[id] - true_wait).abs() <= 20,
            "{id}: corrected {} vs {true_wait}",
            fixed[id]
        );
    }
    assert!(!raw_summary.contains("Clock:"), "{raw_summary}");
    assert!(
        summary.contains("Clock: times on Redis's clock (--correct-clock)"),
        "{summary}"
    );
    assert!(summary.contains("w1 +1500 ms"), "{summary}");
    assert!(
        summary.contains("Clock: warning: clock of node w2 not corrected"),
        "{summary}"
    );
    let md = std::fs::read_to_string(tmp.path().join("report-fixed/report.md")).unwrap();
    assert!(md.contains("Clock: warning: clock of node w2"), "{md}");

    let export = ok(sched(&server)
        .arg("export-opendc")
        .arg("--input")
        .arg(&run)
        .arg("--output")
        .arg(tmp.path().join("opendc"))
        .arg("--correct-clock")
        .output()
        .unwrap());
    assert!(
        export.contains(&format!("{TASKS} submission time(s) by their dispatcher's")),
        "{export}"
    );
    assert!(
        export.contains("warning: clock of node w2 not corrected"),
        "{export}"
    );

    // The audit warns about both clocks at its default threshold, about
    // neither above 3 s.
    let audit = |flag: &[&str]| {
        ok(sched(&server)
            .arg("audit")
            .arg("--input")
            .arg(&run)
            .args(flag)
            .output()
            .unwrap())
    };
    let default = audit(&[]);
    assert!(
        default.contains("w1: this node's clock is -1500 ms off Redis TIME"),
        "{default}"
    );
    assert!(
        default.contains("w1: a dispatcher's clock was up to 3000 ms off Redis TIME"),
        "{default}"
    );
    let lenient = audit(&["--clock-skew-warn-ms", "3500"]);
    assert!(!lenient.contains("off Redis TIME"), "{lenient}");
}
