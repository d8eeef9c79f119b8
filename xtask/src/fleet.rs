//! A Tracekit fleet on this machine, as `demo` and `chaos` start it: the
//! packages it needs, simulated hosts (network namespaces), the processes
//! (stopped by their PIDs), the synthetic test videos, and an agent's
//! command line.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tracekit_proto::testing::RedisServer;

/// Simulated hosts per run: /30 links in one /24.
const MAX_HOSTS: u32 = 62;

/// The third octet of this run's link addresses (169.254.<octet>.0/24, cut
/// into /30 links): the first, from one drawn from the PID, that no interface
/// uses, because two runs on one machine sharing addresses would answer
/// each other's nodes over the wrong link.
fn link_octet() -> Result<u8> {
    static OCTET: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
    if let Some(o) = OCTET.get() {
        return Ok(*o);
    }
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .context("running ip (apt-get install -y iproute2)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let used: std::collections::HashSet<u8> = text
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("169.254."))
        .filter_map(|rest| rest.split('.').next()?.parse().ok())
        .collect();
    let start = std::process::id() % 254;
    let octet = (0..254u32)
        .map(|k| 1 + ((start + k) % 254) as u8)
        .find(|o| !used.contains(o))
        .context("every 169.254.x.0/24 is in use: no room for simulated hosts")?;
    Ok(*OCTET.get_or_init(|| octet))
}

/// A node's simulated host: a network namespace joined to the controller's
/// (the root namespace) by a veth pair with a /30 of link-local addresses.
/// Removed on drop.
pub struct NetnsHost {
    pub name: String,
    pub controller_ip: String,
}

impl NetnsHost {
    pub fn create(index: u32) -> Result<NetnsHost> {
        let tag = std::process::id() % 100_000;
        let name = format!("tk{tag}n{index}");
        let (host_if, node_if) = (format!("tkh{tag}n{index}"), format!("tkn{tag}n{index}"));
        if index == 0 || index > MAX_HOSTS {
            bail!("simulated hosts are numbered 1 to {MAX_HOSTS}, not {index}");
        }
        let octet = link_octet()?;
        let controller_ip = format!("169.254.{octet}.{}", 4 * index + 1);
        let node_ip = format!("169.254.{octet}.{}", 4 * index + 2);
        let host = NetnsHost {
            name: name.clone(),
            controller_ip: controller_ip.clone(),
        };
        let ip = |args: &[&str]| -> Result<()> {
            let status = Command::new("ip")
                .args(args)
                .status()
                .context("running ip (apt-get install -y iproute2)")?;
            if !status.success() {
                bail!("ip {} failed", args.join(" "));
            }
            Ok(())
        };
        ip(&["netns", "add", &name])?;
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &node_if,
        ])?;
        ip(&["link", "set", &node_if, "netns", &name])?;
        ip(&[
            "addr",
            "add",
            &format!("{controller_ip}/30"),
            "dev",
            &host_if,
        ])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&[
            "netns",
            "exec",
            &name,
            "ip",
            "addr",
            "add",
            &format!("{node_ip}/30"),
            "dev",
            &node_if,
        ])?;
        ip(&["netns", "exec", &name, "ip", "link", "set", &node_if, "up"])?;
        ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"])?;
        Ok(host)
    }

    /// `--bind` arguments for Redis: loopback and the controller's end of
    /// every host's link.
    pub fn redis_bind(hosts: &[NetnsHost]) -> Vec<String> {
        let mut bind = vec!["--bind".to_string(), "127.0.0.1".to_string()];
        bind.extend(hosts.iter().map(|h| h.controller_ip.clone()));
        bind
    }
}

impl Drop for NetnsHost {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the veth pair, and so the pair.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Debian packages the demo needs, by the command that tells they are there.
const PACKAGES: &[(&str, &str)] = &[
    ("clang", "clang"),
    ("llvm-strip", "llvm"),
    ("redis-server", "redis-server"),
    ("ffmpeg", "ffmpeg"),
    ("setpriv", "util-linux"),
    ("nsenter", "util-linux"),
    ("python3", "python3"),
    ("ip", "iproute2"),
];

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Install what is missing from Debian (root only).
pub fn ensure_packages() -> Result<()> {
    let mut missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(cmd, _)| !have(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if !Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        missing.push("libbpf-dev");
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing packages: run as root, or `apt-get install -y {}`",
            missing.join(" ")
        );
    }
    eprintln!("installing {} …", missing.join(" "));
    let ok = Command::new("apt-get").arg("update").status()?.success()
        && Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?
            .success();
    if !ok {
        bail!("apt-get could not install {}", missing.join(" "));
    }
    Ok(())
}

/// A process this tool started, its output appended to a log file. Dropped
/// while running, it is resumed and killed by its PID, and reaped.
pub struct Proc {
    pub name: String,
    child: Child,
    exited: Option<ExitStatus>,
}

