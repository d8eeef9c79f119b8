//! The Redis connection options every Tracekit command takes (the
//! scheduler's commands and the worker agent), as clap arguments.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::conn::{is_unreachable, redact, resolve_password, url_has_password};
use crate::{Keys, Queue, RedisConn, RedisOptions};

/// How long a one-shot command (status, gather, dispatch, wait, dead) waits
/// for an unreachable Redis by default.
pub const ONE_SHOT_RETRY: Duration = Duration::from_secs(30);

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Redis")]
pub struct RedisArgs {
    /// Redis URL: redis://[:PASSWORD@]HOST[:PORT][/DB] or rediss:// for TLS
    /// (`#insecure` skips certificate checks). Prefer REDIS_PASSWORD or
    /// --redis-password-file for the password, so it never shows in `ps`.
    #[arg(
        long,
        env = "TRACEKIT_REDIS",
        hide_env_values = true,
        default_value = "redis://localhost:6379/0",
        value_name = "URL"
    )]
    pub redis: String,
    /// Redis password (overrides the URL's). Set it in the environment: given
    /// as a flag it shows in `ps`.
    #[arg(
        long,
        env = "REDIS_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    pub redis_password: Option<String>,
    /// File holding the Redis password (overrides REDIS_PASSWORD and the URL).
    #[arg(long, value_name = "FILE")]
    pub redis_password_file: Option<PathBuf>,
    /// Give up after Redis has been unreachable this many seconds (default:
    /// 30 for the one-shot commands status, gather, wait and dead, and for
    /// dispatch's first connection; never for central, the agent, and a
    /// dispatch under way).
    #[arg(long, value_name = "SECONDS")]
    pub redis_retry_for: Option<f64>,
    /// PEM file of the CA that signed the Redis server's certificate
    /// (rediss:// only; default: the system's trust store).
    #[arg(long, env = "TRACEKIT_REDIS_CA_FILE", value_name = "FILE")]
    pub redis_ca_file: Option<PathBuf>,
}

impl RedisArgs {
    /// Connects, retrying for `--redis-retry-for` (default: for ever, as a
    /// long-running service does).
    pub async fn connect(&self) -> anyhow::Result<RedisConn> {
        self.connect_within(self.retry_for()?).await
    }

    /// Connects for a one-shot command: gives up on an unreachable Redis
    /// after `--redis-retry-for` (default [`ONE_SHOT_RETRY`]) with a message
    /// that says so; anything waiting cannot cure (a refused password, a bad
    /// URL) fails at once with its own message.
    pub async fn connect_once(&self) -> anyhow::Result<RedisConn> {
        let limit = self.retry_for()?.unwrap_or(ONE_SHOT_RETRY);
        self.connect_within(Some(limit)).await.map_err(|e| {
            if !is_unreachable(&e) {
                return e;
            }
            e.context(format!(
                "cannot reach Redis at {} (gave up after {} s; --redis-retry-for SECONDS waits longer)",
                redact(&self.redis),
                limit.as_secs_f64()
            ))
        })
    }

    /// Connects like [`RedisArgs::connect_once`] (a mistyped URL is an
    /// error after the limit), then rides out outages like a service unless
    /// `--redis-retry-for` says otherwise: a dispatch in progress is an
    /// experiment's clock, and giving up half-way would lose the rest of it.
    pub async fn connect_for_run(&self) -> anyhow::Result<RedisConn> {
        let conn = self.connect_once().await?;
        Ok(conn.retrying_for(self.retry_for()?))
    }

    fn retry_for(&self) -> anyhow::Result<Option<Duration>> {
        self.redis_retry_for
            .map(Duration::try_from_secs_f64)
            .transpose()
            .context("--redis-retry-for must be a non-negative number of seconds")
    }

    async fn connect_within(&self, retry_for: Option<Duration>) -> anyhow::Result<RedisConn> {
        self.warn_visible_password();
        let password = match resolve_password(self.redis_password_file.as_deref())? {
            Some(p) => Some(p),
            None => self.redis_password.clone().filter(|p| !p.is_empty()),
        };
        RedisConn::connect(&RedisOptions {
            url: self.redis.clone(),
            password,
            retry_for,
            ca_file: self.redis_ca_file.clone(),
        })
        .await
    }

    /// A password on the command line shows in `ps` to every user.
    fn warn_visible_password(&self) {
        let argv: Vec<String> = std::env::args().collect();
        let on_command_line = |v: &str| argv.iter().any(|a| a.contains(v));
        if url_has_password(&self.redis) && on_command_line(&self.redis) {
            tracing::warn!(
                "the Redis URL holds a password, which every user sees in `ps`: set REDIS_PASSWORD or use --redis-password-file instead"
            );
        }
        if let Some(p) = &self.redis_password
            && !p.is_empty()
            && argv
                .iter()
                .any(|a| a == "--redis-password" || a.starts_with("--redis-password="))
        {
            tracing::warn!(
                "--redis-password shows in `ps` to every user: set REDIS_PASSWORD or use --redis-password-file instead"
            );
        }
    }

    pub async fn queue(&self, keys: Keys) -> anyhow::Result<Queue> {
        Ok(Queue::new(self.connect().await?, keys))
    }

    /// [`RedisArgs::queue`] for a command that runs an experiment (see
    /// [`RedisArgs::connect_for_run`]).
    pub async fn queue_for_run(&self, keys: Keys) -> anyhow::Result<Queue> {
        Ok(Queue::new(self.connect_for_run().await?, keys))
    }

    /// [`RedisArgs::queue`] for a one-shot command (see [`RedisArgs::connect_once`]).
    pub async fn queue_once(&self, keys: Keys) -> anyhow::Result<Queue> {
        Ok(Queue::new(self.connect_once().await?, keys))
    }
}
