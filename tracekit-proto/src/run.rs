//! Runs started and stopped from the controller (`tracekit-sched run
//! start|stop|list`): the current run's id is in Redis, and agents that
//! follow it (no `RUN_ID` of their own) pick it up with their heartbeats,
//! record into `<logs>/<run>/<node>/`, and publish the run's traces when it
//! stops, so `gather` works while the agents keep running.
//!
//! | key | type | meaning |
//! |---|---|---|
//! | `runs:current` | string | the current run's id; absent between runs |
//! | `runs:started` | sorted set | run id → when it started (ms, Redis time) |
//! | `run:<id>` | hash | `started_ms`; from its stop `stopped_ms`, the run's counters then (`submitted`, `done`, `failed`, `dead`) and what was outstanding (`pending`, `placed`, `running`) |
//! | `nodes:run` | hash | node → the run its (following) agent records into, "" while none; set by its heartbeats and by each task it takes |
//! | `runs:waiting:<id>` | set | the nodes a stop of run `<id>` waits on; a node leaves it by publishing the run (a publication from before the stop does not count) |
//!
//! A run id is used once: starting a run resets the run's counters
//! (`stats:run`), and a run's traces never mix with another's.

use redis::Value;

use crate::keys;
use crate::queue::{Queue, QueueError, bad_reply, int, utf8};
use crate::scripts;

/// The longest run id: it names a directory and Redis keys.
pub const MAX_RUN_ID: usize = 64;

/// Why a run id cannot be used, or `Ok`: 1 to 64 of `A-Z a-z 0-9 . _ -`,
/// not starting with `.` or `-` (it names a directory on every node).
pub fn check_run_id(id: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if id.is_empty() || id.len() > MAX_RUN_ID {
        return Err(format!(
            "run id {id:?}: 1 to {MAX_RUN_ID} characters, please"
        ));
    }
    if id.starts_with(['.', '-']) || !id.chars().all(ok_char) {
        return Err(format!(
            "run id {id:?}: letters, digits, '.', '_' and '-' only, not starting with '.' or '-' (it names a directory)"
        ));
    }
    Ok(())
}

/// What `run start` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStart {
    Started,
    /// Another run is current: stop it first.
    Busy {
        current: String,
    },
    /// The id named a run before.
    Used,
}

/// Tasks not finished when a run stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Outstanding {
    pub pending: i64,
    pub placed: i64,
    pub running: i64,
}

impl Outstanding {
    pub fn total(&self) -> i64 {
        self.pending + self.placed + self.running
    }
}

/// What `run stop` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStop {
    /// No run is current.
    NoRun,
    /// The run named is not the current one.
    NotCurrent { current: String },
    /// Tasks are outstanding and the stop was not forced: nothing changed.
    Outstanding { run: String, left: Outstanding },
    /// Stopped; `nodes` are the live nodes that record into it (each
    /// publishes the run's traces once its tasks of the run are done).
    Stopped {
        run: String,
        left: Outstanding,
        nodes: Vec<String>,
    },
}

/// One run, as `run list` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunInfo {
    pub id: String,
    pub started_ms: i64,
    /// None while the run is current.
    pub stopped_ms: Option<i64>,
    pub submitted: i64,
    pub done: i64,
    pub failed: i64,
    pub dead: i64,
    /// Tasks outstanding when it stopped (a forced stop).
    pub outstanding: i64,
    /// Nodes whose traces of the run are published for `gather`.
    pub published: Vec<String>,
}

impl Queue {
    /// The current run's id, if a run is current.
    pub async fn current_run(&self) -> Result<Option<String>, QueueError> {
        Ok(self
            .conn()
            .run("GET runs:current", |mut c| async move {
                redis::cmd("GET")
                    .arg(keys::RUN_CURRENT)
                    .query_async(&mut c)
                    .await
            })
            .await?)
    }

    /// Make `id` the current run (see [`RunStart`]).
    pub async fn run_start(&self, id: &str) -> Result<RunStart, QueueError> {
        let v = self
            .eval("run_start.lua", &scripts::RUN_START, &[], &[id.as_bytes()])
            .await?;
        let items = array(&v, "run_start.lua")?;
        match items.first().and_then(int) {
            Some(1) => Ok(RunStart::Started),
            Some(0) => Ok(RunStart::Busy {
                current: items.get(1).and_then(utf8).unwrap_or_default(),
            }),
            Some(-1) => Ok(RunStart::Used),
            _ => Err(bad_reply("run_start.lua", format!("{v:?}"))),
        }
    }

    /// Stop the current run (`run`: only if it is that one); with tasks
    /// outstanding only if `force` (see [`RunStop`]).
    pub async fn run_stop(&self, run: Option<&str>, force: bool) -> Result<RunStop, QueueError> {
        let force = if force { "1" } else { "0" };
        let v = self
            .eval(
                "run_stop.lua",
                &scripts::RUN_STOP,
                &[],
                &[run.unwrap_or("").as_bytes(), force.as_bytes()],
            )
            .await?;
        let items = array(&v, "run_stop.lua")?;
        let bad = || bad_reply("run_stop.lua", format!("{v:?}"));
        let text = |i: usize| items.get(i).and_then(utf8).ok_or_else(bad);
        let n = |i: usize| items.get(i).and_then(int).ok_or_else(bad);
        let left = || -> Result<Outstanding, QueueError> {
            Ok(Outstanding {
                pending: n(2)?,
                placed: n(3)?,
                running: n(4)?,
            })
        };
        match n(0)? {
            0 => Ok(RunStop::NoRun),
            -1 => Ok(RunStop::NotCurrent { current: text(1)? }),
            -2 => Ok(RunStop::Outstanding {
                run: text(1)?,
                left: left()?,
            }),
            1 => Ok(RunStop::Stopped {
                run: text(1)?,
                left: left()?,
                nodes: items[5..].iter().filter_map(utf8).collect(),
            }),
            _ => Err(bad()),
        }
    }

