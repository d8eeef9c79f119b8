//! Connecting to Redis: `redis://` and `rediss://` (TLS) URLs, the password
//! kept out of `ps`, and retry with backoff across lost connections.
//!
//! Retrying is safe because every protocol operation is one idempotent Lua
//! script (see the crate doc): a call whose reply was lost can run again
//! without losing or duplicating a task.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, IntoConnectionInfo, RedisError, RetryMethod};

/// How to reach Redis.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// `redis://[user][:password@]host[:port][/db]` or `rediss://…` (TLS;
    /// append `#insecure` to skip certificate verification). The original's
    /// `?password=…` query parameter is accepted too.
    pub url: String,
    /// Overrides any password in the URL (read from `REDIS_PASSWORD` or a
    /// file by [`resolve_password`], so it never shows in `ps`).
    pub password: Option<String>,
    /// Give up on a failing operation after this long; `None` = never.
    pub retry_for: Option<Duration>,
    /// PEM file of the CA that signed the server's certificate (`rediss://`
    /// only); without it the system's trust store is used.
    pub ca_file: Option<PathBuf>,
}

/// The password in `file`, if given (trailing newlines stripped); else
/// none (`REDIS_PASSWORD`, then the URL's own password apply).
pub fn resolve_password(file: Option<&Path>) -> anyhow::Result<Option<String>> {
    let Some(f) = file else { return Ok(None) };
    let s = std::fs::read_to_string(f)
        .with_context(|| format!("reading the Redis password file {}", f.display()))?;
    Ok(Some(s.trim_end_matches(['\n', '\r']).to_string()))
}

/// Whether a Redis URL carries a password (in its user part or the
/// original's `?password=`).
pub fn url_has_password(url: &str) -> bool {
    url::Url::parse(url)
        .is_ok_and(|u| u.password().is_some() || u.query_pairs().any(|(k, _)| k == "password"))
}

/// The URL with any password replaced by `***`, for logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .map(|(k, v)| {
                    let v = if k == "password" {
                        "***".into()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            if !pairs.is_empty() {
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        Err(_) => "<unparsable url>".into(),
    }
}

/// Splits the original's `?password=` out of the URL (redis-rs ignores it).
fn split_query_password(url: &str) -> anyhow::Result<(String, Option<String>)> {
    let mut u =
        url::Url::parse(url).with_context(|| format!("parsing Redis URL {}", redact(url)))?;
    if !matches!(u.scheme(), "redis" | "rediss") {
        bail!(
            "Redis URL must start with redis:// or rediss://, got {}",
            redact(url)
        );
    }
    let mut password = None;
    let rest: Vec<(String, String)> = u
        .query_pairs()
        .filter_map(|(k, v)| {
            if k == "password" {
                password = Some(v.into_owned());
                None
            } else {
                Some((k.into_owned(), v.into_owned()))
            }
        })
        .collect();
    if password.is_some() {
        if rest.is_empty() {
            u.set_query(None);
        } else {
            u.query_pairs_mut().clear().extend_pairs(rest);
        }
    }
    Ok((u.to_string(), password))
}

/// Whether an error is about the connection (worth a retry) rather than the
/// request (a script error, a wrong type, a bad password).
pub fn is_transient(e: &RedisError) -> bool {
    if e.kind() == ErrorKind::AuthenticationFailed {
        return false;
    }
    matches!(
        e.retry_method(),
        RetryMethod::Reconnect | RetryMethod::RetryImmediately | RetryMethod::WaitAndRetry
    ) || e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
}

/// Whether Redis refused the password: a wrong one (`WRONGPASS`, refused at
/// connection) or none where one is required (`NOAUTH`). Waiting does not
/// change either.
pub fn is_refused_password(e: &RedisError) -> bool {
    e.kind() == ErrorKind::AuthenticationFailed || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
}

/// A failed connection attempt as the user should read it: a refused
/// password says so, anything else keeps its error under `doing`.
fn connect_error(e: RedisError, url: &str, doing: &str) -> anyhow::Error {
    if e.code() == Some("NOAUTH") {
        anyhow::anyhow!(
            "Redis at {url} wants a password and none was given ({e}): set REDIS_PASSWORD or \
             use --redis-password-file"
        )
    } else if is_refused_password(&e) {
        anyhow::anyhow!(
            "Redis at {url} refused the password ({e}): set the right one in REDIS_PASSWORD, \
             --redis-password-file or the URL"
        )
    } else {
        anyhow::Error::new(e).context(format!("{doing} Redis at {url}"))
    }
}

/// Whether an error (of any layer of `e`) is a connection that failed for a
/// reason that may pass: refused, reset, timed out, a name not resolved.
pub fn is_unreachable(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<RedisError>())
        .any(|r| is_transient(r) && !is_refused_password(r))
}

