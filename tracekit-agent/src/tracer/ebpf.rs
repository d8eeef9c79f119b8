//! The eBPF collector: loads `tracekit.bpf.o` with aya, attaches its four BTF
//! tracepoints and its sampler, and reads from the ring buffer exec/fork/exit
//! events (each exit with its exact CPU total) and the samples the kernel
//! takes every interval (each live process's CPU clock and RSS).

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use anyhow::{Context, Result, anyhow};
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray, RingBuf};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent};
use aya::programs::{BtfTracePoint, Iter, PerfEvent};
use aya::{Btf, Ebpf, EbpfLoader};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tracekit_ebpf::{
    Record, TK_COMM_LEN, TK_EV_EXEC, TK_EV_EXIT, TK_EV_FORK, TK_MAX_WATCHED, TK_PROC_EXITED,
    TK_SCOPE_HOST, TK_SCOPE_WORKER, TK_STAT_PROCS_FULL, TK_STAT_RINGBUF_LOST,
    TK_STAT_SAMPLE_DROPPED, TK_STAT_SAMPLER_MOVED, TK_STAT_SCOPE_FULL, TK_STAT_WALK_CUT, TkProc,
    TkSampler, c_str, names,
};
use tracekit_trace::ProgramCost;

use super::{CollectorStats, Event, KernelSample, ProcExit, ProcStart, Scope, page_size_kb};

/// The object compiled by the build script.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracekit.bpf.o"));

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
    /// Processes adopted while running: their CPU clock when tracing began.
    adopted_at: HashMap<u32, u64>,
    page_kb: u64,
    /// Holds BPF run-time statistics on while the agent runs.
    _stats_fd: Option<OwnedFd>,
    recovered: u64,
    last_lost: u64,
    /// Which CPU samples (see [`SamplerWatch`]).
    sampler: SamplerWatch,
}

/// A descriptor owned elsewhere, for registering with tokio.
struct RawDescriptor(RawFd);

