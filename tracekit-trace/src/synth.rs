//! Synthetic traces with known truth, for tests and benchmarks.
//!
//! The traces are written through [`TraceWriter`] the way the agent writes
//! them: a global sampling clock ticks every interval; each running process
//! gets a sample at every tick and a last one at its exit (so its samples tile
//! its run exactly), and an invocation line when it exits. Tasks run on a
//! fixed number of slots; a slot's next task may start in the very millisecond
//! the previous one ended, and PIDs are reused per slot (as the kernel does).
//! CPU is accumulated in nanoseconds, the way the kernel counts it, and each
//! sample carries its share rounded to 3 decimals, so the exact total and the
//! sum of the samples differ only by rounding.

use std::path::Path;

use anyhow::Result;

use crate::schema::{CollectorKind, Invocation, NodeMeta, ProcSample, ProgramCost, TracerStats};
use crate::writer::TraceWriter;

/// What to generate for one node.
#[derive(Debug, Clone)]
pub struct SynthNode {
    pub run_id: String,
    pub node: String,
    pub cores: u32,
    pub mhz: f64,
    pub mem_mb: u64,
    pub tasks: usize,
    /// Samples of a normal task (its ticks plus the exit sample).
    pub samples_per_task: usize,
    pub interval_ms: i64,
    /// Tasks running at once.
    pub slots: usize,
    /// PIDs are `pid_base + slot + slots × (k mod pid_span)` for a slot's k-th
    /// task: `pid_span = 1` reuses one PID per slot for all its tasks.
    pub pid_base: u32,
    pub pid_span: usize,
    /// Every n-th task fails (exit code 1; every other one by SIGKILL); 0 = never.
    pub fail_every: usize,
    /// Every n-th task is shorter than one interval; 0 = never.
    pub short_every: usize,
    /// Every n-th task execs and exits in the same millisecond; 0 = never.
    pub zero_every: usize,
    pub start_ms: i64,
    pub seed: u64,
    pub events_lost: u64,
    /// Profile names given to the tasks in turn (the worker records the
    /// dispatcher's profile); empty = none.
    pub profiles: Vec<String>,
}

