//! The run's counters and gauges (`stats:run`, `stats:live`,
//! `stats:done_times`), kept by the transition scripts themselves and read
//! in one script call: what `status` and `wait` show, whatever the fleet's size.
//!
//! "The run" is everything submitted to this Redis since the counters were
//! last reset: the cumulative counters live under their own keys, so a
//! `run start` can reset them (or scope them per run) without touching the
//! gauges, which describe tasks that exist.

use redis::Value;

use crate::queue::{Queue, QueueError, bad_reply, int, utf8};
use crate::scripts;

/// One read of the counters (Redis server time).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunStats {
    pub now_ms: i64,
    /// The current run (`run start`), if one is.
    pub run: Option<String>,
    /// When the current run started (ms, Redis time).
    pub run_started_ms: Option<i64>,
    /// Tasks submitted by dispatchers.
    pub submitted: i64,
    /// Tasks on node queues, not yet taken.
    pub placed: i64,
    /// Tasks in flight on a worker.
    pub running: i64,
    /// Tasks completed.
    pub done: i64,
    /// Failed attempts (a task that failed and ran again counts each time).
    pub failed: i64,
    /// Tasks dead-lettered, less those requeued from the dead-letter list.
    pub dead: i64,
    /// Tasks waiting in the pending list.
    pub pending: i64,
    /// Entries in the dead-letter list (whatever run they came from).
    pub dead_letters: i64,
    /// Completions in the last 60 s.
    pub done_last_minute: i64,
}

impl RunStats {
    /// Tasks not yet finished: pending, placed or running.
    pub fn outstanding(&self) -> i64 {
        self.pending + self.placed + self.running
    }

    /// Seconds until the outstanding tasks are done at the last minute's
    /// rate (None while nothing completed in that minute).
    pub fn eta_secs(&self) -> Option<f64> {
        (self.done_last_minute > 0)
            .then(|| self.outstanding() as f64 * 60.0 / self.done_last_minute as f64)
    }
}

impl Queue {
    /// The run's counters, the gauges, the pending list's and the dead-letter
    /// list's lengths and the last minute's completions, atomically.
    pub async fn run_stats(&self) -> Result<RunStats, QueueError> {
        let v = self.eval("stats.lua", &scripts::STATS, &[], &[]).await?;
        let Value::Array(items) = &v else {
            return Err(bad_reply("stats.lua", format!("{v:?}")));
        };
        let get = |i: usize| {
            items
                .get(i)
                .and_then(int)
                .ok_or_else(|| bad_reply("stats.lua", format!("{v:?}")))
        };
        let mut s = RunStats {
            now_ms: get(0)?,
            pending: get(1)?,
            dead_letters: get(2)?,
            done_last_minute: get(3)?,
            run: items.get(4).and_then(utf8).filter(|r| !r.is_empty()),
            run_started_ms: Some(get(5)?).filter(|&t| t > 0),
            ..RunStats::default()
        };
        for pair in items[6..].chunks(2) {
            let [k, n] = pair else {
                return Err(bad_reply("stats.lua", "odd field list"));
            };
            // A gauge below zero can only come from tasks that predate the
            // counters: shown as none, and said.
            let raw_n = int(n).unwrap_or(0);
            if raw_n < 0 {
                tracing::warn!(
                    counter = ?utf8(k),
                    value = raw_n,
                    "a run counter is below zero (tasks older than the counters?): shown as 0"
                );
            }
            let n = raw_n.max(0);
            match utf8(k).as_deref() {
                Some("submitted") => s.submitted = n,
                Some("placed") => s.placed = n,
                Some("running") => s.running = n,
                Some("done") => s.done = n,
                Some("failed") => s.failed = n,
                Some("dead") => s.dead = n,
                _ => {}
            }
        }
        Ok(s)
    }
}
