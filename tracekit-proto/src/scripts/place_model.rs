//! The placement policy as plain functions over a snapshot of the live nodes
//! (feature `testing`): filters (free capacity, slot token) and weighers
//! (none, instances, vcpu; min or max; ties by node name), and why a head
//! task is dead-lettered. `place.lua`, beside this file, applies the same
//! policy atomically inside Redis through its index; tracekit-sched's
//! `placement_redis` test checks on random states that both decide alike.

use crate::{Weigher, WeigherOrder};

/// What placement needs to know about one live node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub cap: i64,
    pub cap_total: i64,
    pub run_count: i64,
    /// Slots of the node; 0 = no slot tokens needed.
    pub parallel: i64,
    /// The node's slot tokens among the newest `--scan-slots`.
    pub tokens: usize,
}

/// Filters: enough free capacity, and a slot token when the node uses slots.
pub fn feasible(n: &NodeView, need: i64) -> bool {
    n.cap >= need && (n.parallel == 0 || n.tokens > 0)
}

/// The weigher's metric of a node.
pub fn metric(w: Weigher, n: &NodeView) -> i64 {
    match w {
        Weigher::None => 0,
        Weigher::Instances => n.run_count,
        Weigher::Vcpu => n.cap_total - n.cap,
    }
}

/// The node the head task (needing `need` units) goes to, if any: the best
/// metric in the chosen order among feasible nodes, ties by node name (byte
/// order). With no weigher that is first fit by node name.
pub fn choose(nodes: &[NodeView], need: i64, w: Weigher, order: WeigherOrder) -> Option<&NodeView> {
    nodes.iter().filter(|n| feasible(n, need)).min_by(|a, b| {
        let (ma, mb) = (metric(w, a), metric(w, b));
        let by_metric = match order {
            WeigherOrder::Min => ma.cmp(&mb),
            WeigherOrder::Max => mb.cmp(&ma),
        };
        by_metric.then_with(|| a.name.as_bytes().cmp(b.name.as_bytes()))
    })
}

/// Why a head task can never be placed (it goes to the dead-letter list), in
/// the order place.lua checks: malformed/cpu_units, attempts (with the reason
/// its last attempt failed, `q:last_error`), too big for every live node.
pub fn dead_reason(
    units: Result<i64, String>,
    attempts: u32,
    max_attempts: u32,
    last_error: Option<&str>,
    live_totals: &[i64],
) -> Option<String> {
    let units = match units {
        Ok(u) => u,
        Err(reason) => return Some(reason),
    };
    if max_attempts > 0 && attempts >= max_attempts {
        let why = format!("failed {attempts} attempts (max {max_attempts})");
        return Some(match last_error {
            Some(e) => format!("{why}: {e}"),
            None => why,
        });
    }
    let largest = live_totals.iter().copied().max()?;
    (units > largest)
        .then(|| format!("needs {units} cpu units, the largest live node has {largest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(name: &str, cap: i64, total: i64, rc: i64) -> NodeView {
        NodeView {
            name: name.into(),
            cap,
            cap_total: total,
            run_count: rc,
            parallel: 0,
            tokens: 0,
        }
    }

    fn pick(nodes: &[NodeView], need: i64, w: Weigher, o: WeigherOrder) -> Option<&str> {
        choose(nodes, need, w, o).map(|n| n.name.as_str())
    }

    #[test]
    fn first_fit_by_name() {
        let nodes = [n("c", 4, 4, 0), n("a", 1, 4, 3), n("b", 2, 4, 1)];
        assert_eq!(pick(&nodes, 2, Weigher::None, WeigherOrder::Min), Some("b"));
        assert_eq!(pick(&nodes, 2, Weigher::None, WeigherOrder::Max), Some("b"));
        assert_eq!(pick(&nodes, 1, Weigher::None, WeigherOrder::Min), Some("a"));
        assert_eq!(pick(&nodes, 5, Weigher::None, WeigherOrder::Min), None);
    }

    #[test]
    fn every_weigher_and_order() {
        // metric instances: a=3 b=1 c=0 d=5; vcpu: a=7 b=2 c=6 d=1
        let nodes = [
            n("a", 1, 8, 3),
            n("b", 6, 8, 1),
            n("c", 2, 8, 0),
            n("d", 7, 8, 5),
        ];
        use Weigher::*;
        use WeigherOrder::*;
        assert_eq!(pick(&nodes, 1, Instances, Min), Some("c"));
        assert_eq!(pick(&nodes, 1, Instances, Max), Some("d"));
        assert_eq!(pick(&nodes, 1, Vcpu, Min), Some("d"));
        assert_eq!(pick(&nodes, 1, Vcpu, Max), Some("a"));
        // need 2 filters a out
        assert_eq!(pick(&nodes, 2, Vcpu, Max), Some("c"));
        assert_eq!(pick(&nodes, 3, Instances, Min), Some("b"));
    }

    #[test]
    fn ties_go_to_the_smallest_name_in_byte_order() {
        let nodes = [
            n("b", 4, 4, 1),
            n("B", 4, 4, 1),
            n("a", 4, 4, 1),
            n("a0", 4, 4, 1),
        ];
        for w in [Weigher::None, Weigher::Instances, Weigher::Vcpu] {
            for o in [WeigherOrder::Min, WeigherOrder::Max] {
                assert_eq!(pick(&nodes, 1, w, o), Some("B"), "{w:?} {o:?}");
            }
        }
    }

    #[test]
    fn slot_tokens_filter() {
        let mut a = n("a", 4, 4, 0);
        a.parallel = 2;
        let b = n("b", 4, 4, 0);
        assert_eq!(
            pick(&[a.clone(), b.clone()], 1, Weigher::None, WeigherOrder::Min),
            Some("b")
        );
        a.tokens = 1;
        assert_eq!(
            pick(&[a, b], 1, Weigher::None, WeigherOrder::Min),
            Some("a")
        );
    }

    #[test]
    fn dead_reasons() {
        assert_eq!(dead_reason(Ok(2), 0, 3, None, &[4, 2]), None);
        assert!(
            dead_reason(Ok(5), 0, 3, None, &[4, 2])
                .unwrap()
                .contains("largest live node has 4")
        );
        assert_eq!(
            dead_reason(Ok(5), 0, 3, None, &[]),
            None,
            "no live node: wait, do not dead-letter"
        );
        assert!(
            dead_reason(Ok(1), 3, 3, None, &[4])
                .unwrap()
                .contains("failed 3 attempts")
        );
        assert_eq!(
            dead_reason(Ok(1), 3, 3, Some("ffmpeg exited with 1"), &[4]).as_deref(),
            Some("failed 3 attempts (max 3): ffmpeg exited with 1")
        );
        assert_eq!(dead_reason(Ok(1), 3, 0, None, &[4]), None);
        assert_eq!(
            dead_reason(Err("cpu_units < 1".into()), 0, 3, None, &[4]).as_deref(),
            Some("cpu_units < 1")
        );
    }
}
