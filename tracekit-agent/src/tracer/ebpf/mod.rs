//! The eBPF collector: loads `tracekit.bpf.o` (through [`loader`], in its
//! own process), and reads from the ring buffer exec/fork/exit events (each
//! exit with its exact CPU total) and the samples the kernel's timer takes
//! every interval (each live process's CPU clock and RSS) of the processes
//! in [`watched`]; [`sampler`] says when sampling moved or stopped.

mod loader;
mod recover;
mod sampler;
mod watched;

pub use loader::{LoadConfig, load_and_pin, online_cpus, parse_cpu_list};
pub use sampler::sampler_stalled;

use std::collections::HashSet;

use rustc_hash::FxHashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use anyhow::{Context, Result, anyhow};
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray, RingBuf};
use aya::programs::links::{FdLink, PinnedLink};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tracekit_ebpf::{
    Record, TK_EV_EXEC, TK_EV_EXIT, TK_EV_FORK, TK_STAT_PROCS_FULL, TK_STAT_RINGBUF_LOST,
    TK_STAT_SAMPLE_DROPPED, TK_STAT_SAMPLER_MAX_NS, TK_STAT_SAMPLER_MOVED, TK_STAT_SAMPLER_RUN_NS,
    TK_STAT_SAMPLER_RUNS, TK_STAT_SAMPLER_SLOW_RUNS, TK_STAT_SCOPE_FULL, TK_STAT_WALK_CUT, TkProc,
    c_str, names,
};
use tracekit_trace::ProgramCost;

use super::{CollectorStats, Event, KernelSample, ProcExit, ProcStart, Scope, page_size_kb};

use loader::{PIN_ROOT, link_path, mount_bpffs, remove_stale_pins, run_loader};
use sampler::SamplerWatch;
use watched::Watched;

pub struct EbpfCollector {
    // The programs stay attached while these links are held.
    links: Vec<FdLink>,
    /// The adoption iterator, until it runs.
    adopt_link: Option<FdLink>,
    /// The ring buffer's descriptor registered with tokio, made on first
    /// use (the trace-only loop polls it directly). Declared before
    /// `events` so it is deregistered before the descriptor closes.
    readiness: Option<AsyncFd<RawDescriptor>>,
    events: RingBuf<MapData>,
    procs: BpfHashMap<MapData, u32, TkProc>,
    stats: PerCpuArray<MapData, u64>,
    /// The processes the kernel samples (see [`Watched`]).
    watched: Watched,
    /// Processes adopted while running: their CPU clock when tracing began
    /// (looked up for every sample: a fast hash).
    adopted_at: FxHashMap<u32, u64>,
    page_kb: u64,
    /// Holds BPF run-time statistics on while the agent runs.
    _stats_fd: Option<OwnedFd>,
    recovered: u64,
    last_lost: u64,
    /// Which CPU samples (see [`SamplerWatch`]).
    sampler: SamplerWatch,
    /// The sampler's timer runs while this is open.
    _ticker: MapData,
}

/// A descriptor owned elsewhere, for registering with tokio.
struct RawDescriptor(RawFd);

impl AsRawFd for RawDescriptor {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl EbpfCollector {
    /// Load and attach the tracer (through the loader process) and open what
    /// it pinned; the pins are removed at once, so everything is released
    /// when the agent exits, however it exits.
    pub fn start(cfg: &LoadConfig) -> Result<Self> {
        mount_bpffs()?;
        remove_stale_pins();
        let pin_dir = PathBuf::from(PIN_ROOT).join(std::process::id().to_string());
        let _ = std::fs::remove_dir_all(&pin_dir);
        std::fs::create_dir_all(&pin_dir)
            .with_context(|| format!("creating {}", pin_dir.display()))?;
        let opened =
            run_loader(cfg, &pin_dir).and_then(|()| Self::open(cfg.scope, cfg.interval, &pin_dir));
        let _ = std::fs::remove_dir_all(&pin_dir);
        opened
    }

