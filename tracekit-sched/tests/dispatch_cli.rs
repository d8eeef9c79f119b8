//! The `dispatch` command: counts, names, seed determinism, profiles, pulse
//! timing, fifo bound and the per-node modes.
#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use tracekit_proto::Task;
use tracekit_proto::testing::RedisServer;

fn inputs(n: usize) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for i in 0..n {
        std::fs::write(d.path().join(format!("clip{i}.mp4")), b"").unwrap();
    }
    std::fs::write(d.path().join("notes.txt"), b"").unwrap();
    d
}

fn dispatch(dir: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tracekit-sched"));
    c.arg("dispatch")
        .arg("--inputs")
        .arg(dir)
        .args(["--outputs", "/out"])
        .args(extra);
    c.env("RUST_LOG", "info");
    c
}

fn dry(dir: &Path, extra: &[&str]) -> Vec<Task> {
    let out = dispatch(dir, &[&["--dry-run"], extra].concat())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| Task::parse(l).expect("task JSON"))
        .collect()
}

const MIX: &str = "medium480p=3,fast1080p=2,hevc1080p=2,light1c=3";

#[test]
fn mix_counts_names_and_seed_determinism() {
    let d = inputs(3);
    let args = ["--mix", MIX, "--total", "100", "--seed", "20250901"];
    let tasks = dry(d.path(), &args);
    assert_eq!(tasks.len(), 100);
    let count = |scale: &str, preset: &str| {
        tasks
            .iter()
            .filter(|t| t.scale.as_deref() == Some(scale) && t.preset.as_deref() == Some(preset))
            .count()
    };
    assert_eq!(count("854:480", "medium"), 30);
    assert_eq!(count("1920:1080", "fast"), 20);
    assert_eq!(count("1920:1080", "medium"), 20);
    assert_eq!(count("854:480", "veryfast"), 30);
    for (i, t) in tasks.iter().enumerate() {
        assert_eq!(t.seq, Some(i as u64));
        let stem = format!("clip{}", i % 3);
        assert_eq!(
            t.input,
            d.path().join(format!("{stem}.mp4")).display().to_string()
        );
        let wh = t.scale.as_ref().unwrap().replace(':', "x");
        let want = format!(
            "/out/{stem}_{wh}_{}_{}_n{i:04}.mp4",
            t.vcodec.as_ref().unwrap(),
            t.preset.as_ref().unwrap()
        );
        assert_eq!(t.output, want);
        assert!(t.ts_enqueue.is_none());
        t.validate().unwrap();
    }
    assert_eq!(tasks, dry(d.path(), &args), "same seed, same list");
    let other = dry(d.path(), &["--mix", MIX, "--total", "100", "--seed", "7"]);
    assert_ne!(tasks, other);
    // Without --total: one task per input, profile drawn by weight.
    let per_input = dry(d.path(), &["--mix", MIX, "--seed", "5"]);
    assert_eq!(per_input.len(), 3);
    assert!(per_input[0].output.starts_with("/out/clip0_") && !per_input[0].output.contains("_n0"));
}

#[test]
fn profiles_file_and_unknown_profiles() {
    let d = inputs(1);
    let out = dispatch(
        d.path(),
        &["--dry-run", "--mix", "fast1080p=1,nosuch=1", "--total", "2"],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown profile `nosuch`")
            && err.contains("hevc1080p")
            && err.contains("light480p1c"),
        "{err}"
    );
    let pf = d.path().join("p.toml");
    std::fs::write(&pf, "[tiny]\nscale = \"320:240\"\nvcodec = \"h264\"\npreset = \"ultrafast\"\ncrf = 35\nvthreads = 1\nfthreads = 1\ncpu_units = 1\n").unwrap();
    let tasks = dry(
        d.path(),
        &[
            "--mix",
            "tiny=1,light_1c=1",
            "--total",
            "4",
            "--seed",
            "1",
            "--profiles",
            pf.to_str().unwrap(),
        ],
    );
    assert_eq!(
        tasks
            .iter()
            .filter(|t| t.scale.as_deref() == Some("320:240"))
            .count(),
        2
    );
}

#[test]
fn policy_rr_dry_run() {
    let d = inputs(4);
    let tasks = dry(
        d.path(),
        &["--scale", "640:360", "--preset", "fast", "--crf", "30"],
    );
    assert_eq!(tasks.len(), 4);
    assert_eq!(tasks[1].output, "/out/clip1_640x360_crf30.mp4");
    assert_eq!(
        (tasks[1].crf, tasks[1].preset.as_deref()),
        (Some(30), Some("fast"))
    );
}

