//! What the agent-binary tests share: a redis-server, a node's directories,
//! a placement loop standing in for `tracekit-sched central` (the same
//! protocol call), and helpers to start, signal and watch agents.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tracekit_proto::testing::RedisServer;
use tracekit_proto::{PlaceOptions, Queue, Snapshot, SubmitTarget};
use tracekit_tests::{read_jsonl, require_root, require_tool, test_video};

pub static SERIAL: Mutex<()> = Mutex::new(());
pub const AGENT: &str = env!("CARGO_BIN_EXE_tracekit-agent");

pub fn ready(test: &str) -> bool {
    require_root(test) && require_tool(test, "ffmpeg") && require_tool(test, "redis-server")
}

/// A redis-server, the directories of a node, and a placement loop.
pub struct Env {
    pub redis: RedisServer,
    pub rt: tokio::runtime::Runtime,
    pub queue: Queue,
    pub dir: tempfile::TempDir,
    pub placer: Arc<AtomicBool>,
    pub submitted: u64,
    pub created: u64,
}

impl Env {
    pub fn new(redis_args: &[&str]) -> Env {
        let redis = RedisServer::start_with(redis_args).expect("redis-server");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let queue = rt.block_on(redis.queue()).expect("queue");
        let dir = tempfile::tempdir().expect("tempdir");
        for d in ["inputs", "outputs", "logs"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("mkdir");
        }
        // Short and long test videos, copied under this node's inputs root.
        for (name, secs) in [("short.mp4", 2), ("long.mp4", 12)] {
            let src = test_video(640, 360, secs).expect("test video");
            std::fs::copy(src, dir.path().join("inputs").join(name)).expect("copy input");
        }
        let env = Env {
            redis,
            rt,
            queue,
            dir,
            placer: Arc::new(AtomicBool::new(true)),
            submitted: 0,
            created: 0,
        };
        env.start_placer();
        env
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Place pending tasks on live nodes, as the central does.
    pub fn start_placer(&self) {
        let queue = self.queue.clone();
        let run = self.placer.clone();
        self.rt.spawn(async move {
            let opts = PlaceOptions {
                heartbeat_timeout: Duration::from_secs(3),
                batch: 16,
                ..PlaceOptions::default()
            };
            while run.load(Ordering::Relaxed) {
                let _ = queue.place(&opts).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }

    /// The agent, killed by its PID if the test ends before stopping it.
    pub fn agent(&self, node: &str, args: &[&str]) -> KillOnDrop {
        let mut cmd = Command::new(AGENT);
        self.agent_args(&mut cmd, node, args);
        die_with_the_test(&mut cmd);
        KillOnDrop(cmd.spawn().expect("starting the agent"))
    }

    /// The agent's command line for `node` in this environment, after
    /// whatever `cmd` already holds.
    pub fn agent_args(&self, cmd: &mut Command, node: &str, args: &[&str]) {
        cmd.args(["--run-id", "run"]);
        self.agent_args_following(cmd, node, args);
    }

    /// An agent that follows the controller's runs (no `--run-id`): it
    /// records run R into logs/<node>/R/<node>/.
    pub fn agent_following(&self, node: &str, args: &[&str]) -> KillOnDrop {
        let mut cmd = Command::new(AGENT);
        self.agent_args_following(&mut cmd, node, args);
        die_with_the_test(&mut cmd);
        KillOnDrop(cmd.spawn().expect("starting the agent"))
    }

    fn agent_args_following(&self, cmd: &mut Command, node: &str, args: &[&str]) {
        cmd.current_dir(self.dir.path())
            .args([
                "--redis",
                &self.redis.url_without_password(),
                "--node-id",
                node,
            ])
            .args(["--logs"])
            .arg(self.path(&format!("logs/{node}")))
            .args(["--inputs"])
            .arg(self.path("inputs"))
            .args(["--outputs"])
            .arg(self.path("outputs"))
            .args([
                "--heartbeat-ms",
                "500",
                "--interval-ms",
                "200",
                "--reset-capacity",
            ])
            .args(args)
            .env("REDIS_PASSWORD", self.redis.password())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
    }

    /// A task on `input` (short/long) of `units`, with overrides.
    pub fn task(&mut self, input: &str, units: u32, edit: impl FnOnce(&mut Value)) -> String {
        self.created += 1;
        let n = self.created;
        let mut v = json!({
            "input": self.path(&format!("inputs/{input}")),
            "output": self.path(&format!("outputs/{input}_{n}.mp4")),
            "scale": "1280:720", "vcodec": "h264", "preset": "medium", "crf": 28,
            "vthreads": units * 2, "fthreads": 1, "cpu_units": units,
            "_seq": n, "ts_enqueue": tracekit_tests::epoch_ms(),
        });
        edit(&mut v);
        v.to_string()
    }

    pub fn submit(&mut self, tasks: &[String]) {
        let items: Vec<(u64, String)> = tasks
            .iter()
            .map(|t| {
                self.submitted += 1;
                (self.submitted, t.clone())
            })
            .collect();
        self.rt
            .block_on(self.queue.submit("test", SubmitTarget::Pending, &items))
            .expect("submit");
    }

    pub fn snapshot(&self) -> Snapshot {
        self.rt
            .block_on(self.queue.snapshot(Duration::from_secs(3)))
            .expect("snapshot")
    }

    pub fn invocations(&self, node: &str) -> Vec<Value> {
        let path = self.path(&format!("logs/{node}/run/CTS/invocations.jsonl"));
        if !path.exists() {
            return Vec::new();
        }
        read_jsonl(&path).expect("invocations")
    }

    /// Wait for `cond`, checking every 100 ms.
    pub fn wait(&self, what: &str, limit: Duration, mut cond: impl FnMut(&Env) -> bool) {
        let start = Instant::now();
        while !cond(self) {
            assert!(start.elapsed() < limit, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Nothing held anywhere: every unit back, nothing queued or in flight.
    pub fn assert_books_balanced(&self) {
        let s = self.snapshot();
        for n in &s.nodes {
            assert_eq!(n.cap, n.cap_total, "capacity leaked on {}: {n:?}", n.name);
            assert_eq!(n.run_count, 0, "run_count of {}: {n:?}", n.name);
            assert_eq!((n.queued, n.inflight), (0, 0), "{n:?}");
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.placer.store(false, Ordering::Relaxed);
    }
}

/// Task ffmpeg processes (encoding: `-i`) that are children of `agent`.
pub fn ffmpeg_children(agent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // A task's ffmpeg (its command line has a -crf), not the
            // agent's version probes.
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let encoding = cmdline.split(|&b| b == 0).any(|a| a == b"-crf");
            let comm_ok = stat.contains("(ffmpeg)") && encoding;
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            comm_ok && ppid == Some(agent)
        })
        .collect()
}

/// SIGTERM the agent and wait for it to end (a minute at most: an agent
/// that does not end is a failure, and is killed by its drop guard).
pub fn sigterm(child: &mut Child) -> std::process::ExitStatus {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("waiting for the agent") {
            return status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the agent did not end within a minute of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The child is killed when the test thread that started it ends, even if
/// the test process is killed (drop guards do not run then).
pub fn die_with_the_test(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

pub fn sigkill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

pub fn exit_ok(inv: &Value) -> bool {
    inv["exit_code"] == 0
}

/// A child process killed (by its PID) and reaped when dropped, so a
/// failing test leaves nothing running.
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The agent's stderr, read after it exits.
/// (A minute at most: then it is killed and the test fails.)
pub fn stderr_of(mut child: Child) -> (std::process::ExitStatus, String) {
    use std::io::Read;
    let mut stderr = child.stderr.take().expect("stderr piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the agent") {
            break status;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the agent did not end within a minute");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, reader.join().unwrap_or_default())
}

impl Env {
    /// The agent in a mount namespace of its own where /sys/fs/cgroup is an
    /// empty tmpfs: a host with no usable cgroup hierarchy.
    pub fn agent_without_cgroups(&self, node: &str, args: &[&str]) -> Child {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg("mount -t tmpfs tk-no-cgroups /sys/fs/cgroup && exec \"$0\" \"$@\"")
            .arg(AGENT)
            .stderr(Stdio::piped());
        self.agent_args(&mut cmd, node, args);
        cmd.spawn().expect("starting unshare")
    }
}

impl Env {
    /// Stop the test's redis-server (SIGTERM by its PID) and wait until it
    /// is gone.
    pub fn stop_redis(&self) {
        self.stop_redis_pid(self.redis.pid());
    }

    /// Stop a redis-server this test started (SIGTERM by `pid`), and wait
    /// until it is gone.
    pub fn stop_redis_pid(&self, pid: u32) {
        let pid = pid as i32;
        // SAFETY: signalling the redis-server this test started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        self.wait("redis down", Duration::from_secs(10), |_| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z"))
                .unwrap_or(true)
        });
    }

    /// Start redis-server again on the same port, password and directory
    /// (with AOF, the state comes back); stopped by its PID when dropped.
    pub fn restart_redis(&self) -> KillOnDrop {
        let again = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.redis.port().to_string(),
            ])
            .args(["--requirepass", self.redis.password()])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.redis.dir())
            .args(["--logfile", "redis-again.log"])
            .stdin(Stdio::null())
            .spawn()
            .expect("restarting redis-server");
        let again = KillOnDrop(again);
        self.wait("redis back", Duration::from_secs(20), |e| {
            e.rt.block_on(e.queue.pending_len()).is_ok()
        });
        again
    }
}
