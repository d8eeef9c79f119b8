//! The protocol against a real redis-server (see `testing`).

use std::time::Duration;

use crate::queue::*;
use crate::testing::RedisServer;

fn reg(node: &str, capacity: i64, parallel: u32) -> Registration {
    Registration {
        node: node.into(),
        capacity,
        cores: 4,
        ratio: 1.0,
        parallel,
        reset_capacity: true,
        clear_queue: false,
        lease: Lease {
            token: format!("tok-{node}"),
            host: "test-host".into(),
            pid: 1,
            lease_ms: 5000,
        },
    }
}

fn task(i: u64, units: i64) -> String {
    format!(
        r#"{{"input":"in/{i}.mp4","output":"out/{i}.mp4","cpu_units":{units},"_seq":{i},"ts_enqueue":{}}}"#,
        1000 + i
    )
}

async fn get(q: &Queue, key: &str) -> Option<String> {
    let mut c = q.conn().manager();
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut c)
        .await
        .expect("GET")
}

fn place_opts() -> PlaceOptions {
    PlaceOptions {
        batch: 100,
        ..PlaceOptions::default()
    }
}

#[tokio::test]
async fn worker_cycle_returns_everything_once() {
    let s = RedisServer::start().expect("redis");
    let q = s.queue().await.expect("queue");
    let r = q.register(&reg("w1", 4, 2)).await.expect("register");
    assert_eq!(
        (r.cap_total, r.cap, r.orphans_requeued, r.queued),
        (4, 4, 0, 0)
    );
    let items: Vec<(u64, String)> = (0..3).map(|i| (i, task(i, 2))).collect();
    assert_eq!(
        q.submit("d1", SubmitTarget::Pending, &items).await.unwrap(),
        3
    );
    let out = q.place(&place_opts()).await.unwrap();
    // 2 slots, 4 units: two tasks fit, the third waits at the head.
    assert_eq!(out.status, PlaceStatus::Wait);
    assert_eq!(out.events.len(), 2);
    assert_eq!(get(&q, "cap:w1").await.as_deref(), Some("0"));
    assert_eq!(get(&q, "run_count:w1").await.as_deref(), Some("2"));
    let Take::Task(t0) = q.take_task("w1", "tok-w1").await.unwrap() else {
        panic!("no task")
    };
    assert_eq!(t0, task(0, 2));
    assert_eq!(q.inflight_tasks("w1").await.unwrap(), vec![t0.clone()]);
    assert_eq!(
        q.complete_task("w1", &t0).await.unwrap(),
        Completion::Accepted
    );
    // A retried completion changes nothing.
    assert_eq!(
        q.complete_task("w1", &t0).await.unwrap(),
        Completion::Refused
    );
    assert_eq!(get(&q, "cap:w1").await.as_deref(), Some("2"));
    assert_eq!(get(&q, "run_count:w1").await.as_deref(), Some("1"));
    let snap = q.snapshot(Duration::from_secs(10)).await.unwrap();
    assert_eq!(snap.nodes[0].slot_tokens, 1);
    assert_eq!(snap.pending, 1);
    let out = q.place(&place_opts()).await.unwrap();
    assert_eq!(out.status, PlaceStatus::Empty);
    assert_eq!(
        out.events,
        vec![PlaceEvent::Placed {
            node: "w1".into(),
            task: task(2, 2)
        }]
    );
}

#[tokio::test]
async fn submit_is_exactly_once_per_dispatcher() {
    let s = RedisServer::start().expect("redis");
    let q = s.queue().await.expect("queue");
    let items: Vec<(u64, String)> = (0..5).map(|i| (i, task(i, 1))).collect();
    assert_eq!(
        q.submit("d", SubmitTarget::Pending, &items[..3])
            .await
            .unwrap(),
        3
    );
    // A retry of the same batch plus new items pushes only the new ones.
    assert_eq!(
        q.submit("d", SubmitTarget::Pending, &items).await.unwrap(),
        2
    );
    assert_eq!(
        q.submit("other", SubmitTarget::Pending, &items[..1])
            .await
            .unwrap(),
        1
    );
    assert_eq!(q.pending_tasks().await.unwrap().len(), 6);
}

