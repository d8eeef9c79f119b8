//! A writer killed with SIGKILL at an arbitrary moment leaves files whose
//! every complete line reads back; at most the last line is torn, and it is
//! skipped. The outcome must hold wherever the kill lands, so the test does
//! not depend on timing.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tracekit_trace::audit::audit;
use tracekit_trace::reader::NodeDir;
use tracekit_trace::schema::{Invocation, NodeMeta, ProcSample};
use tracekit_trace::writer::TraceWriter;

const CHILD_DIR: &str = "TRACEKIT_KILL_TEST_DIR";

fn meta() -> NodeMeta {
    NodeMeta {
        run_id: "kill".into(),
        node: "victim".into(),
        stage: "cloud".into(),
        host: "h".into(),
        iface: "eth0".into(),
        cpu_cores: 2,
        mem_mb: 2048,
        cpu_model: "x".into(),
        cpu_freq_mhz: 2000.0,
        collector: None,
        fallback_reason: None,
        interval_ms: Some(10),
        scope: None,
        proc_match: None,
        cpu_binding: None,
        binding_error: None,
        run_as: None,
        privileges_dropped: None,
        tracekit: None,
        kernel: None,
        ffmpeg: None,
        x264: None,
        x265: None,
        clock: None,
    }
}

/// Child side: write tiled tasks forever, flushing every few lines, until
/// killed. Does nothing in a normal test run.
#[test]
fn kill_child_writer() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let mut w = TraceWriter::create(Path::new(&dir), &meta()).unwrap();
    let mut ts = 1_000_000i64;
    for task in 0u32.. {
        let start = ts;
        for _ in 0..20 {
            ts += 10;
            w.sample(&ProcSample {
                ts_ms: ts,
                pid: 100 + task % 50,
                dt_ms: 10,
                cpu_ms: 7.5,
                rss_kb: 4096,
            })
            .unwrap();
        }
        w.invocation(&Invocation {
            trace_id: format!("t{task}-with-some-padding-to-make-lines-longer"),
            pid: 100 + task % 50,
            ts_enqueue: start,
            ts_start: start,
            ts_end: ts,
            ppid: None,
            comm: None,
            filename: None,
            cpu_ms: Some(150.0),
            exit_code: Some(0),
            signal: None,
            node: None,
            stage: None,
            collector: None,
            extra: serde_json::Map::new(),
        })
        .unwrap();
        if task % 3 == 0 {
            w.flush().unwrap();
        }
        ts += 1;
    }
}

#[test]
fn kill_9_leaves_readable_traces() {
    if std::env::var_os(CHILD_DIR).is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("victim");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "kill_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, &dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for a few MB to be on disk, however long that takes here.
    let metrics = dir.join("CTS/proc_metrics.jsonl");
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::metadata(&metrics).map(|m| m.len()).unwrap_or(0) < 3 << 20 {
        assert!(Instant::now() < deadline, "the child wrote nothing");
        assert!(child.try_wait().unwrap().is_none(), "the child exited");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let node = NodeDir::open(&dir).unwrap();
    let mut samples = 0u64;
    let read = node
        .read_samples(
            |s, _| {
                assert_eq!(s.cpu_ms, Some(7.5));
                samples += 1;
                Ok(())
            },
            |_, _| {},
        )
        .unwrap();
    assert_eq!(read.bad_count, 0, "only the last line may be torn");
    assert_eq!(samples, read.records);
    assert!(read.records + u64::from(read.torn_tail) >= read.lines - 1);
    let inv = node.read_invocations(|_, _| Ok(())).unwrap();
    assert_eq!(inv.bad_count, 0);

    // Every task whose invocation made it to disk is complete and exact: the
    // writer hands samples to the kernel before the invocation that ends them.
    let summary = audit(&dir).unwrap();
    let c = &summary.totals;
    assert!(c.invocations > 0);
    assert_eq!(c.tiling_mismatches, 0, "{:?}", summary.problems);
    assert_eq!(c.cpu_offenders, 0);
    assert_eq!(c.bad_lines, 0);
}
