//! Three `tracekit-sched central` processes at once, with fake workers
//! returning capacity concurrently, over hundreds of trials: afterwards every
//! task is in exactly one place, no node ever exceeded its capacity and no
//! unit leaked.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tracekit_proto::testing::RedisServer;
use tracekit_proto::{SubmitTarget, Take};
use tracekit_sched::mix::{rng, uniform};

/// Checks, atomically, for every node: free + held == total, free ≥ 0, and
/// for slot nodes tokens + run_count == parallel. Returns the violations.
/// Runs after the key prelude (key names from `tracekit_proto::keys`).
const INVARIANT: &str = r#"
local bad = {}
for _, n in ipairs(redis.call('ZRANGE', REGISTRY, 0, -1)) do
  local held = 0
  for _, key in ipairs({key_queue(n), key_inflight(n)}) do
    for _, raw in ipairs(redis.call('LRANGE', key, 0, -1)) do
      held = held + (cjson.decode(raw)['cpu_units'] or 1)
    end
  end
  local cap = tonumber(redis.call('GET', key_cap(n)))
  local total = tonumber(redis.call('GET', key_cap_total(n)))
  local rc = tonumber(redis.call('GET', key_run_count(n)))
  local par = tonumber(redis.call('GET', key_parallel(n)))
  local count = redis.call('LLEN', key_queue(n)) + redis.call('LLEN', key_inflight(n))
  if cap < 0 or held > total or cap + held ~= total or rc ~= count then
    bad[#bad + 1] = n .. ' cap=' .. cap .. ' held=' .. held .. ' total=' .. total .. ' rc=' .. rc .. ' count=' .. count
  end
  if par > 0 then
    local tokens = 0
    for _, t in ipairs(redis.call('LRANGE', 'slots:available', 0, -1)) do
      if t == n then tokens = tokens + 1 end
    end
    if tokens + rc ~= par then
      bad[#bad + 1] = n .. ' tokens=' .. tokens .. ' rc=' .. rc .. ' parallel=' .. par
    end
  end
end
return bad
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_centrals_never_lose_duplicate_or_overcommit() {
    let server = RedisServer::start().expect("redis");
    let q = queue(&server).await;
    // Small capacities so placements contend; one node also uses slot tokens.
    let nodes: &[(&str, i64, u32)] = &[("n1", 2, 0), ("n2", 3, 0), ("n3", 4, 2), ("n4", 3, 0)];
    for (n, cap, par) in nodes {
        q.register(&reg(n, *cap, *par)).await.unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    // Heartbeats for all nodes.
    let hb = {
        let (q, stop) = (q.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for (n, _, _) in [("n1", 0, 0), ("n2", 0, 0), ("n3", 0, 0), ("n4", 0, 0)] {
                    q.heartbeat(n, &format!("tok-{n}")).await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    // Three central processes with different batch sizes and weighers.
    let mut centrals = Vec::new();
    for (batch, weigher, order) in [
        ("1", "instances", "min"),
        ("8", "", "min"),
        ("64", "vcpu", "max"),
    ] {
        let mut c = sched(&server);
        c.args([
            "central",
            "--batch",
            batch,
            "--weigher",
            weigher,
            "--weigher-order",
            order,
        ])
        .args(["--idle-interval", "0.002", "--heartbeat-timeout", "30"]);
        centrals.push(Proc::spawn(c));
    }
    // Fake workers: one loop per unit of capacity, each on its own connection.
    let done: Arc<Mutex<HashMap<String, u32>>> = Arc::new(Mutex::new(HashMap::new()));
    let completed = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for (n, cap, _) in nodes {
        for k in 0..*cap {
            let wq = server.queue().await.unwrap();
            let (done, completed, stop) = (done.clone(), completed.clone(), stop.clone());
            let node = n.to_string();
            workers.push(tokio::spawn(async move {
                let mut r = rng(1 + k as u64);
                while !stop.load(Ordering::Relaxed) {
                    match wq.take_task(&node, &format!("tok-{node}")).await.unwrap() {
                        Take::Task(t) => {
                            if uniform(&mut r, 3) == 0 {
                                tokio::time::sleep(Duration::from_micros(uniform(&mut r, 1500)))
                                    .await;
                            }
                            assert!(
                                wq.complete_task(&node, &t).await.unwrap()
                                    == tracekit_proto::Completion::Accepted,
                                "completed twice: {t}"
                            );
                            *done.lock().unwrap().entry(t).or_default() += 1;
                            completed.fetch_add(1, Ordering::SeqCst);
                        }
                        Take::Empty => tokio::time::sleep(Duration::from_millis(1)).await,
                        Take::Lost => panic!("{node} lost"),
                    }
                }
            }));
        }
    }
    // A monitor checking the capacity invariant atomically, all the time.
    let violations = Arc::new(Mutex::new(Vec::<String>::new()));
    let checks = Arc::new(AtomicUsize::new(0));
    let monitor = {
        let (violations, checks, stop) = (violations.clone(), checks.clone(), stop.clone());
        let mut c = q.conn().manager();
        let q = q.clone();
        tokio::spawn(async move {
            let script = redis::Script::new(&format!(
                "{}\n{INVARIANT}",
                tracekit_proto::keys::lua_prelude()
            ));
            while !stop.load(Ordering::Relaxed) {
                let bad: Vec<String> = script.invoke_async(&mut c).await.unwrap();
                violations.lock().unwrap().extend(bad);
                // The placement index agrees with the counters at every moment.
                let bad = q.check_index().await.unwrap();
                violations.lock().unwrap().extend(bad);
                checks.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };

    let mut r = rng(77);
    let mut expected = 0usize;
    let trials = 200;
    let mut c = q.conn().manager();
    for trial in 0..trials {
        let m = 5 + uniform(&mut r, 20) as usize;
        let items: Vec<(u64, String)> = (0..m)
            .map(|i| {
                (
                    i as u64,
                    task(&format!("t{trial}_{i}"), 1 + uniform(&mut r, 2) as i64),
                )
            })
            .collect();
        q.submit(&format!("trial{trial}"), SubmitTarget::Pending, &items)
            .await
            .unwrap();
        expected += m;
        // Wait for this trial's tasks to finish (generous: a loaded machine).
        let mut waited = 0;
        while completed.load(Ordering::SeqCst) < expected {
            tokio::time::sleep(Duration::from_millis(2)).await;
            waited += 2;
            assert!(
                waited < 120_000,
                "trial {trial}: only {} of {expected} completed",
                completed.load(Ordering::SeqCst)
            );
        }
        // Quiescent now: every unit is back, nothing is anywhere.
        for (n, cap, par) in nodes {
            assert_eq!(
                get_i64(&mut c, &format!("cap:{n}")).await,
                *cap,
                "trial {trial}: {n} leaked capacity"
            );
            assert_eq!(
                get_i64(&mut c, &format!("run_count:{n}")).await,
                0,
                "trial {trial}: {n} run_count"
            );
            assert!(lrange(&mut c, &format!("q:{n}")).await.is_empty());
            assert!(lrange(&mut c, &format!("inflight:{n}")).await.is_empty());
            let toks = lrange(&mut c, "slots:available")
                .await
                .iter()
                .filter(|t| t == n)
                .count();
            assert_eq!(toks, *par as usize, "trial {trial}: {n} slot tokens");
        }
        assert!(lrange(&mut c, "q:pending").await.is_empty());
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    monitor.await.unwrap();
    hb.await.unwrap();
    for c in &mut centrals {
        assert!(c.0.try_wait().unwrap().is_none(), "a central process died");
    }
    drop(centrals);

    assert!(lrange(&mut c, "q:dead").await.is_empty());
    let done = done.lock().unwrap();
    assert_eq!(done.len(), expected, "every task completed");
    assert!(done.values().all(|&k| k == 1), "a task completed twice");
    let v = violations.lock().unwrap();
    assert!(
        v.is_empty(),
        "capacity invariant violated: {:?}",
        &v[..v.len().min(10)]
    );
    assert!(checks.load(Ordering::Relaxed) > 100, "the monitor ran");
    eprintln!(
        "{trials} trials, {expected} tasks, {} invariant checks",
        checks.load(Ordering::Relaxed)
    );
}