    fn open(scope: Scope, interval: std::time::Duration, pin_dir: &Path) -> Result<Self> {
        let open_link = |prog: &str| -> Result<FdLink> {
            let path = link_path(pin_dir, prog);
            let pinned = PinnedLink::from_pin(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            pinned.unpin().context("unpinning a link")
        };
        let mut links = Vec::new();
        for (prog, _) in names::PROGRAMS {
            links.push(open_link(prog)?);
        }
        let adopt_link = open_link(names::PROG_ADOPT)?;
        let open_map = |name: &str| -> Result<MapData> {
            let path = pin_dir.join(name);
            let data =
                MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
            std::fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
            Ok(data)
        };
        // The agent's own process roots the worker scope, before anything is
        // spawned, so its children are in scope from their first instruction.
        let mut scope_map: BpfHashMap<MapData, u32, u8> =
            BpfHashMap::try_from(Map::HashMap(open_map(names::MAP_SCOPE)?))
                .with_context(|| format!("map {} is not a HashMap", names::MAP_SCOPE))?;
        if scope == Scope::Worker {
            scope_map
                .insert(std::process::id(), 1u8, 0)
                .context("registering the agent in the scope map")?;
        }
        let stats_fd = match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::warn!("BPF run-time statistics unavailable: {e}");
                None
            }
        };
        let events = RingBuf::try_from(Map::RingBuf(open_map(names::MAP_EVENTS)?))
            .with_context(|| format!("map {} is not a RingBuf", names::MAP_EVENTS))?;
        let mut collector = EbpfCollector {
            links,
            adopt_link: Some(adopt_link),
            readiness: None,
            events,
            procs: BpfHashMap::try_from(Map::HashMap(open_map(names::MAP_PROCS)?))
                .with_context(|| format!("map {} is not a HashMap", names::MAP_PROCS))?,
            stats: PerCpuArray::try_from(Map::PerCpuArray(open_map(names::MAP_STATS)?))
                .with_context(|| format!("map {} is not a PerCpuArray", names::MAP_STATS))?,
            watched: Watched {
                slots: Array::try_from(Map::Array(open_map(names::MAP_WATCHED)?))
                    .with_context(|| format!("map {} is not a Array", names::MAP_WATCHED))?,
                len: Array::try_from(Map::Array(open_map(names::MAP_WATCHED_LEN)?))
                    .with_context(|| format!("map {} is not a Array", names::MAP_WATCHED_LEN))?,
                pids: Vec::new(),
                full_warned: false,
            },
            _stats_fd: stats_fd,
            adopted_at: FxHashMap::default(),
            page_kb: page_size_kb(),
            recovered: 0,
            last_lost: 0,
            sampler: SamplerWatch {
                map: Array::try_from(Map::Array(open_map(names::MAP_SAMPLER)?))
                    .with_context(|| format!("map {} is not a Array", names::MAP_SAMPLER))?,
                interval_ns: interval.as_nanos() as u64,
                since_ns: crate::clock::monotonic_ns(),
                cpu: None,
                moves: 0,
                stalled: false,
            },
            _ticker: open_map(names::MAP_TICKER)?,
        };
        collector.check_sampler();
        // aya probes the kernel's features on first use (loading throwaway
        // programs, maps and BTF: dozens of system calls): at start-up, not in the
        // middle of a run at the first stats write.
        collector.stats();
        Ok(collector)
    }

    /// Start tracing a process that was already running (host scope): its
    /// CPU counts from now. `threads`: its threads' tids and runtimes (ns).
    /// Its samples start once [`EbpfCollector::complete_adoption`] has run.
    pub fn adopt(&mut self, start: &ProcStart, threads: &[(u32, u64)]) -> Result<()> {
        let clock_now = process_cpu_ns(start.pid)
            .with_context(|| format!("reading the CPU clock of pid {}", start.pid))?;
        let runtime: u64 = threads.iter().map(|&(_, rt)| rt).sum();
        let proc_state = TkProc {
            // Each thread adds its whole runtime when it ends: start below
            // zero by what they had run already (wrapping, as the kernel adds).
            cpu_ns: 0u64.wrapping_sub(runtime),
            start_ns: start.start_ns,
            threads: threads.len() as u32,
            ppid: start.ppid,
            ..TkProc::default()
        };
        self.procs
            .insert(start.pid, proc_state, 0)
            .with_context(|| format!("adopting pid {}", start.pid))?;
        self.adopted_at.insert(start.pid, clock_now);
        Ok(())
    }

    /// Give the adopted processes what the sampler needs and only the kernel
    /// can (their signal_struct): run the `tk_adopt` task iterator over every
    /// task, once, after the last [`EbpfCollector::adopt`].
    pub fn complete_adoption(&mut self) -> Result<()> {
        use std::io::Read;
        let Some(link) = self.adopt_link.take() else {
            anyhow::bail!("the adoption iterator has run already");
        };
        let link = aya::programs::iter::IterLink::try_from(link)
            .context("the adoption link is not an iterator")?;
        let mut file = link.into_file().context("creating the adoption iterator")?;
        let mut sink = Vec::new();
        file.read_to_end(&mut sink)
            .context("running the adoption iterator")?;
        Ok(())
    }

