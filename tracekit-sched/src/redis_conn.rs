//! The Redis options the commands share (defined with the protocol, so the
//! worker agent takes the same flags), and the seconds parser.

use std::time::Duration;

pub use tracekit_proto::cli::RedisArgs;

/// Parses a non-negative number of seconds.
pub fn secs(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .and_then(|v| Duration::try_from_secs_f64(v).ok())
        .ok_or_else(|| format!("`{s}` is not a non-negative number of seconds"))
}
