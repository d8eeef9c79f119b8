//! Redis key names (the data model is documented in the crate root).

/// Sorted set of every registered node (scores 0: byte order of names).
pub const REGISTRY: &str = "nodes:registry";
/// Sorted set node → last heartbeat (ms, Redis server time).
pub const ALIVE: &str = "nodes:alive";
/// Dead-letter list.
pub const DEAD: &str = "q:dead";
/// Hash raw task → failed attempts.
pub const ATTEMPTS: &str = "q:attempts";
/// Hash raw task → why its last failed attempt failed.
pub const LAST_ERROR: &str = "q:last_error";

/// The two list names the original made configurable (`--pending`, `--slots`);
/// everything else is fixed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// Global FIFO of submitted tasks.
    pub pending: String,
    /// Slot tokens (value = node id).
    pub slots: String,
}

impl Default for Keys {
    fn default() -> Self {
        Self {
            pending: "q:pending".into(),
            slots: "slots:available".into(),
        }
    }
}

/// Queue of tasks placed on `node`.
pub fn queue(node: &str) -> String {
    format!("q:{node}")
}
/// Tasks `node`'s worker has taken and not finished.
pub fn inflight(node: &str) -> String {
    format!("inflight:{node}")
}
/// Free capacity units of `node`.
pub fn cap(node: &str) -> String {
    format!("cap:{node}")
}
/// Total capacity units of `node`.
pub fn cap_total(node: &str) -> String {
    format!("cap_total:{node}")
}
/// Logical cores of `node`.
pub fn phys(node: &str) -> String {
    format!("phys:{node}")
}
/// Allocation ratio of `node`.
pub fn ratio(node: &str) -> String {
    format!("ratio:{node}")
}
/// Tasks placed on `node` and not finished.
pub fn run_count(node: &str) -> String {
    format!("run_count:{node}")
}
/// Slots of `node` (0 = capacity only).
pub fn parallel(node: &str) -> String {
    format!("parallel:{node}")
}
/// How `node`'s worker binds tasks to CPUs ("shared", "exclusive", or
/// "UNBOUND: why"), set by the worker at registration.
pub fn binding(node: &str) -> String {
    format!("binding:{node}")
}
/// A dispatcher's submission high-water mark.
pub fn dispatch_mark(dispatcher_id: &str) -> String {
    format!("dispatch:{dispatcher_id}:mark")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_names_are_kept() {
        let k = Keys::default();
        assert_eq!(k.pending, "q:pending");
        assert_eq!(k.slots, "slots:available");
        assert_eq!(queue("n1"), "q:n1");
        assert_eq!(cap("n1"), "cap:n1");
        assert_eq!(cap_total("n1"), "cap_total:n1");
        assert_eq!(phys("n1"), "phys:n1");
        assert_eq!(ratio("n1"), "ratio:n1");
        assert_eq!(run_count("n1"), "run_count:n1");
        assert_eq!(inflight("n1"), "inflight:n1");
    }
}
