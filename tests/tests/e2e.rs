//! End to end: the README's main job (`cargo xtask demo`) on a small mix,
//! driving the real binaries — redis-server, two worker agents on simulated
//! hosts (network namespaces linked to the Redis host by veth pairs), the
//! central scheduler, the dispatcher, gather, audit and export — and checking
//! every artifact.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tracekit_tests::{read_json, read_jsonl, require_root, require_tool};

fn target_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = dir.join("debug").join(name);
    assert!(
        bin.exists(),
        "{} is not built: run `cargo xtask test` (it builds every binary first)",
        bin.display()
    );
    bin
}

#[test]
fn demo_runs_every_task_once_and_exports_a_valid_trace() {
    let test = "demo_runs_every_task_once_and_exports_a_valid_trace";
    if !(require_root(test) && require_tool(test, "ffmpeg") && require_tool(test, "redis-server")) {
        return;
    }
    for b in ["tracekit-agent", "tracekit-sched"] {
        target_bin(b);
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("demo");
    let total = 6;
    let out = Command::new(target_bin("xtask"))
        .args(["demo", "--no-build", "--total", &total.to_string()])
        .args([
            "--pulse-size",
            "3",
            "--pulse-interval",
            "4",
            "--lengths",
            "1,2",
        ])
        .args([
            "--interval-ms",
            "200",
            "--timeout-s",
            "600",
            "--netns",
            "--dir",
        ])
        .arg(&dir)
        .output()
        .expect("running xtask demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the demo failed");
    assert!(stdout.contains("Tasks per node:"), "no summary printed");
    // The demo ends with the report it wrote.
    let report = dir.join("report/report.html");
    assert!(
        stdout
            .trim_end()
            .ends_with(&format!("Report: {}", report.display())),
        "the demo does not end with the report's path"
    );
    assert!(report.exists(), "{} not written", report.display());
    assert!(
        stdout.contains("network namespace"),
        "the nodes did not run on simulated hosts"
    );
    assert!(
        !stdout.contains("NOT AS ASKED"),
        "the run did not do what it was asked"
    );

    // The run's directory (beside it: the agents' report journals).
    let run = std::fs::read_dir(dir.join("logs"))
        .expect("logs")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .expect("a run directory");
    // Every task exactly once across the nodes, each a success with its CPU.
    let mut seqs = HashSet::new();
    let mut nodes = 0;
    for node in std::fs::read_dir(&run).expect("run dir").flatten() {
        let node = node.path();
        if !node.join("node_meta.json").exists() {
            continue;
        }
        nodes += 1;
        let meta: Value = read_json(&node.join("node_meta.json")).expect("meta");
        assert_eq!(meta["collector"], "ebpf", "{meta}");
        let invs: Vec<Value> = read_jsonl(&node.join("CTS/invocations.jsonl")).expect("invs");
        let samples: Vec<Value> =
            read_jsonl(&node.join("CTS/proc_metrics.jsonl")).expect("samples");
        assert_eq!(meta["cpu_binding"], "shared", "{meta}");
        // Provenance: which Tracekit, kernel and ffmpeg made the trace.
        assert!(
            meta["tracekit"].as_str().is_some_and(|v| v.contains('(')),
            "{meta}"
        );
        assert!(
            meta["kernel"].as_str().is_some_and(|k| !k.is_empty()),
            "{meta}"
        );
        assert!(
            meta["ffmpeg"]
                .as_str()
                .is_some_and(|f| f.starts_with("ffmpeg version")),
            "{meta}"
        );
        assert!(meta["binding_error"].is_null(), "{meta}");
        // Its clock against Redis, measured with its heartbeats (one host:
        // near zero).
        assert!(
            meta["clock"]["offset_ms"]
                .as_f64()
                .is_some_and(|o| o.abs() < 1000.0),
            "{meta}"
        );
        for inv in &invs {
            // The dispatcher's clock against Redis when it stamped the task.
            assert!(inv["ts_enqueue_offset_ms"].is_number(), "{inv}");
            assert_eq!(inv["exit_code"], 0, "{inv}");
            // The binding it asked for, read back from its cgroup while it
            // ran: its own group, weight by units, a CPU quota.
            assert!(inv["binding_error"].is_null(), "ran unbound: {inv}");
            let node_name = meta["node"].as_str().expect("node");
            assert!(
                inv["cgroup"]
                    .as_str()
                    .is_some_and(|g| g.starts_with(&format!("/tracekit/{node_name}/"))),
                "not in its own cgroup: {inv}"
            );
            let units = inv["cpu_units"].as_i64().expect("cpu_units");
            assert_eq!(inv["cpu_weight"].as_i64(), Some(100 * units), "{inv}");
            let quota: Vec<&str> = inv["cpu_max"]
                .as_str()
                .expect("cpu_max")
                .split_whitespace()
                .collect();
            assert!(
                quota.len() == 2 && quota[0].parse::<u64>().is_ok_and(|q| q > 0),
                "no CPU quota: {inv}"
            );
            assert!(
                inv["cpus_allowed"].as_str().is_some_and(|c| !c.is_empty()),
                "{inv}"
            );
            assert!(inv["cpu_ms"].as_f64().unwrap_or(0.0) > 0.0, "{inv}");
            assert!(
                inv["ts_enqueue"].as_i64() <= inv["ts_start"].as_i64(),
                "{inv}"
            );
            assert!(inv["ts_start"].as_i64() <= inv["ts_end"].as_i64(), "{inv}");
            assert!(
                seqs.insert(inv["seq"].as_i64().expect("seq")),
                "task ran twice: {inv}"
            );
            // Its samples tile its run and add up to its CPU.
            let own: Vec<&Value> = samples.iter().filter(|s| s["pid"] == inv["pid"]).collect();
            let dt: i64 = own.iter().filter_map(|s| s["dt_ms"].as_i64()).sum();
            let cpu: f64 = own.iter().filter_map(|s| s["cpu_ms"].as_f64()).sum();
            assert_eq!(
                dt,
                inv["ts_end"].as_i64().unwrap_or(0) - inv["ts_start"].as_i64().unwrap_or(0)
            );
            assert!(
                (cpu - inv["cpu_ms"].as_f64().unwrap_or(0.0)).abs() < 0.01,
                "{inv}"
            );
            // The output is a valid video of the requested size.
            let output = dir
                .join("outputs")
                .join(inv["output"].as_str().expect("output"));
            let probe = Command::new("ffprobe")
                .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
                .args(["stream=width,height,codec_name", "-of", "json"])
                .arg(&output)
                .output()
                .expect("ffprobe");
            assert!(
                probe.status.success(),
                "{} is not a valid video",
                output.display()
            );
            let info: Value = serde_json::from_slice(&probe.stdout).expect("ffprobe json");
            assert!(
                info["streams"][0]["width"].as_i64().unwrap_or(0) > 0,
                "{info}"
            );
        }
        assert!(
            node.join("CTS/audit_report.md").exists(),
            "no audit report in {}",
            node.display()
        );
    }
    assert_eq!(nodes, 2, "two nodes traced");
    clock_correction_undoes_a_node_pretended_ahead(&run, tmp.path());
    assert_eq!(seqs.len(), total, "every task done exactly once: {seqs:?}");
    // The OpenDC files are there and readable.
    for f in [
        "tasks.parquet",
        "fragments.parquet",
        "small_datacenter.json",
    ] {
        let p = dir.join("opendc").join(f);
        assert!(
            std::fs::metadata(&p).map(|m| m.len() > 0).unwrap_or(false),
            "{}",
            p.display()
        );
    }
    let dc: Value = read_json(&dir.join("opendc/small_datacenter.json")).expect("datacenter");
    assert!(
        dc["clusters"][0]["hosts"][0]["count"].as_i64().unwrap_or(0) >= 1,
        "{dc}"
    );
}

/// The run, and a copy whose first node's clock is pretended 2 s ahead (its
/// times moved, its measured offset too): `report --correct-clock` gives
/// both the same tasks, to the millisecond; without it they differ.
fn clock_correction_undoes_a_node_pretended_ahead(run: &Path, tmp: &Path) {
    const AHEAD_MS: i64 = 2000;
    let skewed = tmp.join("skewed-run");
    copy_dir(run, &skewed);
    // A node that ran tasks (placement may leave one idle).
    let node = std::fs::read_dir(&skewed)
        .expect("copied run")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.join("node_meta.json").exists()
                && std::fs::metadata(p.join("CTS/invocations.jsonl")).is_ok_and(|m| m.len() > 0)
        })
        .expect("a node that ran tasks");
    let shift = |file: &str, fields: &[&str]| {
        let path = node.join(file);
        let lines: Vec<Value> = read_jsonl(&path).expect("trace lines");
        let text: String = lines
            .into_iter()
            .map(|mut v| {
                for f in fields {
                    let t = v[*f].as_i64().expect("a time");
                    v[*f] = Value::from(t + AHEAD_MS);
                }
                format!("{v}\n")
            })
            .collect();
        std::fs::write(&path, text).expect("writing the skewed trace");
    };
    shift("CTS/invocations.jsonl", &["ts_start", "ts_end"]);
    shift("CTS/proc_metrics.jsonl", &["ts_ms"]);
    let meta_path = node.join("node_meta.json");
    let mut meta: Value = read_json(&meta_path).expect("meta");
    let offset = meta["clock"]["offset_ms"].as_f64().expect("measured");
    meta["clock"]["offset_ms"] = Value::from(offset + AHEAD_MS as f64);
    std::fs::write(&meta_path, meta.to_string()).expect("writing meta");

    let tasks_csv = |run: &Path, name: &str, flags: &[&str]| {
        let out = tmp.join(name);
        let status = Command::new(target_bin("tracekit-sched"))
            .arg("report")
            .arg("--input")
            .arg(run)
            .arg("--output")
            .arg(&out)
            .args(flags)
            .env("RUST_LOG", "error")
            .output()
            .expect("running report");
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        let summary = String::from_utf8_lossy(&status.stdout).into_owned();
        if !flags.is_empty() {
            assert!(
                summary.contains("Clock: times on Redis's clock"),
                "{summary}"
            );
            assert!(!summary.contains("Clock: warning"), "{summary}");
        }
        std::fs::read_to_string(out.join("tasks.csv")).expect("tasks.csv")
    };
    let fixed = ["--correct-clock"];
    assert_eq!(
        tasks_csv(run, "clock-real", &fixed),
        tasks_csv(&skewed, "clock-skewed", &fixed)
    );
    assert_ne!(
        tasks_csv(run, "raw-real", &[]),
        tasks_csv(&skewed, "raw-skewed", &[])
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("listing").flatten() {
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            copy_dir(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).expect("copying");
        }
    }
}
