//! The task model (SPEC "Task JSON") and its pure validation: everything that
//! can be checked without the worker's filesystem.

use std::path::{Component, Path};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// x264/x265 presets, fastest first.
pub const PRESETS: &[&str] = &[
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
];
/// Accepted `vcodec` values.
pub const VCODECS: &[&str] = &["h264", "hevc", "h265"];

/// The largest task JSON accepted, bytes: refused at submit and dead-lettered
/// at placement, so no worker ever holds more.
pub const MAX_TASK_BYTES: usize = 64 * 1024;
/// The most of any one value a message quotes (reasons, log lines, dead
/// letters), bytes.
pub const QUOTE_BYTES: usize = 1024;

/// `s` as a message may quote it: whole up to [`QUOTE_BYTES`] (or `limit`),
/// otherwise its head cut at a character boundary and how long it was.
pub fn quote(s: &str) -> std::borrow::Cow<'_, str> {
    quote_at(s, QUOTE_BYTES)
}

fn quote_at(s: &str, limit: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= limit {
        return s.into();
    }
    let keep = limit.saturating_sub(40);
    let mut cut = keep.min(s.len());
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes in all)", &s[..cut], s.len()).into()
}

/// Why a task is rejected.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TaskError {
    #[error("task is {0} bytes, more than the limit of {MAX_TASK_BYTES}")]
    TooLarge(usize),
    #[error("malformed task JSON: {0}")]
    Malformed(String),
    #[error("invalid field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> TaskError {
    TaskError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// One transcoding task as it travels through Redis. Unknown fields are kept
/// (in `extra`) and written back unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub input: String,
    pub output: String,
    /// `W:H`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<String>,
    /// `h264` (libx264, the default) or `hevc`/`h265` (libx265).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcodec: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vthreads: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fthreads: Option<i64>,
    /// Capacity units the task holds on its node; absent = 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_units: Option<i64>,
    /// Submission order within one dispatcher run.
    #[serde(rename = "_seq", default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Submission time, epoch ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts_enqueue: Option<i64>,
    /// The submitter's clock minus Redis `TIME` when it stamped
    /// `ts_enqueue`, ms (its best estimate then): the worker records it with
    /// the task, so a trace's times can be put on one clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts_enqueue_offset_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpuset: Option<String>,
    /// CPU quota in percent of one core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_quota: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<i64>,
    /// The task's id in traces (`invocations.jsonl`'s trace_id); the worker
    /// makes one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The dispatcher's profile name (e.g. `fast1080p`), recorded with the
    /// task's invocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Task {
    /// Parses a raw task; does not validate field values (see [`Task::validate`]).
    pub fn parse(raw: &str) -> Result<Task, TaskError> {
        if raw.len() > MAX_TASK_BYTES {
            return Err(TaskError::TooLarge(raw.len()));
        }
        serde_json::from_str(raw).map_err(|e| TaskError::Malformed(quote(&e.to_string()).into()))
    }

    /// Parses and validates.
    pub fn parse_valid(raw: &str) -> Result<Task, TaskError> {
        let t = Self::parse(raw)?;
        t.validate()?;
        Ok(t)
    }

    /// The task as one line of JSON.
    pub fn to_json(&self) -> String {
        // Serializing plain strings, numbers and a JSON map cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Capacity units (absent = 1).
    pub fn units(&self) -> i64 {
        self.cpu_units.unwrap_or(1)
    }

    /// The ffmpeg encoder library of `vcodec`.
    pub fn encoder(&self) -> Result<&'static str, TaskError> {
        match self.vcodec.as_deref().unwrap_or("h264") {
            "h264" => Ok("libx264"),
            "hevc" | "h265" => Ok("libx265"),
            other => Err(invalid(
                "vcodec",
                format!(
                    "`{}` is not one of {}",
                    quote_at(other, 64),
                    VCODECS.join(", ")
                ),
            )),
        }
    }

    /// Scale as (width, height).
    pub fn scale_wh(&self) -> Result<Option<(u32, u32)>, TaskError> {
        self.scale.as_deref().map(parse_scale).transpose()
    }

    /// Every check that needs no filesystem: numbers in range, scale, preset
    /// and codec from fixed sets, paths free of `..` and NUL. Whether input
    /// and output lie under the worker's roots is the worker's check
    /// ([`path_is_under`] does the lexical part).
    pub fn validate(&self) -> Result<(), TaskError> {
        check_path("input", &self.input)?;
        check_path("output", &self.output)?;
        self.scale_wh()?;
        self.encoder()?;
        if let Some(p) = &self.preset
            && !PRESETS.contains(&p.as_str())
        {
            return Err(invalid(
                "preset",
                format!("`{}` is not one of {}", quote_at(p, 64), PRESETS.join(", ")),
            ));
        }
        check_range("crf", self.crf, 0, 51)?;
        check_range("vthreads", self.vthreads, 0, 1024)?;
        check_range("fthreads", self.fthreads, 0, 1024)?;
        check_range("cpu_units", self.cpu_units, 1, 1 << 20)?;
        check_range("cpu_weight", self.cpu_weight, 1, 10_000)?;
        if let Some(q) = self.cpu_quota
            && !(q > 0.0 && q <= 100_000.0)
        {
            return Err(invalid("cpu_quota", format!("{q} is not in (0, 100000] %")));
        }
        if let Some(c) = &self.cpuset {
            parse_cpuset(c).map_err(|r| invalid("cpuset", r))?;
        }
        Ok(())
    }
}

