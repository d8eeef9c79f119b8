//! Runs for the report and compare tests: synthetic ones written through
//! tracekit-trace's synth module the way the agent writes traces, and
//! OpenDC task outputs built from a run.
#![allow(clippy::unwrap_used)] // a panic is how a test fails
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use tracekit_sched::compare::model::RealTask;
use tracekit_sched::compare::opendc_output;
use tracekit_sched::compare::real_tasks;
use tracekit_trace::TaskIdMode;
use tracekit_trace::synth::{SynthNode, TruthTask, write_node};

/// A run of `nodes` nodes with `tasks` tasks each (`samples` samples of
/// `interval_ms` per task), under `dir/run`.
pub fn synth_run(
    dir: &Path,
    nodes: usize,
    tasks: usize,
    samples: usize,
    interval_ms: i64,
) -> (PathBuf, Vec<TruthTask>) {
    let run = dir.join("run");
    let mut truth = Vec::new();
    for n in 0..nodes {
        let mut cfg = SynthNode::new(&format!("node{}", n + 1), tasks);
        cfg.samples_per_task = samples;
        cfg.interval_ms = interval_ms;
        cfg.slots = 2;
        cfg.cores = 2;
        cfg.seed = 7 + n as u64;
        cfg.pid_base = 4000 + 1000 * n as u32;
        truth.extend(write_node(&run.join(&cfg.node), &cfg).unwrap());
    }
    (run, truth)
}

/// What a simulation that reproduced `run` exactly would write, with every
/// schedule and finish `shift_ms` later and runs `scale` times as long;
/// `names` puts the trace ids in task_name, else it is empty.
pub fn opendc_of(run: &Path, out: &Path, names: bool, shift_ms: i64, scale: f64) -> Vec<RealTask> {
    let real = real_tasks(run, TaskIdMode::Auto, false).unwrap();
    let rows: Vec<_> = opendc_output::replay(&real, names, shift_ms, scale)
        .iter()
        .flat_map(|t| opendc_output::rows_of(t, 30_000))
        .collect();
    let dir = out.join("raw-output/0/seed=0");
    std::fs::create_dir_all(&dir).unwrap();
    opendc_output::write(&dir.join(opendc_output::TASK_FILE), &rows).unwrap();
    real
}

pub fn sched() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tracekit-sched"))
}

/// The file names under `dir` (none when it does not exist).
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