impl SynthNode {
    /// A node of `tasks` tasks of 60 samples at 1 s, 4 slots, PID reuse.
    pub fn new(node: &str, tasks: usize) -> Self {
        SynthNode {
            run_id: "synth-run".into(),
            node: node.into(),
            cores: 4,
            mhz: 2400.0,
            mem_mb: 15997,
            tasks,
            samples_per_task: 60,
            interval_ms: 1000,
            slots: 4,
            pid_base: 4000,
            pid_span: 3,
            fail_every: 0,
            short_every: 7,
            zero_every: 0,
            start_ms: 1_760_000_000_000,
            seed: 1,
            events_lost: 0,
            profiles: ["medium480p", "fast1080p", "hevc1080p", "light1c"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// The truth about one generated task.
#[derive(Debug, Clone, PartialEq)]
pub struct TruthTask {
    pub node: String,
    pub trace_id: String,
    pub pid: u32,
    pub ts_enqueue: i64,
    pub ts_start: i64,
    pub ts_end: i64,
    /// Exact CPU time (what the invocation records).
    pub cpu_ms: f64,
    /// Sum of the task's samples' cpu_ms.
    pub sampled_cpu_ms: f64,
    pub peak_rss_kb: u64,
    pub samples: usize,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub profile: Option<String>,
}

/// splitmix64: small, seedable, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi] (inclusive).
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A task that is running on a slot.
struct Running {
    truth: TruthTask,
    last_ts: i64,
    cum_ns: u64,
    rate: f64,
    rss: u64,
}

struct Slot {
    running: Option<Running>,
    free_at: i64,
    started: usize,
    /// When the slot's previous task ended.
    last_end: i64,
}

fn round3(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// Write node `cfg` into `dir` (a node directory) and return the truth about
/// its tasks, in the order they ended.
pub fn write_node(dir: &Path, cfg: &SynthNode) -> Result<Vec<TruthTask>> {
    let meta = NodeMeta {
        run_id: cfg.run_id.clone(),
        node: cfg.node.clone(),
        stage: "cloud".into(),
        host: format!("{}-host", cfg.node),
        iface: "eth0".into(),
        cpu_cores: cfg.cores,
        mem_mb: cfg.mem_mb,
        cpu_model: "Synthetic CPU".into(),
        cpu_freq_mhz: cfg.mhz,
        collector: Some(CollectorKind::Ebpf),
        fallback_reason: None,
        interval_ms: Some(cfg.interval_ms as u64),
        scope: Some("worker".into()),
        proc_match: Some("^ffmpeg$|^ffprobe$".into()),
        cpu_binding: Some("shared".into()),
        binding_error: None,
        run_as: Some("nobody".into()),
        privileges_dropped: Some(true),
        tracekit: None,
        kernel: None,
        ffmpeg: None,
        x264: None,
        x265: None,
        clock: None,
    };
    let mut w = TraceWriter::create(dir, &meta)?;
    let mut rng = Rng(cfg.seed ^ 0x5EED);
    let interval = cfg.interval_ms.max(2);
    let t0 = cfg.start_ms;
    let mut slots: Vec<Slot> = (0..cfg.slots.max(1))
        .map(|s| Slot {
            running: None,
            free_at: t0 + 1 + rng.range(0, interval) + s as i64,
            started: 0,
            last_end: t0,
        })
        .collect();
    let n_slots = slots.len();
    let mut next_task = 0usize;
    let mut truth = Vec::with_capacity(cfg.tasks);
    let mut tick = t0;
    while truth.len() < cfg.tasks {
        let prev_tick = tick;
        tick += interval;
        for (s, slot) in slots.iter_mut().enumerate() {
            loop {
                let ended = match slot.running.as_mut() {
                    Some(run) if run.truth.ts_end <= tick => {
                        let end = run.truth.ts_end;
                        emit(&mut w, run, end, &mut rng, cfg.cores)?;
                        true
                    }
                    Some(run) => {
                        emit(&mut w, run, tick, &mut rng, cfg.cores)?;
                        break;
                    }
                    None => false,
                };
                if ended {
                    if let Some(run) = slot.running.take() {
                        let t = run.truth;
                        w.invocation(&invocation(&t, cfg))?;
                        // Sometimes the next task (maybe the same PID) execs in
                        // the very millisecond this one exited.
                        slot.free_at = if t.ts_end > t.ts_start && rng.range(0, 7) == 0 {
                            t.ts_end
                        } else {
                            t.ts_end + rng.range(1, 2 * interval)
                        };
                        slot.last_end = t.ts_end;
                        truth.push(t);
                    }
                    continue;
                }
                if next_task >= cfg.tasks || slot.free_at > tick {
                    break;
                }
                let mut start = slot.free_at.max(prev_tick + 1);
                if (start - t0) % interval == 0 {
                    start += 1; // never exec on a tick: the first sample has dt > 0
                }
                if start > tick {
                    slot.free_at = start;
                    break;
                }
                let i = next_task;
                next_task += 1;
                let k = slot.started;
                slot.started += 1;
                let pid = cfg.pid_base + s as u32 + (n_slots * (k % cfg.pid_span.max(1))) as u32;
                let first_tick = tick;
                let end = if cfg.zero_every > 0 && i % cfg.zero_every == cfg.zero_every - 1 {
                    // A process cannot exec and exit in the millisecond its
                    // PID's previous holder exited: keep traces unambiguous.
                    if start == slot.last_end {
                        start += 1;
                        if (start - t0) % interval == 0 {
                            start += 1;
                        }
                    }
                    start
                } else if cfg.short_every > 0 && i % cfg.short_every == cfg.short_every - 1
                    || cfg.samples_per_task <= 1
                {
                    start + rng.range(1, first_tick - start)
                } else {
                    first_tick
                        + (cfg.samples_per_task as i64 - 2) * interval
                        + rng.range(1, interval - 1)
                };
                let failed = cfg.fail_every > 0 && i % cfg.fail_every == cfg.fail_every - 1;
                let (exit_code, signal) = match (failed, i % 2) {
                    (false, _) => (Some(0), None),
                    (true, 0) => (Some(1), None),
                    (true, _) => (None, Some(9)),
                };
                slot.running = Some(Running {
                    truth: TruthTask {
                        node: cfg.node.clone(),
                        trace_id: format!("{}-{i:06}", cfg.node),
                        pid,
                        ts_enqueue: start - rng.range(0, 5000),
                        ts_start: start,
                        ts_end: end,
                        cpu_ms: 0.0,
                        sampled_cpu_ms: 0.0,
                        peak_rss_kb: 0,
                        samples: 0,
                        exit_code,
                        signal,
                        profile: (!cfg.profiles.is_empty())
                            .then(|| cfg.profiles[i % cfg.profiles.len()].clone()),
                    },
                    last_ts: start,
                    cum_ns: 0,
                    rate: 0.3 + rng.unit() * (f64::from(cfg.cores.min(4)) - 0.3),
                    rss: 20_000 + rng.range(0, 200_000) as u64,
                });
            }
        }
        w.flush()?;
    }
    w.sync()?;
    w.write_stats(&TracerStats {
        collector: Some(CollectorKind::Ebpf),
        events_lost: cfg.events_lost,
        map_full: 0,
        processes_seen: cfg.tasks as u64,
        exits_recorded: cfg.tasks as u64,
        exits_recovered: 0,
        samples_cut: 0,
        samples_dropped: 0,
        sampler_cpu: Some(0),
        agent_cpu_ms: 1234.5,
        agent_max_rss_kb: 20480,
        programs: vec![ProgramCost {
            program: "handle_sched_switch".into(),
            run_count: 1_000_000,
            run_time_ns: 180_000_000,
            ns_per_call: 180.0,
        }],
        ..TracerStats::default()
    })?;
    Ok(truth)
}

/// Write `run`'s sample ending at `ts` and account it in the truth.
fn emit(w: &mut TraceWriter, run: &mut Running, ts: i64, rng: &mut Rng, cores: u32) -> Result<()> {
    let dt = ts - run.last_ts;
    let rate = (run.rate * (0.7 + 0.6 * rng.unit())).clamp(0.0, f64::from(cores));
    // A zero-length run still used a little CPU (exec and exit).
    let ns = if dt == 0 {
        rng.range(1_000, 900_000) as u64
    } else {
        (rate * dt as f64 * 1e6) as u64
    };
    let before = run.cum_ns;
    run.cum_ns += ns;
    // The share of the cumulative total, rounded, as the agent reports it.
    let cpu_ms = round3(run.cum_ns as f64 / 1e6) - round3(before as f64 / 1e6);
    let cpu_ms = round3(cpu_ms);
    run.rss = (run.rss as i64 + rng.range(-5_000, 8_000)).max(4_096) as u64;
    w.sample(&ProcSample {
        ts_ms: ts,
        pid: run.truth.pid,
        dt_ms: dt,
        cpu_ms,
        rss_kb: run.rss,
    })?;
    let t = &mut run.truth;
    t.samples += 1;
    t.sampled_cpu_ms += cpu_ms;
    t.cpu_ms = run.cum_ns as f64 / 1e6;
    t.peak_rss_kb = t.peak_rss_kb.max(run.rss);
    run.last_ts = ts;
    Ok(())
}

fn invocation(t: &TruthTask, cfg: &SynthNode) -> Invocation {
    Invocation {
        trace_id: t.trace_id.clone(),
        pid: t.pid,
        ts_enqueue: t.ts_enqueue,
        ts_start: t.ts_start,
        ts_end: t.ts_end,
        ppid: Some(1),
        comm: Some("ffmpeg".into()),
        filename: Some("/usr/bin/ffmpeg".into()),
        cpu_ms: Some(t.cpu_ms),
        exit_code: t.exit_code,
        signal: t.signal,
        node: Some(cfg.node.clone()),
        stage: Some("cloud".into()),
        collector: Some(CollectorKind::Ebpf),
        extra: t
            .profile
            .iter()
            .map(|p| ("profile".to_string(), p.clone().into()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tasks_tile_and_reuse_pids() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = SynthNode::new("n1", 40);
        cfg.samples_per_task = 5;
        cfg.pid_span = 1;
        cfg.zero_every = 9;
        let truth = write_node(dir.path(), &cfg).unwrap();
        assert_eq!(truth.len(), 40);
        let mut pids: Vec<u32> = truth.iter().map(|t| t.pid).collect();
        pids.sort();
        pids.dedup();
        assert_eq!(pids.len(), cfg.slots);
        for t in &truth {
            assert!(t.ts_enqueue <= t.ts_start && t.ts_start <= t.ts_end);
            assert!((t.sampled_cpu_ms - t.cpu_ms).abs() < 0.001 * t.samples as f64 + 1e-9);
            assert!(t.samples >= 1);
        }
        assert!(truth.iter().any(|t| t.ts_start == t.ts_end));
    }
}