#[tokio::test]
async fn direct_assignment_reserves_and_register_recomputes() {
    let s = RedisServer::start().expect("redis");
    let q = s.queue().await.expect("queue");
    q.register(&reg("w1", 8, 0)).await.unwrap();
    let items: Vec<(u64, String)> = (0..3).map(|i| (i, task(i, 2))).collect();
    q.submit("d", SubmitTarget::Node("w1"), &items)
        .await
        .unwrap();
    assert_eq!(get(&q, "cap:w1").await.as_deref(), Some("2"));
    let Take::Task(t) = q.take_task("w1", "tok-w1").await.unwrap() else {
        panic!()
    };
    // The worker crashes and restarts: its in-flight task is an orphan.
    let r = q
        .register(&Registration {
            reset_capacity: false,
            ..reg("w1", 99, 0)
        })
        .await
        .unwrap();
    assert_eq!(
        (r.cap_total, r.cap, r.orphans_requeued, r.queued),
        (8, 4, 1, 2)
    );
    assert_eq!(q.pending_tasks().await.unwrap(), vec![t.clone()]);
    assert_eq!(get(&q, "run_count:w1").await.as_deref(), Some("2"));
    let mut c = q.conn().manager();
    let attempts: Option<i64> = redis::cmd("HGET")
        .arg("q:attempts")
        .arg(&t)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(attempts, Some(1));
    // clear_queue hands the queued tasks back too.
    let r = q
        .register(&Registration {
            clear_queue: true,
            ..reg("w1", 8, 0)
        })
        .await
        .unwrap();
    assert_eq!((r.cap, r.queued), (8, 0));
    assert_eq!(q.pending_tasks().await.unwrap().len(), 3);
}

#[tokio::test]
async fn dead_letter_and_requeue_return_capacity() {
    let s = RedisServer::start().expect("redis");
    let q = s.queue().await.expect("queue");
    q.register(&reg("w1", 2, 1)).await.unwrap();
    q.submit(
        "d",
        SubmitTarget::Pending,
        &[(0, task(0, 1)), (1, task(1, 1))],
    )
    .await
    .unwrap();
    q.place(&place_opts()).await.unwrap();
    let Take::Task(t0) = q.take_task("w1", "tok-w1").await.unwrap() else {
        panic!()
    };
    assert!(
        q.dead_letter_task("w1", &t0, "ffmpeg: bad input")
            .await
            .unwrap()
    );
    assert!(!q.dead_letter_task("w1", &t0, "again").await.unwrap());
    let dead = q.dead_letters(0, -1).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].task.as_str(), dead[0].reason.as_str()),
        (t0.as_str(), "ffmpeg: bad input")
    );
    assert_eq!(dead[0].node.as_deref(), Some("w1"));
    q.place(&place_opts()).await.unwrap();
    let Take::Task(t1) = q.take_task("w1", "tok-w1").await.unwrap() else {
        panic!()
    };
    assert!(
        q.requeue_task("w1", &t1, true, Some("ffmpeg exited with 1"))
            .await
            .unwrap()
    );
    assert_eq!(q.pending_tasks().await.unwrap(), vec![t1.clone()]);
    let snap = q.snapshot(Duration::from_secs(10)).await.unwrap();
    let n = &snap.nodes[0];
    assert_eq!(
        (n.cap, n.run_count, n.slot_tokens, n.inflight, n.queued),
        (2, 0, 1, 0, 0)
    );
    // With max_attempts 1 the requeued task is now dead.
    let out = q
        .place(&PlaceOptions {
            max_attempts: 1,
            ..place_opts()
        })
        .await
        .unwrap();
    // …and its dead letter says why the last attempt failed.
    assert!(
        matches!(&out.events[..], [PlaceEvent::Dead { reason, .. }]
            if reason == "failed 1 attempts (max 1): ffmpeg exited with 1"),
        "{:?}",
        out.events
    );
}

