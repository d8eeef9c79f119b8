//! This node's clock against Redis `TIME`, measured with the heartbeats
//! (`tracekit_trace::clock::ClockTracker`), and when the estimate is worth
//! writing to `node_meta.json` again.

use tracekit_trace::ClockSkew;

/// How far the estimate moves before `node_meta.json` is rewritten, ms.
const REWRITE_MS: f64 = 2.0;

/// Whether `now` should be written over what was written last.
pub fn worth_writing(written: Option<&ClockSkew>, now: &ClockSkew) -> bool {
    written.is_none_or(|w| (w.offset_ms - now.offset_ms).abs() >= REWRITE_MS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracekit_trace::clock::ClockTracker;

    #[test]
    fn small_moves_are_not_rewritten() {
        let mut t = ClockTracker::default();
        let first = t.add(80.0, 10.0);
        assert!(worth_writing(None, &first));
        // A slower reading does not move the estimate.
        let slower = t.add(120.0, 30.0);
        assert!(!worth_writing(Some(&first), &slower));
        // A faster one does.
        let better = t.add(60.0, 1.0);
        assert!(worth_writing(Some(&first), &better));
        // Within 2 ms of what was written: not rewritten.
        let close = t.add(61.0, 0.5);
        assert!(!worth_writing(Some(&better), &close));
        assert_eq!(close.samples, 4);
    }
}
