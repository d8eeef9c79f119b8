//! The tracer: one collector interface, two implementations.
//!
//! [`ebpf`] follows exec/fork/exit in the kernel, reads exact per-process
//! CPU totals, and gets its samples from the kernel too; [`procfs`] polls
//! `/proc` like the original (and misses what the original missed), and is
//! sampled by the agent each interval. Both produce the same [`Event`]s,
//! which [`crate::table::ProcessTable`] turns into trace records.

pub mod ebpf;
pub mod procfs;
pub mod select;

use std::time::Duration;

use anyhow::Result;
use tracekit_trace::{CollectorKind, ProgramCost};

use crate::table::Command;

/// A process came into view: it exec'd (or was forked by a traced process,
/// or was found already running).
#[derive(Debug, Clone)]
pub struct ProcStart {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub filename: String,
    /// CLOCK_MONOTONIC ns.
    pub start_ns: u64,
    /// Already running when tracing began: CPU counts from then on.
    pub pre_existing: bool,
    /// Forked by a traced process, not (yet) exec'd: its comm is its
    /// parent's, so no decision is taken on it until it execs or exits.
    pub forked: bool,
    /// The collector's image number of this image (see [`Collector::forget_image`]).
    pub image: u32,
}

/// A traced process ended.
#[derive(Debug, Clone)]
pub struct ProcExit {
    pub pid: u32,
    /// CLOCK_MONOTONIC ns.
    pub end_ns: u64,
    /// Total CPU time, ns (exact for eBPF; last value seen for procfs).
    pub cpu_ns: u64,
    /// wait(2) status when known.
    pub status: Option<i32>,
    /// Resident set when it began to exit, KiB, when known.
    pub rss_kb: Option<u64>,
}

/// A live process's reading, taken by the kernel at a tick.
#[derive(Debug, Clone)]
pub struct KernelSample {
    pub pid: u32,
    /// CLOCK_MONOTONIC ns.
    pub ts_ns: u64,
    /// CPU time since tracing began, ns.
    pub cpu_ns: u64,
    /// `None` while no thread has an address space (all are exiting).
    pub rss_kb: Option<u64>,
}

#[derive(Debug, Clone)]
pub enum Event {
    Start(ProcStart),
    Exit(ProcExit),
    Sample(KernelSample),
}

/// Counters a collector reports about itself.
#[derive(Debug, Clone, Default)]
pub struct CollectorStats {
    pub events_lost: u64,
    pub map_full: u64,
    pub exits_recovered: u64,
    /// Samples of a process with more threads than the kernel walks.
    pub samples_cut: u64,
    /// Samples the kernel did not take: the ring buffer was 3/4 full.
    pub samples_dropped: u64,
    /// The CPU whose timer samples (eBPF).
    pub sampler_cpu: Option<u32>,
    /// Times sampling moved to another CPU (its CPU went offline).
    pub sampler_moves: u64,
    /// No CPU samples any more.
    pub sampler_stalled: bool,
    /// The in-kernel sampler's runs, their total and longest run time (ns),
    /// as it measures itself (eBPF).
    pub sampler_runs: u64,
    pub sampler_run_ns: u64,
    pub sampler_max_run_ns: u64,
    /// Its runs longer than `TK_SLOW_RUN_NS`.
    pub sampler_slow_runs: u64,
    pub programs: Vec<ProgramCost>,
}

/// How often the agent drains the kernel's samples while it traces (eBPF):
/// a sample line reaches the file at most this late. On a VM every wake-up
/// costs CPU, whatever it does.
pub const DRAIN_EVERY: Duration = Duration::from_secs(10);

/// The agent's tick while it traces nothing (eBPF): it keeps the stats file
/// and the lost-event check current; the exec of a process to trace wakes
/// the agent at once.
pub const IDLE_TICK: Duration = Duration::from_secs(60);

/// Scope of tracing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scope {
    /// Processes started by this agent and their descendants.
    Worker,
    /// Every matching process on the machine.
    Host,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scope::Worker => "worker",
            Scope::Host => "host",
        })
    }
}

/// The collector that runs.
pub enum Collector {
    Ebpf(Box<ebpf::EbpfCollector>),
    Procfs(procfs::ProcfsCollector),
}

impl Collector {
    pub fn kind(&self) -> CollectorKind {
        match self {
            Collector::Ebpf(_) => CollectorKind::Ebpf,
            Collector::Procfs(_) => CollectorKind::Procfs,
        }
    }

    /// Resolves when events may be waiting ([`Collector::drain`] them); the
    /// procfs collector has no events between ticks and never resolves.
    pub async fn ready(&mut self) -> Result<()> {
        match self {
            Collector::Ebpf(c) => c.ready().await,
            Collector::Procfs(_) => std::future::pending().await,
        }
    }

