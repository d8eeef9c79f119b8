//! Watching the run while it goes: the nodes' counters a few times a
//! second (capacity must never go below 0), and ffmpeg processes of the run
//! whose agent is gone (strays).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracekit_proto::Queue;

/// What the sampler saw.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    /// Snapshots read.
    pub taken: usize,
    /// Snapshots that failed (Redis down).
    pub failed: usize,
    /// Node → lowest `cap` seen, and the run time (s) of that sample.
    pub min_cap: BTreeMap<String, (i64, f64)>,
    /// Node → lowest `run_count` seen.
    pub min_run_count: BTreeMap<String, i64>,
    /// Samples that saw some node's cap below 0: (run time s, node, cap).
    pub negative: Vec<(f64, String, i64)>,
    /// ffmpeg processes of the run that outlived their agent by more than
    /// [`STRAY_AFTER`]: pid → (first seen s, parent pid).
    pub strays: BTreeMap<u32, (f64, u32)>,
}

/// How long an ffmpeg may outlive its agent (the kernel delivers the
/// parent-death signal at once; this is the scan's own slack).
pub const STRAY_AFTER: Duration = Duration::from_secs(3);

/// The processes the run's agents are now (shared with the fault injector).
pub type AgentPids = Arc<Mutex<HashSet<u32>>>;

/// A sampler thread, stopped and joined on drop.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Samples>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    pub fn start(
        queue: Queue,
        heartbeat_timeout: Duration,
        outputs: PathBuf,
        agents: AgentPids,
        start: Instant,
    ) -> anyhow::Result<Sampler> {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Samples::default()));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (s, out) = (stop.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            let mut orphan_since: HashMap<u32, Instant> = HashMap::new();
            while !s.load(Ordering::Relaxed) {
                let t = start.elapsed().as_secs_f64();
                let snap = rt.block_on(async {
                    tokio::time::timeout(Duration::from_secs(2), queue.snapshot(heartbeat_timeout))
                        .await
                });
                let live = agents.lock().map(|a| a.clone()).unwrap_or_default();
                let ffmpegs = run_ffmpegs(&outputs);
                let Ok(mut o) = out.lock() else { return };
                match snap {
                    Ok(Ok(snap)) => {
                        o.taken += 1;
                        for n in &snap.nodes {
                            let e = o.min_cap.entry(n.name.clone()).or_insert((n.cap, t));
                            if n.cap < e.0 {
                                *e = (n.cap, t);
                            }
                            let r = o.min_run_count.entry(n.name.clone()).or_insert(n.run_count);
                            *r = (*r).min(n.run_count);
                            if n.cap < 0 {
                                o.negative.push((t, n.name.clone(), n.cap));
                            }
                        }
                    }
                    _ => o.failed += 1,
                }
                orphan_since.retain(|pid, _| ffmpegs.contains_key(pid));
                for (pid, ppid) in ffmpegs {
                    if live.contains(&ppid) {
                        orphan_since.remove(&pid);
                        continue;
                    }
                    let since = *orphan_since.entry(pid).or_insert_with(Instant::now);
                    if since.elapsed() >= STRAY_AFTER {
                        o.strays.entry(pid).or_insert((t, ppid));
                    }
                }
                drop(o);
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        Ok(Sampler {
            stop,
            samples,
            thread: Some(thread),
        })
    }

    /// Stops the sampler and returns what it saw.
    pub fn finish(mut self) -> Samples {
        self.join();
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.join();
    }
}

/// The run's ffmpeg processes (an agent runs them in its outputs
/// directory): pid → parent pid.
pub fn run_ffmpegs(outputs: &Path) -> HashMap<u32, u32> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.filter_map(|e| e.ok()) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // comm is in parentheses, the parent pid is the second field after it.
        let Some((comm, rest)) = stat.split_once(" (").and_then(|(_, r)| r.rsplit_once(") "))
        else {
            continue;
        };
        if comm != "ffmpeg" {
            continue;
        }
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == outputs) {
            out.insert(pid, ppid);
        }
    }
    out
}
