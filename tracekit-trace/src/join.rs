//! Joining samples to the task they belong to.
//!
//! A PID is reused by the kernel, so a sample is matched by (pid, time): it
//! belongs to the invocation of that PID whose run `[ts_start, ts_end]` holds
//! the sample's `ts_ms`. When two runs of one PID touch (one ends in the very
//! millisecond the next starts), the one that covers more of the sample's
//! interval `[ts_ms - dt_ms, ts_ms]` wins, and on a tie the earlier one (a
//! process's last sample sits at its `ts_end`).

use std::collections::HashMap;

/// The runs of one node's tasks, searchable by PID and time.
#[derive(Debug, Default)]
pub struct TaskIndex {
    /// (pid, ts_start, ts_end, task), sorted by pid then start.
    runs: Vec<(u32, i64, i64, u32)>,
    /// pid -> range of `runs`.
    by_pid: HashMap<u32, (u32, u32)>,
}

impl TaskIndex {
    /// Index `tasks`, given as (pid, ts_start, ts_end); a task is named by its
    /// position in that sequence.
    pub fn new(tasks: impl IntoIterator<Item = (u32, i64, i64)>) -> Self {
        let mut runs: Vec<(u32, i64, i64, u32)> = tasks
            .into_iter()
            .enumerate()
            .map(|(i, (pid, s, e))| (pid, s, e, i as u32))
            .collect();
        runs.sort_unstable();
        let mut by_pid = HashMap::with_capacity(runs.len());
        let mut i = 0;
        while i < runs.len() {
            let pid = runs[i].0;
            let mut j = i + 1;
            while j < runs.len() && runs[j].0 == pid {
                j += 1;
            }
            by_pid.insert(pid, (i as u32, j as u32));
            i = j;
        }
        TaskIndex { runs, by_pid }
    }

    /// The task a sample of `pid` at `ts_ms` covering `dt_ms` belongs to.
    pub fn find(&self, pid: u32, ts_ms: i64, dt_ms: i64) -> Option<u32> {
        let &(lo, hi) = self.by_pid.get(&pid)?;
        let runs = &self.runs[lo as usize..hi as usize];
        if let [(_, s, e, task)] = runs {
            return (*s <= ts_ms && ts_ms <= *e).then_some(*task);
        }
        let from = ts_ms - dt_ms.max(0);
        let mut best: Option<(i64, u32)> = None;
        for &(_, s, e, task) in runs {
            if s > ts_ms {
                break;
            }
            if ts_ms <= e {
                let overlap = ts_ms.min(e) - from.max(s);
                if best.is_none_or(|(o, _)| overlap > o) {
                    best = Some((overlap, task));
                }
            }
        }
        best.map(|(_, t)| t)
    }

    /// Number of tasks indexed.
    pub fn len(&self) -> usize {
        self.runs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reused_pid_is_split_by_time() {
        // pid 7 runs twice, back to back in the same millisecond; pid 8 once.
        let idx = TaskIndex::new([(7, 100, 200), (8, 100, 300), (7, 200, 400)]);
        assert_eq!(idx.find(7, 150, 50), Some(0));
        // The last sample of the first run (interval 150..200) stays with it.
        assert_eq!(idx.find(7, 200, 50), Some(0));
        assert_eq!(idx.find(7, 250, 50), Some(2));
        assert_eq!(idx.find(7, 400, 150), Some(2));
        assert_eq!(idx.find(7, 401, 1), None);
        assert_eq!(idx.find(7, 99, 0), None);
        assert_eq!(idx.find(8, 300, 100), Some(1));
        assert_eq!(idx.find(9, 300, 100), None);
    }
}
