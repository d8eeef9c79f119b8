//! The invariants a run must keep whatever the faults, each checked on
//! evidence the run left behind, and the table that shows them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tracekit_proto::{DeadLetter, Snapshot, Task};

use super::aof::Accepted;
use super::sampler::Samples;
use super::schedule::{Fault, Target};

/// One line of the table.
pub struct Row {
    pub invariant: &'static str,
    pub evidence: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// Everything the checks read.
pub struct Evidence<'a> {
    /// Tasks dispatched (seq 0..tasks).
    pub tasks: u64,
    /// The run directory (outputs are named relative to it).
    pub dir: &'a Path,
    pub outputs: &'a Path,
    /// The agents' node directories (node → dir).
    pub node_dirs: &'a [(String, PathBuf)],
    /// What Redis accepted (or why the file could not be read).
    pub accepted: &'a anyhow::Result<Accepted>,
    /// Redis after the run settled, before the agents stopped.
    pub end: &'a anyhow::Result<(Snapshot, Vec<DeadLetter>)>,
    pub samples: &'a Samples,
    /// The run's ffmpeg processes left once every agent had stopped.
    pub left_running: &'a [u32],
    /// The faults injected, and the start of the schedule (epoch ms).
    pub faults: &'a [Fault],
    pub t0_ms: i64,
}

/// At most a few items of a list, then how many more.
fn some<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let all: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    const SHOWN: usize = 8;
    let mut s = all
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if all.len() > SHOWN {
        s.push_str(&format!(", … ({} in all)", all.len()));
    }
    s
}

fn seq_of(raw: &str) -> Option<u64> {
    Task::parse(raw).ok()?.seq
}

/// A successful ffmpeg run of a task, as its node recorded it.
pub struct Run {
    pub node: String,
    /// Epoch ms.
    pub start_ms: i64,
    pub end_ms: i64,
}

/// The successful ffmpeg runs recorded per task (seq → runs), the failed
/// runs, and the files that could not be read.
fn runs(node_dirs: &[(String, PathBuf)]) -> (BTreeMap<u64, Vec<Run>>, usize, Vec<String>) {
    let mut ok: BTreeMap<u64, Vec<Run>> = BTreeMap::new();
    let mut failed = 0;
    let mut problems = Vec::new();
    for (node, dir) in node_dirs {
        let path = dir.join("CTS/invocations.jsonl");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                problems.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        // Runs whose completion was refused (their node had been declared
        // dead, another ran the task): recorded, and left out as the
        // trace's readers leave them out.
        let withdrawn: std::collections::HashSet<String> =
            std::fs::read_to_string(dir.join("CTS/withdrawn.jsonl"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter_map(|v| v["trace_id"].as_str().map(str::to_string))
                .collect();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                problems.push(format!("{}: unreadable line", path.display()));
                continue;
            };
            if v["trace_id"]
                .as_str()
                .is_some_and(|t| withdrawn.contains(t))
            {
                continue;
            }
            // Task lines carry the task's seq; other processes' do not.
            let Some(seq) = v["seq"].as_u64() else {
                continue;
            };
            if v["exit_code"] == 0 {
                ok.entry(seq).or_default().push(Run {
                    node: node.clone(),
                    start_ms: v["ts_start"].as_i64().unwrap_or(0),
                    end_ms: v["ts_end"].as_i64().unwrap_or(0),
                });
            } else {
                failed += 1;
            }
        }
    }
    for r in ok.values_mut() {
        r.sort_by_key(|r| r.start_ms);
    }
    (ok, failed, problems)
}

