//! The worker for real, as root: the agent binary against a real
//! redis-server, real ffmpeg on small generated inputs, real cgroups and
//! eBPF (helpers in `common`). Tests run one at a time (`SERIAL`): they share
//! the machine's CPUs and cgroups.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tracekit_tests::{Offline, read_jsonl, require_tool};

#[test]
fn runs_up_to_capacity_and_rejects_bad_tasks() {
    let _s = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !ready("runs_up_to_capacity_and_rejects_bad_tasks") {
        return;
    }
    let mut env = Env::new(&[]);
    let mut agent = env.agent("w1", &["--capacity-units", "2", "--cpu-binding", "shared"]);
    env.wait("registration", Duration::from_secs(30), |e| {
        e.snapshot().nodes.iter().any(|n| n.alive)
    });
    let mut tasks: Vec<String> = (0..4).map(|_| env.task("short.mp4", 1, |_| {})).collect();
    let bad = [
        env.task("short.mp4", 1, |v| v["preset"] = "; rm -rf /".into()),
        env.task("short.mp4", 1, |v| v["input"] = "/etc/passwd".into()),
        env.task("short.mp4", 1, |v| v["vthreads"] = 500.into()),
        "{not json".to_string(),
    ];
    tasks.extend(bad.iter().cloned());
    env.submit(&tasks);
    let mut most = 0;
    env.wait("4 tasks done", Duration::from_secs(120), |e| {
        most = most.max(ffmpeg_children(agent.id()).len());
        e.invocations("w1").len() >= 4
    });
    assert!(most <= 2, "{most} tasks ran at once on 2 units");
    assert_eq!(most, 2, "capacity was not used");
    env.wait("dead letters", Duration::from_secs(10), |e| {
        e.snapshot().dead == bad.len()
    });
    let dead = env
        .rt
        .block_on(env.queue.dead_letters(0, -1))
        .expect("dead letters");
    let reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
    for needle in ["preset", "input", "vthreads", "malformed"] {
        assert!(
            reasons.iter().any(|r| r.contains(needle)),
            "{needle} not in {reasons:?}"
        );
    }
    let invs = env.invocations("w1");
    assert_eq!(invs.len(), 4, "{invs:?}");
    for inv in &invs {
        assert!(exit_ok(inv), "{inv}");
        assert!(inv["cpu_ms"].as_f64().unwrap_or(0.0) > 0.0, "{inv}");
        assert!(inv["ts_enqueue"].as_i64() <= inv["ts_start"].as_i64());
        assert!(inv["bytes_out"].as_u64().unwrap_or(0) > 0, "{inv}");
        let out = env.path(&format!(
            "outputs/{}",
            inv["output"].as_str().expect("output")
        ));
        let meta = std::fs::metadata(&out).expect("output exists");
        // Written by the unprivileged user, not root.
        assert_ne!(
            std::os::unix::fs::MetadataExt::uid(&meta),
            0,
            "{out:?} owned by root"
        );
    }
    env.assert_books_balanced();
    assert!(sigterm(&mut agent).success());
}

#[test]
fn exclusive_binding_puts_tasks_on_disjoint_cores() {
    let _s = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !ready("exclusive_binding_puts_tasks_on_disjoint_cores") {
        return;
    }
    let mut env = Env::new(&[]);
    let mut agent = env.agent(
        "w1",
        &["--cpu-binding", "exclusive", "--allocation-ratio", "1"],
    );
    let tasks = vec![
        env.task("long.mp4", 1, |_| {}),
        env.task("long.mp4", 1, |_| {}),
    ];
    env.submit(&tasks);
    let mut pids = Vec::new();
    env.wait("two tasks running", Duration::from_secs(60), |_| {
        pids = ffmpeg_children(agent.id());
        pids.len() == 2
    });
    std::thread::sleep(Duration::from_millis(500)); // let ffmpeg start its threads
    let mut sets: Vec<HashSet<String>> = Vec::new();
    for pid in &pids {
        let mut cores = HashSet::new();
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("threads");
        let mut threads = 0;
        for t in tasks.flatten() {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            if let Some(l) = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")) {
                cores.insert(l.split(':').nth(1).unwrap_or("").trim().to_string());
                threads += 1;
            }
        }
        assert!(threads > 1, "ffmpeg {pid} should be multi-threaded");
        assert_eq!(
            cores.len(),
            1,
            "threads of {pid} on different masks: {cores:?}"
        );
        sets.push(cores);
    }
    assert_ne!(sets[0], sets[1], "two tasks share a core: {sets:?}");
    env.wait("both done", Duration::from_secs(180), |e| {
        e.invocations("w1").len() == 2
    });
    let invs = env.invocations("w1");
    assert_ne!(invs[0]["cpuset"], invs[1]["cpuset"]);
    env.assert_books_balanced();
    assert!(sigterm(&mut agent).success());
}

