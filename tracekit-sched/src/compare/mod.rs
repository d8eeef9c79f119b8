//! `tracekit-sched compare`: a real run against OpenDC's simulation of it.
//!
//! The run's tasks come from tracekit-trace's reader, with the ids the
//! OpenDC export gives them ([`tracekit_trace::export::task_ids`]);
//! [`opendc_output`] reads OpenDC's task output; [`model`] joins, aligns and
//! measures (pure); [`markdown`] and [`html`] render; the files are written
//! all or nothing.

pub mod html;
pub mod markdown;
pub mod model;
pub mod opendc_output;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use tracekit_trace::TaskIdMode;
use tracekit_trace::export::task_ids;
use tracekit_trace::reader::discover;

use crate::output::OutputSet;
use crate::report::load::read_tasks;
use model::{Comparison, RealTask, Thresholds};

/// `compare`: a real run against OpenDC's simulation of it.
#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// The real run: logs/<RUN_ID> (one sub-directory per node) or one node
    /// directory.
    #[arg(long)]
    pub run: PathBuf,
    /// OpenDC's output: its task.parquet, or a directory holding exactly one
    /// (e.g. output/raw-output/0/seed=0/).
    #[arg(long)]
    pub opendc: PathBuf,
    /// Directory for compare.json, compare.md and compare.html.
    #[arg(long)]
    pub output: PathBuf,
    /// The --task-id-mode the run was exported with (used to match
    /// task_id when task_name does not hold the trace ids).
    #[arg(long, value_enum, default_value_t = TaskIdMode::Auto)]
    pub task_id_mode: TaskIdMode,
    /// Put the run's times on Redis's clock, as export --correct-clock did
    /// (give it when the run was exported with it).
    #[arg(long)]
    pub correct_clock: bool,
    /// Largest cumulative-completion RMSE after best-lag alignment, % of
    /// the tasks.
    #[arg(long, default_value_t = Thresholds::default().cumulative_rmse_pct)]
    pub max_cumulative_rmse_pct: f64,
    /// Largest makespan error of a run at least --long-run-s long, %.
    #[arg(long, default_value_t = Thresholds::default().makespan_pct)]
    pub max_makespan_error_pct: f64,
    /// Largest makespan error of a shorter run, s.
    #[arg(long, default_value_t = Thresholds::default().makespan_s)]
    pub max_makespan_error_s: f64,
    /// Runs at least this long (s) are judged by the relative makespan error.
    #[arg(long, default_value_t = Thresholds::default().long_run_s)]
    pub long_run_s: f64,
    /// The wait distributions fail when the KS p-value is below this.
    #[arg(long, default_value_t = Thresholds::default().ks_alpha)]
    pub ks_alpha: f64,
    /// Largest throughput-per-minute RMSE, % of the real mean.
    #[arg(long, default_value_t = Thresholds::default().throughput_rmse_pct)]
    pub max_throughput_rmse_pct: f64,
    /// Largest 95th percentile of the per-task run-time error, % of the
    /// real run time (at least 1 s).
    #[arg(long, default_value_t = Thresholds::default().run_error_p95_pct)]
    pub max_run_error_p95_pct: f64,
    /// Exit non-zero when a verdict fails.
    #[arg(long)]
    pub strict: bool,
}

impl CompareArgs {
    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            cumulative_rmse_pct: self.max_cumulative_rmse_pct,
            makespan_pct: self.max_makespan_error_pct,
            makespan_s: self.max_makespan_error_s,
            long_run_s: self.long_run_s,
            ks_alpha: self.ks_alpha,
            throughput_rmse_pct: self.max_throughput_rmse_pct,
            run_error_p95_pct: self.max_run_error_p95_pct,
        }
    }
}

/// What the renderers say about the inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Context {
    pub run: String,
    pub sim: String,
    /// Tasks the simulation did not complete, by state (`FAILED 2, …`).
    pub not_completed: String,
}

/// The files a comparison consists of.
pub const FILES: [&str; 3] = ["compare.json", "compare.md", "compare.html"];