#[tokio::test]
async fn heartbeat_and_recovery() {
    let s = RedisServer::start().expect("redis");
    let q = s.queue().await.expect("queue");
    assert_eq!(
        q.heartbeat("ghost", "tok-ghost").await.unwrap(),
        Heartbeat::Lost
    );
    q.register(&reg("a", 2, 0)).await.unwrap();
    q.register(&reg("b", 2, 0)).await.unwrap();
    assert_eq!(q.heartbeat("a", "tok-a").await.unwrap(), Heartbeat::Alive);
    let items: Vec<(u64, String)> = (0..4).map(|i| (i, task(i, 1))).collect();
    q.submit("d", SubmitTarget::Pending, &items).await.unwrap();
    q.place(&place_opts()).await.unwrap();
    // first fit: a gets 0,1; b gets 2,3
    let Take::Task(t) = q.take_task("a", "tok-a").await.unwrap() else {
        panic!()
    };
    assert_eq!(t, task(0, 1));
    // a's last heartbeat is made ancient (no timing on a loaded machine).
    let mut c = q.conn().manager();
    let _: i64 = redis::cmd("ZADD")
        .arg("nodes:alive")
        .arg(1)
        .arg("a")
        .query_async(&mut c)
        .await
        .unwrap();
    q.assume_watched().await.unwrap();
    let rec = q
        .recover_dead_nodes(Duration::from_secs(60), Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(
        rec,
        vec![Recovered {
            node: "a".into(),
            tasks: 2
        }]
    );
    // Back at the head of pending, in their original order.
    assert_eq!(
        q.pending_tasks().await.unwrap(),
        vec![task(0, 1), task(1, 1)]
    );
    assert_eq!(get(&q, "cap:a").await.as_deref(), Some("2"));
    assert_eq!(get(&q, "run_count:a").await.as_deref(), Some("0"));
    assert_eq!(q.heartbeat("a", "tok-a").await.unwrap(), Heartbeat::Lost);
    assert_eq!(q.take_task("a", "tok-a").await.unwrap(), Take::Lost);
    // Its completion comes late, but nobody took it again: it counts, and
    // the task leaves pending.
    assert_eq!(q.complete_task("a", &t).await.unwrap(), Completion::Late);
    assert_eq!(q.pending_tasks().await.unwrap(), vec![task(1, 1)]);
    assert_eq!(q.complete_task("a", &t).await.unwrap(), Completion::Refused);
    assert_eq!(
        q.recover_dead_nodes(Duration::from_secs(60), Duration::from_secs(2))
            .await
            .unwrap(),
        vec![]
    );
    let snap = q.snapshot(Duration::from_secs(60)).await.unwrap();
    assert!(!snap.nodes[0].alive && snap.nodes[1].alive);
    // Deregistering hands back what b holds.
    // Only the holder of the lease may deregister.
    assert_eq!(q.deregister("b", "tok-other").await.unwrap(), None);
    assert_eq!(q.deregister("b", "tok-b").await.unwrap(), Some(2));
    assert_eq!(q.pending_tasks().await.unwrap().len(), 3);
}

#[tokio::test]
async fn survives_a_killed_connection() {
    let s = RedisServer::start().expect("redis");
    let q = s.queue().await.expect("queue");
    q.register(&reg("w1", 2, 0)).await.unwrap();
    let client = redis::Client::open(s.url()).unwrap();
    let mut k = client.get_multiplexed_async_connection().await.unwrap();
    for _ in 0..5 {
        let n: i64 = redis::cmd("CLIENT")
            .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"][..])
            .query_async(&mut k)
            .await
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(q.heartbeat("w1", "tok-w1").await.unwrap(), Heartbeat::Alive);
    }
}

#[tokio::test]
async fn tls_with_a_ca_file_and_insecure() {
    use crate::conn::{RedisConn, RedisOptions};
    let s = RedisServer::start_tls().expect("redis with TLS");
    let q = s.queue().await.expect("queue over TLS");
    q.register(&reg("w1", 2, 0)).await.unwrap();
    assert_eq!(q.heartbeat("w1", "tok-w1").await.unwrap(), Heartbeat::Alive);
    // Without the CA the certificate is not trusted; `#insecure` skips the check.
    let strict = RedisConn::connect(&RedisOptions {
        url: s.url(),
        retry_for: Some(Duration::from_secs(1)),
        ..RedisOptions::default()
    })
    .await;
    assert!(strict.is_err());
    let insecure = RedisConn::connect(&RedisOptions {
        url: format!("{}#insecure", s.url()),
        retry_for: Some(Duration::from_secs(5)),
        ..RedisOptions::default()
    })
    .await;
    assert!(insecure.is_ok(), "{:?}", insecure.err());
}

#[tokio::test]
async fn snapshot_pages_count_every_node() {
    let s = RedisServer::start().expect("redis");
    let q = s.queue().await.expect("queue");
    for n in ["e", "a", "d", "b", "c"] {
        q.register(&reg(n, 2, 0)).await.unwrap();
    }
    // c's heartbeat is made ancient.
    let mut c = q.conn().manager();
    let _: i64 = redis::cmd("ZADD")
        .arg(crate::keys::ALIVE)
        .arg(1)
        .arg("c")
        .query_async(&mut c)
        .await
        .unwrap();
    let page = q
        .snapshot_page(Duration::from_secs(60), 1, Some(2))
        .await
        .unwrap();
    let names: Vec<&str> = page.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["b", "c"]);
    assert_eq!((page.offset, page.registered, page.alive), (1, 5, 4));
    assert!(page.nodes[0].alive && !page.nodes[1].alive);
    let none = q
        .snapshot_page(Duration::from_secs(60), 0, Some(0))
        .await
        .unwrap();
    assert!(none.nodes.is_empty());
    assert_eq!((none.registered, none.alive), (5, 4));
    assert_eq!(
        q.snapshot(Duration::from_secs(60))
            .await
            .unwrap()
            .nodes
            .len(),
        5
    );
}

