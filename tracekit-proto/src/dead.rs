//! The dead-letter list (`q:dead`) as something to act on: listed with an id
//! per letter, requeued (one or all, atomically, attempts reset) or cleared.

use redis::Value;

use crate::queue::{DeadLetter, Queue, QueueError, bad_reply, int, utf8};
use crate::scripts;

/// A dead letter and its id (the SHA-1 of its entry, in hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadEntry {
    pub id: String,
    pub letter: DeadLetter,
}

/// Shortest id prefix `dead requeue` accepts (fewer digits would name
/// several letters too often).
pub const MIN_ID_PREFIX: usize = 4;

impl Queue {
    /// Dead letters `start..=stop` (LRANGE indexes; 0, -1 = all) with their ids.
    pub async fn dead_entries(&self, start: i64, stop: i64) -> Result<Vec<DeadEntry>, QueueError> {
        let v = self
            .eval(
                "dead_list.lua",
                &scripts::DEAD_LIST,
                &[],
                &[start.to_string().as_bytes(), stop.to_string().as_bytes()],
            )
            .await?;
        let Value::Array(items) = v else {
            return Err(bad_reply("dead_list.lua", format!("{v:?}")));
        };
        items
            .chunks(2)
            .map(|pair| {
                let [id, entry] = pair else {
                    return Err(bad_reply("dead_list.lua", "odd reply"));
                };
                let (id, entry) = (
                    utf8(id).ok_or_else(|| bad_reply("dead_list.lua", "id"))?,
                    utf8(entry).ok_or_else(|| bad_reply("dead_list.lua", "entry"))?,
                );
                let letter = serde_json::from_str(&entry)
                    .map_err(|e| bad_reply("q:dead", format!("{e}: {entry}")))?;
                Ok(DeadEntry { id, letter })
            })
            .collect()
    }

    /// Puts dead letters' tasks back at the tail of pending with their
    /// attempt counts reset: the one whose id starts with `id`, or all of
    /// them (None). Returns (requeued, letters the id matched); with an id,
    /// nothing is requeued unless it matches exactly one letter.
    pub async fn requeue_dead(&self, id: Option<&str>) -> Result<(usize, usize), QueueError> {
        let want = id.unwrap_or("").to_ascii_lowercase();
        let v = self
            .eval(
                "dead_requeue.lua",
                &scripts::DEAD_REQUEUE,
                &[],
                &[want.as_bytes()],
            )
            .await?;
        match &v {
            Value::Array(a) if a.len() == 2 => match (int(&a[0]), int(&a[1])) {
                (Some(n), Some(m)) => Ok((n as usize, m as usize)),
                _ => Err(bad_reply("dead_requeue.lua", format!("{v:?}"))),
            },
            _ => Err(bad_reply("dead_requeue.lua", format!("{v:?}"))),
        }
    }

    /// Drops every dead letter; returns how many.
    pub async fn clear_dead(&self) -> Result<usize, QueueError> {
        let v = self
            .eval("dead_clear.lua", &scripts::DEAD_CLEAR, &[], &[])
            .await?;
        int(&v)
            .map(|n| n as usize)
            .ok_or_else(|| bad_reply("dead_clear.lua", format!("{v:?}")))
    }
}
