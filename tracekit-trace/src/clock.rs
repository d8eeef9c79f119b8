//! Clocks: how a host measures its offset from Redis `TIME`, and how a
//! trace's times are put on Redis's clock (`--correct-clock` of export,
//! report and compare).
//!
//! A run's times come from several clocks: a task's submission time from
//! the dispatcher that stamped it, its start and end and its samples from
//! the node that ran it. Each of them measures its offset from Redis `TIME`,
//! the one clock they all reach: the node with its heartbeats (`node_meta.json`
//! `clock`), the dispatcher before and while it submits (each task carries
//! the estimate it was stamped under, `ts_enqueue_offset_ms`, and the node
//! copies it to the task's invocation line). Subtracting each offset puts
//! every time on Redis's clock.
//!
//! A node's times all move by the same whole number of milliseconds, so
//! durations, sample intervals and the join of samples to tasks are exactly
//! what they were; only times from different clocks move against each other.

use std::path::{Path, PathBuf};

use crate::schema::{ClockSkew, InvocationRecord, NodeMeta};

/// Readings of one host's clock against Redis `TIME`: the estimate is the
/// offset of the reading with the shortest round trip (its error is at most
/// half that round trip), as NTP's clock filter does.
#[derive(Debug, Default, Clone)]
pub struct ClockTracker {
    best: Option<(f64, f64)>,
    samples: u64,
    max_abs: f64,
}

impl ClockTracker {
    /// Add a reading (offset, round trip), ms; returns the estimate.
    pub fn add(&mut self, offset_ms: f64, rtt_ms: f64) -> ClockSkew {
        self.samples += 1;
        self.max_abs = self.max_abs.max(offset_ms.abs());
        if self.best.is_none_or(|(_, rtt)| rtt_ms < rtt) {
            self.best = Some((offset_ms, rtt_ms));
        }
        self.estimate().unwrap_or(ClockSkew {
            offset_ms,
            rtt_ms,
            samples: self.samples,
            max_abs_offset_ms: self.max_abs,
        })
    }

    /// The estimate so far (none before the first reading).
    pub fn estimate(&self) -> Option<ClockSkew> {
        self.best.map(|(offset_ms, rtt_ms)| ClockSkew {
            offset_ms,
            rtt_ms,
            samples: self.samples,
            max_abs_offset_ms: self.max_abs,
        })
    }
}

/// An offset as the whole milliseconds a time moves by.
fn whole_ms(offset_ms: f64) -> i64 {
    offset_ms.round() as i64
}

/// How one node's times move onto Redis's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeClock {
    /// Subtracted from the node's own times, ms; `None`: the node recorded
    /// no measurement, and its times stay as they are.
    shift_ms: Option<i64>,
}

/// How a task's submission time was put on Redis's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submission {
    /// By the offset its dispatcher measured when it stamped it.
    Dispatcher,
    /// The process had no submission (traced, not dispatched: its
    /// `ts_enqueue` is its start), so it moved with the node's times.
    AtStart,
    /// It carries no dispatcher offset (an older or the original's
    /// dispatcher): it stays on that dispatcher's clock.
    Uncorrected,
}

impl NodeClock {
    /// The node's clock as its `node_meta.json` records it.
    pub fn of(meta: &NodeMeta) -> Self {
        Self::with_offset(meta.clock.map(|c| c.offset_ms))
    }

    /// A node whose clock is `offset_ms` ahead of Redis's (`None`: unknown).
    pub fn with_offset(offset_ms: Option<f64>) -> Self {
        NodeClock {
            shift_ms: offset_ms.map(whole_ms),
        }
    }

    /// What the node's times move back by, ms (`None`: no measurement).
    pub fn shift_ms(&self) -> Option<i64> {
        self.shift_ms
    }

    /// A time of this node's clock on Redis's.
    pub fn time(&self, ts_ms: i64) -> i64 {
        ts_ms - self.shift_ms.unwrap_or(0)
    }

