//! Which CPU samples: the kernel's `sampler` record, read at every tick, so
//! that sampling moving to another CPU, or stopping, is said loudly.

use aya::maps::{Array, MapData};
use tracekit_ebpf::TkSampler;

/// Watches the kernel's `sampler` record: which CPU samples, and whether it
/// still fires.
pub(super) struct SamplerWatch {
    pub(super) map: Array<MapData, TkSampler>,
    pub(super) interval_ns: u64,
    /// When tracing began (CLOCK_MONOTONIC ns): a sampler that never fired
    /// counts as silent from then.
    pub(super) since_ns: u64,
    pub(super) cpu: Option<u32>,
    pub(super) moves: u64,
    pub(super) stalled: bool,
}

impl SamplerWatch {
    pub(super) fn check(&mut self, moves: u64, now_ns: u64) {
        let Ok(state) = self.map.get(&0, 0) else {
            tracing::warn!("the sampler's state cannot be read");
            return;
        };
        if moves > self.moves {
            tracing::warn!(
                from = ?self.cpu,
                to = state.cpu,
                "the sampling CPU went offline: CPU {} samples now",
                state.cpu
            );
        }
        self.moves = moves;
        self.cpu = Some(state.cpu);
        let stalled = sampler_stalled(now_ns, state.last_ns.max(self.since_ns), self.interval_ns);
        if stalled && !self.stalled {
            tracing::error!(
                cpu = state.cpu,
                "SAMPLING HAS STOPPED: the sampler's timer has not run for {} ms; traced processes get only their exit line",
                now_ns.saturating_sub(state.last_ns.max(self.since_ns)) / 1_000_000
            );
        } else if !stalled && self.stalled {
            tracing::warn!(cpu = state.cpu, "sampling resumed");
        }
        self.stalled = stalled;
    }
}

/// Whether the sampler has been silent too long: its timer runs every
/// interval (a VM may skip one), so four silent intervals, and at least a
/// second, mean it stopped.
pub fn sampler_stalled(now_ns: u64, last_ns: u64, interval_ns: u64) -> bool {
    now_ns.saturating_sub(last_ns) > interval_ns.saturating_mul(4).max(1_000_000_000)
}
