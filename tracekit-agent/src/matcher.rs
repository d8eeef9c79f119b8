//! `--match`: which processes are traced.
//!
//! A process matches when its comm, or the base name of the file it exec'd
//! (comm is cut at 15 bytes), matches the regex. When the regex is only a set
//! of exact names (like the default `^ffmpeg$|^ffprobe$`), the kernel filters
//! execs by comm itself and other processes never reach user space.

use anyhow::{Context, Result};
use regex::Regex;
use tracekit_ebpf::{TK_COMM_LEN, TK_MAX_COMMS};

#[derive(Debug, Clone)]
pub struct Matcher {
    regex: Regex,
    exact: Option<Vec<String>>,
}

impl Matcher {
    pub fn new(pattern: &str) -> Result<Self> {
        let regex = Regex::new(pattern)
            .with_context(|| format!("--match {pattern:?} is not a valid regex"))?;
        Ok(Matcher {
            regex,
            exact: exact_names(pattern),
        })
    }

    /// Whether a process with this comm and exec'd file matches.
    pub fn matches(&self, comm: &str, filename: &str) -> bool {
        if self.regex.is_match(comm) {
            return true;
        }
        let base = filename.rsplit('/').next().unwrap_or("");
        !base.is_empty() && self.regex.is_match(base)
    }

    /// The exact comms the pattern stands for, when it is only such a set.
    pub fn exact_comms(&self) -> Option<&[String]> {
        self.exact.as_deref()
    }
}

/// `^a$|^b$|…` with plain names that fit in a comm → `[a, b, …]`.
fn exact_names(pattern: &str) -> Option<Vec<String>> {
    let names: Option<Vec<String>> = pattern
        .split('|')
        .map(|alt| {
            let name = alt.strip_prefix('^')?.strip_suffix('$')?;
            let plain = !name.is_empty()
                && name.len() < TK_COMM_LEN
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            plain.then(|| name.to_string())
        })
        .collect();
    names.filter(|n| n.len() <= TK_MAX_COMMS as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_pattern_is_an_exact_set() {
        let m = Matcher::new("^ffmpeg$|^ffprobe$").expect("valid");
        assert_eq!(
            m.exact_comms(),
            Some(&["ffmpeg".to_string(), "ffprobe".to_string()][..])
        );
        assert!(m.matches("ffmpeg", "/usr/bin/ffmpeg"));
        assert!(!m.matches("ffmpeg2", ""));
    }

    #[test]
    fn other_patterns_are_left_to_user_space() {
        for p in [
            "ffmpeg",
            "^ff.*$",
            "^ffmpeg$|x264",
            "^averyveryverylongname$",
            "^a.b$",
        ] {
            assert_eq!(Matcher::new(p).expect("valid").exact_comms(), None, "{p}");
        }
        let m = Matcher::new("^averyveryverylongname$").expect("valid");
        assert!(m.matches("averyveryverylo", "/opt/averyveryverylongname"));
    }

    #[test]
    fn bad_regex_is_a_clear_error() {
        let e = Matcher::new("(").expect_err("invalid");
        assert!(format!("{e:#}").contains("--match"));
    }
}