impl Proc {
    /// Starts `cmd` in its own process group (a Ctrl-C at the terminal
    /// reaches only this tool, which stops its processes itself), output
    /// appended to `log` (a restarted process adds to the same log).
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Proc> {
        use std::os::unix::process::CommandExt;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            exited: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it has exited (reaping it).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.name))?;
        }
        Ok(self.exited)
    }

    /// Sends `signal` to it by its PID (nothing once it has exited).
    pub fn signal(&mut self, signal: i32) -> Result<()> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        // SAFETY: signalling our own child, not yet reaped, by its pid.
        if unsafe { libc::kill(self.child.id() as i32, signal) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("signalling {}", self.name));
        }
        Ok(())
    }

    /// Waits at most `limit` for it to exit.
    pub fn wait_for(&mut self, limit: Duration) -> Result<Option<ExitStatus>> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(Some(s));
            }
            if start.elapsed() > limit {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then wait (SIGKILL after `grace`, saying so).
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        self.signal(libc::SIGCONT)?;
        self.signal(libc::SIGTERM)?;
        if let Some(s) = self.wait_for(grace)? {
            return Ok(s);
        }
        eprintln!("{} did not stop in {grace:?}: killing it", self.name);
        self.kill()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(s) = self.try_wait()? {
            return Ok(s);
        }
        self.child
            .kill()
            .with_context(|| format!("killing {}", self.name))?;
        let s = self
            .child
            .wait()
            .with_context(|| format!("reaping {}", self.name))?;
        self.exited = Some(s);
        Ok(s)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// The binaries of `profile` ("debug" or "release") under the target
/// directory cargo builds into (CARGO_TARGET_DIR when set).
pub fn bin_dir(profile: &str) -> Result<PathBuf> {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => PathBuf::from(t),
        None => crate::util::workspace_root()?.join("target"),
    };
    Ok(target.join(profile))
}

/// Synthetic test videos (the original's `testsrc` pattern):
/// `testsrc_<WxH>_<len>s.mp4` in `dir`, one per length.
pub fn make_test_videos(dir: &Path, resolution: &str, fps: u32, lengths: &[u32]) -> Result<()> {
    for len in lengths {
        let path = dir.join(format!("testsrc_{resolution}_{len}s.mp4"));
        let status = Command::new("ffmpeg")
            .args(["-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i"])
            .arg(format!("testsrc=size={resolution}:rate={fps}"))
            .args([
                "-t",
                &len.to_string(),
                "-pix_fmt",
                "yuv420p",
                "-c:v",
                "libx264",
            ])
            .args(["-preset", "ultrafast"])
            .arg(&path)
            .status()
            .context("running ffmpeg")?;
        if !status.success() {
            bail!("ffmpeg could not generate {}", path.display());
        }
    }
    Ok(())
}

/// How an agent of a local fleet runs: its node, where its files go, and
/// the worker flags the fleet chose.
pub struct AgentSpec<'a> {
    pub agent_bin: &'a Path,
    /// The run's directory (the agent's working directory, with `inputs/`
    /// and `outputs/`).
    pub dir: &'a Path,
    pub node: &'a str,
    /// How the agent knows its run: its own id (`--run-id`, writing
    /// `node_dir`), or the controller's current run (`run start`: it
    /// writes `<logs>/<run>/<node>/`).
    pub run: AgentRun<'a>,
    pub cpu_binding: &'a str,
    pub interval_ms: u64,
}

pub enum AgentRun<'a> {
    Own { run: &'a str, node_dir: PathBuf },
    Following { logs: PathBuf },
}

impl AgentSpec<'_> {
    /// The agent's command: in `host`'s network namespace when given,
    /// reaching Redis at the controller's end of its link as another machine
    /// would; capacity reset and its queue handed back at start.
    pub fn command(&self, host: Option<&NetnsHost>, redis: &RedisServer) -> Command {
        let (mut cmd, url) = match host {
            Some(h) => {
                // Only the network namespace: `ip netns exec` would also
                // remount /sys, and the agent would find no cgroups there.
                // nsenter joins it and execs the agent (same PID).
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{}", h.name))
                    .arg("--")
                    .arg(self.agent_bin);
                (c, format!("redis://{}:{}/0", h.controller_ip, redis.port()))
            }
            None => (Command::new(self.agent_bin), redis.url_without_password()),
        };
        cmd.current_dir(self.dir)
            .args(["--redis", &url, "--node-id", self.node]);
        match &self.run {
            AgentRun::Own { run, node_dir } => {
                cmd.args(["--run-id", run, "--node-dir"]).arg(node_dir);
            }
            AgentRun::Following { logs } => {
                // A RUN_ID in the caller's environment would pin the run.
                cmd.arg("--logs").arg(logs).env_remove("RUN_ID");
            }
        }
        cmd.args(["--inputs", "inputs", "--outputs", "outputs"])
            .args(["--cpu-binding", self.cpu_binding, "--allocation-ratio", "1"])
            .args(["--interval-ms", &self.interval_ms.to_string()])
            .args(["--reset-capacity", "--clear-queue"])
            .env("REDIS_PASSWORD", redis.password());
        cmd
    }
}