    /// Take a stopped run's counters again once its agents have published
    /// it (tasks that ran on past a forced stop are done by then), unless
    /// another run has started. Whether they were taken.
    pub async fn run_settle(&self, run: &str) -> Result<bool, QueueError> {
        let v = self
            .eval(
                "run_settle.lua",
                &scripts::RUN_SETTLE,
                &[],
                &[run.as_bytes()],
            )
            .await?;
        match int(&v) {
            Some(n) => Ok(n == 1),
            None => Err(bad_reply("run_settle.lua", format!("{v:?}"))),
        }
    }

    /// The run node `node`'s agent last said it records into ("" none), if
    /// it follows the controller's runs.
    pub async fn recording_of(&self, node: &str) -> Result<Option<String>, QueueError> {
        let node = node.to_string();
        Ok(self
            .conn()
            .run("HGET nodes:run", |mut c| {
                let node = node.clone();
                async move {
                    redis::cmd("HGET")
                        .arg(keys::NODE_RUN)
                        .arg(&node)
                        .query_async(&mut c)
                        .await
                }
            })
            .await?)
    }

    /// The run started last from the controller (current or stopped).
    pub async fn last_run(&self) -> Result<Option<String>, QueueError> {
        let ids: Vec<String> = self
            .conn()
            .run("ZRANGE runs:started", |mut c| async move {
                redis::cmd("ZRANGE")
                    .arg(keys::RUNS)
                    .arg(-1)
                    .arg(-1)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(ids.into_iter().next())
    }

    /// Every run started from the controller, oldest first.
    pub async fn runs(&self) -> Result<Vec<RunInfo>, QueueError> {
        let ids: Vec<(String, i64)> = self
            .conn()
            .run("ZRANGE runs:started", |mut c| async move {
                redis::cmd("ZRANGE")
                    .arg(keys::RUNS)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for (id, started_ms) in ids {
            let key = keys::run_info(&id);
            let nodes_key = crate::gather::nodes_key(&id);
            let (fields, mut published): (Vec<(String, i64)>, Vec<String>) = self
                .conn()
                .run("HGETALL run:<id>", |mut c| {
                    let (key, nodes_key) = (key.clone(), nodes_key.clone());
                    async move {
                        redis::pipe()
                            .cmd("HGETALL")
                            .arg(&key)
                            .cmd("SMEMBERS")
                            .arg(&nodes_key)
                            .query_async(&mut c)
                            .await
                    }
                })
                .await?;
            published.sort();
            let mut info = RunInfo {
                id,
                started_ms,
                published,
                ..RunInfo::default()
            };
            for (field, value) in fields {
                match field.as_str() {
                    "stopped_ms" => info.stopped_ms = Some(value),
                    "submitted" => info.submitted = value,
                    "done" => info.done = value,
                    "failed" => info.failed = value,
                    "dead" => info.dead = value.max(0),
                    "pending" | "placed" | "running" => info.outstanding += value,
                    _ => {}
                }
            }
            out.push(info);
        }
        Ok(out)
    }

    /// Of `nodes` (those a stop of run `run` waits on), those that have
    /// published its traces since the stop, and those no longer alive
    /// (they will not: their traces stay on the node).
    pub async fn run_publications(
        &self,
        run: &str,
        nodes: &[String],
    ) -> Result<(Vec<String>, Vec<String>), QueueError> {
        let waiting_key = keys::run_waiting(run);
        let (waiting, alive): (Vec<String>, Vec<String>) = self
            .conn()
            .run("SMEMBERS runs:waiting:<run>", |mut c| {
                let waiting_key = waiting_key.clone();
                async move {
                    redis::pipe()
                        .cmd("SMEMBERS")
                        .arg(&waiting_key)
                        .cmd("ZRANGE")
                        .arg(keys::ALIVE)
                        .arg(0)
                        .arg(-1)
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        let done = nodes
            .iter()
            .filter(|n| !waiting.contains(n))
            .cloned()
            .collect();
        let gone = nodes
            .iter()
            .filter(|n| waiting.contains(n) && !alive.contains(n))
            .cloned()
            .collect();
        Ok((done, gone))
    }
}

fn array<'a>(v: &'a Value, script: &'static str) -> Result<&'a [Value], QueueError> {
    match v {
        Value::Array(items) => Ok(items),
        _ => Err(bad_reply(script, format!("{v:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::check_run_id;

    #[test]
    fn run_ids_name_directories() {
        assert!(check_run_id("run-20261202-0730").is_ok());
        assert!(check_run_id("exp_3.a").is_ok());
        for bad in ["", ".", "..", "-x", "a/b", "a b", "ä", &"x".repeat(65)] {
            assert!(check_run_id(bad).is_err(), "{bad:?}");
        }
    }
}
