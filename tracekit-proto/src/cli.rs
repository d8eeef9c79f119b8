//! The Redis connection options every Tracekit command takes (the
//! scheduler's commands and the worker agent), as clap arguments.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::conn::resolve_password;
use crate::{Keys, Queue, RedisConn, RedisOptions};

#[derive(Args, Debug, Clone)]
pub struct RedisArgs {
    /// Redis URL: redis://[:PASSWORD@]HOST[:PORT][/DB] or rediss:// for TLS
    /// (`#insecure` skips certificate checks). Prefer REDIS_PASSWORD or
    /// --redis-password-file for the password, so it never shows in `ps`.
    #[arg(
        long,
        env = "TRACEKIT_REDIS",
        default_value = "redis://localhost:6379/0"
    )]
    pub redis: String,
    /// File holding the Redis password (overrides REDIS_PASSWORD and the URL).
    #[arg(long)]
    pub redis_password_file: Option<PathBuf>,
    /// Give up after Redis has been unreachable this many seconds (default: never).
    #[arg(long)]
    pub redis_retry_for: Option<f64>,
    /// PEM file of the CA that signed the Redis server's certificate
    /// (rediss:// only; default: the system's trust store).
    #[arg(long, env = "TRACEKIT_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,
}

impl RedisArgs {
    pub async fn connect(&self) -> anyhow::Result<RedisConn> {
        let password = resolve_password(self.redis_password_file.as_deref())?;
        let retry_for = self
            .redis_retry_for
            .map(Duration::try_from_secs_f64)
            .transpose()
            .context("--redis-retry-for must be a non-negative number of seconds")?;
        RedisConn::connect(&RedisOptions {
            url: self.redis.clone(),
            password,
            retry_for,
            ca_file: self.redis_ca_file.clone(),
        })
        .await
    }

    pub async fn queue(&self, keys: Keys) -> anyhow::Result<Queue> {
        Ok(Queue::new(self.connect().await?, keys))
    }
}