impl AsRawFd for RawDescriptor {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Where the loader pins what it made, for the agent to pick up.
const PIN_ROOT: &str = "/sys/fs/bpf/tracekit";
/// bpffs's magic number (statfs f_type).
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// The loader, run in a short-lived child process (`tracekit-agent
/// load-ebpf`): parsing the kernel's BTF for CO-RE takes ~40 MB that the
/// long-running agent should not keep as its peak. It loads, attaches, and
/// pins every map and link under `pin_dir`; the sampler runs every
/// `interval`, on `sampler_cpu` (default: the first online CPU).
pub fn load_and_pin(
    scope: Scope,
    comms: &[String],
    interval: std::time::Duration,
    sampler_cpu: Option<u32>,
    pin_dir: &Path,
) -> Result<()> {
    let btf = Btf::from_sys_fs().context("reading kernel BTF (/sys/kernel/btf/vmlinux)")?;
    let cfg_scope: u32 = match scope {
        Scope::Worker => TK_SCOPE_WORKER,
        Scope::Host => TK_SCOPE_HOST,
    };
    let mut bpf = EbpfLoader::new()
        .btf(Some(&btf))
        .override_global(names::GLOBAL_SCOPE, &cfg_scope, true)
        .override_global(
            names::GLOBAL_COMM_FILTER,
            &u32::from(!comms.is_empty()),
            true,
        )
        .override_global(names::GLOBAL_INTERVAL, &(interval.as_nanos() as u64), true)
        .load(OBJECT)
        .context("loading the eBPF object")?;
    // The filter is filled before the programs are attached.
    let mut filter: BpfHashMap<_, [u8; TK_COMM_LEN], u8> =
        BpfHashMap::try_from(map(&mut bpf, names::MAP_COMMS)?)?;
    for comm in comms {
        let mut key = [0u8; TK_COMM_LEN];
        let n = comm.len().min(TK_COMM_LEN - 1);
        key[..n].copy_from_slice(&comm.as_bytes()[..n]);
        filter
            .insert(key, 1u8, 0)
            .with_context(|| format!("adding {comm} to the comm filter"))?;
    }
    for (prog, tracepoint) in names::PROGRAMS {
        let program: &mut BtfTracePoint = program(&mut bpf, prog)?
            .try_into()
            .with_context(|| format!("program {prog} is not a BTF tracepoint"))?;
        program
            .load(tracepoint, &btf)
            .with_context(|| format!("loading {prog} (tp_btf/{tracepoint})"))?;
        let id = program
            .attach()
            .with_context(|| format!("attaching {prog} to tp_btf/{tracepoint}"))?;
        pin_link(program.take_link(id)?.into(), pin_dir, prog)?;
    }
    attach_sampler(&mut bpf, interval, sampler_cpu, pin_dir)?;
    attach_adopter(&mut bpf, &btf, pin_dir)?;
    for name in [
        names::MAP_SCOPE,
        names::MAP_PROCS,
        names::MAP_EVENTS,
        names::MAP_STATS,
        names::MAP_WATCHED,
        names::MAP_WATCHED_LEN,
        names::MAP_SAMPLER,
    ] {
        map(&mut bpf, name)?
            .pin(pin_dir.join(name))
            .with_context(|| format!("pinning map {name}"))?;
    }
    Ok(())
}

/// Attach `tk_sample` to a cpu-clock event on every online CPU, each with
/// the interval as its period (the kernel's own timer, counting wall time on
/// that CPU, busy or idle), and name the CPU that samples: the others stand
/// by to take over if it goes offline.
fn attach_sampler(
    bpf: &mut Ebpf,
    interval: std::time::Duration,
    sampler_cpu: Option<u32>,
    pin_dir: &Path,
) -> Result<()> {
    let online = online_cpus()?;
    let elected = match sampler_cpu {
        Some(cpu) if online.contains(&cpu) => cpu,
        Some(cpu) => anyhow::bail!("--sampler-cpu {cpu} is not an online CPU ({online:?})"),
        None => online[0],
    };
    let mut sampler: Array<_, TkSampler> = Array::try_from(map(bpf, names::MAP_SAMPLER)?)?;
    sampler
        .set(
            0,
            TkSampler {
                cpu: elected,
                ..TkSampler::default()
            },
            0,
        )
        .context("naming the sampling CPU")?;
    let program: &mut PerfEvent = program(bpf, names::PROG_SAMPLE)?
        .try_into()
        .context("tk_sample is not a perf_event program")?;
    program.load().context("loading tk_sample (perf_event)")?;
    for cpu in online {
        let id = program
            .attach(
                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Period(interval.as_nanos() as u64),
                false,
            )
            .with_context(|| format!("attaching tk_sample to a cpu-clock event on CPU {cpu}"))?;
        let link = program
            .take_link(id)?
            .try_into()
            .context("tk_sample's link (perf links need Linux 5.15)")?;
        pin_link(link, pin_dir, &sampler_link(cpu))?;
    }
    Ok(())
}

/// The name under which the sampler's link on `cpu` is pinned.
fn sampler_link(cpu: u32) -> String {
    format!("{}{cpu}", sampler_link_prefix())
}

fn sampler_link_prefix() -> String {
    format!("{}_cpu", names::PROG_SAMPLE)
}

/// Make the `tk_adopt` task iterator's link, for the agent to run once.
fn attach_adopter(bpf: &mut Ebpf, btf: &Btf, pin_dir: &Path) -> Result<()> {
    let adopt: &mut Iter = program(bpf, names::PROG_ADOPT)?
        .try_into()
        .context("tk_adopt is not an iterator")?;
    adopt
        .load("task", btf)
        .context("loading tk_adopt (iter/task)")?;
    let id = adopt.attach().context("attaching tk_adopt")?;
    let link = adopt.take_link(id)?.try_into().context("tk_adopt's link")?;
    pin_link(link, pin_dir, names::PROG_ADOPT)
}

/// Where the loader pins `prog`'s link and the agent opens it.
fn link_path(pin_dir: &Path, prog: &str) -> PathBuf {
    pin_dir.join(format!("link_{prog}"))
}

/// Pin `prog`'s link where [`EbpfCollector::open`] looks for it.
fn pin_link(link: FdLink, pin_dir: &Path, prog: &str) -> Result<()> {
    link.pin(link_path(pin_dir, prog))
        .with_context(|| format!("pinning the link of {prog}"))?;
    Ok(())
}

/// The online CPUs, in order.
pub fn online_cpus() -> Result<Vec<u32>> {
    let path = "/sys/devices/system/cpu/online";
    let online = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let cpus = parse_cpu_list(&online).with_context(|| format!("{path}: {online:?}"))?;
    if cpus.is_empty() {
        anyhow::bail!("no CPU in {path} ({online:?})");
    }
    Ok(cpus)
}

/// A kernel CPU list ("0-2,4" → 0, 1, 2, 4).
pub fn parse_cpu_list(list: &str) -> Result<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let lo: u32 = lo.trim().parse().with_context(|| format!("CPU {lo:?}"))?;
        let hi: u32 = hi.trim().parse().with_context(|| format!("CPU {hi:?}"))?;
        cpus.extend(lo..=hi);
    }
    Ok(cpus)
}