/// A multiplexed, self-reconnecting connection (cheap to clone).
#[derive(Clone)]
pub struct RedisConn {
    mgr: ConnectionManager,
    retry_for: Option<Duration>,
    url: String,
}

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

impl RedisConn {
    /// Connects (retrying within `retry_for`) and checks the password with a PING.
    pub async fn connect(opts: &RedisOptions) -> anyhow::Result<RedisConn> {
        // rustls needs one process-wide crypto provider; a second install is a no-op error.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (url, query_pw) = split_query_password(&opts.url)?;
        let shown = redact(&opts.url);
        let mut info = url
            .as_str()
            .into_connection_info()
            .with_context(|| format!("parsing Redis URL {shown}"))?;
        if let Some(pw) = opts.password.clone().or(query_pw) {
            let settings = info.redis_settings().clone().set_password(pw);
            info = info.set_redis_settings(settings);
        }
        let client = match &opts.ca_file {
            Some(ca) => {
                if !url.starts_with("rediss://") {
                    bail!("a CA file only applies to rediss:// URLs, got {shown}");
                }
                let pem = std::fs::read(ca)
                    .with_context(|| format!("reading the Redis CA file {}", ca.display()))?;
                redis::Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
            }
            None => redis::Client::open(info),
        }
        .with_context(|| format!("Redis at {shown}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(60)))
            .set_min_delay(BACKOFF_MIN)
            .set_max_delay(BACKOFF_MAX)
            .set_number_of_retries(3);
        let start = Instant::now();
        let mut delay = BACKOFF_MIN;
        let mgr = loop {
            match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
                Ok(m) => break m,
                Err(e) if is_transient(&e) && within(start, opts.retry_for, delay) => {
                    tracing::warn!(url = %shown, error = %e, "Redis unreachable, retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(BACKOFF_MAX);
                }
                Err(e) => return Err(connect_error(e, &shown, "connecting to")),
            }
        };
        let conn = RedisConn {
            mgr,
            retry_for: opts.retry_for,
            url: shown,
        };
        conn.run("PING", |mut c| async move {
            redis::cmd("PING").query_async::<String>(&mut c).await
        })
        .await
        .map_err(|e| connect_error(e, &conn.url, "talking to"))?;
        Ok(conn)
    }

    /// The same connection, retrying operations for `retry_for` (None =
    /// for ever) from now on.
    pub fn retrying_for(mut self, retry_for: Option<Duration>) -> RedisConn {
        self.retry_for = retry_for;
        self
    }

    /// The URL with the password hidden.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A handle for plain commands (no retry).
    pub fn manager(&self) -> ConnectionManager {
        self.mgr.clone()
    }

    /// Runs `op` on the connection, retrying transient failures with
    /// exponential backoff (50 ms … 2 s) until `retry_for` runs out. Only use
    /// it for operations that are safe to repeat.
    pub async fn run<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, RedisError>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let start = Instant::now();
        let mut delay = BACKOFF_MIN;
        // The first failure after a pause is often a connection that died
        // while idle; the manager has already started a new one, so that
        // failure is retried at once, and only a second one waits.
        let mut retried_at_once = false;
        loop {
            match op(self.mgr.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) if is_transient(&e) && !retried_at_once => {
                    tracing::debug!(url = %self.url, error = %e, "{what} failed, retrying at once");
                    retried_at_once = true;
                }
                Err(e) if is_transient(&e) && within(start, self.retry_for, delay) => {
                    tracing::warn!(url = %self.url, error = %e, "{what} failed, retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(BACKOFF_MAX);
                    retried_at_once = false;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn within(start: Instant, limit: Option<Duration>, next_delay: Duration) -> bool {
    limit.is_none_or(|l| start.elapsed() + next_delay <= l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_password_is_split_and_redacted() {
        let (u, p) = split_query_password("redis://h:6379/0?password=123456").unwrap();
        assert_eq!(u, "redis://h:6379/0");
        assert_eq!(p.as_deref(), Some("123456"));
        let (u, p) = split_query_password("rediss://:pw@h:6380/1").unwrap();
        assert_eq!(u, "rediss://:pw@h:6380/1");
        assert_eq!(p, None);
        assert!(!redact("redis://:secret@h:1/0").contains("secret"));
        assert!(!redact("redis://h:1/0?password=secret").contains("secret"));
        assert!(split_query_password("http://h").is_err());
        assert!(url_has_password("redis://:pw@h:1/0"));
        assert!(url_has_password("redis://h:1/0?password=pw"));
        assert!(!url_has_password("redis://h:1/0"));
    }
}
