//! The eBPF collector: loads `tracekit.bpf.o` with aya, attaches its four BTF
//! tracepoints, reads exec/fork/exit events from the ring buffer and CPU
//! totals from the `procs` map.

use std::collections::HashSet;
use std::os::fd::OwnedFd;

use anyhow::{Context, Result, anyhow};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::BtfTracePoint;
use aya::{Btf, Ebpf, EbpfLoader};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tracekit_ebpf::{
    TK_EV_EXEC, TK_EV_EXIT, TK_EV_FORK, TK_PROC_EXITED, TK_PROC_GROUP_DEAD, TK_SCOPE_HOST,
    TK_SCOPE_WORKER, TK_STAT_PROCS_FULL, TK_STAT_RINGBUF_LOST, TK_STAT_SCOPE_FULL,
    TK_STAT_THREADS_FULL, TkEvent, TkProc, TkThread, c_str, names,
};
use tracekit_trace::ProgramCost;

use super::{CollectorStats, CpuReading, Event, ProcExit, ProcStart, Scope};

/// The object compiled by the build script.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracekit.bpf.o"));

pub struct EbpfCollector {
    // Programs stay attached while `bpf` lives.
    bpf: Ebpf,
    events: AsyncFd<RingBuf<MapData>>,
    procs: BpfHashMap<MapData, u32, TkProc>,
    threads: BpfHashMap<MapData, u32, TkThread>,
    stats: PerCpuArray<MapData, u64>,
    /// Holds BPF run-time statistics on while the agent runs.
    _stats_fd: Option<OwnedFd>,
    recovered: u64,
    last_lost: u64,
}

impl EbpfCollector {
    /// Load, configure and attach. `pre_existing` processes (host scope) are
    /// inserted into the maps so they are traced from now on.
    pub fn start(scope: Scope) -> Result<Self> {
        let btf = Btf::from_sys_fs().context("reading kernel BTF (/sys/kernel/btf/vmlinux)")?;
        let cfg_scope: u32 = match scope {
            Scope::Worker => TK_SCOPE_WORKER,
            Scope::Host => TK_SCOPE_HOST,
        };
        let mut bpf = EbpfLoader::new()
            .btf(Some(&btf))
            .override_global(names::GLOBAL_SCOPE, &cfg_scope, true)
            .load(OBJECT)
            .context("loading the eBPF object")?;

        // The agent's own process roots the worker scope, before anything is
        // spawned, so its children are in scope from their first instruction.
        if scope == Scope::Worker {
            let mut scope_map: BpfHashMap<_, u32, u8> =
                BpfHashMap::try_from(map(&mut bpf, names::MAP_SCOPE)?)?;
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

        for (prog, tracepoint) in names::PROGRAMS {
            let program: &mut BtfTracePoint = bpf
                .program_mut(prog)
                .ok_or_else(|| anyhow!("program {prog} missing from the eBPF object"))?
                .try_into()
                .with_context(|| format!("program {prog} is not a BTF tracepoint"))?;
            program
                .load(tracepoint, &btf)
                .with_context(|| format!("loading {prog} (tp_btf/{tracepoint})"))?;
            program
                .attach()
                .with_context(|| format!("attaching {prog} to tp_btf/{tracepoint}"))?;
        }

        let events = RingBuf::try_from(take(&mut bpf, names::MAP_EVENTS)?)?;
        // SAFETY: the RingBuf owns its map fd, which stays open and the same
        // for as long as the AsyncFd owns the RingBuf.
        let events = unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }
            .map_err(|e| anyhow!("registering the ring buffer with tokio: {e}"))?;
        let procs = BpfHashMap::try_from(take(&mut bpf, names::MAP_PROCS)?)?;
        let threads = BpfHashMap::try_from(take(&mut bpf, names::MAP_THREADS)?)?;
        let stats = PerCpuArray::try_from(take(&mut bpf, names::MAP_STATS)?)?;
        Ok(EbpfCollector {
            bpf,
            events,
            procs,
            threads,
            stats,
            _stats_fd: stats_fd,
            recovered: 0,
            last_lost: 0,
        })
    }

    /// Start tracing a process that was already running (host scope): its
    /// threads count from their current runtime.
    pub fn adopt(&mut self, start: &ProcStart, threads: &[(u32, u64)]) -> Result<()> {
        let proc_state = TkProc {
            start_ns: start.start_ns,
            threads: threads.len() as u32,
            ppid: start.ppid,
            ..TkProc::default()
        };
        self.procs
            .insert(start.pid, proc_state, 0)
            .with_context(|| format!("adopting pid {}", start.pid))?;
        for &(tid, runtime) in threads {
            let th = TkThread {
                last_runtime: runtime,
                tgid: start.pid,
                _pad: 0,
            };
            self.threads
                .insert(tid, th, 0)
                .with_context(|| format!("adopting thread {tid}"))?;
        }
        Ok(())
    }