/// The run's complete tasks with the ids the export gives them (with
/// `correct_clock`, their times on Redis's clock, as the export's were).
pub fn real_tasks(run: &Path, mode: TaskIdMode, correct_clock: bool) -> Result<Vec<RealTask>> {
    let dirs = discover(run)?;
    let read = read_tasks(&dirs, correct_clock)?;
    if let Some(tally) = &read.clock {
        tracing::info!("{}", tally.note());
        for w in tally.warnings() {
            tracing::warn!("{w}");
        }
    }
    let tasks = read.tasks;
    let (_, ids) = task_ids(&dirs, mode, correct_clock)?;
    let id_of: HashMap<(usize, u32, i64, i64), i32> = ids
        .iter()
        .map(|t| {
            (
                (t.node, t.times.pid, t.times.ts_start, t.times.ts_end),
                t.id,
            )
        })
        .collect();
    Ok(tasks
        .into_iter()
        .map(|t| RealTask {
            id: id_of.get(&(t.node, t.pid, t.ts_start, t.ts_end)).copied(),
            trace_id: t.trace_id,
            ts_enqueue: t.ts_enqueue,
            ts_start: t.ts_start,
            ts_end: t.ts_end,
        })
        .collect())
}

/// Compare and render every file, in memory.
pub fn build(args: &CompareArgs) -> Result<(Comparison, OutputSet)> {
    let real = real_tasks(&args.run, args.task_id_mode, args.correct_clock)?;
    let sim_path = opendc_output::find(&args.opendc)?;
    let sim = opendc_output::read(&sim_path)?;
    tracing::info!(
        "{} real task(s); {} completed in {} ({} row(s))",
        real.len(),
        sim.tasks.len(),
        sim_path.display(),
        sim.rows
    );
    if sim.tasks.is_empty() {
        bail!(
            "{}: no completed task (task_state {} in no task's last row; {} row(s))",
            sim_path.display(),
            opendc_output::COMPLETED,
            sim.rows
        );
    }
    let Some(joined) = model::join(&real, &sim.tasks) else {
        let example = |v: Vec<String>| v.into_iter().take(3).collect::<Vec<_>>().join(", ");
        bail!(
            "{} and {} share no task: no task_name is a trace id of the run (run: {}; \
             simulation: {}) and no task_id is an id the export gives the run's tasks \
             (run: {}; simulation: {})",
            args.run.display(),
            sim_path.display(),
            example(real.iter().map(|t| t.trace_id.clone()).collect()),
            example(
                sim.tasks
                    .iter()
                    .map(|t| t.name.clone().unwrap_or_else(|| "\"\"".into()))
                    .collect()
            ),
            example(
                real.iter()
                    .filter_map(|t| t.id)
                    .map(|i| i.to_string())
                    .collect()
            ),
            example(sim.tasks.iter().map(|t| t.id.to_string()).collect()),
        );
    };
    if joined.real_only > 0 || joined.sim_only > 0 {
        tracing::warn!(
            "{} task(s) only in the run, {} only in the simulation: compared on the {} matched",
            joined.real_only,
            joined.sim_only,
            joined.pairs.len()
        );
    }
    let comparison = model::compare(&joined, args.thresholds());
    let ctx = Context {
        run: args.run.display().to_string(),
        sim: sim_path.display().to_string(),
        not_completed: sim
            .not_completed
            .iter()
            .map(|(state, n)| format!("{state} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
    };
    let mut files = OutputSet::new();
    let mut json = serde_json::to_vec_pretty(&comparison).context("serialising compare.json")?;
    json.push(b'\n');
    files.add(FILES[0], json);
    files.add(FILES[1], markdown::render(&comparison, &ctx));
    files.add(FILES[2], html::render(&comparison, &ctx));
    Ok((comparison, files))
}

/// Run the command: write the files and print the verdicts.
pub fn run(args: &CompareArgs) -> Result<Comparison> {
    let started = Instant::now();
    let (c, files) = build(args)?;
    files.commit(&args.output)?;
    tracing::info!(
        "compared {} task(s) in {:.3} s, peak RSS {} MB",
        c.matched,
        started.elapsed().as_secs_f64(),
        crate::fmt::opt(crate::fmt::peak_rss_mb().map(|mb| format!("{mb:.1}")))
    );
    println!(
        "{} task(s) matched ({} only real, {} only simulated)\n",
        c.matched, c.real_only, c.sim_only
    );
    print!("{}", markdown::verdicts(&c));
    println!(
        "\nOverall: {}\nComparison: {}",
        if c.pass { "PASS" } else { "FAIL" },
        args.output.join(FILES[2]).display()
    );
    if args.strict && !c.pass {
        bail!(
            "{} verdict(s) failed",
            c.verdicts.iter().filter(|v| !v.pass).count()
        );
    }
    Ok(c)
}
