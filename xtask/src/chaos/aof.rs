//! What Redis accepted, read back from its append-only file: with
//! `appendfsync always` every write the server applied is on disk before
//! the client hears of it, in order, a script's writes wrapped in
//! MULTI/EXEC. A completion the server refused (the task was no longer in
//! flight there) writes nothing, so the file tells accepted completions from
//! refused ones.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};
use tracekit_proto::keys;

/// The writes of the run that matter to the invariants.
#[derive(Debug, Default)]
pub struct Accepted {
    /// Raw task → the nodes whose completion of it was accepted, in order.
    pub completions: BTreeMap<String, Vec<String>>,
    /// Raw tasks ever pushed to the pending list (submissions and hand-backs).
    pub submitted: BTreeSet<String>,
    /// Transactions read.
    pub transactions: usize,
}

/// Reads the append-only directory `dir` (Redis 7's manifest and its
/// incremental files). Fails if the file was rewritten (the history before
/// the rewrite is gone) or cannot be parsed.
pub fn read(dir: &Path, pending_key: &str) -> Result<Accepted> {
    let manifest_path = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "manifest"))
        .with_context(|| format!("no AOF manifest in {}", dir.display()))?;
    let manifest = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("reading {}", manifest_path.display()))?;
    let mut incr = Vec::new();
    for line in manifest.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let field = |k: &str| {
            f.iter()
                .position(|x| *x == k)
                .and_then(|i| f.get(i + 1))
                .copied()
        };
        let (Some(name), Some(seq), Some(kind)) = (field("file"), field("seq"), field("type"))
        else {
            bail!("unexpected manifest line `{line}`");
        };
        let seq: u64 = seq
            .parse()
            .with_context(|| format!("manifest line `{line}`"))?;
        match kind {
            "b" if seq == 1 => {}
            "i" => incr.push((seq, name.to_string())),
            _ => bail!(
                "the append-only file was rewritten (`{line}`): the history of the run is incomplete"
            ),
        }
    }
    incr.sort();
    let mut out = Accepted::default();
    let mut tx: Vec<Vec<String>> = Vec::new();
    let mut in_multi = false;
    for (_, name) in incr {
        let path = dir.join(&name);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut pos = 0;
        while pos < bytes.len() {
            let Some((cmd, next)) = command(&bytes, pos)
                .with_context(|| format!("parsing {} at byte {pos}", path.display()))?
            else {
                // A server killed mid-write leaves a truncated last command,
                // which it drops on load too.
                break;
            };
            pos = next;
            let verb = cmd
                .first()
                .map(|v| v.to_ascii_uppercase())
                .unwrap_or_default();
            match verb.as_str() {
                "MULTI" => {
                    in_multi = true;
                    tx.clear();
                }
                "EXEC" => {
                    in_multi = false;
                    out.apply(&tx, pending_key);
                    tx.clear();
                }
                _ if in_multi => tx.push(cmd),
                _ => out.apply(&[cmd], pending_key),
            }
        }
    }
    Ok(out)
}

impl Accepted {
    /// One transaction: a task removed from a node's in-flight list and put
    /// nowhere else (not back in a queue, not dead-lettered) is a completion.
    fn apply(&mut self, tx: &[Vec<String>], pending_key: &str) {
        self.transactions += 1;
        let inflight = keys::inflight("");
        let mut pushed: BTreeSet<&str> = BTreeSet::new();
        let mut dead = false;
        for c in tx {
            let verb = c[0].to_ascii_uppercase();
            if matches!(verb.as_str(), "LPUSH" | "RPUSH" | "LPUSHX" | "RPUSHX") && c.len() > 2 {
                if c[1] == keys::DEAD {
                    dead = true;
                }
                for raw in &c[2..] {
                    pushed.insert(raw);
                    if c[1] == pending_key {
                        self.submitted.insert(raw.clone());
                    }
                }
            }
        }
        if dead {
            return;
        }
        // A completion that came after its node was declared dead takes the
        // task from pending or a node's queue, and counts it done.
        let counted_done = tx.iter().any(|c| {
            c[0].eq_ignore_ascii_case("HINCRBY")
                && c.len() >= 3
                && c[1] == keys::STATS_RUN
                && c[2] == "done"
        });
        let queue = keys::queue("");
        for c in tx {
            if !(c[0].eq_ignore_ascii_case("LREM") && c.len() == 4)
                || pushed.contains(c[3].as_str())
            {
                continue;
            }
            let node = match c[1].strip_prefix(&inflight) {
                Some(node) => node.to_string(),
                None if counted_done && c[1] == pending_key => "(late, from pending)".into(),
                None if counted_done && c[1].starts_with(&queue) => {
                    format!("(late, from {})", c[1])
                }
                None => continue,
            };
            self.completions.entry(c[3].clone()).or_default().push(node);
        }
    }
}

