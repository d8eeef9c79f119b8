//! The report journal: every report is on disk (fsync'd) before it is sent,
//! and marked delivered once Redis applied it. An agent that stops while
//! Redis is down, or crashes, leaves the undelivered ones here, and the next
//! agent of the node replays them before it registers (registering would
//! hand a finished task's in-flight entry back to pending: a second run).

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::link::Report;

/// One line of the journal.
#[derive(Debug, Serialize, Deserialize)]
enum Line {
    Report { id: u64, report: Report },
    Delivered { id: u64 },
}

/// The journal of one node id on this host.
pub struct Journal {
    path: PathBuf,
    file: File,
    next: u64,
    open: BTreeSet<u64>,
}

impl Journal {
    /// Opens (or creates) the journal at `path`; returns it and the reports
    /// a previous agent did not deliver, oldest first.
    pub fn open(path: &Path) -> Result<(Journal, Vec<(u64, Report)>)> {
        let mut pending: Vec<(u64, Report)> = Vec::new();
        let mut next = 0;
        match File::open(path) {
            Ok(f) => {
                for (n, line) in BufReader::new(f).lines().enumerate() {
                    let line =
                        line.with_context(|| format!("reading {} line {}", path.display(), n + 1))?;
                    match serde_json::from_str::<Line>(&line) {
                        Ok(Line::Report { id, report }) => {
                            next = next.max(id + 1);
                            pending.push((id, report));
                        }
                        Ok(Line::Delivered { id }) => pending.retain(|(i, _)| *i != id),
                        // A line cut by a crash while it was written: its
                        // report was never sent.
                        Err(e) => tracing::warn!(
                            "{} line {}: not a journal line ({e}); skipped",
                            path.display(),
                            n + 1
                        ),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let open = pending.iter().map(|(id, _)| *id).collect();
        let mut journal = Journal {
            path: path.to_path_buf(),
            file,
            next,
            open,
        };
        journal.compact_if_done()?;
        Ok((journal, pending))
    }

    /// Writes `report` and syncs it to disk; returns its id.
    pub fn record(&mut self, report: &Report) -> Result<u64> {
        let id = self.next;
        self.next += 1;
        self.write(&Line::Report {
            id,
            report: report.clone(),
        })?;
        self.file
            .sync_data()
            .with_context(|| format!("syncing {}", self.path.display()))?;
        self.open.insert(id);
        Ok(id)
    }

    /// Report `id` was applied by Redis (or refused for good). Not synced: a
    /// delivery forgotten in a crash is sent again, and every report is
    /// safe to repeat.
    pub fn delivered(&mut self, id: u64) -> Result<()> {
        self.write(&Line::Delivered { id })?;
        self.open.remove(&id);
        self.compact_if_done()
    }

    /// Reports written and not delivered.
    pub fn undelivered(&self) -> usize {
        self.open.len()
    }

    fn write(&mut self, line: &Line) -> Result<()> {
        let mut s = serde_json::to_string(line).context("encoding a journal line")?;
        s.push('\n');
        self.file
            .write_all(s.as_bytes())
            .with_context(|| format!("writing {}", self.path.display()))
    }

    /// With nothing undelivered, the file starts over (it never grows with
    /// the number of tasks).
    fn compact_if_done(&mut self) -> Result<()> {
        if self.open.is_empty() {
            self.file
                .set_len(0)
                .with_context(|| format!("truncating {}", self.path.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn complete(raw: &str) -> Report {
        Report::Complete {
            raw: raw.into(),
            lease: String::new(),
            trace_id: None,
            output: None,
            withdrawn: None,
        }
    }

    #[test]
    fn undelivered_reports_survive_a_restart_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n1.journal");
        let (mut j, old) = Journal::open(&path).unwrap();
        assert!(old.is_empty());
        let a = j.record(&complete("a")).unwrap();
        let b = j.record(&complete("b")).unwrap();
        let c = j.record(&complete("c")).unwrap();
        j.delivered(b).unwrap();
        assert_eq!(j.undelivered(), 2);
        drop(j);
        // A crash cut the last line half-way.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"Report\":{\"id\":9,\"rep").unwrap();
        drop(f);
        let (mut j, old) = Journal::open(&path).unwrap();
        let ids: Vec<u64> = old.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, vec![a, c]);
        assert!(matches!(&old[0].1, Report::Complete { raw, .. } if raw == "a"));
        // New ids never repeat old ones.
        assert!(j.record(&complete("d")).unwrap() > c);
    }

    #[test]
    fn the_file_starts_over_when_everything_is_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n1.journal");
        let (mut j, _) = Journal::open(&path).unwrap();
        for i in 0..100 {
            let id = j.record(&complete(&format!("task {i}"))).unwrap();
            j.delivered(id).unwrap();
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }
}
