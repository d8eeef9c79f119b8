//! The loader, run in a short-lived child process (`tracekit-agent
//! load-ebpf`): loads the object with aya, attaches the tracepoints, starts
//! the sampler's timer on the sampling CPU, makes the adoption iterator, and
//! pins it all in bpffs for the agent to open.

use anyhow::{Context, Result, anyhow};
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap as BpfHashMap};
use aya::programs::links::FdLink;
use aya::programs::{BtfTracePoint, Iter};
use aya::{Btf, Ebpf, EbpfLoader};
use tracekit_ebpf::{TK_COMM_LEN, TK_SCOPE_HOST, TK_SCOPE_WORKER, TkSampler, names};

use super::super::Scope;

use crate::sys;

/// The object compiled by the build script.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracekit.bpf.o"));

/// Where the loader pins what it made, for the agent to pick up.
pub(super) const PIN_ROOT: &str = "/sys/fs/bpf/tracekit";
/// bpffs's magic number (statfs f_type).
pub(super) const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// What the kernel side is loaded with.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub scope: Scope,
    /// Exact comms the kernel lets start tracing (empty: every exec).
    pub comms: Vec<String>,
    /// How often the sampler runs.
    pub interval: std::time::Duration,
    /// The CPU that samples first (default: the first online CPU).
    pub sampler_cpu: Option<u32>,
}

/// The loader, run in a short-lived child process (`tracekit-agent
/// load-ebpf`): parsing the kernel's BTF for CO-RE takes tens of MB that the
/// long-running agent should not keep as its peak. It loads, attaches, and
/// pins every map and link under `pin_dir`.
pub fn load_and_pin(cfg: &LoadConfig, pin_dir: &Path) -> Result<()> {
    let LoadConfig {
        scope,
        comms,
        interval,
        sampler_cpu,
    } = cfg.clone();
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
    start_sampler(&mut bpf, &btf, sampler_cpu)?;
    attach_adopter(&mut bpf, &btf, pin_dir)?;
    for name in [
        names::MAP_SCOPE,
        names::MAP_PROCS,
        names::MAP_EVENTS,
        names::MAP_STATS,
        names::MAP_WATCHED,
        names::MAP_WATCHED_LEN,
        names::MAP_SAMPLER,
        names::MAP_TICKER,
    ] {
        map(&mut bpf, name)?
            .pin(pin_dir.join(name))
            .with_context(|| format!("pinning map {name}"))?;
    }
    Ok(())
}

/// Start the sampler: a BPF timer, set going by running the `tk_arm`
/// iterator once on the sampling CPU, to which the timer is pinned (the
/// kernel moves it if that CPU goes offline). It runs while a descriptor of
/// the `ticker` map is open: the pin, then the agent's.
pub(super) fn start_sampler(bpf: &mut Ebpf, btf: &Btf, sampler_cpu: Option<u32>) -> Result<()> {
    use std::io::Read;
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
    let arm: &mut Iter = program(bpf, names::PROG_ARM)?
        .try_into()
        .context("tk_arm is not an iterator")?;
    arm.load("task", btf)
        .context("loading tk_arm (iter/task)")?;
    let id = arm.attach().context("attaching tk_arm")?;
    let mut file = arm
        .take_link(id)?
        .into_file()
        .context("creating the sampler's start iterator")?;
    // The iterator runs on the reading thread's CPU, and the timer stays on
    // the CPU that starts it.
    sys::pin_thread_to_cpu(elected)
        .with_context(|| format!("moving the loader to CPU {elected}"))?;
    let mut sink = Vec::new();
    file.read_to_end(&mut sink)
        .context("running the sampler's start iterator")?;
    let sampler: Array<_, TkSampler> = Array::try_from(map(bpf, names::MAP_SAMPLER)?)?;
    let state = sampler.get(&0, 0).context("reading the sampler's state")?;
    if state.tick_ns == 0 {
        anyhow::bail!(
            "the sampler's timer did not start (a pinned BPF timer at an absolute time needs Linux 6.7)"
        );
    }
    Ok(())
}

/// Make the `tk_adopt` task iterator's link, for the agent to run once.
pub(super) fn attach_adopter(bpf: &mut Ebpf, btf: &Btf, pin_dir: &Path) -> Result<()> {
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
pub(super) fn link_path(pin_dir: &Path, prog: &str) -> PathBuf {
    pin_dir.join(format!("link_{prog}"))
}

/// Pin `prog`'s link where [`EbpfCollector::open`] looks for it.
pub(super) fn pin_link(link: FdLink, pin_dir: &Path, prog: &str) -> Result<()> {
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

pub(super) fn program<'a>(bpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    bpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))
}

pub(super) fn map<'a>(bpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    bpf.map_mut(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
}

/// Run `tracekit-agent load-ebpf` and wait for it.
pub(super) fn run_loader(cfg: &LoadConfig, pin_dir: &Path) -> Result<()> {
    let LoadConfig {
        scope,
        comms,
        interval,
        sampler_cpu,
    } = cfg;
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
pub(super) fn mount_bpffs() -> Result<()> {
    let root = Path::new("/sys/fs/bpf");
    let is_bpffs = sys::fs_type(c"/sys/fs/bpf").is_ok_and(|t| t == BPF_FS_MAGIC);
    if is_bpffs {
        return Ok(());
    }
    std::fs::create_dir_all(root).context("creating /sys/fs/bpf")?;
    sys::mount(c"bpf", c"/sys/fs/bpf", c"bpf").context("mounting bpffs at /sys/fs/bpf")?;
    tracing::info!("mounted bpffs at /sys/fs/bpf");
    Ok(())
}

/// Pins left by an agent that died between its loader and unpinning (the
/// directory is named after its pid) would keep programs attached: remove them.
pub(super) fn remove_stale_pins() {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name the loader and the agent look up (maps, programs, the
    /// globals it sets) is in the object the build compiled: the names are
    /// defined once in `tracekit_ebpf::names`, and this holds them to the C.
    #[test]
    fn every_name_the_agent_opens_is_in_the_object() {
        let obj = aya_obj::Object::parse(OBJECT).expect("parsing the BPF object");
        let mut programs: Vec<&str> = names::PROGRAMS.iter().map(|(p, _)| *p).collect();
        programs.extend([names::PROG_ARM, names::PROG_ADOPT]);
        for p in programs {
            assert!(
                obj.programs.contains_key(p),
                "program {p} is not in the object"
            );
        }
        for m in [
            names::MAP_SCOPE,
            names::MAP_PROCS,
            names::MAP_EVENTS,
            names::MAP_STATS,
            names::MAP_COMMS,
            names::MAP_WATCHED,
            names::MAP_WATCHED_LEN,
            names::MAP_SAMPLER,
            names::MAP_TICKER,
        ] {
            assert!(obj.maps.contains_key(m), "map {m} is not in the object");
        }
        // Globals are symbols of .rodata: their names are in the string table.
        for g in [
            names::GLOBAL_SCOPE,
            names::GLOBAL_COMM_FILTER,
            names::GLOBAL_INTERVAL,
        ] {
            let needle = format!("\0{g}\0");
            assert!(
                OBJECT.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "global {g} is not in the object"
            );
        }
    }
}