/// One RESP array of bulk strings at `pos`: the command and the position
/// after it, or None if the file ends inside it.
fn command(b: &[u8], pos: usize) -> Result<Option<(Vec<String>, usize)>> {
    let Some((n, mut pos)) = header(b, pos, b'*')? else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let Some((len, start)) = header(b, pos, b'$')? else {
            return Ok(None);
        };
        let end = start + len;
        if end + 2 > b.len() {
            return Ok(None);
        }
        out.push(String::from_utf8_lossy(&b[start..end]).into_owned());
        pos = end + 2;
    }
    Ok(Some((out, pos)))
}

/// `<tag><number>\r\n` at `pos`: the number and the position after it.
fn header(b: &[u8], pos: usize, tag: u8) -> Result<Option<(usize, usize)>> {
    if pos >= b.len() {
        return Ok(None);
    }
    if b[pos] != tag {
        bail!("expected `{}`", tag as char);
    }
    let Some(nl) = b[pos..].windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&b[pos + 1..pos + nl]).context("a length")?;
    let n = text.parse().with_context(|| format!("a length `{text}`"))?;
    Ok(Some((n, pos + nl + 2)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(cmds: &[&[&str]]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in cmds {
            out.extend(format!("*{}\r\n", c.len()).bytes());
            for a in *c {
                out.extend(format!("${}\r\n{a}\r\n", a.len()).bytes());
            }
        }
        out
    }

    #[test]
    fn completions_are_removals_from_in_flight_put_nowhere_else() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("appendonly.aof.manifest"),
            "file appendonly.aof.1.base.rdb seq 1 type b\nfile appendonly.aof.1.incr.aof seq 1 type i\n",
        )
        .unwrap();
        let mut bytes = resp(&[
            &["SELECT", "0"],
            &["MULTI"],
            &["RPUSH", "q:pending", "A", "B"],
            &["EXEC"],
            // B handed back: removed from in flight and pushed to pending.
            &["MULTI"],
            &["LREM", "inflight:n1", "1", "B"],
            &["LPUSH", "q:pending", "B"],
            &["EXEC"],
            // A completed on n1, B dead-lettered on n2, B completed on n2.
            &["MULTI"],
            &["LREM", "inflight:n1", "1", "A"],
            &["SET", "cap:n1", "2"],
            &["EXEC"],
            &["MULTI"],
            &["LREM", "inflight:n2", "1", "B"],
            &["RPUSH", "q:dead", "{}"],
            &["EXEC"],
            &["MULTI"],
            &["LREM", "inflight:n2", "1", "B"],
            &["EXEC"],
            // C completed late: taken from pending, counted done.
            &["MULTI"],
            &["RPUSH", "q:pending", "C"],
            &["EXEC"],
            &["MULTI"],
            &["LREM", "q:pending", "1", "C"],
            &["HINCRBY", "stats:run", "done", "1"],
            &["EXEC"],
        ]);
        // A truncated last command is ignored.
        bytes.extend(b"*3\r\n$4\r\nLREM");
        std::fs::write(dir.path().join("appendonly.aof.1.incr.aof"), bytes).unwrap();
        let got = read(dir.path(), "q:pending").unwrap();
        assert_eq!(got.completions["A"], vec!["n1"]);
        assert_eq!(got.completions["B"], vec!["n2"]);
        assert_eq!(got.completions["C"], vec!["(late, from pending)"]);
        assert_eq!(got.submitted.len(), 3);
    }

    #[test]
    fn a_rewritten_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("appendonly.aof.manifest"),
            "file appendonly.aof.2.base.rdb seq 2 type b\n",
        )
        .unwrap();
        assert!(read(dir.path(), "q:pending").is_err());
    }
}
