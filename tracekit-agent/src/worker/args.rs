//! The worker's command line: its flags (the original's names and meanings,
//! plus `--inputs`, `--run-as`, `--drain` and `--allow-unbound`) and the
//! checks that refuse flags that cannot work.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use tracekit_proto::cli::RedisArgs;

/// `--cpu-binding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Binding {
    /// Each task gets its own cores (k units → k cores no other task holds).
    Exclusive,
    /// No pinning: CPU weight by units and a max-min fair quota.
    Shared,
}

/// The worker's flags (the original's names and meanings, plus `--inputs`,
/// `--run-as` and `--drain`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Worker")]
pub struct WorkerArgs {
    /// Root that task outputs must lie under (created, and given to
    /// --run-as).
    #[arg(long, default_value = "outputs", value_name = "DIR")]
    pub outputs: PathBuf,

    /// Root that task inputs must lie under.
    #[arg(long, default_value = "inputs", value_name = "DIR")]
    pub inputs: PathBuf,

    /// Slot tokens to register for this node (0 = capacity only).
    #[arg(long, default_value_t = 0, value_name = "SLOTS")]
    pub parallel: u32,

    /// Name of the slot-token list.
    #[arg(long, default_value = "slots:available")]
    pub slots_key: String,

    /// Name of the pending list.
    #[arg(long, default_value = "q:pending")]
    pub pending_key: String,

    /// Capacity units (absent or 0, as in the original: max(1, floor(ratio ×
    /// logical cores))).
    #[arg(long, value_name = "UNITS")]
    pub capacity_units: Option<u32>,

    /// Units per logical core.
    #[arg(long, default_value_t = 1.0, value_name = "UNITS_PER_CORE")]
    pub allocation_ratio: f64,

    /// How tasks get CPU.
    #[arg(long, value_enum, default_value_t = Binding::Shared)]
    pub cpu_binding: Binding,

    /// Run tasks without CPU binding when this host offers no usable cgroup
    /// hierarchy (otherwise the agent refuses to start). Every task's record,
    /// the audit and `tracekit-sched status` then say that it ran unbound.
    #[arg(long)]
    pub allow_unbound: bool,

    /// Shared binding: CPU weight per unit (100 = a normal process).
    #[arg(long, default_value_t = 100, value_name = "WEIGHT")]
    pub cpuweight_per_vcpu: u64,

    /// Overwrite stale capacity values in Redis.
    #[arg(long)]
    pub reset_capacity: bool,

    /// Hand this node's queued tasks back to pending at start.
    #[arg(long)]
    pub clear_queue: bool,

    /// Run ffmpeg as this user (no capabilities, no_new_privs).
    #[arg(long, default_value = "nobody", value_name = "USER")]
    pub run_as: String,

    /// On SIGINT/SIGTERM finish the running tasks (default: stop them and
    /// hand them back).
    #[arg(long)]
    pub drain: bool,

    /// Heartbeat period, ms; the node counts as dead when the central's
    /// --heartbeat-timeout (10 s by default) passes without one.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub heartbeat_ms: u64,

    /// Do not publish this node's trace directory through Redis at stop
    /// (by default it is, for `tracekit-sched gather`).
    #[arg(long)]
    pub no_publish: bool,

    /// Largest ffmpeg stderr kept per task, bytes.
    #[arg(long, default_value_t = 64 * 1024, value_name = "BYTES")]
    pub stderr_limit: usize,

    #[command(flatten)]
    pub redis: RedisArgs,
}

/// `--cpu-binding`'s value as the command line spells it.
pub fn binding_name(b: Binding) -> &'static str {
    match b {
        Binding::Exclusive => "exclusive",
        Binding::Shared => "shared",
    }
}

/// Fail early and clearly on flags that cannot work.
pub fn check(args: &WorkerArgs) -> Result<()> {
    if !(args.allocation_ratio > 0.0 && args.allocation_ratio <= 64.0) {
        bail!(
            "--allocation-ratio {} is not in (0, 64]",
            args.allocation_ratio
        );
    }
    if args.cpuweight_per_vcpu == 0 || args.cpuweight_per_vcpu > 10_000 {
        bail!(
            "--cpuweight-per-vcpu {} is not in 1..=10000",
            args.cpuweight_per_vcpu
        );
    }
    Ok(())
}