    pub async fn ready(&mut self) -> Result<()> {
        let readiness = match &mut self.readiness {
            Some(r) => r,
            None => {
                let fd = RawDescriptor(self.events.as_raw_fd());
                // SAFETY: `events` owns the descriptor and outlives this
                // registration (field order), so it stays open and the same.
                let r = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                    .map_err(|e| anyhow!("registering the ring buffer with tokio: {e}"))?;
                self.readiness.insert(r)
            }
        };
        // Records left unread (a drain stops at one that is reserved but not
        // yet committed, and its commit may not notify): ready now. tokio's
        // readiness only reports new notifications.
        if poll_readable(readiness.get_ref().0)? {
            return Ok(());
        }
        let mut guard = readiness
            .readable_mut()
            .await
            .context("waiting on the ring buffer")?;
        guard.clear_ready();
        Ok(())
    }

    /// The ring buffer's descriptor, readable when events wait.
    pub fn event_fd(&self) -> RawFd {
        self.events.as_raw_fd()
    }

    /// Take what waits in the ring buffer, until `out` holds `max` events
    /// or more; true if it stopped there (more may wait).
    pub fn drain(&mut self, out: &mut Vec<Event>, max: usize) -> Result<bool> {
        let ring = &mut self.events;
        loop {
            if out.len() >= max {
                return Ok(true);
            }
            let Some(item) = ring.next() else {
                return Ok(false);
            };
            let ev = match Record::from_bytes(&item) {
                Some(Record::Event(ev)) => ev,
                Some(Record::Samples(batch)) => {
                    out.reserve(batch.len());
                    for s in batch.iter() {
                        // CPU since tracing began: an adopted process's
                        // clock less its reading at adoption.
                        let since = self.adopted_at.get(&s.pid).copied().unwrap_or(0);
                        let rss_pages = u64::from(s.rss_pages);
                        out.push(Event::Sample(KernelSample {
                            pid: s.pid,
                            ts_ns: batch.ts_ns,
                            cpu_ns: s.cpu_ns.saturating_sub(since),
                            rss_kb: (rss_pages > 0).then(|| rss_pages * self.page_kb),
                        }));
                    }
                    continue;
                }
                None => {
                    tracing::warn!(
                        len = item.len(),
                        slice = tracekit_ebpf::abi::TK_SLICE,
                        "a ring-buffer record that is too short or holds more samples than a slice (kernel/user ABI mismatch?): ignored"
                    );
                    continue;
                }
            };
            match ev.kind {
                TK_EV_EXEC | TK_EV_FORK => out.push(Event::Start(ProcStart {
                    pid: ev.pid,
                    ppid: ev.ppid,
                    comm: c_str(&ev.comm).to_string(),
                    filename: c_str(&ev.filename).to_string(),
                    start_ns: ev.start_ns,
                    pre_existing: false,
                    forked: ev.kind == TK_EV_FORK,
                    image: ev.image,
                })),
                TK_EV_EXIT => out.push(Event::Exit(ProcExit {
                    pid: ev.pid,
                    end_ns: ev.ts_ns,
                    cpu_ns: ev.cpu_ns,
                    status: Some(ev.exit_code),
                    rss_kb: (ev.rss_pages > 0).then(|| ev.rss_pages * self.page_kb),
                })),
                other => tracing::warn!(kind = other, "unknown event kind ignored"),
            }
        }
    }

    /// At every tick: say so if sampling moved or stopped, and recover what
    /// lost events left out.
    pub fn tick(&mut self, known: &[u32], out: &mut Vec<Event>) -> Result<()> {
        self.check_sampler();
        if self.events_were_lost() {
            self.reconcile(known, out);
        }
        Ok(())
    }

    pub fn forget_image(&mut self, pid: u32, image: u32) {
        // Only if no later exec reused the entry (its event is still queued).
        if self.procs.get(&pid, 0).is_ok_and(|p| p.image == image) {
            self.forget(pid);
        }
    }

    /// Have the kernel sample `pid` (a process the table traces).
    pub fn watch(&mut self, pid: u32) {
        if let Err(e) = self.watched.add(pid) {
            tracing::warn!("pid {pid} will have no samples, only its exit: {e:#}");
        }
    }

    pub fn forget(&mut self, pid: u32) {
        if let Err(e) = self.watched.remove(pid) {
            tracing::warn!("removing pid {pid} from the sampled set: {e:#}");
        }
        let _ = self.procs.remove(&pid);
        self.adopted_at.remove(&pid);
    }

