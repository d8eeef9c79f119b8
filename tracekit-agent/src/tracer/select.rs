//! Choosing the collector: eBPF when this host and process allow it, else
//! `/proc` polling, saying exactly why.

use anyhow::Result;
use caps::{CapSet, Capability};

use super::ebpf::{EbpfCollector, LoadConfig};
use super::{Collector, Scope, procfs::ProcfsCollector};

/// `--collector`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CollectorChoice {
    /// eBPF if it can be used here, else /proc polling (the reason is logged
    /// and recorded in node_meta.json).
    Auto,
    /// eBPF or fail.
    Ebpf,
    /// /proc polling (the original's method and its known loss).
    Procfs,
}

/// The collector that will run, and why it is not eBPF when it is not.
pub struct Selected {
    pub collector: Collector,
    pub fallback_reason: Option<String>,
}

/// `comms`: the exact names `--match` stands for, if it is such a set (the
/// kernel then filters execs itself).
/// `interval`: how often the kernel samples (eBPF), first on `sampler_cpu`.
pub fn select(
    choice: CollectorChoice,
    scope: Scope,
    comms: Option<&[String]>,
    interval: std::time::Duration,
    sampler_cpu: Option<u32>,
) -> Result<Selected> {
    if choice == CollectorChoice::Procfs {
        return Ok(Selected {
            collector: Collector::Procfs(ProcfsCollector::new(scope)),
            fallback_reason: None,
        });
    }
    match preflight().and_then(|()| {
        EbpfCollector::start(&LoadConfig {
            scope,
            comms: comms.map(<[String]>::to_vec).unwrap_or_default(),
            interval,
            sampler_cpu,
        })
    }) {
        Ok(c) => Ok(Selected {
            collector: Collector::Ebpf(Box::new(c)),
            fallback_reason: None,
        }),
        Err(e) if choice == CollectorChoice::Auto => {
            let reason = format!("{e:#}");
            tracing::warn!("eBPF tracer unavailable, falling back to /proc polling: {reason}");
            Ok(Selected {
                collector: Collector::Procfs(ProcfsCollector::new(scope)),
                fallback_reason: Some(reason),
            })
        }
        Err(e) => Err(e.context("the eBPF tracer was requested (--collector ebpf)")),
    }
}

/// What eBPF needs before loading: the privileges, the kernel's BTF, and a
/// memlock limit that older kernels charge maps against.
fn preflight() -> Result<()> {
    let has = |cap| caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false);
    let bpf_caps = has(Capability::CAP_BPF) && has(Capability::CAP_PERFMON);
    if !(bpf_caps || has(Capability::CAP_SYS_ADMIN)) {
        anyhow::bail!(
            "missing privilege: loading the tracer needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN); run the agent as root"
        );
    }
    let btf = std::path::Path::new("/sys/kernel/btf/vmlinux");
    if !btf.exists() {
        anyhow::bail!(
            "no kernel BTF at {}: the kernel needs CONFIG_DEBUG_INFO_BTF=y",
            btf.display()
        );
    }
    if crate::sys::unlimit_memlock().is_err() {
        tracing::debug!("could not raise RLIMIT_MEMLOCK (only older kernels need it)");
    }
    Ok(())
}
