//! A task's life on this node: spawned in its cgroup as the run-as user,
//! traced, and finished into its invocation line and its report.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;
use tracekit_proto::Task;
use tracekit_trace::{Invocation, TaskFields};

use super::Worker;
use super::args::binding_name;
use super::cgroup::{Applied, TaskGroup};
use super::command::{self, Plan};
use super::cores::cpu_list;
use super::link::{Report, StagedOutput, withdrawn_file};
use super::runas;
use crate::clock;
use crate::session::Session;
use crate::table::Annotation;

/// How long a killed task is waited for before its output is removed.
const KILL_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// One running task.
pub struct Job {
    pub(super) raw: String,
    /// The lease token of the registration that took it.
    pub(super) lease: String,
    pub(super) task: Task,
    pub(super) plan: Plan,
    /// Where ffmpeg writes (beside the output, under a name of this run).
    pub(super) staged: PathBuf,
    pub(super) trace_id: String,
    pub(super) child: Option<tokio::process::Child>,
    pub(super) pid: u32,
    pub(super) group: Option<TaskGroup>,
    pub(super) cores: Vec<u32>,
    pub(super) started_ms: i64,
    pub(super) exited: Option<(std::process::ExitStatus, i64)>,
    pub(super) invocation: Option<Invocation>,
    pub(super) bytes_in: u64,
    /// Its binding as read back from its cgroup while it ran.
    pub(super) applied: Option<Applied>,
    /// Why part of its binding was not applied while it ran.
    pub(super) binding_error: Option<String>,
    /// The end of its stderr, once ffmpeg closed it, and where the kept
    /// part of it is: what its failure reason quotes.
    pub(super) stderr_tail: Option<(oneshot::Receiver<Vec<u8>>, PathBuf)>,
}

/// Longest failure reason a task reports (it ends in Redis, in its dead
/// letter, and on the operator's screen).
pub const REASON_LIMIT: usize = 1024;

/// Bytes of the end of a task's stderr kept for its failure reason.
const TAIL_KEEP: usize = 4096;

