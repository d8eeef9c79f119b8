//! The operator's commands against a real Redis: `status` (counters,
//! running tasks, retired nodes, `--watch` on and off a terminal), `wait`
//! (exit statuses, dead-letter reasons, progress bar on a terminal) and
//! `dead` (list, requeue, clear), and the one-shot commands' give-up on an
//! unreachable Redis (and not on a refused password).
#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use tracekit_proto::testing::RedisServer;
use tracekit_proto::{PlaceOptions, SubmitTarget, Take};

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn traced(name: &str) -> String {
    format!(
        r#"{{"input":"/in/{name}.mp4","output":"/out/{name}.mp4","cpu_units":1,"trace_id":"t-{name}","profile":"fast1080p"}}"#
    )
}

/// Submits one traced task per name, in order.
async fn submit_traced(q: &tracekit_proto::Queue, names: &[&str]) {
    let items: Vec<(u64, String)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (i as u64, traced(n)))
        .collect();
    q.submit("d", SubmitTarget::Pending, &items).await.unwrap();
}

fn place_all() -> PlaceOptions {
    PlaceOptions {
        batch: 100,
        ..PlaceOptions::default()
    }
}

/// Runs `cmd` under a pseudo-terminal (util-linux `script`), returning
/// everything it wrote to the terminal.
fn on_a_tty(cmd: &Command) -> String {
    let mut line = String::new();
    for (k, v) in cmd.get_envs() {
        if let (k, Some(v)) = (k.to_string_lossy(), v) {
            line.push_str(&format!("{k}='{}' ", v.to_string_lossy()));
        }
    }
    line.push_str(&format!("'{}'", cmd.get_program().to_string_lossy()));
    for a in cmd.get_args() {
        line.push_str(&format!(" '{}'", a.to_string_lossy()));
    }
    let out = Command::new("script")
        .args(["-q", "-e", "-c", &format!("env {line}"), "/dev/null"])
        .output()
        .expect("script(1) runs the command on a pseudo-terminal");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn status_shows_counters_running_tasks_and_hides_nodes_that_left() {
    let server = RedisServer::start().expect("redis");
    let q = queue(&server).await;
    q.register(&reg("n1", 4, 0)).await.unwrap();
    q.register(&reg("gone", 4, 0)).await.unwrap();
    q.deregister("gone", "tok-gone").await.unwrap();
    submit_traced(&q, &["a", "b", "c"]).await;
    q.place(&place_all()).await.unwrap();
    let Take::Task(a) = q.take_task("n1", "tok-n1").await.unwrap() else {
        panic!("no task")
    };
    q.complete_task("n1", &a).await.unwrap();
    let Take::Task(_) = q.take_task("n1", "tok-n1").await.unwrap() else {
        panic!("no task")
    };

    // A node that just left is still shown; one that left long ago is not.
    let recent = sched(&server).arg("status").output().unwrap();
    assert!(text(&recent).0.contains("\ngone "), "{:?}", text(&recent));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let out = sched(&server)
        .args(["status", "--retired-after", "0.01"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(
            "3 submitted   0 pending   1 placed   1 running   1 done   0 failed attempts   0 dead"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("throughput: 1/min"), "{stdout}");
    assert!(
        stdout.contains("running t-b  profile fast1080p"),
        "{stdout}"
    );
    assert!(!stdout.contains("gone"), "{stdout}");
    assert!(
        stdout.contains("1 node(s) that left long ago are hidden"),
        "{stdout}"
    );
    let all = sched(&server).args(["status", "--all"]).output().unwrap();
    assert!(text(&all).0.contains("gone"));

    let json = sched(&server)
        .args(["status", "--json", "--retired-after", "0"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["stats"]["done"], 1);
    assert_eq!(v["stats"]["running"], 1);
    assert_eq!(v["throughput_per_min"], 1);
    assert_eq!(v["retired"], 1);
    assert_eq!(v["nodes"][0]["running"][0]["trace_id"], "t-b");
    assert!(v["nodes"][0]["running"][0]["elapsed_ms"].as_i64().unwrap() >= 0);

    // --watch: snapshots one after another off a terminal, redrawn on one.
    let mut piped = sched(&server)
        .args(["status", "--watch", "0.2"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    piped.kill().unwrap();
    let out = piped.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.matches("--- ").count() >= 2, "{stdout}");
    assert!(!stdout.contains("\x1b[2J"), "{stdout}");
    let mut watch = sched(&server);
    watch.args(["status", "--watch", "0.2"]);
    // `timeout` ends the watch: run it under the terminal.
    let mut line = Command::new("timeout");
    line.arg("0.8")
        .arg(watch.get_program())
        .args(watch.get_args());
    for (k, v) in watch.get_envs() {
        if let Some(v) = v {
            line.env(k, v);
        }
    }
    let screen = on_a_tty(&line);
    assert!(screen.contains("\x1b[2J"), "{screen}");
    assert!(!screen.contains("--- "), "{screen}");
}

#[tokio::test]
async fn wait_exits_0_when_all_is_done_and_3_with_dead_letters() {
    let server = RedisServer::start().expect("redis");
    let q = queue(&server).await;
    q.register(&reg("n1", 4, 0)).await.unwrap();
    // Nothing submitted yet: wait waits, and gives up at its timeout.
    let out = sched(&server)
        .args(["wait", "--timeout", "0.5", "--interval", "0.1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{:?}", text(&out));

    let items: Vec<(u64, String)> = (0..4).map(|i| (i, traced(&format!("w{i}")))).collect();
    q.submit("d", SubmitTarget::Pending, &items).await.unwrap();
    let waiter = sched(&server)
        .args(["wait", "--timeout", "30", "--interval", "0.1"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A worker runs them all.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        q.place(&place_all()).await.unwrap();
        match q.take_task("n1", "tok-n1").await.unwrap() {
            Take::Task(t) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                q.complete_task("n1", &t).await.unwrap();
            }
            _ => break,
        }
    }
    let out = waiter.wait_with_output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("all 4 task(s) done"), "{stdout}");
    // Off a terminal: log lines, no bar.
    assert!(stderr.contains("tasks finished"), "{stderr}");
    assert!(!stderr.contains("\x1b["), "{stderr}");

    // One more task fails for good: wait says why, exit status 3.
    q.submit("d", SubmitTarget::Pending, &[(9, traced("bad"))])
        .await
        .unwrap();
    q.place(&place_all()).await.unwrap();
    let Take::Task(t) = q.take_task("n1", "tok-n1").await.unwrap() else {
        panic!("no task")
    };
    q.dead_letter_task("n1", &t, "ffmpeg exited with 1\nlast stderr: no such codec")
        .await
        .unwrap();
    let out = sched(&server)
        .args(["wait", "--timeout", "5"])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("4 task(s) done, 1 dead-lettered"),
        "{stderr}"
    );
    assert!(stderr.contains("task t-bad  input /in/bad.mp4"), "{stderr}");
    assert!(
        stderr.contains("    last stderr: no such codec"),
        "{stderr}"
    );

    // On a terminal: an indicatif bar.
    let screen = on_a_tty(sched(&server).args(["wait", "--timeout", "5"]));
    assert!(screen.contains("5/5 tasks"), "{screen}");
    assert!(screen.contains("=]"), "{screen}");
}

#[tokio::test]
async fn dead_letters_are_listed_requeued_and_cleared() {
    let server = RedisServer::start().expect("redis");
    let q = queue(&server).await;
    q.register(&reg("n1", 4, 0)).await.unwrap();
    submit_traced(&q, &["x", "y", "z"]).await;
    q.place(&place_all()).await.unwrap();
    for reason in ["bad x", "bad y", "bad z"] {
        let Take::Task(t) = q.take_task("n1", "tok-n1").await.unwrap() else {
            panic!("no task")
        };
        q.dead_letter_task("n1", &t, reason).await.unwrap();
    }
    let out = sched(&server).args(["dead", "list"]).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("3 dead letter(s)"), "{stdout}");
    assert!(
        stdout.contains("attempts 0  node n1  task t-x  input /in/x.mp4\n    bad x"),
        "{stdout}"
    );
    let json = sched(&server)
        .args(["dead", "list", "--json"])
        .output()
        .unwrap();
    let ids: Vec<String> = String::from_utf8_lossy(&json.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids.len(), 3);

    // A bad id is refused clearly; a good one requeues exactly that task.
    let bad = sched(&server)
        .args(["dead", "requeue", "xyz"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad).1.contains("is not a dead letter id"));
    let none = sched(&server)
        .args(["dead", "requeue", "0000000"])
        .output()
        .unwrap();
    assert!(text(&none).1.contains("no dead letter has the id 0000000"));
    let one = sched(&server)
        .args(["dead", "requeue", &ids[1][..10]])
        .output()
        .unwrap();
    assert!(one.status.success(), "{:?}", text(&one));
    assert_eq!(q.pending_tasks().await.unwrap(), vec![traced("y")]);
    let mut c = q.conn().manager();
    let attempts: Option<String> = cmd(&mut c, &["HGET", "q:attempts", &traced("y")]).await;
    assert_eq!(attempts, None);

    let all = sched(&server)
        .args(["dead", "requeue", "--all"])
        .output()
        .unwrap();
    assert!(text(&all).0.contains("requeued 2 task(s)"));
    assert_eq!(q.pending_tasks().await.unwrap().len(), 3);
    assert_eq!(q.run_stats().await.unwrap().dead, 0);

    let _: i64 = cmd(&mut c, &["RPUSH", "q:pending", "{broken"]).await;
    q.place(&place_all()).await.unwrap();
    let cleared = sched(&server).args(["dead", "clear"]).output().unwrap();
    assert!(text(&cleared).0.contains("cleared 1 dead letter(s)"));
    assert_eq!(q.run_stats().await.unwrap().dead_letters, 0);
}

/// A one-shot command gives up on an unreachable Redis with one clean
/// message (no backtrace, even with RUST_BACKTRACE=1); a usage error too.
#[test]
fn one_shot_commands_give_up_on_an_unreachable_redis() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    for sub in [
        &["status"][..],
        &["wait"],
        &["dead", "list"],
        &["gather", "--run-id", "r"],
    ] {
        let start = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_tracekit-sched"))
            .args(sub)
            .args(["--redis", &format!("redis://127.0.0.1:{port}/0")])
            .args(["--redis-retry-for", "1"])
            .env("RUST_BACKTRACE", "1")
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{sub:?}: {stderr}");
        assert!(start.elapsed() < Duration::from_secs(15), "{sub:?}");
        assert!(
            stderr.starts_with(&format!(
                "error: cannot reach Redis at redis://127.0.0.1:{port}/0 (gave up after 1 s"
            )),
            "{sub:?}: {stderr}"
        );
        assert!(!stderr.contains("Stack backtrace"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    let usage = Command::new(env!("CARGO_BIN_EXE_tracekit-sched"))
        .args(["status", "--watch", "soon"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert_eq!(usage.status.code(), Some(2));
    assert!(!text(&usage).1.contains("backtrace"));
}

/// A wrong password, or none where Redis wants one, fails at once with a
/// message that says so: waiting would not cure it, and Redis is reachable.
#[test]
fn a_refused_password_fails_at_once_and_says_so() {
    let server = RedisServer::start().expect("redis");
    let url = server.url_without_password();
    for (password, says) in [
        (Some("not-the-password"), "refused the password"),
        (None, "wants a password and none was given"),
    ] {
        let mut cmd = assert_cmd::Command::new(env!("CARGO_BIN_EXE_tracekit-sched"));
        cmd.args(["status", "--redis", &url])
            .env_remove("REDIS_PASSWORD")
            .env("RUST_LOG", "error")
            // A generous bound: the old message came after no wait either,
            // but a retry loop would hold it for the default 30 s.
            .timeout(Duration::from_secs(20));
        if let Some(p) = password {
            cmd.env("REDIS_PASSWORD", p);
        }
        let out = cmd.assert().failure().code(1).get_output().clone();
        let (_, stderr) = text(&out);
        assert!(
            stderr.starts_with(&format!("error: Redis at {url} {says}")),
            "{stderr}"
        );
        assert!(!stderr.contains("cannot reach"), "{stderr}");
        assert!(!stderr.contains("gave up"), "{stderr}");
        assert!(!stderr.contains(server.password()), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

/// A password inside the URL on the command line gets a warning.
#[tokio::test]
async fn a_password_in_the_url_is_warned_about() {
    let server = RedisServer::start().expect("redis");
    let out = Command::new(env!("CARGO_BIN_EXE_tracekit-sched"))
        .args(["status", "--redis", &server.url()])
        .env_remove("REDIS_PASSWORD")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("shows in `ps`") || stderr.contains("sees in `ps`"),
        "{stderr}"
    );
    assert!(stderr.contains("REDIS_PASSWORD"), "{stderr}");
    // From the environment it does not show: no warning.
    let quiet = sched(&server).arg("status").output().unwrap();
    assert!(!text(&quiet).1.contains("ps`"));
}

/// `dispatch` and `gather` draw a bar on a terminal, and none elsewhere.
#[tokio::test]
async fn dispatch_and_gather_show_a_bar_on_a_terminal_only() {
    let server = RedisServer::start().expect("redis");
    let inputs = tempfile::tempdir().unwrap();
    std::fs::write(inputs.path().join("clip.mp4"), b"").unwrap();
    let mut dispatch = sched(&server);
    dispatch
        .arg("dispatch")
        .arg("--inputs")
        .arg(inputs.path())
        .args(["--outputs", "/out", "--mix", "light1c=1", "--total", "5"])
        .args([
            "--pending",
            "--pending-mode",
            "fifo",
            "--pending-max",
            "100",
        ]);
    let screen = on_a_tty(&dispatch);
    assert!(screen.contains("5/5 tasks submitted"), "{screen}");
    let piped = dispatch.output().unwrap();
    let (_, stderr) = text(&piped);
    assert!(piped.status.success(), "{stderr}");
    assert!(
        !stderr.contains("tasks submitted") && !stderr.contains("=]"),
        "{stderr}"
    );
    assert_eq!(
        queue(&server).await.run_stats().await.unwrap().submitted,
        10
    );

    let conn = server.conn().await.unwrap();
    let node_dir = tempfile::tempdir().unwrap();
    std::fs::write(node_dir.path().join("node_meta.json"), b"{}").unwrap();
    for node in ["n1", "n2"] {
        tracekit_proto::gather::publish(&conn, "r1", node, node_dir.path())
            .await
            .unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let mut gather = sched(&server);
    gather
        .args(["gather", "--run-id", "r1", "--out"])
        .arg(out.path());
    let screen = on_a_tty(&gather);
    assert!(screen.contains("2/2 nodes gathered"), "{screen}");
    let piped = gather.output().unwrap();
    assert!(piped.status.success(), "{:?}", text(&piped));
    assert!(text(&piped).0.contains("gathered 2 node(s) of run r1"));
}
