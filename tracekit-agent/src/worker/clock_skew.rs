//! This node's clock against Redis `TIME`, measured with the heartbeats:
//! the estimate is the offset of the reading with the shortest round trip
//! (its error is at most half that round trip), as NTP's clock filter does.

use tracekit_trace::ClockSkew;

/// Readings so far.
#[derive(Debug, Default)]
pub struct ClockTracker {
    best: Option<(f64, f64)>,
    samples: u64,
    max_abs: f64,
}

/// How far the estimate moves before `node_meta.json` is rewritten, ms.
const REWRITE_MS: f64 = 2.0;

/// Whether `now` should be written over what was written last.
pub fn worth_writing(written: Option<&ClockSkew>, now: &ClockSkew) -> bool {
    written.is_none_or(|w| (w.offset_ms - now.offset_ms).abs() >= REWRITE_MS)
}

impl ClockTracker {
    /// Add a reading (offset, round trip), ms; returns the estimate.
    pub fn add(&mut self, offset_ms: f64, rtt_ms: f64) -> ClockSkew {
        self.samples += 1;
        self.max_abs = self.max_abs.max(offset_ms.abs());
        if self.best.is_none_or(|(_, rtt)| rtt_ms < rtt) {
            self.best = Some((offset_ms, rtt_ms));
        }
        ClockSkew {
            offset_ms: self.best.map_or(offset_ms, |b| b.0),
            rtt_ms: self.best.map_or(rtt_ms, |b| b.1),
            samples: self.samples,
            max_abs_offset_ms: self.max_abs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shortest_round_trip_wins_and_small_moves_are_not_rewritten() {
        let mut t = ClockTracker::default();
        let first = t.add(80.0, 10.0);
        assert_eq!((first.offset_ms, first.samples), (80.0, 1));
        assert!(worth_writing(None, &first));
        // A slower reading does not move the estimate.
        let slower = t.add(120.0, 30.0);
        assert_eq!(slower.offset_ms, 80.0);
        assert!(!worth_writing(Some(&first), &slower));
        // A faster one does.
        let better = t.add(60.0, 1.0);
        assert_eq!((better.offset_ms, better.rtt_ms), (60.0, 1.0));
        assert_eq!(better.max_abs_offset_ms, 120.0);
        assert!(worth_writing(Some(&first), &better));
        // Within 2 ms of what was written: not rewritten.
        let close = t.add(61.0, 0.5);
        assert!(!worth_writing(Some(&better), &close));
        assert_eq!(close.samples, 4);
    }
}
