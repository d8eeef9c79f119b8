//! Connections killed again and again (CLIENT KILL) while a dispatcher, a
//! central and workers run: every retried call is idempotent, so each task is
//! submitted, placed, taken and completed exactly once and no unit leaks.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tracekit_proto::testing::RedisServer;
use tracekit_proto::{Take, Task};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_lose_and_duplicate_nothing() {
    let server = RedisServer::start().expect("redis");
    let q = queue(&server).await;
    q.register(&reg("w1", 3, 2)).await.unwrap();
    q.register(&reg("w2", 2, 0)).await.unwrap();
    let inputs = tempfile::tempdir().unwrap();
    for i in 0..4 {
        std::fs::write(inputs.path().join(format!("v{i}.mp4")), b"").unwrap();
    }
    let total = 600;

    let stop = Arc::new(AtomicBool::new(false));
    // The killer: drops every other client connection every 20 ms.
    let killer = {
        let stop = stop.clone();
        let client = redis::Client::open(server.url()).unwrap();
        tokio::spawn(async move {
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            let mut kills = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let n: i64 = redis::cmd("CLIENT")
                    .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"][..])
                    .query_async(&mut c)
                    .await
                    .unwrap();
                kills += n as u64;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            kills
        })
    };
    let mut central = sched(&server);
    central.args(["central", "--batch", "4", "--idle-interval", "0.005"]);
    let _central = Proc::spawn(central);
    let mut dispatch = sched(&server);
    dispatch
        .args(["dispatch", "--inputs"])
        .arg(inputs.path())
        .args([
            "--outputs",
            "/out",
            "--mix",
            "light1c=1,fast1080p=1",
            "--total",
            &total.to_string(),
        ])
        .args([
            "--seed",
            "11",
            "--pending",
            "--pending-mode",
            "fifo",
            "--pending-max",
            "50",
        ])
        .args(["--batch-size", "7", "--dribble-interval", "0.003"]);
    let mut dispatcher = dispatch.spawn().unwrap();

    let done: Arc<Mutex<HashMap<u64, u32>>> = Arc::new(Mutex::new(HashMap::new()));
    let mut workers = Vec::new();
    for (node, slots) in [("w1", 2), ("w2", 2)] {
        for _ in 0..slots {
            let wq = server.queue().await.unwrap();
            let (done, stop) = (done.clone(), stop.clone());
            workers.push(tokio::spawn(async move {
                let mut heartbeat = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    if heartbeat.elapsed() > Duration::from_secs(1) {
                        wq.heartbeat(node, &format!("tok-{node}")).await.unwrap();
                        heartbeat = Instant::now();
                    }
                    match wq.take_task(node, &format!("tok-{node}")).await.unwrap() {
                        Take::Task(t) => {
                            // A lost reply makes a retried completion report
                            // `false`: the first one went through.
                            wq.complete_task(node, &t).await.unwrap();
                            let seq = Task::parse(&t).unwrap().seq.unwrap();
                            *done.lock().unwrap().entry(seq).or_default() += 1;
                        }
                        Take::Empty => tokio::time::sleep(Duration::from_millis(2)).await,
                        Take::Lost => panic!("{node} lost"),
                    }
                }
            }));
        }
    }
    let start = Instant::now();
    while done.lock().unwrap().len() < total {
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "only {} done",
            done.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let anything stray surface before stopping.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let kills = killer.await.unwrap();
    for w in workers {
        w.await.unwrap();
    }
    assert!(dispatcher.wait().unwrap().success(), "dispatcher failed");

    // A fresh connection: the old ones were killed while idle.
    let mut c = server.conn().await.unwrap().manager();
    let done = done.lock().unwrap().clone();
    assert_eq!(done.len(), total);
    assert!(done.values().all(|&n| n == 1), "a task ran twice");
    assert!(done.keys().all(|&s| s < total as u64));
    assert!(lrange(&mut c, "q:pending").await.is_empty());
    for (n, cap) in [("w1", 3), ("w2", 2)] {
        assert!(lrange(&mut c, &format!("q:{n}")).await.is_empty());
        assert!(
            lrange(&mut c, &format!("inflight:{n}")).await.is_empty(),
            "{n}: orphan in flight"
        );
        assert_eq!(
            get_i64(&mut c, &format!("cap:{n}")).await,
            cap,
            "{n} leaked capacity"
        );
        assert_eq!(get_i64(&mut c, &format!("run_count:{n}")).await, 0);
    }
    let tokens = lrange(&mut c, "slots:available").await;
    assert_eq!(tokens, vec!["w1", "w1"]);
    assert!(kills > 10, "connections were killed ({kills})");
    eprintln!("{total} tasks, {kills} connections killed");
}