#[tokio::test]
async fn pulse_timing_and_ordering() {
    let server = RedisServer::start().expect("redis");
    let d = inputs(2);
    let mut c = dispatch(
        d.path(),
        &[
            "--pending",
            "--pulse-size",
            "3",
            "--pulse-interval",
            "0.6",
            "--pulse-spacing",
            "0.1",
        ],
    );
    c.args([
        "--mix",
        "light1c=1,fast1080p=1",
        "--total",
        "7",
        "--seed",
        "3",
    ])
    .env("REDIS_PASSWORD", server.password())
    .args(["--redis", &server.url_without_password()]);
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("pulse 1/3: submitted 3/7, next pulse in 0.6 s"),
        "{log}"
    );
    assert!(log.contains("pulse 3/3: submitted 7/7"), "{log}");
    let q = queue(&server).await;
    let tasks: Vec<Task> = q
        .pending_tasks()
        .await
        .unwrap()
        .iter()
        .map(|r| Task::parse(r).unwrap())
        .collect();
    assert_eq!(tasks.len(), 7);
    let seqs: Vec<u64> = tasks.iter().map(|t| t.seq.unwrap()).collect();
    assert_eq!(seqs, (0..7).collect::<Vec<_>>());
    // Each carries the dispatcher's clock offset from Redis (one host here).
    for t in &tasks {
        let offset = t.ts_enqueue_offset_ms.expect("a clock offset");
        assert!(offset.abs() < 1000.0, "{offset} ms on loopback");
    }
    let ts: Vec<i64> = tasks.iter().map(|t| t.ts_enqueue.unwrap()).collect();
    // Lower bounds only: sleeps are never shorter, a loaded machine only adds.
    for (i, w) in ts.windows(2).enumerate() {
        let gap = w[1] - w[0];
        if i % 3 == 2 {
            assert!(gap >= 590, "between pulses: {gap} ms ({ts:?})");
        } else {
            assert!(gap >= 95, "inside a pulse: {gap} ms ({ts:?})");
        }
    }
    assert!(ts[6] - ts[0] < 60_000, "generous upper bound");
}

