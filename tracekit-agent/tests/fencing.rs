//! Exactly once under faults, for real (root, the agent binary, real Redis
//! and ffmpeg): completions Redis never heard of survive the agent, a paused
//! agent is fenced, a node id has one live agent, and a stopping node is out
//! of placement before it hands anything back.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use tracekit_tests::require_tool;

/// Output files of the node: (final names, staged leftovers).
fn outputs(env: &Env) -> (Vec<String>, Vec<String>) {
    let mut done = Vec::new();
    let mut staged = Vec::new();
    for e in std::fs::read_dir(env.path("outputs")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tracekit.") {
            staged.push(name);
        } else {
            done.push(name);
        }
    }
    (done, staged)
}

fn journal(env: &Env, node: &str) -> String {
    std::fs::read_to_string(env.path(&format!("logs/{node}/.tracekit-{node}.journal")))
        .unwrap_or_default()
}

/// A task finishes while Redis is down. The agent is stopped (SIGTERM: it
/// must still end) or killed (-9) before Redis is back; its completion is in
/// the journal, and the node's next agent delivers it before it registers:
/// the task counts once, never runs again, and its output is in place.
#[test]
fn completions_redis_never_heard_of_are_delivered_by_the_next_agent() {
    let _s = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !ready("completions_redis_never_heard_of_are_delivered_by_the_next_agent") {
        return;
    }
    let mut env = Env::new(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut restarted: Option<KillOnDrop> = None;
    for (round, kill9) in [(1, false), (2, true)] {
        let mut agent = env.agent("j1", &["--capacity-units", "1"]);
        let t = env.task("short.mp4", 1, |_| {});
        env.submit(&[t]);
        env.wait("task running", Duration::from_secs(60), |_| {
            !ffmpeg_children(agent.id()).is_empty()
        });
        match &restarted {
            Some(r) => env.stop_redis_pid(r.id()),
            None => env.stop_redis(),
        }
        env.wait(
            "task done while Redis is down",
            Duration::from_secs(120),
            |_| ffmpeg_children(agent.id()).is_empty(),
        );
        env.wait("its completion journaled", Duration::from_secs(10), |e| {
            journal(e, "j1").contains("Complete")
        });
        let (done, staged) = outputs(&env);
        assert_eq!(done.len(), round - 1, "moved into place before it counted");
        assert_eq!(staged.len(), 1, "{staged:?}");
        if kill9 {
            sigkill(&mut agent);
        } else {
            let start = Instant::now();
            assert!(sigterm(&mut agent).success());
            assert!(
                start.elapsed() < Duration::from_secs(40),
                "a stopped agent waited {:?} for Redis",
                start.elapsed()
            );
        }
        assert!(journal(&env, "j1").contains("Complete"));
        restarted = Some(env.restart_redis());
        let mut agent = env.agent("j1", &["--capacity-units", "1"]);
        env.wait("the completion delivered", Duration::from_secs(60), |e| {
            let (done, staged) = outputs(e);
            done.len() == round && staged.is_empty()
        });
        // Give a wrong second run the time to start: there must be none.
        std::thread::sleep(Duration::from_secs(2));
        assert!(ffmpeg_children(agent.id()).is_empty(), "the task ran again");
        let invs = env.invocations("j1");
        assert_eq!(invs.len(), round, "one run per task: {invs:?}");
        let s = env.snapshot();
        assert_eq!((s.pending, s.dead), (0, 0), "{s:?}");
        env.assert_books_balanced();
        assert!(sigterm(&mut agent).success());
        assert_eq!(journal(&env, "j1"), "", "everything delivered");
    }
}

/// SIGSTOP the agent past the heartbeat timeout while its task runs; a
/// central declares the node dead and the task goes back to pending. On
/// SIGCONT the agent learns at once that its registration is over, kills
/// the task, records nothing of that run and leaves no output; then it
/// registers again and runs the task once more, to completion, once.
#[test]
fn a_paused_agent_is_fenced_and_its_run_leaves_nothing() {
    let _s = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !ready("a_paused_agent_is_fenced_and_its_run_leaves_nothing") {
        return;
    }
    let mut env = Env::new(&[]);
    let mut agent = env.agent("f1", &["--capacity-units", "1"]);
    let t = env.task("long.mp4", 1, |_| {});
    env.submit(&[t]);
    let mut running = Vec::new();
    env.wait("task running", Duration::from_secs(60), |_| {
        running = ffmpeg_children(agent.id());
        !running.is_empty()
    });
    // SAFETY: signalling the agent this test started.
    unsafe { libc::kill(agent.id() as i32, libc::SIGSTOP) };
    // Declared dead as a central would after its timeout (made overdue
    // rather than waited for: no timing on a loaded machine).
    env.rt.block_on(async {
        env.queue.make_overdue("f1").await.unwrap();
        env.queue.assume_watched().await.unwrap();
        let dead = env
            .queue
            .recover_dead_nodes(Duration::from_secs(3), Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(dead.len(), 1, "{dead:?}");
    });
    assert_eq!(env.snapshot().pending, 1);
    let resumed = Instant::now();
    // SAFETY: as above.
    unsafe { libc::kill(agent.id() as i32, libc::SIGCONT) };
    env.wait("the old run killed", Duration::from_secs(10), |_| {
        running
            .iter()
            .all(|p| !Path::new(&format!("/proc/{p}")).exists())
    });
    let fenced_in = resumed.elapsed();
    let (done, staged) = outputs(&env);
    assert!(done.is_empty() && staged.is_empty(), "{done:?} {staged:?}");
    assert!(
        env.invocations("f1").is_empty(),
        "the fenced run was recorded"
    );
    // Registered again, it runs the task once more, to the end.
    env.wait("the task done", Duration::from_secs(180), |e| {
        e.invocations("f1").len() == 1
    });
    env.wait(
        "its completion, its output in place",
        Duration::from_secs(30),
        |e| e.snapshot().nodes.iter().all(|n| n.inflight == 0) && outputs(e).0.len() == 1,
    );
    let invs = env.invocations("f1");
    assert_eq!(invs.len(), 1, "{invs:?}");
    assert_eq!(invs[0]["exit_code"], 0);
    let (done, staged) = outputs(&env);
    assert_eq!((done.len(), staged.len()), (1, 0), "{done:?} {staged:?}");
    env.assert_books_balanced();
    assert!(sigterm(&mut agent).success());
    eprintln!("fenced {fenced_in:?} after SIGCONT");
}

/// A second agent with a node id in use refuses to start and names the
/// holder: on the same host through the local lock, from another host
/// (a UTS and mount namespace of its own) through the lease in Redis. The
/// holder's tasks are untouched.
#[test]
fn a_node_id_in_use_is_refused() {
    let _s = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !ready("a_node_id_in_use_is_refused")
        || !require_tool("a_node_id_in_use_is_refused", "unshare")
    {
        return;
    }
    let mut env = Env::new(&[]);
    let mut agent = env.agent("d1", &["--capacity-units", "1"]);
    let t = env.task("long.mp4", 1, |_| {});
    env.submit(&[t]);
    let mut running = Vec::new();
    env.wait("task running", Duration::from_secs(60), |_| {
        running = ffmpeg_children(agent.id());
        !running.is_empty()
    });
    let holder_pid = format!("pid {}", agent.id());

    let mut same_host = std::process::Command::new(AGENT);
    env.agent_args(&mut same_host, "d1", &["--capacity-units", "1"]);
    let (status, stderr) = stderr_of(same_host.stderr(Stdio::piped()).spawn().unwrap());
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("in use") && stderr.contains(&holder_pid),
        "{stderr}"
    );

    // Another host: its own host name and its own /run/lock.
    let mut other = std::process::Command::new("unshare");
    other
        .args([
            "--uts",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
        ])
        .arg("hostname tk-other-host && mount -t tmpfs tk-lock /run/lock && exec \"$0\" \"$@\"")
        .arg(AGENT)
        .stderr(Stdio::piped());
    env.agent_args(&mut other, "d1", &["--capacity-units", "1"]);
    let (status, stderr) = stderr_of(other.spawn().unwrap());
    assert!(!status.success(), "{stderr}");
    let host = tracekit_proto::queue::host_name();
    assert!(
        stderr.contains("in use by the agent on host")
            && stderr.contains(&host)
            && stderr.contains(&format!("pid {})", agent.id())),
        "{stderr}"
    );
    // The holder's task ran on, untouched.
    assert!(
        running
            .iter()
            .all(|p| Path::new(&format!("/proc/{p}")).exists())
    );
    assert!(sigterm(&mut agent).success());
}

/// A stopping node takes itself out of placement before it hands anything
/// back: with --drain it finishes its task, and the next one, pending all
/// along, is never placed on it meanwhile.
#[test]
fn a_stopping_node_gets_nothing_new() {
    let _s = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !ready("a_stopping_node_gets_nothing_new") {
        return;
    }
    let mut env = Env::new(&[]);
    let mut agent = env.agent("s1", &["--capacity-units", "1", "--drain"]);
    // The first runs long enough for the SIGTERM to come while it runs.
    let tasks = vec![
        env.task("long.mp4", 1, |_| {}),
        env.task("short.mp4", 1, |_| {}),
    ];
    env.submit(&tasks);
    env.wait("first task running", Duration::from_secs(60), |_| {
        !ffmpeg_children(agent.id()).is_empty()
    });
    // SAFETY: signalling the agent this test started.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    // While it drains, the placer keeps placing: nothing lands on s1.
    let start = Instant::now();
    let mut max_queued = 0;
    while agent.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "agent did not stop"
        );
        let s = env.snapshot();
        max_queued = max_queued.max(s.nodes.iter().map(|n| n.queued).sum::<usize>());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(max_queued, 0, "a task was placed on the stopping node");
    assert_eq!(env.invocations("s1").len(), 1);
    let s = env.snapshot();
    assert_eq!(s.pending, 1, "the second task waits in pending: {s:?}");
}

