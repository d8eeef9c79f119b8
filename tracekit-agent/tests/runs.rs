//! Runs belong to the controller: an agent without a run id of its own
//! follows `tracekit-sched run start | stop`, records each run into
//! <logs>/<run>/<node>/, and publishes a run when it stops, so `gather`
//! works while the agent keeps running. Real agent, real `tracekit-sched`,
//! real Redis and ffmpeg (helpers in `common`).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use serde_json::Value;
use tracekit_tests::{read_json, read_jsonl};

/// `tracekit-sched`, built beside the agent (`cargo xtask test` builds
/// every binary first).
fn sched_bin() -> PathBuf {
    let bin = Path::new(AGENT).with_file_name("tracekit-sched");
    assert!(
        bin.exists(),
        "{} is not built: run `cargo xtask test`",
        bin.display()
    );
    bin
}

fn sched(env: &Env, args: &[&str]) -> Output {
    let out = Command::new(sched_bin())
        .args(args)
        .env("TRACEKIT_REDIS", env.redis.url_without_password())
        .env("REDIS_PASSWORD", env.redis.password())
        .env("RUST_LOG", "warn")
        .env_remove("RUN_ID")
        .output()
        .expect("running tracekit-sched");
    eprintln!(
        "tracekit-sched {}: {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Lines of run `run`'s invocations as node `node` recorded them.
fn recorded(env: &Env, node: &str, run: &str) -> Vec<Value> {
    let path = env.path(&format!("logs/{node}/{run}/{node}/CTS/invocations.jsonl"));
    if !path.exists() {
        return Vec::new();
    }
    read_jsonl(&path).unwrap()
}

#[test]
fn an_agent_follows_the_controllers_runs_and_publishes_each() {
    let _s = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let test = "an_agent_follows_the_controllers_runs_and_publishes_each";
    if !ready(test) {
        return;
    }
    let mut env = Env::new(&[]);
    let mut agent =
        env.agent_following("n1", &["--capacity-units", "2", "--cpu-binding", "shared"]);
    env.wait("registration", Duration::from_secs(30), |e| {
        e.snapshot().nodes.iter().any(|n| n.alive)
    });

    // No run, no work: a task placed on the node waits in its queue.
    let first = env.task("short.mp4", 1, |_| {});
    env.submit(std::slice::from_ref(&first));
    env.wait("placement", Duration::from_secs(10), |e| {
        e.snapshot().nodes.iter().any(|n| n.queued == 1)
    });
    std::thread::sleep(Duration::from_secs(2));
    let n = env
        .snapshot()
        .nodes
        .into_iter()
        .find(|n| n.name == "n1")
        .unwrap();
    assert_eq!((n.queued, n.inflight), (1, 0), "taken with no run: {n:?}");
    assert!(
        !env.path("logs/n1")
            .read_dir()
            .unwrap()
            .flatten()
            .any(|e| e.path().is_dir())
    );
    let st = sched(&env, &["status"]);
    assert!(stdout(&st).contains("run: none current"), "{}", stdout(&st));

    // A run starts: the agent picks it up with a heartbeat, no restart.
    let out = sched(&env, &["run", "start", "--id", "exp1"]);
    assert!(out.status.success());
    env.wait("exp1's task", Duration::from_secs(120), |e| {
        recorded(e, "n1", "exp1").len() == 1
    });
    assert!(stdout(&sched(&env, &["status"])).contains("run: exp1"));
    // Refusals say why and change nothing.
    let busy = sched(&env, &["run", "start", "--id", "exp2"]);
    assert!(!busy.status.success());
    assert!(
        stderr(&busy).contains("run exp1 is current"),
        "{}",
        stderr(&busy)
    );
    let bad = sched(&env, &["run", "start", "--id", "../x"]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("names a directory"),
        "{}",
        stderr(&bad)
    );

    env.wait("exp1 finished in Redis", Duration::from_secs(30), |e| {
        e.snapshot().nodes.iter().all(|n| n.run_count == 0)
    });
    let stop = sched(&env, &["run", "stop", "--timeout", "60"]);
    assert!(stop.status.success());
    assert!(
        stdout(&stop).contains("1 of 1 node(s) published run exp1"),
        "{}",
        stdout(&stop)
    );
    let again = sched(&env, &["run", "start", "--id", "exp1"]);
    assert!(
        stderr(&again).contains("was used before"),
        "{}",
        stderr(&again)
    );
    let none = sched(&env, &["run", "stop"]);
    assert!(
        stderr(&none).contains("no run is current"),
        "{}",
        stderr(&none)
    );

    // A second run, into its own directory; then a forced stop while a
    // task runs: it finishes in the run it started in.
    assert!(
        sched(&env, &["run", "start", "--id", "exp2"])
            .status
            .success()
    );
    let two: Vec<String> = (0..2).map(|_| env.task("short.mp4", 1, |_| {})).collect();
    env.submit(&two);
    env.wait("exp2's tasks", Duration::from_secs(120), |e| {
        recorded(e, "n1", "exp2").len() == 2
    });
    env.wait("exp2 finished in Redis", Duration::from_secs(30), |e| {
        e.snapshot().nodes.iter().all(|n| n.run_count == 0)
    });
    assert!(
        sched(&env, &["run", "stop", "--id", "exp2"])
            .status
            .success()
    );

    assert!(
        sched(&env, &["run", "start", "--id", "exp3"])
            .status
            .success()
    );
    let long = env.task("long.mp4", 1, |_| {});
    env.submit(std::slice::from_ref(&long));
    env.wait("the long task running", Duration::from_secs(60), |e| {
        e.snapshot().nodes.iter().any(|n| n.inflight == 1)
    });
    let refused = sched(&env, &["run", "stop"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("1 running"),
        "{}",
        stderr(&refused)
    );
    let forced = sched(&env, &["run", "stop", "--force", "--timeout", "300"]);
    assert!(forced.status.success());
    assert!(stdout(&forced).contains("1 of 1 node(s) published run exp3"));
    assert_eq!(recorded(&env, "n1", "exp3").len(), 1);

    // Each run's traces, gathered while the agent runs on.
    assert!(agent.try_wait().unwrap().is_none(), "the agent ended");
    let out_dir = env.path("gathered");
    let out_arg = out_dir.to_str().unwrap();
    for (run, tasks) in [("exp1", 1), ("exp2", 2), ("exp3", 1)] {
        let g = sched(&env, &["gather", "--run-id", run, "--out", out_arg]);
        assert!(g.status.success());
        let lines =
            read_jsonl::<Value>(&out_dir.join(format!("{run}/n1/CTS/invocations.jsonl"))).unwrap();
        assert_eq!(lines.len(), tasks, "{run}");
        assert!(lines.iter().all(exit_ok), "{run}: {lines:?}");
        let meta: Value = read_json(&out_dir.join(format!("{run}/n1/node_meta.json"))).unwrap();
        assert_eq!(meta["run_id"], run);
        let stats: Value =
            read_json(&out_dir.join(format!("{run}/n1/CTS/tracer_stats.json"))).unwrap();
        // Each run's own share of the tracer's work.
        assert_eq!(stats["exits_recorded"], tasks, "{run}: {stats}");
    }
    // Without --run-id, gather takes the last run.
    let last = sched(&env, &["gather", "--out", out_arg]);
    assert!(stdout(&last).contains("of run exp3"), "{}", stdout(&last));

    let list = sched(&env, &["run", "list", "--json"]);
    let runs: Vec<Value> = stdout(&list)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary: Vec<(String, i64, i64)> = runs
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["done"].as_i64().unwrap(),
                r["published"].as_array().unwrap().len() as i64,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("exp1".to_string(), 1, 1),
            ("exp2".to_string(), 2, 1),
            ("exp3".to_string(), 1, 1)
        ]
    );
    let table = stdout(&sched(&env, &["run", "list"]));
    assert!(table.contains("exp2") && table.contains("n1"), "{table}");

    // Stopped between runs: nothing left to publish, a clean exit.
    assert!(sigterm(&mut agent).success());
    env.assert_books_balanced();
}

fn runs(env: &Env) -> Vec<Value> {
    stdout(&sched(env, &["run", "list", "--json"]))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A node declared dead (here: the agent paused past its timeout) registers
/// again and goes on recording the run: the run is not closed or published
/// on the way.
#[test]
fn a_fenced_agent_keeps_recording_the_current_run() {
    let _s = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !ready("a_fenced_agent_keeps_recording_the_current_run") {
        return;
    }
    let mut env = Env::new(&[]);
    let mut agent =
        env.agent_following("f1", &["--capacity-units", "1", "--cpu-binding", "shared"]);
    env.wait("registration", Duration::from_secs(30), |e| {
        e.snapshot().nodes.iter().any(|n| n.alive)
    });
    assert!(
        sched(&env, &["run", "start", "--id", "exp1"])
            .status
            .success()
    );
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: signals to the agent this test started.
    unsafe { libc::kill(agent.id() as i32, libc::SIGSTOP) };
    env.rt.block_on(async {
        env.queue.make_overdue("f1").await.unwrap();
        env.queue.assume_watched().await.unwrap();
        let dead = env
            .queue
            .recover_dead_nodes(Duration::from_secs(3), Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(dead.len(), 1);
    });
    // SAFETY: as above.
    unsafe { libc::kill(agent.id() as i32, libc::SIGCONT) };
    env.wait("registered again", Duration::from_secs(30), |e| {
        e.snapshot().nodes.iter().any(|n| n.alive)
    });
    std::thread::sleep(Duration::from_secs(3));
    let r = runs(&env);
    assert!(r[0]["stopped_ms"].is_null(), "{r:?}");
    assert!(
        r[0]["published"].as_array().unwrap().is_empty(),
        "published mid-run: {r:?}"
    );
    // And it still runs the run's tasks into the run's directory.
    let t = env.task("short.mp4", 1, |_| {});
    env.submit(&[t]);
    env.wait("the task", Duration::from_secs(120), |e| {
        recorded(e, "f1", "exp1").len() == 1
    });
    assert!(sigterm(&mut agent).success());
}

/// An agent restarted in the middle of a run publishes what it had when it
/// stopped; `run stop` waits for the publication made after the stop, so
/// `gather` never gets the older, partial one.
#[test]
fn run_stop_waits_for_a_publication_made_after_the_stop() {
    let _s = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !ready("run_stop_waits_for_a_publication_made_after_the_stop") {
        return;
    }
    let mut env = Env::new(&[]);
    let args = ["--capacity-units", "1", "--cpu-binding", "shared"];
    let mut agent = env.agent_following("f1", &args);
    env.wait("registration", Duration::from_secs(30), |e| {
        e.snapshot().nodes.iter().any(|n| n.alive)
    });
    assert!(
        sched(&env, &["run", "start", "--id", "exp1"])
            .status
            .success()
    );
    let t = env.task("short.mp4", 1, |_| {});
    env.submit(&[t]);
    env.wait("the first task", Duration::from_secs(120), |e| {
        recorded(e, "f1", "exp1").len() == 1
    });
    env.wait("done in Redis", Duration::from_secs(30), |e| {
        e.snapshot().nodes.iter().all(|n| n.run_count == 0)
    });
    // Stopped mid-run: it publishes the one task it has.
    assert!(sigterm(&mut agent).success());
    let mut agent = env.agent_following("f1", &args);
    env.wait("registration again", Duration::from_secs(30), |e| {
        e.snapshot().nodes.iter().any(|n| n.alive)
    });
    let t = env.task("long.mp4", 1, |_| {});
    env.submit(&[t]);
    env.wait("the long task running", Duration::from_secs(60), |e| {
        e.snapshot().nodes.iter().any(|n| n.inflight == 1)
    });
    let stop = sched(&env, &["run", "stop", "--force", "--timeout", "300"]);
    assert!(stop.status.success());
    let out = env.path("gathered");
    let g = sched(
        &env,
        &["gather", "--run-id", "exp1", "--out", out.to_str().unwrap()],
    );
    assert!(g.status.success());
    let gathered = read_jsonl::<Value>(&out.join("exp1/f1/CTS/invocations.jsonl")).unwrap();
    assert_eq!(
        gathered.len(),
        2,
        "gathered a publication from before the stop"
    );
    let r = runs(&env);
    assert_eq!(
        (r[0]["done"].as_i64(), r[0]["outstanding"].as_i64()),
        (Some(2), Some(0)),
        "{r:?}"
    );
    assert!(sigterm(&mut agent).success());
}