/// The faults that may explain a second run: those on the first run's node
/// or on Redis between the end of the first run and the start of the next.
fn suspects(runs: &[Run], e: &Evidence) -> String {
    let mut out = Vec::new();
    let t = |ms: i64| (ms - e.t0_ms) as f64 / 1000.0;
    for w in runs.windows(2) {
        let (from, to) = (t(w[0].end_ms) - 1.0, t(w[1].start_ms));
        for f in e.faults {
            let (a, b) = (f.at.as_secs_f64(), (f.at + f.down).as_secs_f64());
            let agent = e.node_dirs.iter().position(|(n, _)| *n == w[0].node);
            let on_node = f.target == Target::Redis || agent.map(Target::Agent) == Some(f.target);
            if on_node && a <= to && b >= from {
                out.push(format!("{} {} at {a:.1}s", f.kind.name(), f.target));
            }
        }
    }
    if out.is_empty() {
        "no fault on that node or Redis in between".into()
    } else {
        out.join(", ")
    }
}

fn runs_detail(map: &BTreeMap<u64, Vec<Run>>, e: &Evidence) -> (bool, String) {
    let nodes: BTreeMap<u64, Vec<String>> = map
        .iter()
        .map(|(s, r)| (*s, r.iter().map(|r| r.node.clone()).collect()))
        .collect();
    let (missing, _) = count_table(&nodes, e.tasks);
    let once = nodes.values().filter(|n| n.len() == 1).count();
    let mut d = format!(
        "{once}/{} tasks with exactly one successful ffmpeg run",
        e.tasks
    );
    if !missing.is_empty() {
        d.push_str(&format!(
            "; none: {}",
            some(missing.iter().map(|s| format!("#{s}")))
        ));
    }
    let t = |ms: i64| (ms - e.t0_ms) as f64 / 1000.0;
    let twice: Vec<String> = map
        .iter()
        .filter(|(_, r)| r.len() > 1)
        .map(|(s, r)| {
            let runs: Vec<String> = r
                .iter()
                .map(|r| format!("{} {:.1}–{:.1}s", r.node, t(r.start_ms), t(r.end_ms)))
                .collect();
            format!("#{s}: {} [{}]", runs.join(", "), suspects(r, e))
        })
        .collect();
    if !twice.is_empty() {
        d.push_str(&format!(
            "; {} run more than once: {}",
            twice.len(),
            twice.join("; ")
        ));
    }
    (missing.is_empty() && twice.is_empty(), d)
}

