//! The worker's loop run in-process (the library, not the binary) against a
//! real redis-server: it takes a task, runs it in its cgroup, records it,
//! and stops cleanly when its stop signal fires. As root; the `/proc`
//! collector, since the eBPF loader runs the agent binary.

use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};
use tracekit_agent::cli::{IdentityArgs, TracerArgs};
use tracekit_agent::worker::{WorkerArgs, run_until};
use tracekit_proto::testing::RedisServer;
use tracekit_proto::{PlaceOptions, SubmitTarget};
use tracekit_tests::{read_jsonl, require_root, require_tool, test_video};

#[derive(Parser)]
struct Agent {
    #[command(flatten)]
    worker: WorkerArgs,
    #[command(flatten)]
    tracer: TracerArgs,
    #[command(flatten)]
    identity: IdentityArgs,
}

#[test]
fn the_loop_runs_a_task_and_stops_when_told() {
    let test = "the_loop_runs_a_task_and_stops_when_told";
    if !(require_root(test) && require_tool(test, "ffmpeg") && require_tool(test, "redis-server")) {
        return;
    }
    let redis = RedisServer::start().expect("redis-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |p: &str| dir.path().join(p);
    for d in ["inputs", "outputs", "logs"] {
        std::fs::create_dir_all(path(d)).expect("mkdir");
    }
    let input = path("inputs/in.mp4");
    std::fs::copy(test_video(640, 360, 2).expect("test video"), &input).expect("copy");
    let password_file = path("redis.password");
    std::fs::write(&password_file, redis.password()).expect("password file");
    let s = |p: std::path::PathBuf| p.to_string_lossy().into_owned();
    let agent = Agent::try_parse_from([
        "tracekit-agent".to_string(),
        "--redis".into(),
        redis.url_without_password(),
        "--redis-password-file".into(),
        s(password_file),
        "--node-id".into(),
        "inproc".into(),
        "--run-id".into(),
        "run".into(),
        "--logs".into(),
        s(path("logs")),
        "--inputs".into(),
        s(path("inputs")),
        "--outputs".into(),
        s(path("outputs")),
        "--capacity-units".into(),
        "1".into(),
        "--collector".into(),
        "procfs".into(),
        "--heartbeat-ms".into(),
        "200".into(),
        "--reset-capacity".into(),
    ])
    .expect("agent flags");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let queue = rt.block_on(redis.queue()).expect("queue");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = rt.spawn(run_until(
        agent.worker,
        agent.tracer,
        agent.identity,
        async move {
            let _ = stop_rx.await;
        },
    ));
    let task = json!({
        "input": input, "output": path("outputs/out.mp4"), "scale": "320:180",
        "vcodec": "h264", "preset": "ultrafast", "crf": 30, "cpu_units": 1,
        "_seq": 1, "ts_enqueue": tracekit_tests::epoch_ms(), "ts_enqueue_offset_ms": 12.5,
    })
    .to_string();
    rt.block_on(queue.submit("test", SubmitTarget::Pending, &[(1, task)]))
        .expect("submit");
    let invocations = path("logs/run/CTS/invocations.jsonl");
    let deadline = Instant::now() + Duration::from_secs(60);
    let opts = PlaceOptions {
        heartbeat_timeout: Duration::from_secs(3),
        ..PlaceOptions::default()
    };
    let invs: Vec<Value> = loop {
        let invs = read_jsonl(&invocations).unwrap_or_default();
        if !invs.is_empty() {
            break invs;
        }
        assert!(Instant::now() < deadline, "the task did not run");
        rt.block_on(queue.place(&opts)).expect("place");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(invs.len(), 1, "{invs:?}");
    assert_eq!(invs[0]["exit_code"], 0, "{}", invs[0]);
    assert!(invs[0]["cgroup"].is_string(), "bound: {}", invs[0]);
    // The dispatcher's clock offset goes with the task into its line.
    assert_eq!(invs[0]["ts_enqueue_offset_ms"], 12.5, "{}", invs[0]);

    stop_tx.send(()).expect("the worker is running");
    let code = rt
        .block_on(worker)
        .expect("the worker task")
        .expect("the worker's result");
    assert_eq!(code, 0);
    let snap = rt
        .block_on(queue.snapshot(Duration::from_secs(3)))
        .expect("snapshot");
    for n in &snap.nodes {
        assert_eq!(
            (n.cap, n.run_count, n.inflight),
            (n.cap_total, 0, 0),
            "{n:?}"
        );
    }
    assert_eq!(snap.pending, 0);
}