async fn cmd<T: redis::FromRedisValue>(q: &Queue, args: &[&str]) -> T {
    let mut c = q.conn().manager();
    let mut k = redis::cmd(args[0]);
    for a in &args[1..] {
        k.arg(*a);
    }
    k.query_async(&mut c).await.expect("redis command")
}

/// Heartbeats that Redis could not receive are not missed ones: after a gap
/// in the checks, a node gets a full timeout of watching.
#[tokio::test]
async fn nobody_is_declared_dead_after_a_gap_in_watching() {
    let s = RedisServer::start().expect("redis");
    let q = s.queue().await.expect("queue");
    q.register(&reg("a", 2, 0)).await.unwrap();
    let timeout = Duration::from_millis(600);
    let gap = Duration::from_millis(300);
    // a's heartbeat is overdue, but nobody watched before: not dead yet.
    let _: i64 = cmd(&q, &["ZADD", "nodes:alive", "1", "a"]).await;
    assert!(q.recover_dead_nodes(timeout, gap).await.unwrap().is_empty());
    // Watched without a gap for a full timeout: now it is.
    let mut declared = Vec::new();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        declared = q.recover_dead_nodes(timeout, gap).await.unwrap();
        if !declared.is_empty() {
            break;
        }
    }
    assert_eq!(declared.len(), 1, "declared dead after watching a timeout");
    // Registered again and overdue, but the checks paused longer than the
    // gap (Redis was down): the watch starts over.
    q.register(&reg("a", 2, 0)).await.unwrap();
    let _: i64 = cmd(&q, &["ZADD", "nodes:alive", "1", "a"]).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(q.recover_dead_nodes(timeout, gap).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(q.recover_dead_nodes(timeout, gap).await.unwrap().is_empty());
}

/// A late completion counts while the task waits in another node's queue:
/// it leaves that queue, and that node gets back what the task held.
#[tokio::test]
async fn a_late_completion_takes_the_task_from_the_queue_it_waits_in() {
    let s = RedisServer::start().expect("redis");
    let q = s.queue().await.expect("queue");
    q.register(&reg("a", 1, 0)).await.unwrap();
    q.submit("d", SubmitTarget::Pending, &[(0, task(0, 1))])
        .await
        .unwrap();
    q.place(&place_opts()).await.unwrap();
    let Take::Task(t) = q.take_task("a", "tok-a").await.unwrap() else {
        panic!("a takes its task")
    };
    let _: i64 = cmd(&q, &["ZADD", "nodes:alive", "1", "a"]).await;
    q.assume_watched().await.unwrap();
    assert_eq!(
        q.recover_dead_nodes(Duration::from_secs(60), Duration::from_secs(2))
            .await
            .unwrap()
            .len(),
        1
    );
    q.register(&reg("b", 3, 0)).await.unwrap();
    q.place(&place_opts()).await.unwrap();
    assert_eq!(q.queued_tasks("b").await.unwrap(), vec![t.clone()]);
    assert_eq!(get(&q, "cap:b").await.as_deref(), Some("2"));
    assert_eq!(q.complete_task("a", &t).await.unwrap(), Completion::Late);
    assert!(q.queued_tasks("b").await.unwrap().is_empty());
    assert_eq!(get(&q, "cap:b").await.as_deref(), Some("3"));
    assert_eq!(get(&q, "run_count:b").await.as_deref(), Some("0"));
    assert!(q.check_index().await.unwrap().is_empty());
    // Taken again: a late completion no longer counts.
    q.submit("d", SubmitTarget::Pending, &[(1, task(1, 1))])
        .await
        .unwrap();
    q.place(&place_opts()).await.unwrap();
    let Take::Task(t1) = q.take_task("b", "tok-b").await.unwrap() else {
        panic!("b takes")
    };
    assert_eq!(
        q.complete_task("a", &t1).await.unwrap(),
        Completion::Refused
    );
    assert_eq!(q.inflight_tasks("b").await.unwrap(), vec![t1]);
}