/// Whether ffprobe reads a video stream in `path`.
fn probes(path: &Path) -> bool {
    Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .args(["stream=codec_name", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
}

fn count_table(map: &BTreeMap<u64, Vec<String>>, tasks: u64) -> (Vec<u64>, Vec<String>) {
    let missing: Vec<u64> = (0..tasks).filter(|s| !map.contains_key(s)).collect();
    let twice: Vec<String> = map
        .iter()
        .filter(|(_, n)| n.len() > 1)
        .map(|(s, n)| format!("#{s}×{} ({})", n.len(), n.join("+")))
        .collect();
    (missing, twice)
}

fn exactly_once(map: &BTreeMap<u64, Vec<String>>, tasks: u64, what: &str) -> (bool, String) {
    let (missing, twice) = count_table(map, tasks);
    let once = (0..tasks)
        .filter(|s| map.get(s).is_some_and(|n| n.len() == 1))
        .count();
    let mut d = format!("{once}/{tasks} tasks with exactly one {what}");
    if !missing.is_empty() {
        d.push_str(&format!(
            "; none: {}",
            some(missing.iter().map(|s| format!("#{s}")))
        ));
    }
    if !twice.is_empty() {
        d.push_str(&format!("; more than one: {}", some(twice.iter())));
    }
    (missing.is_empty() && twice.is_empty(), d)
}

pub fn check(e: &Evidence) -> Vec<Row> {
    let mut rows = Vec::new();

    // Accepted completions, from the append-only file.
    match e.accepted {
        Ok(acc) => {
            let mut by_seq: BTreeMap<u64, Vec<String>> = BTreeMap::new();
            let mut unknown = 0;
            for (raw, nodes) in &acc.completions {
                match seq_of(raw) {
                    Some(s) => by_seq.entry(s).or_default().extend(nodes.iter().cloned()),
                    None => unknown += 1,
                }
            }
            let seqs: BTreeSet<Option<u64>> = acc.submitted.iter().map(|r| seq_of(r)).collect();
            let submitted_ok = acc.submitted.len() as u64 == e.tasks
                && (0..e.tasks).all(|s| seqs.contains(&Some(s)));
            rows.push(Row {
                invariant: "every task submitted once",
                evidence: "Redis AOF: distinct tasks pushed to q:pending",
                ok: submitted_ok,
                detail: format!(
                    "{} distinct tasks for {} dispatched",
                    acc.submitted.len(),
                    e.tasks
                ),
            });
            let (ok, mut detail) = exactly_once(&by_seq, e.tasks, "accepted completion");
            if unknown > 0 {
                detail.push_str(&format!("; {unknown} completions of tasks without a seq"));
            }
            rows.push(Row {
                invariant: "one accepted completion per task",
                evidence: "Redis AOF: LREM from inflight:<node>, not re-queued",
                ok: ok && unknown == 0,
                detail,
            });
        }
        Err(err) => {
            for invariant in [
                "every task submitted once",
                "one accepted completion per task",
            ] {
                rows.push(Row {
                    invariant,
                    evidence: "Redis AOF",
                    ok: false,
                    detail: format!("no evidence: {err:#}"),
                });
            }
        }
    }

    // ffmpeg runs, from the agents' traces.
    let (ok_runs, failed, problems) = runs(e.node_dirs);
    let (ok, mut detail) = runs_detail(&ok_runs, e);
    detail.push_str(&format!("; {failed} failed runs"));
    if !problems.is_empty() {
        detail.push_str(&format!("; unreadable: {}", some(problems.iter())));
    }
    rows.push(Row {
        invariant: "one successful ffmpeg run per task",
        evidence: "invocations.jsonl of every node: exit 0 lines by seq, less the runs in withdrawn.jsonl (refused completions)",
        ok: ok && problems.is_empty(),
        detail,
    });

    // Outputs, from the outputs directory.
    rows.push(outputs_row(e));

    // Redis at the end.
    match e.end {
        Ok((snap, dead)) => {
            let busy: Vec<String> = snap
                .nodes
                .iter()
                .filter(|n| n.queued > 0 || n.inflight > 0)
                .map(|n| format!("{}: {} queued, {} in flight", n.name, n.queued, n.inflight))
                .collect();
            let mut detail = format!("pending {}, dead-lettered {}", snap.pending, dead.len());
            if !busy.is_empty() {
                detail.push_str(&format!("; {}", busy.join("; ")));
            }
            if !dead.is_empty() {
                detail.push_str(&format!(
                    "; dead: {}",
                    some(dead.iter().map(|d| format!(
                        "#{} ({})",
                        seq_of(&d.task).map(|s| s.to_string()).unwrap_or("?".into()),
                        d.reason
                    )))
                ));
            }
            rows.push(Row {
                invariant: "no task pending, queued, in flight or dead",
                evidence: "Redis at the end: q:pending, q:<node>, inflight:<node>, q:dead",
                ok: busy.is_empty() && snap.pending == 0 && dead.is_empty(),
                detail,
            });
            let off: Vec<String> = snap
                .nodes
                .iter()
                .filter(|n| n.cap != n.cap_total || n.run_count != 0)
                .map(|n| {
                    format!(
                        "{}: cap {}/{} run_count {}",
                        n.name, n.cap, n.cap_total, n.run_count
                    )
                })
                .collect();
            rows.push(Row {
                invariant: "cap == cap_total, run_count == 0 on every node",
                evidence: "Redis at the end: cap:, cap_total:, run_count:<node>",
                ok: off.is_empty() && !snap.nodes.is_empty(),
                detail: if off.is_empty() {
                    format!("{} nodes balanced", snap.nodes.len())
                } else {
                    off.join("; ")
                },
            });
        }
        Err(err) => {
            for invariant in [
                "no task pending, queued, in flight or dead",
                "cap == cap_total, run_count == 0 on every node",
            ] {
                rows.push(Row {
                    invariant,
                    evidence: "Redis at the end",
                    ok: false,
                    detail: format!("no evidence: {err:#}"),
                });
            }
        }
    }

    let s = e.samples;
    let mins = some(s.min_cap.iter().map(|(n, (c, _))| format!("{n} {c}")));
    rows.push(Row {
        invariant: "cap never below 0",
        evidence: "Redis sampled every 250 ms during the run",
        ok: s.negative.is_empty() && s.taken > 0,
        detail: if s.negative.is_empty() {
            format!(
                "{} samples ({} while Redis was down); lowest cap: {mins}",
                s.taken, s.failed
            )
        } else {
            format!(
                "{} of {} samples below 0: {}",
                s.negative.len(),
                s.taken,
                some(
                    s.negative
                        .iter()
                        .map(|(t, n, c)| format!("{n}={c} at {t:.1}s"))
                )
            )
        },
    });
    let mut detail = format!(
        "{} outlived their agent during the run, {} left after the agents stopped",
        s.strays.len(),
        e.left_running.len()
    );
    if !s.strays.is_empty() {
        detail.push_str(&format!(
            ": {}",
            some(
                s.strays
                    .iter()
                    .map(|(pid, (t, pp))| format!("pid {pid} (parent {pp}) at {t:.1}s"))
            )
        ));
    }
    rows.push(Row {
        invariant: "no stray ffmpeg",
        evidence: "/proc: ffmpeg in outputs/ whose agent is gone",
        ok: s.strays.is_empty() && e.left_running.is_empty(),
        detail,
    });
    rows
}

fn outputs_row(e: &Evidence) -> Row {
    let expected: BTreeMap<u64, PathBuf> = match e.accepted {
        Ok(acc) => acc
            .submitted
            .iter()
            .filter_map(|raw| {
                let t = Task::parse(raw).ok()?;
                Some((t.seq?, e.dir.join(&t.output)))
            })
            .collect(),
        Err(_) => BTreeMap::new(),
    };
    if expected.is_empty() {
        return Row {
            invariant: "one output per task",
            evidence: "outputs/: each task's file, read by ffprobe",
            ok: false,
            detail: "no task list (the Redis AOF could not be read)".into(),
        };
    }
    let mut bad = Vec::new();
    for (seq, path) in &expected {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if size == 0 {
            bad.push(format!("#{seq} missing"));
        } else if !probes(path) {
            bad.push(format!("#{seq} unreadable"));
        }
    }
    let names: BTreeSet<PathBuf> = expected.values().cloned().collect();
    let extra: Vec<String> = std::fs::read_dir(e.outputs)
        .map(|d| {
            d.filter_map(|f| f.ok())
                .map(|f| f.path())
                .filter(|p| p.is_file() && !names.contains(p))
                .map(|p| {
                    p.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default();
    let mut detail = format!(
        "{}/{} outputs present and readable",
        expected.len() - bad.len(),
        expected.len()
    );
    if !bad.is_empty() {
        detail.push_str(&format!("; {}", some(bad.iter())));
    }
    if !extra.is_empty() {
        detail.push_str(&format!("; other files: {}", some(extra.iter())));
    }
    Row {
        invariant: "one output per task",
        evidence: "outputs/: each task's file, read by ffprobe",
        ok: bad.is_empty() && extra.is_empty(),
        detail,
    }
}

/// The table, one line per invariant.
pub fn print(rows: &[Row]) {
    let w = rows.iter().map(|r| r.invariant.len()).max().unwrap_or(0);
    let we = rows.iter().map(|r| r.evidence.len()).max().unwrap_or(0);
    println!(
        "\n| {:<w$} | result | {:<we$} | detail",
        "invariant", "evidence"
    );
    println!(
        "|{}|--------|{}|-------",
        "-".repeat(w + 2),
        "-".repeat(we + 2)
    );
    for r in rows {
        println!(
            "| {:<w$} | {:<6} | {:<we$} | {}",
            r.invariant,
            if r.ok { "ok" } else { "FAIL" },
            r.evidence,
            r.detail
        );
    }
}
