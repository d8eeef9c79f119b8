//! Joining samples to the task they belong to.
//!
//! A PID is reused by the kernel, so a sample is matched by (pid, time): it
//! belongs to the invocation of that PID whose run `[ts_start, ts_end]` holds
//! the sample's `ts_ms`. When two runs of one PID touch (one ends in the very
//! millisecond the next starts), the one that covers more of the sample's
//! interval `[ts_ms - dt_ms, ts_ms]` wins, and on a tie the earlier one (a
//! process's last sample sits at its `ts_end`).

use rustc_hash::FxHashMap;

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

/// The runs of one PID in the index: `runs[lo..hi]`, and buckets of time
/// that narrow the search for the runs starting by a given time.
#[derive(Debug, Clone, Copy)]
struct PidRuns {
    lo: u32,
    hi: u32,
    /// Start of the first run; bucket `b` holds the starts in
    /// `[first + (b << shift), first + ((b + 1) << shift))`.
    first: i64,
    shift: u32,
    /// `bounds[at..=at + buckets]`: for each bucket, the runs (from `lo`)
    /// that start before it.
    at: u32,
    buckets: u32,
}

/// The runs of one node's tasks, searchable by PID and time in about
/// constant time: a long run reuses each PID many times, and one sample is
/// looked up per interval of every task.
#[derive(Debug, Default)]
pub struct TaskIndex {
    /// Sorted by pid, then start.
    runs: Vec<IndexedRun>,
    /// `runs[i].start`, apart: a search touches a few cache lines.
    starts: Vec<i64>,
    bounds: Vec<u32>,
    by_pid: FxHashMap<u32, PidRuns>,
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
        let starts: Vec<i64> = runs.iter().map(|r| r.start).collect();
        let mut by_pid = FxHashMap::default();
        by_pid.reserve(runs.len());
        let mut bounds = Vec::new();
        let mut i = 0;
        while i < runs.len() {
            let pid = runs[i].pid;
            let mut j = i + 1;
            while j < runs.len() && runs[j].pid == pid {
                runs[j].reach = runs[j].end.max(runs[j - 1].reach);
                j += 1;
            }
            by_pid.insert(pid, PidRuns::new(&starts, i, j, &mut bounds));
            i = j;
        }
        TaskIndex {
            runs,
            starts,
            bounds,
            by_pid,
        }
    }

    /// How many of `p`'s runs start at or before `ts`.
    fn started_by(&self, p: &PidRuns, ts: i64) -> usize {
        let starts = &self.starts[p.lo as usize..p.hi as usize];
        if p.buckets == 0 {
            return starts.partition_point(|&s| s <= ts);
        }
        if ts < p.first {
            return 0;
        }
        let b = ((ts - p.first) as u64 >> p.shift) as usize;
        if b >= p.buckets as usize {
            return starts.len();
        }
        let at = p.at as usize + b;
        let (from, to) = (self.bounds[at] as usize, self.bounds[at + 1] as usize);
        from + starts[from..to].partition_point(|&s| s <= ts)
    }

    /// The task a sample of `pid` at `ts_ms` covering `dt_ms` belongs to.
    pub fn find(&self, pid: u32, ts_ms: i64, dt_ms: i64) -> Option<u32> {
        let p = self.by_pid.get(&pid)?;
        let runs = &self.runs[p.lo as usize..p.hi as usize];
        if let [r] = runs {
            return (r.start <= ts_ms && ts_ms <= r.end).then_some(r.task);
        }
        let from = ts_ms - dt_ms.max(0);
        // Runs that start at or before ts, scanned from the latest back.
        let upto = self.started_by(p, ts_ms);
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

/// Below this many runs a PID's runs are searched without buckets.
const MIN_BUCKETED: usize = 16;

impl PidRuns {
    /// The runs `lo..hi` (of `starts`, sorted), with their buckets appended
    /// to `bounds`: about one per run.
    fn new(starts: &[i64], lo: usize, hi: usize, bounds: &mut Vec<u32>) -> Self {
        let mine = &starts[lo..hi];
        let first = mine[0];
        let mut p = PidRuns {
            lo: lo as u32,
            hi: hi as u32,
            first,
            shift: 0,
            at: bounds.len() as u32,
            buckets: 0,
        };
        if mine.len() < MIN_BUCKETED {
            return p;
        }
        let span = mine[mine.len() - 1].abs_diff(first);
        let per_run = span / mine.len() as u64;
        p.shift = u64::BITS - per_run.leading_zeros();
        p.buckets = u32::try_from((span >> p.shift) + 1).unwrap_or(u32::MAX);
        let mut run = 0;
        for b in 0..=u64::from(p.buckets) {
            let bucket_start = first.saturating_add_unsigned(b << p.shift);
            while run < mine.len() && mine[run] < bucket_start {
                run += 1;
            }
            bounds.push(run as u32);
        }
        p
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

    /// The buckets give what a search of every run gives, at every time.
    #[test]
    fn buckets_agree_with_a_plain_search() {
        // Runs of uneven length, with gaps, overlaps and shared starts.
        let mut runs = Vec::new();
        let mut t = -5_000i64;
        for i in 0..500i64 {
            let len = (i * 37) % 300;
            runs.push((3, t, t + len));
            if i % 7 == 0 {
                runs.push((3, t, t + len / 2));
            }
            t += (i * 53) % 250;
        }
        let idx = TaskIndex::new(runs.clone());
        assert!(idx.by_pid[&3].buckets > 0);
        for ts in -6_000..t + 400 {
            for dt in [0, 40, 1_000] {
                let from = ts - dt;
                let want = runs
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.1 <= ts && ts <= r.2)
                    // Larger overlap, then the earlier start; among equal
                    // starts the index's order (end, then task).
                    .max_by_key(|(i, r)| (ts.min(r.2) - from.max(r.1), -r.1, -r.2, -(*i as i64)))
                    .map(|(i, _)| i as u32);
                assert_eq!(idx.find(3, ts, dt), want, "ts {ts} dt {dt}");
            }
        }
    }
}