/// One live agent per node id: another host is refused while the holder
/// heartbeats; a replaced registration can take, heartbeat and deregister
/// nothing.
#[tokio::test]
async fn a_node_id_has_one_holder() {
    let s = RedisServer::start().expect("redis");
    let q = s.queue().await.expect("queue");
    q.register(&reg("n", 2, 0)).await.unwrap();
    let other = |token: &str, host: &str| Registration {
        lease: Lease {
            token: token.into(),
            host: host.into(),
            pid: 77,
            lease_ms: 5000,
        },
        ..reg("n", 2, 0)
    };
    match q.register(&other("tok-x", "other-host")).await {
        Err(QueueError::Held { host, pid, .. }) => {
            assert_eq!((host.as_str(), pid.as_str()), ("test-host", "1"))
        }
        r => panic!("expected Held, got {r:?}"),
    }
    assert_eq!(q.heartbeat("n", "tok-n").await.unwrap(), Heartbeat::Alive);
    // The same host's next agent (it holds the local lock) takes over.
    q.register(&other("tok-y", "test-host")).await.unwrap();
    assert_eq!(q.heartbeat("n", "tok-n").await.unwrap(), Heartbeat::Lost);
    assert_eq!(q.take_task("n", "tok-n").await.unwrap(), Take::Lost);
    assert_eq!(q.leave("n", "tok-n").await.unwrap(), None);
    assert_eq!(q.deregister("n", "tok-n").await.unwrap(), None);
    assert_eq!(q.heartbeat("n", "tok-y").await.unwrap(), Heartbeat::Alive);
    // A holder whose heartbeat is older than its lease can be replaced from
    // another host.
    let _: i64 = cmd(&q, &["ZADD", "nodes:alive", "1", "n"]).await;
    q.register(&other("tok-z", "other-host")).await.unwrap();
    assert_eq!(q.heartbeat("n", "tok-y").await.unwrap(), Heartbeat::Lost);
}

/// A stopping node leaves placement before it hands anything back.
#[tokio::test]
async fn a_leaving_node_gets_nothing_placed() {
    let s = RedisServer::start().expect("redis");
    let q = s.queue().await.expect("queue");
    q.register(&reg("a", 2, 0)).await.unwrap();
    let items: Vec<(u64, String)> = (0..3).map(|i| (i, task(i, 1))).collect();
    q.submit("d", SubmitTarget::Pending, &items).await.unwrap();
    q.place(&place_opts()).await.unwrap();
    let Take::Task(t0) = q.take_task("a", "tok-a").await.unwrap() else {
        panic!("a takes")
    };
    // t1 was queued on a: it goes back; t0 stays in flight.
    assert_eq!(q.leave("a", "tok-a").await.unwrap(), Some(1));
    assert_eq!(
        q.pending_tasks().await.unwrap(),
        vec![task(1, 1), task(2, 1)]
    );
    assert_eq!(get(&q, "cap:a").await.as_deref(), Some("1"));
    // Handing t0 back frees capacity, and heartbeats go on: still nothing
    // is placed on a.
    assert!(q.requeue_task("a", &t0, false, None).await.unwrap());
    assert_eq!(q.heartbeat("a", "tok-a").await.unwrap(), Heartbeat::Alive);
    let out = q.place(&place_opts()).await.unwrap();
    assert_eq!(out.status, PlaceStatus::NoLiveNodes);
    assert_eq!(q.pending_tasks().await.unwrap().len(), 3);
    assert!(q.check_index().await.unwrap().is_empty());
    // Registering again puts it back.
    q.register(&reg("a", 2, 0)).await.unwrap();
    let out = q.place(&place_opts()).await.unwrap();
    assert_eq!(out.events.len(), 2);
}

/// A task above the size limit is refused at submit, and dead-lettered at
/// placement (if another program pushed it) with a short entry.
#[tokio::test]
async fn oversized_tasks_are_refused_and_their_dead_letters_are_short() {
    let s = RedisServer::start().expect("redis");
    let q = s.queue().await.expect("queue");
    q.register(&reg("a", 2, 0)).await.unwrap();
    let huge = format!(
        r#"{{"input":"in/a.mp4","output":"out/a.mp4","scale":"{}"}}"#,
        "9".repeat(5 << 20)
    );
    match q
        .submit("d", SubmitTarget::Pending, &[(0, huge.clone())])
        .await
    {
        Err(QueueError::TooLarge { index: 0, bytes }) => assert_eq!(bytes, huge.len()),
        r => panic!("expected TooLarge, got {r:?}"),
    }
    assert_eq!(q.pending_len().await.unwrap(), 0);
    let _: i64 = cmd(&q, &["RPUSH", "q:pending", &huge]).await;
    let out = q.place(&place_opts()).await.unwrap();
    let [
        PlaceEvent::Dead {
            reason,
            task: quoted,
        },
    ] = out.events.as_slice()
    else {
        panic!("{:?}", out.status)
    };
    assert!(reason.contains("more than the limit of 65536"), "{reason}");
    assert!(quoted.len() <= 1100, "{}", quoted.len());
    let entries: Vec<String> = cmd(&q, &["LRANGE", "q:dead", "0", "-1"]).await;
    assert_eq!(entries.len(), 1);
    assert!(
        entries[0].len() <= 2048,
        "dead letter of {} bytes",
        entries[0].len()
    );
    let dead = q.dead_letters(0, -1).await.unwrap();
    assert!(
        dead[0]
            .task
            .ends_with(&format!("({} bytes in all)", huge.len()))
    );
    // A long failure reason is quoted, not kept whole.
    q.submit("d", SubmitTarget::Pending, &[(1, task(1, 1))])
        .await
        .unwrap();
    q.place(&place_opts()).await.unwrap();
    let Take::Task(t) = q.take_task("a", "tok-a").await.unwrap() else {
        panic!("take")
    };
    let long = "é".repeat(100_000);
    assert!(q.dead_letter_task("a", &t, &long).await.unwrap());
    let dead = q.dead_letters(1, 1).await.unwrap();
    assert!(dead[0].reason.len() <= 1100, "{}", dead[0].reason.len());
}

