//! A throwaway `redis-server` for tests (feature `testing`): loopback, a free
//! port, a random password, no persistence, its own temp dir; stopped (by its
//! PID) when dropped.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let server = tracekit_proto::testing::RedisServer::start()?;
//! let queue = server.queue().await?; // a Queue on a fresh connection
//! let url = server.url(); // redis://:PASSWORD@127.0.0.1:PORT/0
//! # let _ = (queue, url);
//! # Ok(()) }
//! ```

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::conn::{RedisConn, RedisOptions};
use crate::keys::Keys;
use crate::queue::Queue;

/// A running `redis-server` owned by the test.
pub struct RedisServer {
    child: Child,
    port: u16,
    password: String,
    /// TLS only (`start_tls`): the port speaks TLS, certificates are in the dir.
    tls: bool,
    /// The full `redis-server` command line, for [`RedisServer::restart`].
    args: Vec<String>,
    _dir: tempfile::TempDir,
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// A CA and a server certificate for 127.0.0.1 signed by it, in `dir`.
fn make_certs(dir: &Path) -> anyhow::Result<()> {
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let st = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running openssl (is it installed?)")?;
        if !st.success() {
            bail!("openssl {args:?} failed: {st}");
        }
        Ok(())
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=tracekit-test-ca",
    ])?;
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ])?;
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ])?;
    Ok(())
}

fn spawn_server(args: &[String], dir: &Path) -> anyhow::Result<Child> {
    Command::new("redis-server")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting redis-server (is it installed?)")
}

fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding a probe socket")?;
    Ok(l.local_addr()?.port())
}

impl RedisServer {
    /// Starts `redis-server` (from PATH) and waits until it answers PING.
    pub fn start() -> anyhow::Result<RedisServer> {
        Self::start_with(&[])
    }

    /// Like [`RedisServer::start`], with extra `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> anyhow::Result<RedisServer> {
        Self::start_inner(extra, false)
    }

    /// A server that speaks only TLS, with a throwaway CA and a certificate
    /// for 127.0.0.1 made by `openssl` in its temp dir; connect with
    /// [`RedisServer::url`] (`rediss://`) and [`RedisServer::ca_file`].
    pub fn start_tls() -> anyhow::Result<RedisServer> {
        Self::start_inner(&[], true)
    }

    fn start_inner(extra: &[&str], tls: bool) -> anyhow::Result<RedisServer> {
        // A port can be taken between probing and binding: try a few.
        let mut last_err = None;
        for _ in 0..5 {
            match Self::try_start(extra, tls) {
                Ok(s) => return Ok(s),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    fn try_start(extra: &[&str], tls: bool) -> anyhow::Result<RedisServer> {
        let dir = tempfile::tempdir().context("creating a temp dir for redis-server")?;
        let port = free_port()?;
        let password = random_hex(16)?;
        let mut args: Vec<String> = vec!["--bind".into(), "127.0.0.1".into()];
        if tls {
            make_certs(dir.path())?;
            let port = port.to_string();
            args.extend(
                [
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-cert-file",
                    "server.crt",
                    "--tls-key-file",
                    "server.key",
                    "--tls-ca-cert-file",
                    "ca.crt",
                    "--tls-auth-clients",
                    "no",
                ]
                .map(String::from),
            );
        } else {
            args.extend(["--port".to_string(), port.to_string()]);
        }
        args.extend(["--requirepass".to_string(), password.clone()]);
        args.extend(["--save", "", "--appendonly", "no", "--dir"].map(String::from));
        args.push(dir.path().display().to_string());
        args.extend(["--logfile", "redis.log", "--daemonize", "no"].map(String::from));
        args.extend(extra.iter().map(|a| a.to_string()));
        let child = spawn_server(&args, dir.path())?;
        let mut server = RedisServer {
            child,
            port,
            password,
            tls,
            args,
            _dir: dir,
        };
        server.wait_ready(Duration::from_secs(20))?;
        Ok(server)
    }

    /// Sends `signal` to the server (by its PID) and reaps it: an outage.
    /// A server already stopped is left as it is.
    pub fn stop_with(&mut self, signal: i32) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        // SAFETY: signalling the redis-server this value started and has not reaped.
        if unsafe { libc::kill(self.child.id() as i32, signal) } != 0 {
            return Err(std::io::Error::last_os_error()).context("signalling redis-server");
        }
        self.child.wait().context("reaping redis-server")?;
        Ok(())
    }

    /// Starts the server again, stopped by [`RedisServer::stop_with`]: same
    /// port, password, directory and options (with persistence on, it loads
    /// its data back), and waits until it answers PING.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_none() {
            bail!("redis-server (pid {}) is still running", self.child.id());
        }
        self.child = spawn_server(&self.args, self._dir.path())?;
        // Loading a long append-only file takes a while.
        self.wait_ready(Duration::from_secs(120))
    }

    fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait()? {
                bail!("redis-server exited early ({status}) on port {}", self.port);
            }
            if self.ping().unwrap_or(false) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "redis-server on port {} did not answer PING within {limit:?}",
            self.port
        )
    }

    /// AUTH + PING over a raw socket (no async runtime needed); for TLS, only
    /// that the port accepts connections.
    fn ping(&self) -> anyhow::Result<bool> {
        use std::io::Write;
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        if self.tls {
            return Ok(true);
        }
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let auth = format!(
            "*2\r\n$4\r\nAUTH\r\n${}\r\n{}\r\n*1\r\n$4\r\nPING\r\n",
            self.password.len(),
            self.password
        );
        s.write_all(auth.as_bytes())?;
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while !got.ends_with(b"+PONG\r\n") {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(false);
            }
            got.extend_from_slice(&buf[..n]);
            if got.windows(4).any(|w| w == b"-ERR" || w == b"-LOA") {
                return Ok(false);
            }
        }
        Ok(true)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// PID of the server process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's working directory (its `redis.log` is there).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    fn scheme(&self) -> &'static str {
        if self.tls { "rediss" } else { "redis" }
    }

    /// `redis://:PASSWORD@127.0.0.1:PORT/0` (`rediss://` for TLS).
    pub fn url(&self) -> String {
        format!(
            "{}://:{}@127.0.0.1:{}/0",
            self.scheme(),
            self.password,
            self.port
        )
    }

    /// `redis://127.0.0.1:PORT/0` (pass the password separately).
    pub fn url_without_password(&self) -> String {
        format!("{}://127.0.0.1:{}/0", self.scheme(), self.port)
    }

    /// The CA certificate of a TLS server (`start_tls`).
    pub fn ca_file(&self) -> Option<std::path::PathBuf> {
        self.tls.then(|| self._dir.path().join("ca.crt"))
    }

    /// A new connection (retrying for at most 10 s).
    pub async fn conn(&self) -> anyhow::Result<RedisConn> {
        RedisConn::connect(&RedisOptions {
            url: self.url(),
            password: None,
            retry_for: Some(Duration::from_secs(10)),
            ca_file: self.ca_file(),
        })
        .await
    }

    /// A [`Queue`] with the default key names on a new connection.
    pub async fn queue(&self) -> anyhow::Result<Queue> {
        Ok(Queue::new(self.conn().await?, Keys::default()))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // Stop exactly the process we started, then reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A script as Tracekit runs one: today's key prelude and limits, then
/// `common` (the helpers, `common.lua`) and `body` — for benchmarks that run
/// an earlier revision's script beside today's on the same data.
pub fn script_source(common: &str, body: &str) -> String {
    crate::scripts::source(common, body)
}