impl EbpfCollector {
    /// Load and attach the tracer (through the loader process) and open what
    /// it pinned; the pins are removed at once, so everything is released
    /// when the agent exits, however it exits.
    pub fn start(
        scope: Scope,
        comms: Option<&[String]>,
        interval: std::time::Duration,
        sampler_cpu: Option<u32>,
    ) -> Result<Self> {
        mount_bpffs()?;
        remove_stale_pins();
        let pin_dir = PathBuf::from(PIN_ROOT).join(std::process::id().to_string());
        let _ = std::fs::remove_dir_all(&pin_dir);
        std::fs::create_dir_all(&pin_dir)
            .with_context(|| format!("creating {}", pin_dir.display()))?;
        let opened = run_loader(
            scope,
            comms.unwrap_or_default(),
            interval,
            sampler_cpu,
            &pin_dir,
        )
        .and_then(|()| Self::open(scope, interval, &pin_dir));
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
        // One sampler link per CPU that was online at load.
        let mut sampler_links = 0;
        for entry in
            std::fs::read_dir(pin_dir).with_context(|| format!("listing {}", pin_dir.display()))?
        {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(prog) = name.strip_prefix("link_")
                && prog.starts_with(&sampler_link_prefix())
            {
                links.push(open_link(prog)?);
                sampler_links += 1;
            }
        }
        if sampler_links == 0 {
            anyhow::bail!("the loader pinned no sampler link");
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
            BpfHashMap::try_from(Map::HashMap(open_map(names::MAP_SCOPE)?))?;
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
        let events = RingBuf::try_from(Map::RingBuf(open_map(names::MAP_EVENTS)?))?;
        let mut collector = EbpfCollector {
            links,
            adopt_link: Some(adopt_link),
            readiness: None,
            events,
            procs: BpfHashMap::try_from(Map::HashMap(open_map(names::MAP_PROCS)?))?,
            stats: PerCpuArray::try_from(Map::PerCpuArray(open_map(names::MAP_STATS)?))?,
            watched: Watched {
                slots: Array::try_from(Map::Array(open_map(names::MAP_WATCHED)?))?,
                len: Array::try_from(Map::Array(open_map(names::MAP_WATCHED_LEN)?))?,
                pids: Vec::new(),
                full_warned: false,
            },
            _stats_fd: stats_fd,
            adopted_at: HashMap::new(),
            page_kb: page_size_kb(),
            recovered: 0,
            last_lost: 0,
            sampler: SamplerWatch {
                map: Array::try_from(Map::Array(open_map(names::MAP_SAMPLER)?))?,
                interval_ns: interval.as_nanos() as u64,
                since_ns: crate::clock::monotonic_ns(),
                cpu: None,
                moves: 0,
                stalled: false,
            },
        };
        collector.check_sampler();
        // aya probes the kernel's features on first use (loading throwaway
        // programs, maps and BTF: ~40 system calls): at start-up, not in the
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

    pub fn drain(&mut self, out: &mut Vec<Event>) -> Result<()> {
        let ring = &mut self.events;
        while let Some(item) = ring.next() {
            let ev = match Record::from_bytes(&item) {
                Some(Record::Event(ev)) => ev,
                Some(Record::Sample(s)) => {
                    // CPU since tracing began: an adopted process's clock
                    // less its reading at adoption.
                    let since = self.adopted_at.get(&s.pid).copied().unwrap_or(0);
                    out.push(Event::Sample(KernelSample {
                        pid: s.pid,
                        ts_ns: s.ts_ns,
                        cpu_ns: s.cpu_ns.saturating_sub(since),
                        rss_kb: (s.rss_pages > 0).then(|| s.rss_pages * self.page_kb),
                    }));
                    continue;
                }
                None => {
                    tracing::warn!(len = item.len(), "short ring-buffer record ignored");
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
        Ok(())
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
                Some(ProgramCost {
                    program: info.name_as_str().unwrap_or("?").to_string(),
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
            map_full: self.counter(TK_STAT_PROCS_FULL) + self.counter(TK_STAT_SCOPE_FULL),
            samples_cut: self.counter(TK_STAT_WALK_CUT),
            samples_dropped: self.counter(TK_STAT_SAMPLE_DROPPED),
            sampler_cpu: self.sampler.cpu,
            sampler_moves: self.sampler.moves,
            sampler_stalled: self.sampler.stalled,
            exits_recovered: self.recovered,
            programs,
        }
    }
}

/// Watches the kernel's `sampler` record: which CPU samples, and whether it
/// still fires.
struct SamplerWatch {
    map: Array<MapData, TkSampler>,
    interval_ns: u64,
    /// When tracing began (CLOCK_MONOTONIC ns): a sampler that never fired
    /// counts as silent from then.
    since_ns: u64,
    cpu: Option<u32>,
    moves: u64,
    stalled: bool,
}

impl SamplerWatch {
    fn check(&mut self, moves: u64, now_ns: u64) {
        let Ok(state) = self.map.get(&0, 0) else {
            tracing::warn!("the sampler's state cannot be read");
            return;
        };
        if moves > self.moves {
            tracing::warn!(
                from = ?self.cpu,
                to = state.cpu,
                "the sampling CPU stopped firing (offline?): CPU {} samples now",
                state.cpu
            );
        }
        self.moves = moves;
        self.cpu = Some(state.cpu);
        let stalled = sampler_stalled(now_ns, state.last_ns.max(self.since_ns), self.interval_ns);
        if stalled && !self.stalled {
            tracing::error!(
                cpu = state.cpu,
                "SAMPLING HAS STOPPED: no sampler fired for {} ms (every CPU it was attached to is offline?); traced processes get only their exit line",
                now_ns.saturating_sub(state.last_ns.max(self.since_ns)) / 1_000_000
            );
        } else if !stalled && self.stalled {
            tracing::warn!(cpu = state.cpu, "sampling resumed");
        }
        self.stalled = stalled;
    }
}

/// Whether the sampler has been silent too long: the kernel hands sampling
/// to another CPU after two and a half silent intervals, so four mean no
/// CPU is left to take over.
pub fn sampler_stalled(now_ns: u64, last_ns: u64, interval_ns: u64) -> bool {
    now_ns.saturating_sub(last_ns) > interval_ns.saturating_mul(4).max(1_000_000_000)
}

/// The dense list of pids the kernel samples: slots `0..len` of the
/// `watched` array, mirrored in `pids`. Only the agent writes it; the sampler
/// reads it at every tick without a lock, so the length grows only after its
/// new slot is written, and a removal moves the last pid into the hole
/// before the length shrinks (a sample at that instant may see one pid
/// twice, and the table drops the second: same tick).
struct Watched {
    slots: Array<MapData, u32>,
    len: Array<MapData, u32>,
    pids: Vec<u32>,
    full_warned: bool,
}

impl Watched {
    fn add(&mut self, pid: u32) -> Result<()> {
        if self.pids.contains(&pid) {
            return Ok(());
        }
        let slot = self.pids.len() as u32;
        if slot >= TK_MAX_WATCHED {
            if !std::mem::replace(&mut self.full_warned, true) {
                anyhow::bail!("{TK_MAX_WATCHED} processes are sampled already");
            }
            return Ok(());
        }
        self.slots
            .set(slot, pid, 0)
            .context("writing a slot of the watched map")?;
        self.pids.push(pid);
        self.write_len()
    }

    fn remove(&mut self, pid: u32) -> Result<()> {
        let Some(index) = self.pids.iter().position(|&p| p == pid) else {
            return Ok(());
        };
        let last = self.pids.len() - 1;
        if index != last {
            let moved = self.pids[last];
            self.slots
                .set(index as u32, moved, 0)
                .context("writing a slot of the watched map")?;
        }
        self.pids.swap_remove(index);
        self.write_len()
    }

    fn write_len(&mut self) -> Result<()> {
        self.len
            .set(0, self.pids.len() as u32, 0)
            .context("writing the length of the watched map")
    }
}

/// The CPU time of process `pid` so far, ns, from its kernel CPU clock
/// (clock_getcpuclockid(3)): the runtime of its live threads, current to the
/// call, plus that of those already gone. The kernel's own accounting, the
/// same that wait(2) reports; `None` once the process is reaped.
pub fn process_cpu_ns(pid: u32) -> Option<u64> {
    // MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED) of the kernel's posix-timers
    // ABI, as glibc builds it; computed here to spare clock_getcpuclockid's
    // extra system call.
    let clock: libc::clockid_t = (!(pid as libc::clockid_t) << 3) | 2;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid place for the result.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
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
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error()).context("polling the ring buffer");
    }
    Ok(n > 0 && pfd.revents & libc::POLLIN != 0)
}

fn program<'a>(bpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    bpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))
}

fn map<'a>(bpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    bpf.map_mut(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
}

/// Run `tracekit-agent load-ebpf` and wait for it.
fn run_loader(
    scope: Scope,
    comms: &[String],
    interval: std::time::Duration,
    sampler_cpu: Option<u32>,
    pin_dir: &Path,
) -> Result<()> {
    let exe = std::env::current_exe().context("locating the agent's executable")?;
    let out = std::process::Command::new(&exe)
        .arg("load-ebpf")
        .arg("--scope")
        .arg(scope.to_string())
        .arg("--pin-dir")
        .arg(pin_dir)
        .arg("--interval-ms")
        .arg(interval.as_millis().to_string())
        .args(comms.iter().flat_map(|c| ["--comm", c.as_str()]))
        .args(sampler_cpu.map(|c| format!("--sampler-cpu={c}")))
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running the eBPF loader {}", exe.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let reason = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output");
    anyhow::bail!("the eBPF loader failed ({}): {reason}", out.status)
}

/// Mount bpffs at /sys/fs/bpf unless it is there.
fn mount_bpffs() -> Result<()> {
    let root = Path::new("/sys/fs/bpf");
    // SAFETY: statfs writes the struct we pass; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let is_bpffs = unsafe { libc::statfs(c"/sys/fs/bpf".as_ptr(), &mut st) } == 0
        && st.f_type as i64 == BPF_FS_MAGIC;
    if is_bpffs {
        return Ok(());
    }
    std::fs::create_dir_all(root).context("creating /sys/fs/bpf")?;
    // SAFETY: mount with constant NUL-terminated strings.
    let r = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c"/sys/fs/bpf".as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("mounting bpffs at /sys/fs/bpf");
    }
    tracing::info!("mounted bpffs at /sys/fs/bpf");
    Ok(())
}

/// Pins left by an agent that died between its loader and unpinning (the
/// directory is named after its pid) would keep programs attached: remove them.
fn remove_stale_pins() {
    let Ok(dir) = std::fs::read_dir(PIN_ROOT) else {
        return;
    };
    for entry in dir.flatten() {
        let alive = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            tracing::warn!(dir = %entry.path().display(), "removing stale tracer pins");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
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
    fn a_silent_sampler_is_stalled_only_past_the_takeover_window() {
        let ms = 1_000_000;
        // At 200 ms: the kernel moves sampling after 500 ms of silence;
        // the agent calls it stopped only past 1 s (4 intervals, at least 1 s).
        assert!(!sampler_stalled(10_000 * ms, 9_000 * ms, 200 * ms));
        assert!(sampler_stalled(10_001 * ms, 9_000 * ms, 200 * ms));
        // At 1 s: past four intervals.
        assert!(!sampler_stalled(10_000 * ms, 6_000 * ms, 1_000 * ms));
        assert!(sampler_stalled(10_000 * ms, 5_999 * ms, 1_000 * ms));
        // A sample stamped after `now` (clock read order) is not silence.
        assert!(!sampler_stalled(5 * ms, 6 * ms, 200 * ms));
    }
}