#[test]
fn shared_binding_gives_fair_shares() {
    let _s = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !ready("shared_binding_gives_fair_shares") {
        return;
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    let mut env = Env::new(&[]);
    // 1 + 2 units on the machine's cores: water-filling gives cores/3 and
    // 2·cores/3 when both want more (each has 4 busy threads).
    let mut agent = env.agent(
        "w1",
        &[
            "--cpu-binding",
            "shared",
            "--capacity-units",
            &(cores as u32 * 2).to_string(),
        ],
    );
    // Each task has as many encoder threads as it may use cores, twice over.
    let edit = |v: &mut Value| {
        v["preset"] = "medium".into();
        v["scale"] = "1920:1080".into();
    };
    let tasks = vec![env.task("long.mp4", 1, edit), env.task("long.mp4", 2, edit)];
    env.submit(&tasks);
    // The machine's busy time, to tell what other work left the tasks.
    let mut busy: Vec<(i64, f64)> = Vec::new();
    env.wait("both done", Duration::from_secs(400), |e| {
        busy.push((tracekit_tests::epoch_ms(), machine_busy_ms()));
        e.invocations("w1").len() == 2
    });
    let invs = env.invocations("w1");
    let samples: Vec<Value> =
        read_jsonl(&env.path("logs/w1/run/CTS/proc_metrics.jsonl")).expect("samples");
    // The window where both ran, minus a second at each edge.
    let start = invs
        .iter()
        .filter_map(|i| i["ts_start"].as_i64())
        .max()
        .expect("start")
        + 1000;
    let end = invs
        .iter()
        .filter_map(|i| i["ts_end"].as_i64())
        .min()
        .expect("end")
        - 1000;
    assert!(
        end - start > 3000,
        "the tasks overlapped too briefly: {invs:?}"
    );
    let mut shares: Vec<(f64, f64, f64)> = Vec::new();
    for inv in &invs {
        let units = inv["cpu_units"].as_f64().expect("units");
        let pid = &inv["pid"];
        let (cpu, dt) = samples
            .iter()
            .filter(|s| &s["pid"] == pid)
            .filter(|s| {
                let ts = s["ts_ms"].as_i64().unwrap_or(0);
                ts - s["dt_ms"].as_i64().unwrap_or(0) >= start && ts <= end
            })
            .fold((0.0, 0.0), |(c, d), s| {
                (
                    c + s["cpu_ms"].as_f64().unwrap_or(0.0),
                    d + s["dt_ms"].as_f64().unwrap_or(0.0),
                )
            });
        let got = cpu / dt;
        let want = cores * units / 3.0;
        eprintln!("{units} units: {got:.3} cores (computed share {want:.3})");
        shares.push((units, got, want));
    }
    // What the machine's other work leaves is split 1:2 within 15 %, and
    // neither task falls far below its share of the cores that work left
    // (a broken binding would give both tasks alike; other processes on the
    // host compete with the tasks whatever the binding).
    let total: f64 = shares.iter().map(|s| s.1).sum();
    let at = |t: i64| {
        busy.iter()
            .min_by_key(|(ts, _)| (ts - t).abs())
            .map(|b| b.1)
            .unwrap_or(0.0)
    };
    let others = ((at(end) - at(start)) / (end - start) as f64 - total).max(0.0);
    let left = (cores - others).max(0.0) / cores;
    eprintln!("other work used {others:.3} cores: the tasks had {left:.2} of the machine");
    for (units, got, want) in shares {
        let want = want * left;
        let split = got / total;
        let want_split = units / 3.0;
        assert!(
            (split - want_split).abs() <= 0.15 * want_split,
            "{units} units got {split:.3} of the tasks' CPU, want {want_split:.3}"
        );
        assert!(
            got >= 0.75 * want,
            "{units} units got {got:.3} cores, computed {want:.3}"
        );
    }
    env.assert_books_balanced();
    assert!(sigterm(&mut agent).success());
}

/// CPU time the whole machine has spent busy (not idle or iowait), ms.
fn machine_busy_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    let all: f64 = ticks.iter().take(8).sum();
    (all - idle) * 1000.0 / hz
}

