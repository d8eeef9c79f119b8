//! Kernel time (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) to epoch milliseconds.
//!
//! The offset between CLOCK_REALTIME and CLOCK_MONOTONIC is measured as the
//! tightest of a few back-to-back readings and re-measured at every interval,
//! so a clock step is followed while kernel timestamps never drift.

/// CLOCK_MONOTONIC now, in ns (the clock of `bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    crate::sys::monotonic_ns() as u64
}

/// CLOCK_REALTIME now, in epoch ms.
pub fn epoch_ms() -> i64 {
    (crate::sys::realtime_ns() / 1_000_000) as i64
}

/// Converts monotonic ns to epoch ms.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// realtime − monotonic, ns.
    offset_ns: i128,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    pub fn new() -> Self {
        let mut clock = Clock { offset_ns: 0 };
        clock.recalibrate();
        clock
    }

    /// A clock with a given realtime − monotonic offset (tests).
    #[cfg(test)]
    pub fn with_offset_ns(offset_ns: i128) -> Self {
        Clock { offset_ns }
    }

    /// Re-measure the offset: keep the pair read closest together.
    pub fn recalibrate(&mut self) {
        let mut best: Option<(i128, i128)> = None;
        for _ in 0..5 {
            let m0 = crate::sys::monotonic_ns();
            let r = crate::sys::realtime_ns();
            let m1 = crate::sys::monotonic_ns();
            let gap = m1 - m0;
            if best.is_none_or(|(g, _)| gap < g) {
                best = Some((gap, r - (m0 + gap / 2)));
            }
        }
        if let Some((_, offset)) = best {
            self.offset_ns = offset;
        }
    }

    /// Epoch ms of a monotonic timestamp (floored).
    pub fn epoch_ms_of(&self, mono_ns: u64) -> i64 {
        let ns = mono_ns as i128 + self.offset_ns;
        // Called for every sample: 64-bit division where the value fits
        // (always, for dates before 2262).
        match i64::try_from(ns) {
            Ok(ns) => ns.div_euclid(1_000_000),
            Err(_) => ns.div_euclid(1_000_000) as i64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_now_to_now() {
        let clock = Clock::new();
        let a = epoch_ms();
        let b = clock.epoch_ms_of(monotonic_ns());
        assert!((b - a).abs() <= 2, "{a} vs {b}");
    }
}