/// The run's counters and gauges follow every transition, and the dead
/// letters can be listed, requeued (attempts reset) and cleared.
#[tokio::test]
async fn counters_follow_the_transitions_and_dead_letters_come_back() {
    let s = RedisServer::start().expect("redis");
    let q = s.queue().await.expect("queue");
    q.register(&reg("w1", 8, 0)).await.expect("register");
    let items: Vec<(u64, String)> = (0..4).map(|i| (i, task(i, 1))).collect();
    q.submit("d1", SubmitTarget::Pending, &items).await.unwrap();
    // A task too big for any node is dead-lettered by placement.
    q.submit("d1", SubmitTarget::Pending, &[(9, task(9, 99))])
        .await
        .unwrap();
    let st = q.run_stats().await.unwrap();
    assert_eq!((st.submitted, st.pending, st.placed), (5, 5, 0));
    q.place(&place_opts()).await.unwrap();
    let st = q.run_stats().await.unwrap();
    assert_eq!(
        (st.pending, st.placed, st.dead, st.dead_letters),
        (0, 4, 1, 1)
    );
    let mut taken = Vec::new();
    for _ in 0..3 {
        let Take::Task(t) = q.take_task("w1", "tok-w1").await.unwrap() else {
            panic!("no task")
        };
        taken.push(t);
    }
    let st = q.run_stats().await.unwrap();
    assert_eq!((st.placed, st.running), (1, 3));
    let snap = q.snapshot(Duration::from_secs(10)).await.unwrap();
    let running = &snap.nodes[0].running;
    assert_eq!(running.len(), 3);
    assert!(running.iter().all(|r| r.taken_ms.is_some_and(|t| t > 0)));
    assert_eq!(
        q.complete_task("w1", &taken[0]).await.unwrap(),
        Completion::Accepted
    );
    assert!(
        q.requeue_task("w1", &taken[1], true, Some("ffmpeg exited with 1"))
            .await
            .unwrap()
    );
    assert!(
        q.dead_letter_task("w1", &taken[2], "cannot read the input")
            .await
            .unwrap()
    );
    let st = q.run_stats().await.unwrap();
    assert_eq!(
        (
            st.done, st.failed, st.dead, st.running, st.placed, st.pending
        ),
        (1, 1, 2, 0, 1, 1)
    );
    assert_eq!(st.done_last_minute, 1);
    assert_eq!(st.outstanding(), 2);
    assert!(st.eta_secs().is_some());

    // Its node dies with one task in flight: one failed attempt, both back.
    let Take::Task(_) = q.take_task("w1", "tok-w1").await.unwrap() else {
        panic!("no task")
    };
    q.deregister("w1", "tok-w1").await.unwrap();
    let st = q.run_stats().await.unwrap();
    assert_eq!((st.running, st.placed, st.pending), (0, 0, 2));

    let dead = q.dead_entries(0, -1).await.unwrap();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[1].letter.reason, "cannot read the input");
    assert_eq!(dead[1].letter.attempts, Some(0));
    assert_eq!(dead[1].id.len(), 40);
    // An id that matches nothing requeues nothing.
    assert_eq!(q.requeue_dead(Some("zzzz")).await.unwrap(), (0, 0));
    let one = &dead[1];
    assert_eq!(q.requeue_dead(Some(&one.id[..8])).await.unwrap(), (1, 1));
    let pending = q.pending_tasks().await.unwrap();
    assert_eq!(pending.last(), Some(&one.letter.task));
    let st = q.run_stats().await.unwrap();
    assert_eq!((st.dead, st.dead_letters, st.pending), (1, 1, 3));
    assert_eq!(q.requeue_dead(None).await.unwrap(), (1, 1));
    assert_eq!(q.run_stats().await.unwrap().dead, 0);
    // Cleared letters still count as dead.
    q.submit("d1", SubmitTarget::Pending, &[(10, task(10, 99))])
        .await
        .unwrap();
    q.register(&reg("w1", 8, 0)).await.unwrap();
    q.place(&place_opts()).await.unwrap();
    // The requeued task too big for any node dies again, with the new one.
    assert_eq!(q.clear_dead().await.unwrap(), 2);
    let st = q.run_stats().await.unwrap();
    assert_eq!((st.dead, st.dead_letters), (2, 0));
}