    /// A descriptor that is readable when events may be waiting, for a
    /// poll(2) loop; the procfs collector has none.
    pub fn event_fd(&self) -> Option<std::os::fd::RawFd> {
        match self {
            Collector::Ebpf(c) => Some(c.event_fd()),
            Collector::Procfs(_) => None,
        }
    }

    /// Take the events that arrived, without blocking, until `out` holds
    /// `max` or more; true if more may wait.
    pub fn drain(&mut self, out: &mut Vec<Event>, max: usize) -> Result<bool> {
        match self {
            Collector::Ebpf(c) => c.drain(out, max),
            Collector::Procfs(_) => Ok(false),
        }
    }

    /// Work done at each tick before sampling: procfs scans `/proc`; eBPF
    /// recovers what lost events left out. `known`: the pids the table traces.
    pub fn tick(&mut self, known: &[u32], out: &mut Vec<Event>) -> Result<()> {
        match self {
            Collector::Ebpf(c) => c.tick(known, out),
            Collector::Procfs(c) => c.tick(known, out),
        }
    }

    /// After a drain: if the kernel lost events meanwhile, recover what
    /// they were about from its records at once (eBPF); `known` gives the
    /// pids the table traces. Nothing to do for procfs.
    pub fn recover_lost(&mut self, known: impl FnOnce() -> Vec<u32>, out: &mut Vec<Event>) -> bool {
        let Collector::Ebpf(c) = self else {
            return false;
        };
        if !c.events_were_lost() {
            return false;
        }
        c.reconcile(&known(), out);
        true
    }

    /// The exit of traced `pid` if it has ended but its exit event has not
    /// come (eBPF; procfs sees exits only at its scans).
    pub fn recover_exit(&mut self, pid: u32, out: &mut Vec<Event>) {
        if let Collector::Ebpf(c) = self {
            c.recover_exit(pid, out);
        }
    }

    /// How often the agent must tick. procfs: every interval, busy or not
    /// (scanning `/proc` is its only way to see a process start, and the
    /// agent takes the samples). eBPF: the kernel samples and queues, and
    /// wakes the agent at every exec and exit, so [`DRAIN_EVERY`] while
    /// `busy` and [`IDLE_TICK`] otherwise.
    pub fn tick_every(&self, interval: Duration, busy: bool) -> Duration {
        match self {
            Collector::Ebpf(_) if busy => DRAIN_EVERY,
            Collector::Ebpf(_) => IDLE_TICK,
            Collector::Procfs(_) => interval,
        }
    }

    /// Carry out what the process table asks (see [`Command`]).
    pub fn run(&mut self, command: Command) {
        match (self, command) {
            // The kernel samples a traced process from now on; procfs
            // samples every process it follows anyway.
            (Collector::Ebpf(c), Command::Watch(pid)) => c.watch(pid),
            (Collector::Procfs(_), Command::Watch(_)) => {}
            (Collector::Ebpf(c), Command::Forget(pid)) => c.forget(pid),
            (Collector::Ebpf(c), Command::ForgetImage { pid, image }) => c.forget_image(pid, image),
            (Collector::Procfs(c), Command::Forget(pid) | Command::ForgetImage { pid, .. }) => {
                c.forget(pid)
            }
        }
    }

    pub fn stats(&mut self) -> CollectorStats {
        match self {
            Collector::Ebpf(c) => c.stats(),
            Collector::Procfs(_) => CollectorStats::default(),
        }
    }
}

/// Decode a wait(2) status into (exit code, signal).
pub fn decode_status(status: i32) -> (Option<i32>, Option<i32>) {
    let sig = status & 0x7f;
    if sig == 0 {
        (Some((status >> 8) & 0xff), None)
    } else {
        (None, Some(sig))
    }
}

/// `/proc/<pid>/statm`, kept open: each reading is one `pread`, where
/// reading the file anew would take five system calls every interval.
#[derive(Debug)]
pub struct Statm(std::fs::File);

impl Statm {
    pub fn open(pid: u32) -> Option<Statm> {
        std::fs::File::open(format!("/proc/{pid}/statm"))
            .ok()
            .map(Statm)
    }

    /// Resident set size in KiB.
    pub fn rss_kb(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 128];
        let n = self.0.read_at(&mut buf, 0).ok()?;
        let text = std::str::from_utf8(&buf[..n]).ok()?;
        let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages * page_size_kb())
    }
}

pub(crate) fn page_size_kb() -> u64 {
    crate::sys::page_size_kb()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_wait_status() {
        assert_eq!(decode_status(0), (Some(0), None));
        assert_eq!(decode_status(1 << 8), (Some(1), None));
        assert_eq!(decode_status(9), (None, Some(9)));
        assert_eq!(decode_status(0x80 | 11), (None, Some(11)));
    }
}
