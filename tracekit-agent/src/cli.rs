//! Command-line options shared by the agent's modes. Environment variables of
//! the original (`RUN_ID`, `NODE_ID`, `STAGE`, `PROC_MATCH`,
//! `PROC_INTERVAL_MS`, `CPU_FREQ_MHZ`) still work.

use std::path::PathBuf;

use clap::Args;
use tracekit_trace::node::{NodeIdentity, hostname};

use crate::tracer::Scope;
use crate::tracer::select::CollectorChoice;

/// The original's process filter.
pub const DEFAULT_MATCH: &str = "^ffmpeg$|^ffprobe$";

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Tracer")]
pub struct TracerArgs {
    /// Sampling interval in ms: one sample per live traced process.
    #[arg(long, env = "PROC_INTERVAL_MS", default_value_t = 200, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub interval_ms: u64,

    /// Trace processes whose command (comm, or the exec'd file's base name)
    /// matches this regex.
    #[arg(long = "match", env = "PROC_MATCH", default_value = DEFAULT_MATCH, value_name = "REGEX")]
    pub proc_match: String,

    /// Which processes are traced: this agent's descendants (worker) or
    /// every matching process on the machine (host).
    #[arg(long, value_enum, default_value_t = Scope::Worker)]
    pub scope: Scope,

    /// Which collector runs.
    #[arg(long, value_enum, default_value_t = CollectorChoice::Auto)]
    pub collector: CollectorChoice,

    /// The CPU whose timer takes the kernel's samples (eBPF; default: the
    /// first online CPU). If it goes offline the kernel moves the timer to
    /// another online CPU.
    #[arg(long, value_name = "CPU")]
    pub sampler_cpu: Option<u32>,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Identity")]
pub struct IdentityArgs {
    /// Run id: traces go to <logs>/<RUN_ID>/ (default: run-<UTC time>).
    #[arg(long, env = "RUN_ID")]
    pub run_id: Option<String>,

    /// Node id (default: the host name).
    #[arg(long, env = "NODE_ID")]
    pub node_id: Option<String>,

    /// Stage label recorded with every trace.
    #[arg(long, env = "STAGE", default_value = "cloud")]
    pub stage: String,

    /// CPU frequency in MHz to record (default: the CPU's maximum, else its
    /// current frequency).
    #[arg(long, env = "CPU_FREQ_MHZ", value_name = "MHZ")]
    pub cpu_freq_mhz: Option<f64>,

    /// Directory that holds <RUN_ID>/.
    #[arg(long, default_value = "logs", value_name = "DIR")]
    pub logs: PathBuf,

    /// Write this node's trace directory here instead of <logs>/<RUN_ID>/
    /// (e.g. logs/<RUN_ID>/<node> when several agents share a host).
    #[arg(long, value_name = "DIR")]
    pub node_dir: Option<PathBuf>,
}

impl IdentityArgs {
    /// The node's trace directory.
    pub fn node_dir(&self, id: &NodeIdentity) -> PathBuf {
        self.node_dir
            .clone()
            .unwrap_or_else(|| self.logs.join(&id.run_id))
    }

    pub fn identity(&self) -> NodeIdentity {
        NodeIdentity {
            run_id: self.run_id.clone().unwrap_or_else(default_run_id),
            node: self.node_id.clone().unwrap_or_else(hostname),
            stage: self.stage.clone(),
        }
    }
}

fn default_run_id() -> String {
    let (y, mo, d, h, mi, se) = crate::sys::utc_now();
    format!("run-{y:04}{mo:02}{d:02}-{h:02}{mi:02}{se:02}")
}