fn check_range(field: &'static str, v: Option<i64>, lo: i64, hi: i64) -> Result<(), TaskError> {
    match v {
        Some(x) if x < lo || x > hi => Err(invalid(field, format!("{x} is not in {lo}..={hi}"))),
        _ => Ok(()),
    }
}

fn check_path(field: &'static str, p: &str) -> Result<(), TaskError> {
    if p.is_empty() {
        return Err(invalid(field, "empty path"));
    }
    if p.contains('\0') {
        return Err(invalid(field, "path contains NUL"));
    }
    if Path::new(p).components().any(|c| c == Component::ParentDir) {
        return Err(invalid(field, "path contains `..`"));
    }
    Ok(())
}

/// Parses `W:H` (each 1..=16384).
pub fn parse_scale(s: &str) -> Result<(u32, u32), TaskError> {
    let bad = || {
        invalid(
            "scale",
            format!("`{}` is not W:H with 1..=16384 each", quote_at(s, 64)),
        )
    };
    let (w, h) = s.split_once(':').ok_or_else(bad)?;
    let parse = |x: &str| -> Result<u32, TaskError> {
        if x.is_empty() || !x.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        match x.parse::<u32>() {
            Ok(v) if (1..=16384).contains(&v) => Ok(v),
            _ => Err(bad()),
        }
    };
    Ok((parse(w)?, parse(h)?))
}

