//! The `central` and `status` commands as processes: dead-node recovery,
//! dead letters with reasons, the password never on the command line.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tracekit_proto::testing::RedisServer;
use tracekit_proto::{PlaceOptions, SubmitTarget, Take};

#[tokio::test]
async fn dead_node_work_goes_to_a_live_node() {
    let server = RedisServer::start().expect("redis");
    let q = queue(&server).await;
    q.register(&reg("a", 2, 0)).await.unwrap();
    q.register(&reg("b", 2, 0)).await.unwrap();
    let items: Vec<(u64, String)> = (0..4).map(|i| (i, task(&format!("t{i}"), 1))).collect();
    q.submit("d", SubmitTarget::Pending, &items).await.unwrap();
    // First fit: t0, t1 on a; t2, t3 on b. a's worker takes t0, then dies.
    q.place(&PlaceOptions {
        batch: 10,
        ..PlaceOptions::default()
    })
    .await
    .unwrap();
    assert_eq!(
        q.take_task("a", "tok-a").await.unwrap(),
        Take::Task(task("t0", 1))
    );
    let mut c = q.conn().manager();
    // a's last heartbeat is made ancient; b heartbeats well within the
    // timeout (no timing assumptions on a loaded machine).
    let _: i64 = cmd(&mut c, &["ZADD", "nodes:alive", "1", "a"]).await;

    // The centrals have been watching a long time (a is overdue now).
    q.assume_watched().await.unwrap();
    let mut central = sched(&server);
    central.args([
        "central",
        "--heartbeat-timeout",
        "30",
        "--recover-interval",
        "0.1",
        "--idle-interval",
        "0.01",
    ]);
    let _central = Proc::spawn(central);
    // b stays alive and works through everything, including a's tasks.
    let mut finished = Vec::new();
    let start = Instant::now();
    while finished.len() < 4 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "only finished {finished:?}"
        );
        q.heartbeat("b", "tok-b").await.unwrap();
        match q.take_task("b", "tok-b").await.unwrap() {
            Take::Task(t) => {
                assert!(q.complete_task("b", &t).await.unwrap().counts());
                finished.push(t);
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    finished.sort();
    assert_eq!(
        finished,
        (0..4)
            .map(|i| task(&format!("t{i}"), 1))
            .collect::<Vec<_>>()
    );
    // a is dead, its books reset; the interrupted t0 counted one attempt.
    assert_eq!(get_i64(&mut c, "cap:a").await, 2);
    assert_eq!(get_i64(&mut c, "run_count:a").await, 0);
    let attempts: Vec<String> = cmd(&mut c, &["HKEYS", "q:attempts"]).await;
    assert!(attempts.is_empty(), "completed tasks forget their attempts");
    assert_eq!(
        q.heartbeat("a", "tok-a").await.unwrap(),
        tracekit_proto::Heartbeat::Lost
    );

    let out = sched(&server)
        .args(["status", "--heartbeat-timeout", "30"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line_a = text
        .lines()
        .find(|l| l.starts_with("a "))
        .expect("row for a");
    assert!(line_a.contains("dead") && line_a.contains("2/2"), "{text}");
    let line_b = text
        .lines()
        .find(|l| l.starts_with("b "))
        .expect("row for b");
    assert!(line_b.contains("alive"), "{text}");
    assert!(
        text.contains("pending: 0") && text.contains("dead letters: 0"),
        "{text}"
    );
}

#[tokio::test]
async fn central_dead_letters_bad_tasks_and_exits_when_empty() {
    let server = RedisServer::start().expect("redis");
    let q = queue(&server).await;
    q.register(&reg("a", 4, 0)).await.unwrap();
    let mut c = q.conn().manager();
    let failing = task("failing", 1);
    let _: i64 = cmd(&mut c, &["HSET", "q:attempts", &failing, "2"]).await;
    for raw in [
        "{broken",
        &task("zero", 0),
        &task("huge", 9),
        &failing,
        &task("ok", 1),
    ] {
        let _: i64 = cmd(&mut c, &["RPUSH", "q:pending", raw]).await;
    }
    let out = sched(&server)
        .args(["central", "--max-attempts", "2", "--exit-when-empty"])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(log.matches("dead-lettered").count(), 4, "{log}");
    assert!(log.contains("needs 9 cpu units"), "{log}");
    let reasons: Vec<String> = q
        .dead_letters(0, -1)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.reason)
        .collect();
    assert_eq!(
        reasons,
        [
            "malformed task JSON",
            "cpu_units < 1",
            "needs 9 cpu units, the largest live node has 4",
            "failed 2 attempts (max 2)"
        ]
    );
    assert_eq!(lrange(&mut c, "q:a").await, vec![task("ok", 1)]);

    let json = sched(&server).args(["status", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("status --json");
    assert_eq!(v["dead"], 4);
    assert_eq!(v["nodes"][0]["queued"], 1);
    assert_eq!(v["nodes"][0]["cap"], 3);
}

#[test]
fn wrong_password_and_bad_flags_fail_clearly() {
    let server = RedisServer::start().expect("redis");
    let out = sched(&server)
        .env("REDIS_PASSWORD", "wrong")
        .args(["status", "--redis-retry-for", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, format!("{}\n", server.password())).unwrap();
    let out = sched(&server)
        .env_remove("REDIS_PASSWORD")
        .args(["status", "--redis-password-file"])
        .arg(&pw)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = sched(&server)
        .args(["central", "--weigher", "ram"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown --weigher"));
    let out = sched(&server)
        .args(["central", "--scan-pending", "3"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("strict FIFO"));
}

#[tokio::test]
async fn central_and_status_over_tls() {
    let server = RedisServer::start_tls().expect("redis with TLS");
    let q = queue(&server).await;
    q.register(&reg("a", 2, 0)).await.unwrap();
    q.submit("d", SubmitTarget::Pending, &[(0, task("t0", 1))])
        .await
        .unwrap();
    let ca = server.ca_file().expect("CA file");
    let out = sched(&server)
        .args(["central", "--exit-when-empty", "--redis-ca-file"])
        .arg(&ca)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut c = q.conn().manager();
    assert_eq!(lrange(&mut c, "q:a").await, vec![task("t0", 1)]);
    let out = sched(&server)
        .env("TRACEKIT_REDIS_CA_FILE", &ca)
        .args(["status"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1/2"));
}

/// The README's central unit hardens it (`ProtectSystem=strict`,
/// `ProtectHome=yes`, `PrivateTmp=yes`, `NoNewPrivileges=yes`); reproduced
/// without systemd — the whole file system read-only, /home, /root and
/// /tmp replaced by empty ones, no_new_privs — the central still places.
#[tokio::test]
async fn the_readme_units_hardening_leaves_the_central_working() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("CI").is_none(),
            "needs root (mount namespaces) and CI is set"
        );
        eprintln!("SKIPPED: needs root");
        return;
    }
    const HARDEN: &str = r#"set -e
mount --rbind / / ; mount -o remount,bind,ro /
for d in /home /root /tmp; do
  if [ -d "$d" ]; then mount -t tmpfs -o mode=000 tmpfs "$d"; fi
done
bin="$1"; shift
exec setpriv --no-new-privs "$bin" "$@"
"#;
    let server = RedisServer::start().expect("redis");
    let q = queue(&server).await;
    q.register(&reg("a", 2, 0)).await.unwrap();
    let items: Vec<(u64, String)> = (0..2).map(|i| (i, task(&format!("t{i}"), 1))).collect();
    q.submit("d", SubmitTarget::Pending, &items).await.unwrap();
    // Installed outside the directories the unit closes (the build may
    // live under /tmp or /root).
    let installed = tempfile::tempdir_in("/run").unwrap();
    let bin = installed.path().join("tracekit-sched");
    std::fs::copy(env!("CARGO_BIN_EXE_tracekit-sched"), &bin).unwrap();
    let mut central = std::process::Command::new("unshare");
    central
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            HARDEN,
            "sh",
        ])
        .arg(&bin)
        .args(["central", "--idle-interval", "0.05"])
        .env("REDIS_PASSWORD", server.password())
        .env("TRACEKIT_REDIS", server.url_without_password())
        .env("RUST_LOG", "warn");
    let central = Proc::spawn(central);
    let start = Instant::now();
    while q.queue_len("a").await.unwrap() < 2 {
        q.heartbeat("a", "tok-a").await.unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the hardened central placed nothing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", central.0.id())).unwrap();
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    let mounts = std::fs::read_to_string(format!("/proc/{}/mounts", central.0.id())).unwrap();
    assert!(
        mounts
            .lines()
            .any(|l| l.split(' ').nth(1) == Some("/") && l.contains(" ro,")),
        "/ is not read-only for the central: {mounts}"
    );
}