#[test]
fn kill_9_and_restart_runs_every_task_once_more() {
    let _s = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !ready("kill_9_and_restart_runs_every_task_once_more") {
        return;
    }
    let mut env = Env::new(&[]);
    let mut agent = env.agent("w1", &["--capacity-units", "2"]);
    let tasks = vec![
        env.task("long.mp4", 1, |_| {}),
        env.task("long.mp4", 1, |_| {}),
        env.task("short.mp4", 1, |_| {}),
    ];
    env.submit(&tasks);
    let mut running = Vec::new();
    env.wait("two tasks running", Duration::from_secs(60), |_| {
        running = ffmpeg_children(agent.id());
        running.len() == 2
    });
    sigkill(&mut agent);
    // Its ffmpegs die with it (parent-death signal).
    env.wait("orphans gone", Duration::from_secs(10), |_| {
        running
            .iter()
            .all(|p| !Path::new(&format!("/proc/{p}")).exists())
    });
    let s = env.snapshot();
    assert_eq!(
        s.nodes[0].inflight, 2,
        "the killed agent's tasks stay in flight: {s:?}"
    );
    let mut agent = env.agent("w1", &["--capacity-units", "2"]);
    env.wait("all three done", Duration::from_secs(300), |e| {
        e.invocations("w1").iter().filter(|i| exit_ok(i)).count() == 3
    });
    let invs = env.invocations("w1");
    let seqs: HashSet<i64> = invs.iter().filter_map(|i| i["seq"].as_i64()).collect();
    assert_eq!(
        seqs.len(),
        3,
        "every task ran to completion once after the restart: {invs:?}"
    );
    // The killed runs' partial outputs were swept; each task has its output
    // (moved into place once its completion is accepted, just after its
    // line is written).
    let names = |e: &Env| -> Vec<String> {
        std::fs::read_dir(e.path("outputs"))
            .expect("outputs")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    let mut last = Vec::new();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        last = names(&env);
        if last.len() == 3 && last.iter().all(|n| !n.starts_with(".tracekit.")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let names = last;
    assert!(
        names.iter().all(|n| !n.starts_with(".tracekit.")),
        "{names:?}"
    );
    assert_eq!(names.len(), 3, "{names:?}");
    env.assert_books_balanced();
    assert!(sigterm(&mut agent).success());
}

#[test]
fn sigterm_hands_back_or_drains() {
    let _s = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !ready("sigterm_hands_back_or_drains") {
        return;
    }
    let mut env = Env::new(&[]);
    // Without --drain: the running task is stopped and handed back.
    env.placer.store(true, Ordering::Relaxed);
    let mut agent = env.agent("w1", &["--capacity-units", "1"]);
    let t = env.task("long.mp4", 1, |_| {});
    env.submit(&[t]);
    let mut running = Vec::new();
    env.wait("task running", Duration::from_secs(60), |_| {
        running = ffmpeg_children(agent.id());
        !running.is_empty()
    });
    assert!(sigterm(&mut agent).success());
    assert!(
        running
            .iter()
            .all(|p| !Path::new(&format!("/proc/{p}")).exists())
    );
    let s = env.snapshot();
    assert_eq!(s.pending, 1, "the stopped task is back in pending: {s:?}");
    assert!(env.invocations("w1").is_empty());
    // With --drain: it runs to the end before the agent exits.
    let mut agent = env.agent("w1", &["--capacity-units", "1", "--drain"]);
    env.wait("task running again", Duration::from_secs(60), |_| {
        !ffmpeg_children(agent.id()).is_empty()
    });
    assert!(sigterm(&mut agent).success());
    let invs = env.invocations("w1");
    assert_eq!(invs.len(), 1, "{invs:?}");
    assert!(exit_ok(&invs[0]));
    let s = env.snapshot();
    assert_eq!((s.pending, s.dead), (0, 0), "{s:?}");
}

#[test]
fn survives_a_redis_restart() {
    let _s = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !ready("survives_a_redis_restart") {
        return;
    }
    // AOF so the restarted server has the state back.
    let mut env = Env::new(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut agent = env.agent("w1", &["--capacity-units", "1"]);
    let t = env.task("long.mp4", 1, |_| {});
    env.submit(&[t]);
    env.wait("task running", Duration::from_secs(60), |_| {
        !ffmpeg_children(agent.id()).is_empty()
    });
    env.placer.store(false, Ordering::Relaxed);
    // Stop Redis for longer than the task has left to run.
    env.stop_redis();
    env.wait(
        "task finished while Redis was down",
        Duration::from_secs(120),
        |_| ffmpeg_children(agent.id()).is_empty(),
    );
    std::thread::sleep(Duration::from_secs(2));
    let mut again = env.restart_redis();
    env.wait("the completion reported", Duration::from_secs(60), |e| {
        e.rt.block_on(e.queue.snapshot(Duration::from_secs(3)))
            .map(|s| {
                s.nodes
                    .iter()
                    .all(|n| n.inflight == 0 && n.cap == n.cap_total)
            })
            .unwrap_or(false)
    });
    let invs = env.invocations("w1");
    assert_eq!(invs.len(), 1);
    assert!(exit_ok(&invs[0]));
    env.assert_books_balanced();
    assert!(sigterm(&mut agent).success());
    let _ = again.0.kill();
    let _ = again.0.wait();
}

#[test]
fn refuses_to_run_unbound_unless_allowed() {
    let _s = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !ready("refuses_to_run_unbound_unless_allowed") || !require_tool("unshare", "unshare") {
        return;
    }
    let mut env = Env::new(&[]);
    // Asked for a binding it cannot apply: it refuses to start, and says why.
    let (status, stderr) = stderr_of(env.agent_without_cgroups("nocg", &[]));
    assert!(!status.success(), "started without cgroups: {stderr}");
    assert!(
        stderr.contains("--cpu-binding shared cannot be applied")
            && stderr.contains("no usable cgroup hierarchy")
            && stderr.contains("--allow-unbound"),
        "{stderr}"
    );
    assert!(
        env.snapshot().nodes.is_empty(),
        "it registered before refusing"
    );

    // Opted in: tasks run unbound, and everything says so.
    let agent = env.agent_without_cgroups("nocg", &["--allow-unbound"]);
    let mut agent = KillOnDrop(agent);
    let task = env.task("short.mp4", 1, |_| {});
    env.submit(&[task]);
    env.wait("the task", Duration::from_secs(60), |e| {
        e.invocations("nocg").len() == 1
    });
    let snap = env.snapshot();
    assert!(
        snap.nodes[0]
            .binding
            .as_deref()
            .is_some_and(|b| b.starts_with("UNBOUND")),
        "{:?}",
        snap.nodes[0]
    );
    let inv = &env.invocations("nocg")[0];
    assert!(
        inv["binding_error"]
            .as_str()
            .is_some_and(|e| e.contains("--allow-unbound")),
        "{inv}"
    );
    assert!(inv["cgroup"].is_null(), "{inv}");
    let meta: Value = tracekit_tests::read_json(&env.path("logs/nocg/run/node_meta.json"))
        .expect("node_meta.json");
    assert!(meta["binding_error"].is_string(), "{meta}");
    assert!(sigterm(&mut agent).success());
    env.assert_books_balanced();
}

#[test]
fn a_binding_that_fails_fails_the_task_with_its_reason() {
    let _s = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !ready("a_binding_that_fails_fails_the_task_with_its_reason") {
        return;
    }
    let hotplug = Path::new("/sys/devices/system/cpu/cpu1/online");
    if !hotplug.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "no CPU hotplug: cannot make a binding fail here"
        );
        eprintln!("skipped: no CPU hotplug on this machine");
        return;
    }
    let mut env = Env::new(&[]);
    let mut agent = env.agent(
        "badbind",
        &["--cpu-binding", "exclusive", "--capacity-units", "2"],
    );
    env.wait("registration", Duration::from_secs(30), |e| {
        !e.snapshot().nodes.is_empty()
    });
    // The agent counted two cores; with one gone, binding a task to both
    // fails (the kernel refuses an offline CPU in a cpuset).
    let online = Offline::take(1).expect("taking CPU 1 offline");
    let task = env.task("short.mp4", 2, |_| {});
    env.submit(&[task]);
    env.wait("the dead letter", Duration::from_secs(60), |e| {
        e.snapshot().dead == 1
    });
    drop(online);
    let dead = env
        .rt
        .block_on(env.queue.dead_letters(0, -1))
        .expect("dead letters");
    let reason = &dead[0].reason;
    assert!(
        reason.starts_with("failed 3 attempts (max 3): CPU binding failed"),
        "{reason}"
    );
    assert!(reason.contains("cpuset.cpus"), "{reason}");
    // It never ran, bound or not.
    assert!(env.invocations("badbind").is_empty());
    assert_eq!(sigterm(&mut agent).code(), Some(0));
    env.assert_books_balanced();
}

#[test]
fn an_unreadable_input_is_dead_lettered_at_once_and_a_failure_quotes_ffmpeg() {
    let _s = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !ready("an_unreadable_input_is_dead_lettered_at_once_and_a_failure_quotes_ffmpeg") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let mut env = Env::new(&[]);
    let secret = env.path("inputs/secret.mp4");
    std::fs::copy(env.path("inputs/short.mp4"), &secret).expect("copy");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::write(env.path("inputs/garbage.mp4"), b"this is not a video\n").expect("write");
    let mut agent = env.agent("acc", &["--capacity-units", "2", "--cpu-binding", "shared"]);
    env.wait("registration", Duration::from_secs(30), |e| {
        e.snapshot().nodes.iter().any(|n| n.alive)
    });
    let dead = dead_after(&mut env, "secret.mp4", 1);
    let reason = &dead[0].reason;
    assert!(
        reason.starts_with("the run-as user nobody") && reason.contains("cannot read the input"),
        "{reason}"
    );
    assert!(reason.contains("mode 0600"), "{reason}");
    // At once: no attempt was made.
    assert_eq!(dead[0].attempts, Some(0));
    assert!(env.invocations("acc").is_empty());

    let dead = dead_after(&mut env, "garbage.mp4", 2);
    let reason = &dead[1].reason;
    assert!(
        reason.starts_with("failed 3 attempts (max 3): ffmpeg exited with"),
        "{reason}"
    );
    assert!(reason.contains("/ffmpeg/"), "{reason}");
    assert!(
        reason.contains("Invalid data found when processing input"),
        "{reason}"
    );
    assert!(reason.len() <= 1024 + "failed 3 attempts (max 3): ".len());
    assert_eq!(dead[1].attempts, Some(3));
    assert_eq!(sigterm(&mut agent).code(), Some(0));
    env.assert_books_balanced();
}

/// Submits a task on `input` and waits until the dead-letter list holds
/// `count` letters; returns them.
fn dead_after(env: &mut Env, input: &str, count: usize) -> Vec<tracekit_proto::DeadLetter> {
    let task = env.task(input, 1, |_| {});
    env.submit(&[task]);
    env.wait("the dead letter", Duration::from_secs(60), |e| {
        e.snapshot().dead == count
    });
    env.rt
        .block_on(env.queue.dead_letters(0, -1))
        .expect("dead letters")
}
