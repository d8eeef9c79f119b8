//! Recovery after lost events: when the ring buffer overflowed, the `procs`
//! map still holds every traced process's record, so starts and exits user
//! space never heard of are rebuilt from it.

use tracekit_ebpf::{TK_PROC_EXITED, TK_STAT_RINGBUF_LOST, TkProc};

use super::EbpfCollector;
use crate::tracer::{Event, ProcExit, ProcStart};

impl EbpfCollector {
    /// Whether events were lost since the last call (one map read).
    pub fn events_were_lost(&mut self) -> bool {
        let lost = self.counter(TK_STAT_RINGBUF_LOST);
        if lost <= self.last_lost {
            return false;
        }
        self.last_lost = lost;
        true
    }

    /// After lost events, reconcile with the `procs` map (walked only then:
    /// walking a large hash map costs milliseconds): processes user space
    /// never heard of are started, and known ones that ended are finished
    /// from the map's final record.
    pub fn reconcile(&mut self, known: &[u32], out: &mut Vec<Event>) {
        let mut stale = Vec::new();
        for entry in self.procs.iter() {
            let Ok((pid, p)) = entry else { continue };
            let exited = p.flags & TK_PROC_EXITED != 0;
            if known.contains(&pid) {
                if exited {
                    // Its exit event was lost, or is just behind (then the
                    // duplicate is ignored).
                    self.recovered += 1;
                    out.push(self.exit_event(pid, &p));
                }
            } else if exited {
                stale.push(pid);
            } else if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
                out.push(Event::Start(ProcStart {
                    pid,
                    ppid: p.ppid,
                    comm: comm.trim().to_string(),
                    filename: String::new(),
                    start_ns: p.start_ns,
                    pre_existing: false,
                    forked: false,
                    image: p.image,
                }));
            }
        }
        for pid in stale {
            self.forget(pid);
        }
    }

    /// The exit of `pid` from its `procs` record, if it has ended there: for
    /// a process whose exit event has not come (lost, or not yet read).
    pub fn recover_exit(&mut self, pid: u32, out: &mut Vec<Event>) {
        if let Ok(p) = self.procs.get(&pid, 0)
            && p.flags & TK_PROC_EXITED != 0
        {
            self.recovered += 1;
            out.push(self.exit_event(pid, &p));
        }
    }

    fn exit_event(&self, pid: u32, p: &TkProc) -> Event {
        Event::Exit(ProcExit {
            pid,
            end_ns: p.exit_ns,
            cpu_ns: p.cpu_ns,
            status: Some(p.exit_code),
            rss_kb: (p.rss_pages > 0).then(|| p.rss_pages * self.page_kb),
        })
    }
}
