//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};

use redis::aio::ConnectionManager;
use tracekit_proto::testing::RedisServer;
use tracekit_proto::{Lease, Queue, Registration};

pub fn reg(node: &str, capacity: i64, parallel: u32) -> Registration {
    Registration {
        node: node.into(),
        capacity,
        cores: 4,
        ratio: 1.0,
        parallel,
        reset_capacity: true,
        clear_queue: false,
        lease: lease(node),
    }
}

/// The lease tests' registrations hold: token `tok-<node>`.
pub fn lease(node: &str) -> Lease {
    Lease {
        token: format!("tok-{node}"),
        host: "test-host".into(),
        pid: 1,
        lease_ms: 5000,
    }
}

pub fn task(name: &str, units: i64) -> String {
    format!(r#"{{"input":"in/{name}.mp4","output":"out/{name}.mp4","cpu_units":{units}}}"#)
}

pub async fn cmd<T: redis::FromRedisValue>(c: &mut ConnectionManager, args: &[&str]) -> T {
    let mut k = redis::cmd(args[0]);
    for a in &args[1..] {
        k.arg(*a);
    }
    k.query_async(c)
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

pub async fn get_i64(c: &mut ConnectionManager, key: &str) -> i64 {
    let v: Option<i64> = cmd(c, &["GET", key]).await;
    v.unwrap_or(0)
}

pub async fn lrange(c: &mut ConnectionManager, key: &str) -> Vec<String> {
    cmd(c, &["LRANGE", key, "0", "-1"]).await
}

/// The tracekit-sched binary, talking to `server` with the password in the
/// environment (never on the command line).
pub fn sched(server: &RedisServer) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tracekit-sched"));
    c.env("REDIS_PASSWORD", server.password())
        .env("TRACEKIT_REDIS", server.url_without_password())
        .env("RUST_LOG", "warn");
    c
}

/// A child process killed (by its PID) and reaped on drop.
pub struct Proc(pub Child);

impl Proc {
    pub fn spawn(mut c: Command) -> Proc {
        Proc(
            c.stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn tracekit-sched"),
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn queue(server: &RedisServer) -> Queue {
    server.queue().await.expect("queue")
}