impl Worker {
    pub(super) fn spawn(
        &mut self,
        raw: String,
        task: Task,
        mut plan: Plan,
        cores: Vec<u32>,
        session: &mut Session,
    ) -> Result<()> {
        self.seq += 1;
        // A task its user cannot read or write for fails every attempt the
        // same way: dead-letter it at once, with why.
        if let Some(user) = &self.user
            && let Err(why) = command::check_access(&plan, user)
        {
            self.allocator.release(&cores);
            self.dead_letter(raw, why.0);
            return Ok(());
        }
        // Unique within a run: the agent's start time tells its restarts
        // apart, the counter its tasks (a dispatcher's seq can repeat).
        let trace_id = task.trace_id.clone().unwrap_or_else(|| {
            format!(
                "{}-{}-{}-{}",
                self.node,
                task.seq
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "x".into()),
                self.started_ms,
                self.seq
            )
        });
        // The output gets its name only when the completion counts: a run
        // that does not (its node was declared dead meanwhile) leaves nothing.
        let staged = staged_path(&plan.output, &self.node, &trace_id);
        plan.write_to(&staged);
        let group = match &self.cgroups {
            Some(cg) => Some(
                self.bind(cg, &trace_id, &plan, &cores)
                    .context("CPU binding failed")?,
            ),
            None => None,
        };
        // Whatever fails from here leaves no group (and no process) behind.
        let spawned =
            self.start_in_group(&plan, group.as_ref(), &trace_id, task.ts_enqueue, session);
        let (mut child, pid, applied) = match spawned {
            Ok(started) => started,
            Err(e) => {
                if let (Some(cg), Some(g)) = (&self.cgroups, &group) {
                    let _ = cg.destroy(g);
                }
                return Err(e);
            }
        };
        let started_ms = clock::epoch_ms();
        let bytes_in = std::fs::metadata(&plan.input).map(|m| m.len()).unwrap_or(0);
        let stderr_tail = child.stderr.take().map(|stderr| {
            let path = self
                .stderr_dir
                .join(format!("{}.log", group_name(&trace_id)));
            let (tx, rx) = oneshot::channel();
            tokio::spawn(keep_stderr(
                stderr,
                path.clone(),
                self.args.stderr_limit,
                tx,
            ));
            (rx, path)
        });
        tracing::info!(
            %trace_id,
            pid,
            units = plan.units,
            cores = %cpu_list(&cores),
            input = %tracekit_proto::task::quote(&plan.input.to_string_lossy()),
            "task started"
        );
        self.jobs.insert(
            pid,
            Job {
                raw,
                lease: self.lease.clone(),
                task,
                plan,
                staged,
                trace_id,
                child: Some(child),
                pid,
                group,
                cores,
                started_ms,
                exited: None,
                invocation: None,
                bytes_in,
                applied,
                binding_error: None,
                stderr_tail,
            },
        );
        self.rebalance();
        Ok(())
    }

    /// Start ffmpeg in `group` (it joins before exec) as the run-as user,
    /// annotated for the tracer at once, and read its binding back.
    fn start_in_group(
        &self,
        plan: &Plan,
        group: Option<&TaskGroup>,
        trace_id: &str,
        ts_enqueue: Option<i64>,
        session: &mut Session,
    ) -> Result<(tokio::process::Child, u32, Option<Applied>)> {
        let procs = match (&self.cgroups, group) {
            (Some(cg), Some(g)) => runas::open_procs_files(&cg.procs_files(g))
                .context("CPU binding failed: opening the group's cgroup.procs")?,
            _ => Vec::new(),
        };
        let mut cmd = std::process::Command::new(&plan.argv[0]);
        cmd.args(&plan.argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .current_dir(&self.limits.outputs);
        runas::confine(&mut cmd, &procs, self.user.as_ref());
        let mut child =
            tokio::process::Command::from(cmd)
                .spawn()
                .with_context(|| match group {
                    // The child joins its group before exec: a failure there is
                    // a binding that failed.
                    Some(g) => format!("CPU binding failed: starting ffmpeg in cgroup {}", g.name),
                    None => "starting ffmpeg".to_string(),
                })?;
        drop(procs);
        let Some(pid) = child.id() else {
            let _ = child.start_kill();
            bail!("ffmpeg ended before its pid was known");
        };
        // Before anything can fail: the tracer has seen the exec, and a
        // killed task must not become a line of its own.
        session.table.annotate(
            pid,
            Annotation {
                trace_id: trace_id.to_string(),
                ts_enqueue,
            },
        );
        let applied = match (&self.cgroups, group) {
            (Some(cg), Some(g)) => match cg.applied(g, pid) {
                Ok(a) if a.member => Some(a),
                result => {
                    let why = match result {
                        Ok(a) => format!("the task's process is not in {}", a.cgroup),
                        Err(e) => format!("{e:#}"),
                    };
                    let _ = child.start_kill();
                    bail!("CPU binding failed: {why}");
                }
            },
            _ => None,
        };
        Ok((child, pid, applied))
    }

    /// SIGINT/SIGTERM: stop taking tasks; hand back what has not started;
    /// with --drain let running tasks finish, else stop and hand them back.
    pub(super) fn stop(
        &mut self,
        stop: &tokio::sync::watch::Sender<bool>,
        session: &mut Session,
    ) -> Result<()> {
        let _ = stop.send(true);
        // Tasks whose ffmpeg has ended are done, whatever their trace: they
        // are finished and reported, not run again.
        self.finish_ended(session)?;
        let waiting: Vec<String> = self.waiting.drain(..).map(|(raw, _, _)| raw).collect();
        for raw in waiting {
            self.report(Report::Requeue {
                raw,
                lease: self.lease.clone(),
                failed: false,
                reason: None,
            });
        }
        if self.args.drain {
            tracing::info!(
                running = self.jobs.len(),
                "draining: finishing running tasks"
            );
            return Ok(());
        }
        for job in self.kill_all() {
            tracing::info!(trace_id = %job.trace_id, "stopped; handed back");
            self.report(Report::Requeue {
                raw: job.raw,
                lease: job.lease,
                failed: false,
                reason: None,
            });
        }
        Ok(())
    }

    /// Finish every task whose ffmpeg has ended, whatever its trace (the
    /// kernel's record is looked up once more): they are done, not run again.
    fn finish_ended(&mut self, session: &mut Session) -> Result<()> {
        self.reap()?;
        let ended: Vec<u32> = self
            .jobs
            .values()
            .filter(|j| j.exited.is_some())
            .map(|j| j.pid)
            .collect();
        if !ended.is_empty() {
            let done = session.recover_exits(&ended)?;
            self.on_traced(done);
            for pid in ended {
                if let Some(job) = self.jobs.remove(&pid) {
                    self.finish(job, session)?;
                }
            }
        }
        Ok(())
    }

    /// This node's registration is over: everything it ran or held was
    /// handed to others, so it stops every task (none is recorded: they run
    /// again elsewhere), reports nothing for them, and forgets what waited.
    pub(super) fn fence(&mut self, session: &mut Session) -> Result<()> {
        // What ended before is finished as usual; its completion may still
        // count (nobody took the task again yet).
        self.finish_ended(session)?;
        let dropped = self.waiting.len();
        self.waiting.clear();
        let stopped = self.kill_all();
        tracing::warn!(
            stopped = stopped.len(),
            not_started = dropped,
            "fenced: stopped every task of the ended registration"
        );
        Ok(())
    }

    /// Kill every running task, remove its group and staged output; the
    /// jobs are returned (no invocation line is written for them: their
    /// annotations stay, so the tracer's records of them are dropped).
    fn kill_all(&mut self) -> Vec<Job> {
        let pids: Vec<u32> = self.jobs.keys().copied().collect();
        let mut out = Vec::new();
        for pid in pids {
            let Some(mut job) = self.jobs.remove(&pid) else {
                continue;
            };
            if let Some(child) = job.child.as_mut() {
                let _ = child.start_kill();
                // Reaped here (a moment at most: SIGKILL) so that nothing
                // writes the staged output once it is removed.
                let until = std::time::Instant::now() + KILL_WAIT;
                while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < until {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
            if let (Some(cg), Some(g)) = (&self.cgroups, &job.group) {
                let _ = cg.destroy(g);
            }
            self.allocator.release(&job.cores);
            staged_output(&job).discard();
            out.push(job);
        }
        out
    }

    pub(super) fn finish(&mut self, job: Job, session: &mut Session) -> Result<()> {
        let (status, exited_ms) = job.exited.context("finishing a running task")?;
        let bytes_out = std::fs::metadata(&job.staged).map(|m| m.len()).unwrap_or(0);
        let basename = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let applied = job.applied.as_ref();
        let fields = TaskFields {
            input: basename(&job.plan.input),
            output: basename(&job.plan.output),
            cpu_units: job.plan.units,
            cpuset: cpu_list(&job.cores),
            binding: binding_name(self.args.cpu_binding).to_string(),
            binding_error: job
                .binding_error
                .clone()
                .or_else(|| self.binding_note.clone()),
            cgroup: applied.map(|a| a.cgroup.clone()),
            cpus_allowed: applied.map(|a| a.cpus.clone()),
            cpu_weight: applied.and_then(|a| a.weight),
            cpu_max: applied.map(|a| a.max.clone()),
            bytes_in: job.bytes_in,
            bytes_out,
            seq: job.task.seq,
            profile: job.task.profile.clone(),
            ts_enqueue_offset_ms: job.task.ts_enqueue_offset_ms,
        };
        let inv = match job.invocation {
            Some(inv) => inv,
            None => {
                tracing::warn!(trace_id = %job.trace_id, "the tracer did not see this task; times from the worker's clock");
                let task = Annotation {
                    trace_id: job.trace_id.clone(),
                    ts_enqueue: job.task.ts_enqueue,
                };
                session
                    .table
                    .untraced(job.pid, task, job.started_ms, exited_ms, status.into_raw())
            }
        };
        let mut record = inv.clone();
        if record.exit_code.is_none() && record.signal.is_none() {
            // The /proc collector sees no exit status; the worker reaped it.
            (record.exit_code, record.signal) = crate::tracer::decode_status(status.into_raw());
        }
        record.extra.extend(fields.into_extra());
        // On disk now, not at the next tick: an idle worker ticks rarely.
        session.invocation(&record)?;
        if let (Some(cg), Some(g)) = (&self.cgroups, &job.group)
            && let Err(e) = cg.destroy(g)
        {
            tracing::warn!("removing cgroup {}: {e:#}", g.name);
        }
        self.allocator.release(&job.cores);
        let ok = status.success();
        tracing::info!(
            trace_id = %job.trace_id,
            pid = job.pid,
            ok,
            cpu_ms = inv.cpu_ms.unwrap_or(0.0),
            run_ms = inv.ts_end - inv.ts_start,
            "task finished"
        );
        let output = StagedOutput {
            staged: job.staged,
            path: job.plan.output,
        };
        if ok {
            self.report(Report::Complete {
                lease: job.lease,
                output: Some(output),
                trace_id: Some(job.trace_id.clone()),
                withdrawn: session.run_dir().map(withdrawn_file),
                raw: job.raw,
            });
            return Ok(());
        }
        output.discard();
        // A failure counts towards the central's --max-attempts; its reason
        // quotes the end of ffmpeg's stderr.
        let status_text = match (status.code(), status.signal()) {
            (Some(code), _) => format!("ffmpeg exited with {code}"),
            (None, Some(sig)) => format!("ffmpeg was killed by signal {sig}"),
            _ => "ffmpeg failed".to_string(),
        };
        let reports = self.reports.clone();
        let journal = self.journal.clone();
        let raw = job.raw;
        let lease = job.lease;
        let requeue = move |tail: Option<(Vec<u8>, PathBuf)>| {
            let reason = match &tail {
                Some((bytes, log)) => failure_reason(&status_text, log, bytes),
                None => status_text,
            };
            super::send_report(
                &journal,
                &reports,
                Report::Requeue {
                    raw,
                    lease,
                    failed: true,
                    reason: Some(reason),
                },
            );
        };
        match job.stderr_tail {
            None => requeue(None),
            Some((mut rx, log)) => match rx.try_recv() {
                Ok(tail) => requeue(Some((tail, log))),
                Err(oneshot::error::TryRecvError::Closed) => requeue(None),
                // ffmpeg has exited, but its stderr is not read to the end
                // yet (a child of it may hold the pipe): wait a little.
                Err(oneshot::error::TryRecvError::Empty) => {
                    tokio::spawn(async move {
                        let tail = tokio::time::timeout(STDERR_GRACE, rx).await;
                        requeue(tail.ok().and_then(Result::ok).map(|t| (t, log)));
                    });
                }
            },
        }
        Ok(())
    }
}

fn staged_output(job: &Job) -> StagedOutput {
    StagedOutput {
        staged: job.staged.clone(),
        path: job.plan.output.clone(),
    }
}

/// Where a run writes `output` until its completion counts: the same
/// directory (a rename, never a copy), a hidden name of this node and run,
/// and the same extension (ffmpeg picks the container from it).
pub fn staged_path(output: &Path, node: &str, trace_id: &str) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    output.with_file_name(format!(
        "{}{}.{name}",
        staged_prefix(node),
        group_name(trace_id)
    ))
}

/// How the staged outputs of `node` begin.
fn staged_prefix(node: &str) -> String {
    format!(".tracekit.{}.", group_name(node))
}

/// Remove the staged outputs a previous agent of `node` left under `root`
/// (its ffmpeg was killed with it, mid-write): runs that never counted.
/// Only while this agent holds the node id, and after the journal's
/// reports were delivered (they publish or remove theirs).
pub fn sweep_staged(root: &Path, node: &str) -> usize {
    let prefix = staged_prefix(node);
    let mut removed = 0;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() {
                dirs.push(e.path());
            } else if e.file_name().to_string_lossy().starts_with(&prefix) {
                match std::fs::remove_file(e.path()) {
                    Ok(()) => removed += 1,
                    Err(err) => tracing::warn!("removing {}: {err}", e.path().display()),
                }
            }
        }
    }
    removed
}
/// A cgroup-safe name for a task.
pub fn group_name(trace_id: &str) -> String {
    trace_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// How long a failed task's report waits for the end of its stderr.
const STDERR_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A failed task's reason: how ffmpeg ended, where its log is, and the last
/// lines of its stderr that fit in [`REASON_LIMIT`] bytes.
pub fn failure_reason(status: &str, log: &Path, tail: &[u8]) -> String {
    let head = format!("{status}; stderr ({}) ends:", log.display());
    let text = String::from_utf8_lossy(tail);
    // Progress lines end in \r; every line break counts.
    let lines: Vec<&str> = text
        .split(['\n', '\r'])
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    let mut room = REASON_LIMIT.saturating_sub(head.len());
    let mut kept: Vec<&str> = Vec::new();
    for line in lines.iter().rev() {
        if line.len() + 1 > room {
            if kept.is_empty() {
                // One long last line: its end, on a character boundary.
                let mut start = line.len().saturating_sub(room.saturating_sub(2));
                while !line.is_char_boundary(start) {
                    start += 1;
                }
                kept.push(&line[start..]);
            }
            break;
        }
        room -= line.len() + 1;
        kept.push(line);
    }
    if kept.is_empty() {
        return truncate(&format!("{status}; stderr ({}) is empty", log.display()));
    }
    kept.reverse();
    truncate(&format!("{head}\n{}", kept.join("\n")))
}

/// At most [`REASON_LIMIT`] bytes, cut on a character boundary.
fn truncate(s: &str) -> String {
    let mut end = s.len().min(REASON_LIMIT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Keep up to `limit` bytes of a task's stderr (the head, where ffmpeg says
/// what it does, and a note of how much was cut), and hand its last
/// [`TAIL_KEEP`] bytes to `tail` at the end (what a failure quotes).
async fn keep_stderr(
    mut stderr: tokio::process::ChildStderr,
    path: PathBuf,
    limit: usize,
    tail: oneshot::Sender<Vec<u8>>,
) {
    let mut kept = Vec::new();
    let mut end = Vec::new();
    let mut cut = 0usize;
    let mut buf = [0u8; 8192];
    loop {
        match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                cut += n - n.min(room);
                end.extend_from_slice(&buf[..n]);
                if end.len() > TAIL_KEEP {
                    end.drain(..end.len() - TAIL_KEEP);
                }
            }
        }
    }
    let _ = tail.send(end);
    if cut > 0 {
        kept.extend_from_slice(format!("\n[tracekit: {cut} more bytes not kept]\n").as_bytes());
    }
    if let Err(e) = write_new(&path, &kept) {
        tracing::warn!("keeping ffmpeg's stderr: {e:#}");
    }
}

/// Write `data` to `path`, or, if a file is there already (a task that ran
/// again under the same trace id), to `<stem>.1.log`, `<stem>.2.log`, …:
/// a log is never overwritten. Returns where it went.
fn write_new(path: &Path, data: &[u8]) -> Result<PathBuf> {
    use std::io::Write;
    let stem = path.with_extension("");
    for n in 0u32.. {
        let candidate = match n {
            0 => path.to_path_buf(),
            n => stem.with_extension(format!("{n}.log")),
        };
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&candidate)
        {
            Ok(mut f) => {
                f.write_all(data)
                    .with_context(|| format!("writing {}", candidate.display()))?;
                return Ok(candidate);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", candidate.display())),
        }
    }
    bail!("no free name for {}", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_outputs_of_a_node_are_swept_and_no_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("sub");
        std::fs::create_dir_all(&sub).expect("mkdir");
        let mine = staged_path(&sub.join("a.mp4"), "n1", "n1-3-7-1");
        let theirs = staged_path(&sub.join("b.mp4"), "n2", "n2-3-7-1");
        let done = sub.join("c.mp4");
        for p in [&mine, &theirs, &done] {
            std::fs::write(p, b"x").expect("write");
        }
        assert!(mine.to_string_lossy().ends_with(".mp4"));
        assert_eq!(sweep_staged(dir.path(), "n1"), 1);
        assert!(!mine.exists() && theirs.exists() && done.exists());
    }

    #[test]
    fn a_log_is_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("n1-3-7.log");
        let first = write_new(&path, b"first").expect("first");
        let second = write_new(&path, b"second").expect("second");
        let third = write_new(&path, b"third").expect("third");
        assert_eq!(first, path);
        assert_eq!(second, dir.path().join("n1-3-7.1.log"));
        assert_eq!(third, dir.path().join("n1-3-7.2.log"));
        assert_eq!(std::fs::read(&path).expect("read"), b"first");
    }

    #[test]
    fn a_failure_reason_quotes_the_end_of_stderr_within_a_kib() {
        let log = Path::new("logs/r/n1/ffmpeg/t1.log");
        let tail = b"frame=  1 fps=0\rframe=  2 fps=0\r\nin.mp4: Invalid data found when processing input\n";
        let r = failure_reason("ffmpeg exited with 1", log, tail);
        assert_eq!(
            r,
            "ffmpeg exited with 1; stderr (logs/r/n1/ffmpeg/t1.log) ends:\nframe=  1 fps=0\nframe=  2 fps=0\nin.mp4: Invalid data found when processing input"
        );
        let long: Vec<u8> = (0..500)
            .flat_map(|i| format!("line {i} é\n").into_bytes())
            .collect();
        let r = failure_reason("ffmpeg exited with 1", log, &long);
        assert!(r.len() <= REASON_LIMIT, "{}", r.len());
        assert!(r.ends_with("line 499 é"), "{r}");
        let one = "x".repeat(5000);
        let r = failure_reason("ffmpeg exited with 1", log, one.as_bytes());
        assert!(r.len() <= REASON_LIMIT && r.ends_with("xxx"), "{r}");
        let r = failure_reason("ffmpeg was killed by signal 9", log, b"");
        assert!(r.ends_with("is empty"), "{r}");
    }
}