    /// Say loudly when the sampling CPU changed (its CPU went offline and
    /// another took over) or when sampling stopped altogether. Called at
    /// every tick.
    pub fn check_sampler(&mut self) {
        let moves = self.counter(TK_STAT_SAMPLER_MOVED);
        self.sampler.check(moves, crate::clock::monotonic_ns());
    }

    fn counter(&self, index: u32) -> u64 {
        self.stats
            .get(&index, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }

    /// The largest of a per-CPU maximum.
    fn maximum(&self, index: u32) -> u64 {
        self.stats
            .get(&index, 0)
            .ok()
            .and_then(|per_cpu| per_cpu.iter().max().copied())
            .unwrap_or(0)
    }

    pub fn stats(&mut self) -> CollectorStats {
        let ids: Vec<u32> = self
            .links
            .iter()
            .filter_map(|l| Some(l.info().ok()?.program_id()))
            .collect();
        let programs = aya::programs::loaded_programs()
            .filter_map(|info| {
                let info = info.ok()?;
                if !ids.contains(&info.id()) {
                    return None;
                }
                let run_count = info.run_count();
                let run_time_ns = info.run_time().as_nanos() as u64;
                Some(ProgramCost::new(
                    info.name_as_str().unwrap_or("?").to_string(),
                    run_count,
                    run_time_ns,
                ))
            })
            .collect();
        CollectorStats {
            events_lost: self.counter(TK_STAT_RINGBUF_LOST),
            map_full: self.counter(TK_STAT_PROCS_FULL) + self.counter(TK_STAT_SCOPE_FULL),
            samples_cut: self.counter(TK_STAT_WALK_CUT),
            samples_dropped: self.counter(TK_STAT_SAMPLE_DROPPED),
            sampler_cpu: self.sampler.cpu,
            sampler_moves: self.sampler.moves,
            sampler_stalled: self.sampler.stalled,
            sampler_runs: self.counter(TK_STAT_SAMPLER_RUNS),
            sampler_run_ns: self.counter(TK_STAT_SAMPLER_RUN_NS),
            sampler_max_run_ns: self.maximum(TK_STAT_SAMPLER_MAX_NS),
            sampler_slow_runs: self.counter(TK_STAT_SAMPLER_SLOW_RUNS),
            exits_recovered: self.recovered,
            programs,
        }
    }
}

/// The CPU time of process `pid` so far, ns, from its kernel CPU clock
/// (clock_getcpuclockid(3)): the runtime of its live threads, current to the
/// call, plus that of those already gone. The kernel's own accounting, the
/// same that wait(2) reports; `None` once the process is reaped.
pub fn process_cpu_ns(pid: u32) -> Option<u64> {
    crate::sys::process_cpu_ns(pid)
}

/// Processes already running whose threads should be adopted: tid and its
/// current runtime (ns, `/proc/<pid>/task/<tid>/schedstat`).
pub fn running_threads(pid: u32) -> Vec<(u32, u64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let tid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let schedstat =
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).ok()?;
        let runtime = schedstat.split_whitespace().next()?.parse().ok()?;
        Some((tid, runtime))
    })
    .collect()
}

/// Whether `fd` is readable now (poll(2) without waiting).
fn poll_readable(fd: RawFd) -> Result<bool> {
    let ready = crate::sys::poll_readable(&[fd], Some(std::time::Duration::ZERO))
        .context("polling the ring buffer")?;
    Ok(ready.first().copied().unwrap_or(false))
}

/// Pids of every process on the host (for adopting running ones).
pub fn all_pids() -> HashSet<u32> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_lists() {
        assert_eq!(parse_cpu_list("0-1\n").unwrap(), vec![0, 1]);
        assert_eq!(parse_cpu_list("0,2-4,7").unwrap(), vec![0, 2, 3, 4, 7]);
        assert_eq!(parse_cpu_list("3").unwrap(), vec![3]);
        assert!(parse_cpu_list("0-x").is_err());
    }

    #[test]
    fn a_silent_sampler_is_stalled_only_past_four_intervals() {
        let ms = 1_000_000;
        // At 200 ms: stopped only past 1 s (4 intervals, at least 1 s).
        assert!(!sampler_stalled(10_000 * ms, 9_000 * ms, 200 * ms));
        assert!(sampler_stalled(10_001 * ms, 9_000 * ms, 200 * ms));
        // At 1 s: past four intervals.
        assert!(!sampler_stalled(10_000 * ms, 6_000 * ms, 1_000 * ms));
        assert!(sampler_stalled(10_000 * ms, 5_999 * ms, 1_000 * ms));
        // A sample stamped after `now` (clock read order) is not silence.
        assert!(!sampler_stalled(5 * ms, 6 * ms, 200 * ms));
    }
}
