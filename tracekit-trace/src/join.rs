//! Joining samples to the task they belong to.
//!
//! A PID is reused by the kernel, so a sample is matched by (pid, time): it
//! belongs to the invocation of that PID whose run `[ts_start, ts_end]` holds
//! the sample's `ts_ms`. When two runs of one PID touch (one ends in the very
//! millisecond the next starts), the one that covers more of the sample's
//! interval `[ts_ms - dt_ms, ts_ms]` wins, and on a tie the earlier one (a
//! process's last sample sits at its `ts_end`).

use std::collections::HashMap;

/// One task's run in the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct IndexedRun {
    pid: u32,
    start: i64,
    end: i64,
    task: u32,
    /// Latest end among this and the earlier runs of the same PID: lets a
    /// lookup stop scanning back as soon as no earlier run can reach `ts`.
    reach: i64,
}

/// The runs of one node's tasks, searchable by PID and time in O(log runs of
/// that PID): a long run reuses each PID many times.
#[derive(Debug, Default)]
pub struct TaskIndex {
    /// Sorted by pid, then start.
    runs: Vec<IndexedRun>,
    /// pid -> range of `runs`.
    by_pid: HashMap<u32, (u32, u32)>,
}

impl TaskIndex {
    /// Index `tasks`, given as (pid, ts_start, ts_end); a task is named by its
    /// position in that sequence.
    pub fn new(tasks: impl IntoIterator<Item = (u32, i64, i64)>) -> Self {
        let mut runs: Vec<IndexedRun> = tasks
            .into_iter()
            .enumerate()
            .map(|(i, (pid, start, end))| IndexedRun {
                pid,
                start,
                end,
                task: i as u32,
                reach: end,
            })
            .collect();
        runs.sort_unstable();
        let mut by_pid = HashMap::with_capacity(runs.len());
        let mut i = 0;
        while i < runs.len() {
            let pid = runs[i].pid;
            let mut j = i + 1;
            while j < runs.len() && runs[j].pid == pid {
                runs[j].reach = runs[j].end.max(runs[j - 1].reach);
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
        if let [r] = runs {
            return (r.start <= ts_ms && ts_ms <= r.end).then_some(r.task);
        }
        let from = ts_ms - dt_ms.max(0);
        // Runs that start at or before ts, scanned from the latest back.
        let upto = runs.partition_point(|r| r.start <= ts_ms);
        let mut best: Option<(i64, i64, u32)> = None;
        for r in runs[..upto].iter().rev() {
            if r.reach < ts_ms {
                break;
            }
            if ts_ms <= r.end {
                let overlap = ts_ms.min(r.end) - from.max(r.start);
                // Larger overlap wins; on a tie the earlier run.
                let better =
                    best.is_none_or(|(o, s, _)| overlap > o || (overlap == o && r.start <= s));
                if better {
                    best = Some((overlap, r.start, r.task));
                }
            }
        }
        best.map(|(_, _, t)| t)
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

    #[test]
    fn many_runs_of_one_pid_and_an_overlapping_one() {
        // 1000 back-to-back runs of pid 1, plus a long (malformed) run of the
        // same pid that overlaps the first 20 of them.
        let mut runs: Vec<(u32, i64, i64)> = (0..1000).map(|i| (1, 10 * i, 10 * i + 10)).collect();
        runs.push((1, 3, 200));
        let idx = TaskIndex::new(runs);
        for i in 20..1000 {
            assert_eq!(idx.find(1, 10 * i + 7, 5), Some(i as u32), "run {i}");
        }
        // Where both cover the interval, the one covering more wins, then the
        // earlier one.
        assert_eq!(idx.find(1, 7, 5), Some(0));
        assert_eq!(idx.find(1, 150, 100), Some(1000));
        assert_eq!(idx.find(1, 57, 5), Some(1000));
        assert_eq!(idx.find(1, 10_001, 1), None);
    }
}