/// Parses a cpuset list such as `0-3,6` into sorted, distinct CPU numbers.
pub fn parse_cpuset(s: &str) -> Result<Vec<u32>, String> {
    let mut cpus = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let num = |x: &str| {
            x.parse::<u32>()
                .ok()
                .filter(|&v| v < 65_536)
                .ok_or_else(|| {
                    format!(
                        "`{}` in `{}` is not a CPU number",
                        quote_at(x, 64),
                        quote_at(s, 64)
                    )
                })
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(format!("range `{part}` is reversed"));
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(num(part)?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Lexical check that `path` (joined to `root` when relative) stays under
/// `root`: no `..` anywhere, so no symlink-free escape is possible.
pub fn path_is_under(root: &Path, path: &Path) -> bool {
    if path.components().any(|c| c == Component::ParentDir)
        || root.components().any(|c| c == Component::ParentDir)
    {
        return false;
    }
    let full = if path.is_absolute() {
        path.to_path_buf()
    } else {
        root.join(path)
    };
    full.starts_with(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Task {
        Task::parse(
            r#"{"input":"in/a.mp4","output":"out/a.mp4","scale":"1920:1080","vcodec":"hevc",
               "preset":"medium","crf":28,"vthreads":4,"fthreads":4,"cpu_units":4,"_seq":3,
               "ts_enqueue":1700000000000,"custom":{"x":1}}"#,
        )
        .expect("parses")
    }

    #[test]
    fn parses_and_keeps_unknown_fields() {
        let t = good();
        assert_eq!(t.units(), 4);
        assert_eq!(t.seq, Some(3));
        assert_eq!(t.encoder(), Ok("libx265"));
        assert_eq!(t.extra.get("custom"), Some(&serde_json::json!({"x":1})));
        let back = Task::parse(&t.to_json()).expect("round trip");
        assert_eq!(back, t);
        assert!(t.to_json().contains("\"_seq\":3"));
        assert_eq!(t.validate(), Ok(()));
    }

    #[test]
    fn defaults() {
        let t = Task::parse(r#"{"input":"a","output":"b"}"#).expect("parses");
        assert_eq!(t.units(), 1);
        assert_eq!(t.encoder(), Ok("libx264"));
        assert_eq!(t.validate(), Ok(()));
    }

    #[test]
    fn rejects_bad_fields() {
        let cases: &[(&str, &str)] = &[
            (r#"{"cpu_units":0}"#, "cpu_units"),
            (r#"{"cpu_units":-2}"#, "cpu_units"),
            (r#"{"crf":52}"#, "crf"),
            (r#"{"scale":"1920x1080"}"#, "scale"),
            (r#"{"scale":"0:1080"}"#, "scale"),
            (r#"{"scale":"-1:720"}"#, "scale"),
            (r#"{"vcodec":"vp9"}"#, "vcodec"),
            (r#"{"preset":"; rm -rf /"}"#, "preset"),
            (r#"{"input":"../etc/passwd"}"#, "input"),
            (r#"{"output":"a/../../b"}"#, "output"),
            (r#"{"cpuset":"3-1"}"#, "cpuset"),
            (r#"{"cpu_quota":0}"#, "cpu_quota"),
            (r#"{"cpu_weight":0}"#, "cpu_weight"),
        ];
        for (patch, field) in cases {
            let mut v: Value = serde_json::from_str(r#"{"input":"a","output":"b"}"#).unwrap();
            let p: Value = serde_json::from_str(patch).unwrap();
            for (k, x) in p.as_object().unwrap() {
                v[k] = x.clone();
            }
            let t = Task::parse(&v.to_string()).expect("parses");
            match t.validate() {
                Err(TaskError::Invalid { field: f, .. }) => assert_eq!(f, *field, "{patch}"),
                other => panic!("{patch}: {other:?}"),
            }
        }
    }

    #[test]
    fn malformed() {
        assert!(matches!(Task::parse("{nope"), Err(TaskError::Malformed(_))));
        assert!(matches!(Task::parse("[1]"), Err(TaskError::Malformed(_))));
        assert!(matches!(
            Task::parse(r#"{"input":"a","output":"b","cpu_units":"2"}"#),
            Err(TaskError::Malformed(_))
        ));
    }

    #[test]
    fn cpusets_and_paths() {
        assert_eq!(parse_cpuset("0-2,5,1"), Ok(vec![0, 1, 2, 5]));
        assert!(parse_cpuset("").is_err());
        assert!(path_is_under(Path::new("/in"), Path::new("/in/a.mp4")));
        assert!(path_is_under(Path::new("/in"), Path::new("a.mp4")));
        assert!(!path_is_under(Path::new("/in"), Path::new("/etc/a.mp4")));
        assert!(!path_is_under(Path::new("/in"), Path::new("/in/../etc")));
    }
}