/// Resident memory of a process, kB.
fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// A task with a 5 MB field (pushed by something other than our
/// dispatcher, which refuses it) is dead-lettered at placement in a short
/// entry: the agent never holds it, and the next task runs as usual.
#[test]
fn an_oversized_task_never_reaches_the_agent() {
    let _s = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !ready("an_oversized_task_never_reaches_the_agent") {
        return;
    }
    let mut env = Env::new(&[]);
    let mut agent = env.agent("b1", &["--capacity-units", "1"]);
    // The baseline after one task: the first one's allocations are the
    // agent's, whatever the task.
    let first = env.task("short.mp4", 1, |_| {});
    env.submit(&[first]);
    env.wait("a first task done", Duration::from_secs(60), |e| {
        e.invocations("b1").len() == 1
    });
    std::thread::sleep(Duration::from_secs(1));
    let before = rss_kb(agent.id());
    let huge = env.task("short.mp4", 1, |v| v["scale"] = "9".repeat(5 << 20).into());
    env.rt.block_on(async {
        let mut c = env.queue.conn().manager();
        let _: i64 = redis::cmd("RPUSH")
            .arg("q:pending")
            .arg(&huge)
            .query_async(&mut c)
            .await
            .unwrap();
    });
    let ok = env.task("short.mp4", 1, |_| {});
    env.submit(&[ok]);
    env.wait("the next task done", Duration::from_secs(60), |e| {
        e.invocations("b1").len() == 2
    });
    let dead: Vec<String> = env.rt.block_on(async {
        let mut c = env.queue.conn().manager();
        redis::cmd("LRANGE")
            .arg("q:dead")
            .arg(0)
            .arg(-1)
            .query_async(&mut c)
            .await
            .unwrap()
    });
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].len() <= 2048,
        "dead letter of {} bytes",
        dead[0].len()
    );
    assert!(
        dead[0].contains("more than the limit"),
        "{}",
        &dead[0][..200]
    );
    let after = rss_kb(agent.id());
    assert!(
        after < before + 4096,
        "agent RSS grew from {before} kB to {after} kB"
    );
    assert!(sigterm(&mut agent).success());
    eprintln!("agent RSS {before} kB before, {after} kB after");
    // The node's clock against Redis, measured with the heartbeats (both
    // on this host: within a few ms).
    let meta: serde_json::Value =
        tracekit_tests::read_json(&env.path("logs/b1/run/node_meta.json")).unwrap();
    let offset = meta["clock"]["offset_ms"].as_f64().expect("clock offset");
    assert!(offset.abs() < 50.0, "{meta}");
    assert!(
        meta["clock"]["samples"].as_u64().unwrap_or(0) >= 2,
        "{meta}"
    );
}