/// Nodes that left are hidden from the default view, counted as retired.
#[tokio::test]
async fn the_live_view_hides_nodes_that_left() {
    let s = RedisServer::start().expect("redis");
    let q = s.queue().await.expect("queue");
    for n in ["c", "a", "b"] {
        q.register(&reg(n, 2, 0)).await.unwrap();
    }
    q.deregister("b", "tok-b").await.unwrap();
    // Just left: still shown.
    let v = q
        .snapshot_view(
            Duration::from_secs(60),
            0,
            Some(10),
            Some(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert_eq!((v.nodes.len(), v.retired), (3, 0));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let v = q
        .snapshot_view(
            Duration::from_secs(60),
            0,
            Some(10),
            Some(Duration::from_millis(10)),
        )
        .await
        .unwrap();
    let names: Vec<&str> = v.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!((names, v.retired, v.registered), (vec!["a", "c"], 1, 3));
    let page = q
        .snapshot_view(Duration::from_secs(60), 1, Some(1), Some(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(page.nodes[0].name, "c");
    let all = q
        .snapshot_view(Duration::from_secs(60), 0, None, None)
        .await
        .unwrap();
    assert_eq!((all.nodes.len(), all.retired), (3, 0));
}

/// A completion sent again (a lost reply, a journal replayed) gets the
/// answer the first one got; a report of an ended registration cannot touch
/// a later registration's run of the same task.
#[tokio::test]
async fn completions_are_idempotent_and_tied_to_their_registration() {
    let s = RedisServer::start().expect("redis");
    let q = s.queue().await.expect("queue");
    q.register(&reg("a", 1, 0)).await.unwrap();
    q.submit("d", SubmitTarget::Pending, &[(0, task(0, 1))])
        .await
        .unwrap();
    q.place(&place_opts()).await.unwrap();
    let Take::Task(t) = q.take_task("a", "tok-a").await.unwrap() else {
        panic!("take")
    };
    let run = RunRef {
        lease: "tok-a",
        trace_id: "a-0-1",
    };
    assert_eq!(
        q.complete_run("a", &t, run).await.unwrap(),
        Completion::Accepted
    );
    assert_eq!(
        q.complete_run("a", &t, run).await.unwrap(),
        Completion::Accepted
    );
    assert_eq!(get(&q, "cap:a").await.as_deref(), Some("1"));

    // The same task again; a's registration ends and a registers anew
    // (a new token), and takes it again.
    q.submit("d", SubmitTarget::Pending, &[(1, task(0, 1))])
        .await
        .unwrap();
    q.place(&place_opts()).await.unwrap();
    let Take::Task(t) = q.take_task("a", "tok-a").await.unwrap() else {
        panic!("take")
    };
    q.make_overdue("a").await.unwrap();
    q.assume_watched().await.unwrap();
    q.recover_dead_nodes(Duration::from_secs(60), Duration::from_secs(2))
        .await
        .unwrap();
    let again = Registration {
        lease: Lease {
            token: "tok-a2".into(),
            ..reg("a", 1, 0).lease
        },
        ..reg("a", 1, 0)
    };
    q.register(&again).await.unwrap();
    q.place(&place_opts()).await.unwrap();
    let Take::Task(t2) = q.take_task("a", "tok-a2").await.unwrap() else {
        panic!("take again")
    };
    assert_eq!(t, t2);
    // The old registration's reports change nothing.
    let old = RunRef {
        lease: "tok-a",
        trace_id: "a-0-2",
    };
    assert!(!q.requeue_run("a", &t, true, Some("x"), old).await.unwrap());
    assert!(!q.dead_letter_run("a", &t, "x", old).await.unwrap());
    assert_eq!(
        q.complete_run("a", &t, old).await.unwrap(),
        Completion::Refused
    );
    assert_eq!(q.inflight_tasks("a").await.unwrap(), vec![t.clone()]);
    let new = RunRef {
        lease: "tok-a2",
        trace_id: "a-0-3",
    };
    assert_eq!(
        q.complete_run("a", &t, new).await.unwrap(),
        Completion::Accepted
    );
    assert!(q.check_index().await.unwrap().is_empty());
}

/// Runs from the controller: one current run at a time, ids used once, a
/// stop refused while tasks are outstanding (unless forced), the counters
/// kept at the stop and reset by the next start, and heartbeats that carry
/// the current run out and the run each following agent records into back.
#[tokio::test]
async fn runs_start_and_stop_once_and_heartbeats_carry_them() {
    use crate::run::{RunStart, RunStop};
    let s = RedisServer::start().expect("redis");
    let q = s.queue().await.expect("queue");
    q.register(&reg("a", 4, 0)).await.unwrap();
    q.register(&reg("b", 4, 0)).await.unwrap();
    assert_eq!(q.current_run().await.unwrap(), None);
    assert_eq!(q.run_stop(None, false).await.unwrap(), RunStop::NoRun);
    // Between runs a following agent hears of none.
    assert_eq!(
        q.heartbeat_run("a", "tok-a", Some("")).await.unwrap(),
        (Heartbeat::Alive, None)
    );

    assert_eq!(q.run_start("r1").await.unwrap(), RunStart::Started);
    assert_eq!(
        q.run_start("r2").await.unwrap(),
        RunStart::Busy {
            current: "r1".into()
        }
    );
    assert_eq!(q.current_run().await.unwrap().as_deref(), Some("r1"));
    assert_eq!(
        q.heartbeat_run("a", "tok-a", Some("")).await.unwrap(),
        (Heartbeat::Alive, Some("r1".into()))
    );
    // `a` follows and records into r1; `b` has a run of its own.
    q.heartbeat_run("a", "tok-a", Some("r1")).await.unwrap();
    q.heartbeat_run("b", "tok-b", None).await.unwrap();
    let snap = q.snapshot(Duration::from_secs(10)).await.unwrap();
    let recording: Vec<Option<&str>> = snap.nodes.iter().map(|n| n.recording.as_deref()).collect();
    assert_eq!(recording, [Some("r1"), None]);

    let items: Vec<(u64, String)> = (0..2).map(|i| (i, task(i, 1))).collect();
    q.submit("d1", SubmitTarget::Pending, &items).await.unwrap();
    let refused = q.run_stop(None, false).await.unwrap();
    let RunStop::Outstanding { run, left } = refused else {
        panic!("{refused:?}");
    };
    assert_eq!((run.as_str(), left.pending), ("r1", 2));
    assert_eq!(
        q.run_stop(Some("r9"), false).await.unwrap(),
        RunStop::NotCurrent {
            current: "r1".into()
        }
    );
    q.place(&place_opts()).await.unwrap();
    for node in ["a", "b"] {
        let lease = format!("tok-{node}");
        while let Take::Task(raw) = q.take_task(node, &lease).await.unwrap() {
            q.complete_run(
                node,
                &raw,
                RunRef {
                    lease: &lease,
                    trace_id: "",
                },
            )
            .await
            .unwrap();
        }
    }
    let stopped = q.run_stop(Some("r1"), false).await.unwrap();
    assert_eq!(
        stopped,
        RunStop::Stopped {
            run: "r1".into(),
            left: Default::default(),
            nodes: vec!["a".into()],
        }
    );
    assert_eq!(q.current_run().await.unwrap(), None);
    assert_eq!(
        q.heartbeat_run("a", "tok-a", Some("r1")).await.unwrap(),
        (Heartbeat::Alive, None)
    );
    assert_eq!(q.run_start("r1").await.unwrap(), RunStart::Used);

    // The next run's counters start from zero; the last one's are kept.
    assert_eq!(q.run_start("r2").await.unwrap(), RunStart::Started);
    let st = q.run_stats().await.unwrap();
    assert_eq!((st.submitted, st.done), (0, 0));
    assert_eq!(st.run.as_deref(), Some("r2"));
    q.submit("d2", SubmitTarget::Pending, &[(0, task(9, 1))])
        .await
        .unwrap();
    let forced = q.run_stop(None, true).await.unwrap();
    let RunStop::Stopped { left, .. } = forced else {
        panic!("{forced:?}");
    };
    assert_eq!(left.pending, 1, "the forced stop leaves the task queued");
    assert_eq!(q.last_run().await.unwrap().as_deref(), Some("r2"));
    let runs = q.runs().await.unwrap();
    let ids: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["r1", "r2"]);
    assert_eq!(
        (runs[0].submitted, runs[0].done, runs[0].outstanding),
        (2, 2, 0)
    );
    assert!(runs[0].stopped_ms >= Some(runs[0].started_ms));
    assert_eq!((runs[1].submitted, runs[1].outstanding), (1, 1));
    // A node that leaves is no longer said to record into anything.
    q.deregister("a", "tok-a").await.unwrap();
    q.run_start("r3").await.unwrap();
    let RunStop::Stopped { nodes, .. } = q.run_stop(None, true).await.unwrap() else {
        panic!("not stopped");
    };
    assert!(nodes.is_empty(), "{nodes:?}");
}
