//! How a raw task is named on screen: its trace id, sequence number,
//! profile and input, read leniently (a dead letter may not be a valid task).

/// The fields of a raw task that name it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskLabel {
    pub trace_id: Option<String>,
    pub seq: Option<u64>,
    pub profile: Option<String>,
    pub input: Option<String>,
}

impl TaskLabel {
    pub fn of(raw: &str) -> TaskLabel {
        let Ok(serde_json::Value::Object(v)) = serde_json::from_str::<serde_json::Value>(raw)
        else {
            return TaskLabel::default();
        };
        let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        TaskLabel {
            trace_id: text("trace_id"),
            seq: v.get("_seq").and_then(|x| x.as_u64()),
            profile: text("profile"),
            input: text("input"),
        }
    }

    /// `trace_id`, else `seq N`, else `-`.
    pub fn id(&self) -> String {
        match (&self.trace_id, self.seq) {
            (Some(t), _) => t.clone(),
            (None, Some(s)) => format!("seq {s}"),
            (None, None) => "-".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_a_task_leniently() {
        let l = TaskLabel::of(r#"{"input":"/in/a.mp4","_seq":4,"profile":"fast1080p"}"#);
        assert_eq!(l.id(), "seq 4");
        assert_eq!(l.profile.as_deref(), Some("fast1080p"));
        assert_eq!(l.input.as_deref(), Some("/in/a.mp4"));
        assert_eq!(TaskLabel::of(r#"{"trace_id":"t1","_seq":4}"#).id(), "t1");
        assert_eq!(TaskLabel::of("not json").id(), "-");
    }
}
