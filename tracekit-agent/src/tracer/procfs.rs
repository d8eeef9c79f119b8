//! The `/proc` collector: the original's method, kept as the fallback where
//! eBPF cannot run. Every interval it walks `/proc`, starts tracing matching
//! processes in scope, reads utime+stime, and ends a process when it is gone.
//! Its known loss: processes shorter than the interval are never seen, and
//! each process's CPU after its last sample is missing.

use std::collections::HashMap;

use anyhow::Result;

use super::{Event, ProcExit, ProcStart, Scope, Statm};
use crate::clock;

struct Stat {
    comm: String,
    ppid: u32,
    cpu_ticks: u64,
    start_ticks: u64,
}

struct Seen {
    cpu_ns: u64,
    /// Kept open: each reading is one `pread`.
    statm: Option<Statm>,
}

pub struct ProcfsCollector {
    scope: Scope,
    agent: u32,
    ticks_per_s: u64,
    seen: HashMap<u32, Seen>,
    /// Processes examined and found not matching (by pid and start time).
    ignored: HashMap<u32, u64>,
}

impl ProcfsCollector {
    pub fn new(scope: Scope) -> Self {
        ProcfsCollector {
            scope,
            agent: std::process::id(),
            ticks_per_s: crate::sys::clock_ticks_per_s(),
            seen: HashMap::new(),
            ignored: HashMap::new(),
        }
    }

    fn ticks_to_ns(&self, ticks: u64) -> u64 {
        ticks * 1_000_000_000 / self.ticks_per_s
    }

    pub fn tick(&mut self, known: &[u32], out: &mut Vec<Event>) -> Result<()> {
        let now_ns = clock::monotonic_ns();
        let mut stats = HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                if let Some(stat) = read_stat(pid) {
                    stats.insert(pid, stat);
                }
            }
        }
        // Ended: traced before, gone now. Its CPU since the last sample is lost.
        let gone: Vec<u32> = self
            .seen
            .keys()
            .copied()
            .filter(|pid| !stats.contains_key(pid))
            .collect();
        for pid in gone {
            if let Some(seen) = self.seen.remove(&pid) {
                out.push(Event::Exit(ProcExit {
                    pid,
                    end_ns: now_ns,
                    cpu_ns: seen.cpu_ns,
                    status: None,
                    rss_kb: None,
                }));
            }
        }
        self.ignored
            .retain(|pid, start| stats.get(pid).is_some_and(|s| s.start_ticks == *start));
        for (&pid, stat) in &stats {
            let cpu_ns = self.ticks_to_ns(stat.cpu_ticks);
            if let Some(seen) = self.seen.get_mut(&pid) {
                seen.cpu_ns = cpu_ns;
                continue;
            }
            if pid == self.agent || self.ignored.contains_key(&pid) || known.contains(&pid) {
                continue;
            }
            if self.scope == Scope::Worker && !descends_from(pid, self.agent, &stats) {
                self.ignored.insert(pid, stat.start_ticks);
                continue;
            }
            let filename = std::fs::read_link(format!("/proc/{pid}/exe"))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            // The table decides on the match and calls forget() if it fails.
            self.seen.insert(
                pid,
                Seen {
                    cpu_ns,
                    statm: Statm::open(pid),
                },
            );
            out.push(Event::Start(ProcStart {
                pid,
                ppid: stat.ppid,
                comm: stat.comm.clone(),
                filename,
                // starttime counts from boot, as CLOCK_MONOTONIC does (they
                // differ only by time spent suspended, which servers are not).
                start_ns: self.ticks_to_ns(stat.start_ticks),
                pre_existing: false,
                forked: false,
                image: 0,
            }));
        }
        Ok(())
    }

    /// CPU time of `pid` at the last scan (ns), and its resident set now
    /// (KiB) when it can be read.
    pub fn reading(&self, pid: u32) -> Option<(u64, Option<u64>)> {
        let seen = self.seen.get(&pid)?;
        Some((seen.cpu_ns, seen.statm.as_ref().and_then(Statm::rss_kb)))
    }

    pub fn forget(&mut self, pid: u32) {
        if self.seen.remove(&pid).is_some()
            && let Some(stat) = read_stat(pid)
        {
            self.ignored.insert(pid, stat.start_ticks);
        }
    }
}

fn descends_from(mut pid: u32, ancestor: u32, stats: &HashMap<u32, Stat>) -> bool {
    for _ in 0..64 {
        match stats.get(&pid) {
            Some(s) if s.ppid == ancestor => return true,
            Some(s) if s.ppid > 1 => pid = s.ppid,
            _ => return false,
        }
    }
    false
}

/// Parse `/proc/<pid>/stat`; comm may hold spaces and parentheses, so fields
/// are counted from the last ')'.
fn read_stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = text.get(close + 2..)?.split_whitespace().collect();
    // rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15, starttime 22.
    let field = |n: usize| -> Option<u64> { rest.get(n - 3)?.parse().ok() };
    Some(Stat {
        comm,
        ppid: field(4)? as u32,
        cpu_ticks: field(14)? + field(15)?,
        start_ticks: field(22)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_stat() {
        let stat = read_stat(std::process::id()).expect("own stat");
        assert!(!stat.comm.is_empty());
        assert!(stat.ppid > 0);
    }
}