#[tokio::test]
async fn fifo_keeps_pending_short_and_direct_modes_reserve() {
    let server = RedisServer::start().expect("redis");
    let q = queue(&server).await;
    let d = inputs(3);
    let mut c = dispatch(
        d.path(),
        &[
            "--pending",
            "--pending-mode",
            "fifo",
            "--pending-max",
            "3",
            "--batch-size",
            "2",
        ],
    );
    c.args([
        "--dribble-interval",
        "0.02",
        "--mix",
        "light1c=1",
        "--total",
        "12",
        "--seed",
        "9",
    ])
    .env("REDIS_PASSWORD", server.password())
    .args(["--redis", &server.url_without_password()]);
    let mut child = c.spawn().unwrap();
    // Drain slowly and watch the length.
    let mut conn = q.conn().manager();
    let mut got = Vec::new();
    let mut max_len = 0;
    while got.len() < 12 {
        let len: i64 = cmd(&mut conn, &["LLEN", "q:pending"]).await;
        max_len = max_len.max(len);
        if let Some(t) = cmd::<Option<String>>(&mut conn, &["LPOP", "q:pending"]).await {
            got.push(Task::parse(&t).unwrap().seq.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    assert!(child.wait().unwrap().success());
    assert!(max_len <= 3, "q:pending reached {max_len}");
    assert_eq!(got, (0..12).collect::<Vec<_>>());

    // Direct round robin: tasks land on the nodes' queues and hold capacity.
    q.register(&reg("w1", 4, 0)).await.unwrap();
    let mut c = dispatch(d.path(), &["--nodes", "w1,w2"]);
    c.env("REDIS_PASSWORD", server.password())
        .args(["--redis", &server.url_without_password()]);
    assert!(c.status().unwrap().success());
    let w1: Vec<u64> = lrange(&mut conn, "q:w1")
        .await
        .iter()
        .map(|r| Task::parse(r).unwrap().seq.unwrap())
        .collect();
    let w2 = lrange(&mut conn, "q:w2").await;
    assert_eq!((w1, w2.len()), (vec![0, 2], 1));
    assert_eq!(get_i64(&mut conn, "cap:w1").await, 2);
    assert_eq!(get_i64(&mut conn, "run_count:w1").await, 2);
}

fn make_clip(path: &Path, secs: u32) {
    let st = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc=size=32x32:rate=5:duration={secs}"))
        .args(["-c:v", "libx264", "-preset", "ultrafast"])
        .arg(path)
        .status()
        .expect("ffmpeg");
    assert!(st.success());
}

#[tokio::test]
async fn duration_greedy_and_drip() {
    let server = RedisServer::start().expect("redis");
    let d = tempfile::tempdir().unwrap();
    for (name, secs) in [("a", 1), ("b", 3), ("c", 2)] {
        make_clip(&d.path().join(format!("{name}.mp4")), secs);
    }
    // Longest first to the least loaded node: b(3) -> n1, c(2) -> n2, a(1) -> n2.
    let mut c = dispatch(
        d.path(),
        &["--nodes", "n1,n2", "--policy", "duration-greedy"],
    );
    c.env("REDIS_PASSWORD", server.password())
        .args(["--redis", &server.url_without_password()]);
    assert!(c.status().unwrap().success());
    let q = queue(&server).await;
    let mut conn = q.conn().manager();
    let stems = |v: Vec<String>| -> Vec<String> {
        v.iter()
            .map(|r| {
                Path::new(&Task::parse(r).unwrap().input)
                    .file_stem()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    };
    assert_eq!(stems(lrange(&mut conn, "q:n1").await), vec!["b"]);
    assert_eq!(stems(lrange(&mut conn, "q:n2").await), vec!["c", "a"]);

    // Drip with a backlog limit of 1: nothing is skipped, each task waits
    // for its node's queue to drain.
    let _: i64 = cmd(&mut conn, &["DEL", "q:n1", "q:n2"]).await;
    let mut c = dispatch(
        d.path(),
        &[
            "--nodes",
            "n1",
            "--drip",
            "--backlog-limit",
            "1",
            "--batch-size",
            "5",
            "--dribble-interval",
            "0.02",
        ],
    );
    c.env("REDIS_PASSWORD", server.password())
        .args(["--redis", &server.url_without_password()]);
    let mut child = c.spawn().unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        let len: i64 = cmd(&mut conn, &["LLEN", "q:n1"]).await;
        assert!(len <= 1);
        if let Some(t) = cmd::<Option<String>>(&mut conn, &["LPOP", "q:n1"]).await {
            got.push(t);
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(child.wait().unwrap().success());
    assert_eq!(stems(got), vec!["a", "b", "c"]);
}

/// The same `--seed` gives the original dispatcher's task sequence. The
/// fixture holds what the original (`tools/scheduler/dispatcher.py`) pushed
/// when run under CPython with a recording stand-in for its Redis client,
/// per case: mix, total, seed, number of inputs, and each task's profile
/// and input in `_seq` order.
#[test]
fn the_seed_reproduces_the_original_python_sequences() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/python_sequences.json")).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    for case in cases {
        let n = case["files"].as_u64().unwrap() as usize;
        let d = tempfile::tempdir().unwrap();
        for i in 0..n {
            std::fs::write(d.path().join(format!("clip{i:02}.mp4")), b"").unwrap();
        }
        let (mix, total, seed) = (
            case["mix"].as_str().unwrap(),
            case["total"].as_u64().unwrap().to_string(),
            case["seed"].as_u64().unwrap().to_string(),
        );
        let mut args = vec!["--mix", mix, "--seed", &seed];
        if total != "0" {
            args.extend(["--total", &total]);
        }
        let tasks = dry(d.path(), &args);
        let profiles: Vec<&str> = tasks
            .iter()
            .map(|t| t.profile.as_deref().unwrap())
            .collect();
        let want: Vec<&str> = case["profiles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert_eq!(profiles, want, "{case}");
        let inputs: Vec<String> = tasks
            .iter()
            .map(|t| {
                Path::new(&t.input)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let want: Vec<&str> = case["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert_eq!(inputs, want, "{case}");
    }
}

/// Dispatch starts a run when none is current and submits into it; a run
/// stopped between two pulses stops the dispatcher with what it submitted.
#[tokio::test]
async fn dispatch_starts_a_run_and_stops_when_its_run_is_stopped() {
    let server = RedisServer::start().expect("redis");
    let d = inputs(2);
    let mut c = dispatch(
        d.path(),
        &["--pending", "--pulse-size", "2", "--pulse-interval", "3"],
    );
    c.args(["--mix", "light1c=1", "--total", "4", "--run-id", "exp9"])
        .env("REDIS_PASSWORD", server.password())
        .args(["--redis", &server.url_without_password()]);
    let child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let q = queue(&server).await;
    let start = std::time::Instant::now();
    while q.pending_len().await.unwrap() < 2 {
        assert!(start.elapsed() < Duration::from_secs(30), "no first pulse");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(q.current_run().await.unwrap().as_deref(), Some("exp9"));
    let stop = sched(&server)
        .args(["run", "stop", "--force", "--no-wait"])
        .output()
        .unwrap();
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(
            "run exp9 was stopped while dispatching (no run is current): 2 of 4 task(s) submitted"
        ),
        "{err}"
    );
    assert_eq!(q.pending_len().await.unwrap(), 2);
}