    pub async fn ready(&mut self) -> Result<()> {
        let mut guard = self
            .events
            .readable_mut()
            .await
            .context("waiting on the ring buffer")?;
        guard.clear_ready();
        Ok(())
    }

    pub fn drain(&mut self, out: &mut Vec<Event>) -> Result<()> {
        let ring = self.events.get_mut();
        while let Some(item) = ring.next() {
            let Some(ev) = TkEvent::from_bytes(&item) else {
                tracing::warn!(len = item.len(), "short ring-buffer record ignored");
                continue;
            };
            match ev.kind {
                TK_EV_EXEC | TK_EV_FORK => out.push(Event::Start(ProcStart {
                    pid: ev.pid,
                    ppid: ev.ppid,
                    comm: c_str(&ev.comm).to_string(),
                    filename: c_str(&ev.filename).to_string(),
                    start_ns: ev.start_ns,
                    pre_existing: false,
                })),
                TK_EV_EXIT => out.push(Event::Exit(ProcExit {
                    pid: ev.pid,
                    end_ns: ev.ts_ns,
                    cpu_ns: ev.cpu_ns,
                    status: Some(ev.exit_code),
                })),
                other => tracing::warn!(kind = other, "unknown event kind ignored"),
            }
        }
        Ok(())
    }

    /// Recover what lost events would have said: exits from the map, and
    /// processes user space never heard of.
    pub fn tick(&mut self, known: &dyn Fn(u32) -> bool, out: &mut Vec<Event>) -> Result<()> {
        let lost = self.counter(TK_STAT_RINGBUF_LOST);
        let lost_new = lost > self.last_lost;
        self.last_lost = lost;
        let mut stale = Vec::new();
        for entry in self.procs.iter() {
            let Ok((pid, p)) = entry else { continue };
            if known(pid) {
                if p.flags & TK_PROC_EXITED != 0 {
                    // Its exit event was lost (or is just behind): the map
                    // holds the final total. A duplicate exit is ignored.
                    self.recovered += 1;
                    out.push(Event::Exit(ProcExit {
                        pid,
                        end_ns: p.exit_ns,
                        cpu_ns: p.cpu_ns,
                        status: Some(p.exit_code),
                    }));
                }
            } else if lost_new {
                if p.flags & TK_PROC_EXITED != 0 {
                    stale.push(pid);
                } else if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
                    out.push(Event::Start(ProcStart {
                        pid,
                        ppid: p.ppid,
                        comm: comm.trim().to_string(),
                        filename: String::new(),
                        start_ns: p.start_ns,
                        pre_existing: false,
                    }));
                }
            }
        }
        for pid in stale {
            self.forget(pid);
        }
        Ok(())
    }

    pub fn cpu(&mut self, pid: u32) -> CpuReading {
        match self.procs.get(&pid, 0) {
            Ok(p) if p.flags & (TK_PROC_GROUP_DEAD | TK_PROC_EXITED) != 0 => CpuReading::Exiting,
            Ok(p) => CpuReading::Running(p.cpu_ns),
            Err(_) => CpuReading::Unknown,
        }
    }

    pub fn forget(&mut self, pid: u32) {
        // The kernel drops the process's thread entries at their next switch.
        let _ = self.procs.remove(&pid);
    }

    fn counter(&self, index: u32) -> u64 {
        self.stats
            .get(&index, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }

    pub fn stats(&mut self) -> CollectorStats {
        let programs = self
            .bpf
            .programs()
            .filter_map(|(name, prog)| {
                let info = prog.info().ok()?;
                let run_count = info.run_count();
                let run_time_ns = info.run_time().as_nanos() as u64;
                Some(ProgramCost {
                    program: name.to_string(),
                    run_count,
                    run_time_ns,
                    ns_per_call: if run_count > 0 {
                        run_time_ns as f64 / run_count as f64
                    } else {
                        0.0
                    },
                })
            })
            .collect();
        CollectorStats {
            events_lost: self.counter(TK_STAT_RINGBUF_LOST),
            map_full: self.counter(TK_STAT_PROCS_FULL)
                + self.counter(TK_STAT_THREADS_FULL)
                + self.counter(TK_STAT_SCOPE_FULL),
            exits_recovered: self.recovered,
            programs,
        }
    }
}

/// Processes already running whose threads should be adopted: tid and its
/// current runtime (ns, `/proc/<pid>/task/<tid>/schedstat`).
pub fn running_threads(pid: u32) -> Vec<(u32, u64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let tid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let schedstat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).ok()?;
        let runtime = schedstat.split_whitespace().next()?.parse().ok()?;
        Some((tid, runtime))
    })
    .collect()
}

fn map<'a>(bpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    bpf.map_mut(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
}

fn take(bpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    bpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
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