    /// Puts an invocation's times on Redis's clock: start and end by the
    /// node's offset, the submission by its dispatcher's.
    pub fn invocation(&self, rec: &mut InvocationRecord) -> Submission {
        let traced_only = rec.ts_enqueue.is_some() && rec.ts_enqueue == rec.ts_start;
        rec.ts_start = rec.ts_start.map(|t| self.time(t));
        rec.ts_end = rec.ts_end.map(|t| self.time(t));
        match rec.ts_enqueue_offset_ms {
            Some(offset) => {
                rec.ts_enqueue = rec.ts_enqueue.map(|t| t - whole_ms(offset));
                Submission::Dispatcher
            }
            None if traced_only => {
                rec.ts_enqueue = rec.ts_start;
                Submission::AtStart
            }
            None => Submission::Uncorrected,
        }
    }
}

/// What a correction did over a run, for the lines that say so.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClockTally {
    /// Each node (name, directory) and its shift (`None`: no measurement),
    /// in the order read.
    nodes: Vec<(String, PathBuf, Option<i64>)>,
    /// Submissions moved by their dispatcher's offset, and the range of
    /// those offsets, ms.
    by_dispatcher: u64,
    dispatcher_range: Option<(f64, f64)>,
    /// Submissions left on a dispatcher's clock.
    uncorrected: u64,
}

impl ClockTally {
    /// A node whose times are being corrected.
    pub fn node(&mut self, name: &str, dir: &Path, clock: NodeClock) {
        self.nodes
            .push((name.to_string(), dir.to_path_buf(), clock.shift_ms));
    }

    /// Each node by its name, or by its directory where names repeat; and
    /// its shift.
    fn labelled(&self) -> impl Iterator<Item = (String, Option<i64>)> + '_ {
        self.nodes.iter().map(|(name, dir, shift)| {
            let shared = self.nodes.iter().filter(|(n, _, _)| n == name).count() > 1;
            let label = if shared {
                dir.display().to_string()
            } else {
                name.clone()
            };
            (label, *shift)
        })
    }

    /// One invocation corrected, `how` its submission was (its dispatcher
    /// offset is counted).
    pub fn task(&mut self, rec: &InvocationRecord, how: Submission) {
        match how {
            Submission::Dispatcher => {
                self.by_dispatcher += 1;
                if let Some(o) = rec.ts_enqueue_offset_ms {
                    let (lo, hi) = self.dispatcher_range.unwrap_or((o, o));
                    self.dispatcher_range = Some((lo.min(o), hi.max(o)));
                }
            }
            Submission::AtStart => {}
            Submission::Uncorrected if rec.ts_enqueue.is_some() => self.uncorrected += 1,
            Submission::Uncorrected => {}
        }
    }

    /// What was done: one line.
    pub fn note(&self) -> String {
        let nodes: Vec<String> = self
            .labelled()
            .map(|(n, s)| match s {
                Some(ms) => format!("{n} {:+} ms", -ms),
                None => format!("{n} not measured"),
            })
            .collect();
        let dispatchers = match self.dispatcher_range {
            Some((lo, hi)) if whole_ms(lo) == whole_ms(hi) => {
                format!("{:+} ms", -whole_ms(lo))
            }
            Some((lo, hi)) => format!("{:+} … {:+} ms", -whole_ms(hi), -whole_ms(lo)),
            None => "none".into(),
        };
        format!(
            "times on Redis's clock (--correct-clock): start, end and samples moved by each node's \
             offset ({}); {} submission time(s) by their dispatcher's ({dispatchers})",
            nodes.join(", "),
            self.by_dispatcher
        )
    }

    /// What could not be corrected: one line each, nothing when all was.
    pub fn warnings(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .labelled()
            .filter(|(_, s)| s.is_none())
            .map(|(n, _)| {
                format!(
                    "clock of node {n} not corrected: its node_meta.json has no `clock` \
                     measurement (an agent that does not measure, or one that never reached \
                     Redis); its start, end and sample times stay on its own clock"
                )
            })
            .collect();
        if self.uncorrected > 0 {
            out.push(format!(
                "{} submission time(s) not corrected: their tasks carry no dispatcher offset \
                 (ts_enqueue_offset_ms; submitted by a dispatcher that does not measure its \
                 clock, such as the original's); they stay on that dispatcher's clock",
                self.uncorrected
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shortest_round_trip_wins() {
        let mut t = ClockTracker::default();
        assert_eq!(t.estimate(), None);
        let first = t.add(80.0, 10.0);
        assert_eq!((first.offset_ms, first.samples), (80.0, 1));
        // A slower reading does not move the estimate.
        assert_eq!(t.add(120.0, 30.0).offset_ms, 80.0);
        // A faster one does.
        let better = t.add(60.0, 1.0);
        assert_eq!((better.offset_ms, better.rtt_ms), (60.0, 1.0));
        assert_eq!(better.max_abs_offset_ms, 120.0);
        assert_eq!(t.estimate(), Some(better));
    }

    fn rec(q: i64, s: i64, e: i64, dispatcher: Option<f64>) -> InvocationRecord {
        InvocationRecord {
            ts_enqueue: Some(q),
            ts_start: Some(s),
            ts_end: Some(e),
            ts_enqueue_offset_ms: dispatcher,
            ..Default::default()
        }
    }

    fn times(r: &InvocationRecord) -> (Option<i64>, Option<i64>, Option<i64>) {
        (r.ts_enqueue, r.ts_start, r.ts_end)
    }

    #[test]
    fn each_time_moves_by_its_own_clocks_offset() {
        // The node runs 1500.4 ms behind Redis, the dispatcher 3000.6 ahead:
        // the raw wait of -3500 ms is 1001 ms on Redis's clock.
        let node = NodeClock::with_offset(Some(-1500.4));
        assert_eq!(node.shift_ms(), Some(-1500));
        let mut r = rec(10_000, 6_500, 9_500, Some(3000.6));
        assert_eq!(node.invocation(&mut r), Submission::Dispatcher);
        assert_eq!(times(&r), (Some(6_999), Some(8_000), Some(11_000)));
        // Durations are kept exactly; a sample moves with its node.
        assert_eq!(r.ts_end.unwrap() - r.ts_start.unwrap(), 3_000);
        assert_eq!(node.time(7_000), 8_500);
    }

    #[test]
    fn a_traced_process_keeps_its_submission_at_its_start() {
        let node = NodeClock::with_offset(Some(20.0));
        let mut r = rec(5_000, 5_000, 6_000, None);
        assert_eq!(node.invocation(&mut r), Submission::AtStart);
        assert_eq!(times(&r), (Some(4_980), Some(4_980), Some(5_980)));
    }

    #[test]
    fn what_cannot_be_corrected_stays_and_is_said() {
        // A dispatcher that did not measure: its submission stays.
        let node = NodeClock::with_offset(Some(-100.0));
        let raw = rec(1_000, 1_200, 2_000, None);
        let mut r = raw.clone();
        assert_eq!(node.invocation(&mut r), Submission::Uncorrected);
        assert_eq!(times(&r), (Some(1_000), Some(1_300), Some(2_100)));
        // A node that did not measure: its times stay.
        let unmeasured = NodeClock::with_offset(None);
        assert_eq!(unmeasured.shift_ms(), None);
        let with_dispatcher = rec(1_000, 1_200, 2_000, Some(50.0));
        let mut u = with_dispatcher.clone();
        assert_eq!(unmeasured.invocation(&mut u), Submission::Dispatcher);
        assert_eq!(times(&u), (Some(950), Some(1_200), Some(2_000)));

        let mut tally = ClockTally::default();
        tally.node("a", Path::new("r/a"), node);
        tally.node("b", Path::new("r/b"), unmeasured);
        tally.task(&raw, Submission::Uncorrected);
        tally.task(&with_dispatcher, Submission::Dispatcher);
        tally.task(&rec(1, 1, 2, Some(48.7)), Submission::Dispatcher);
        let note = tally.note();
        assert!(note.contains("a +100 ms, b not measured"), "{note}");
        assert!(note.contains("2 submission time(s)"), "{note}");
        assert!(note.contains("(-50 … -49 ms)"), "{note}");
        let w = tally.warnings();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].starts_with("clock of node b not corrected"), "{w:?}");
        assert!(
            w[1].starts_with("1 submission time(s) not corrected"),
            "{w:?}"
        );
        // All measured: nothing to warn about.
        let mut all = ClockTally::default();
        all.node("a", Path::new("r/a"), node);
        all.task(&with_dispatcher, Submission::Dispatcher);
        assert!(all.warnings().is_empty());
        // Two nodes of one name are told apart by their directories.
        all.node("a", Path::new("r/a2"), unmeasured);
        assert!(
            all.note().contains("r/a +100 ms, r/a2 not measured"),
            "{}",
            all.note()
        );
    }
}
