//! `tracekit-sched report`: the numbers, tables and charts of a run.
//!
//! [`load`] reads the run with tracekit-trace's reader, join and audit;
//! [`model`] computes the report (pure); [`numbers`] lays its numbers out as
//! tables; [`html`], [`markdown`], [`tables`] (CSV) and [`summary`] render
//! it; the files are written all or nothing.

pub mod html;
pub mod load;
pub mod markdown;
pub mod model;
pub mod numbers;
pub mod summary;
pub mod tables;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;

use crate::output::OutputSet;
use load::LoadOptions;
pub use model::Report;
use tracekit_trace::audit::CLOCK_SKEW_WARN_MS;

/// `report`: numbers, tables and charts of a run.
#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// Run directory (logs/<RUN_ID>, one sub-directory per node) or one node
    /// directory.
    #[arg(long)]
    pub input: PathBuf,
    /// Directory for report.html, report.md, report.json and the CSV tables
    /// (created if needed; files of the same names are replaced).
    #[arg(long)]
    pub output: PathBuf,
    /// The run's dead letters, one JSON object per line ({task, reason,
    /// node, ts}, as q:dead holds them); without it the dead-lettered count
    /// is unknown.
    #[arg(long)]
    pub dead_letters: Option<PathBuf>,
    /// Put every time on Redis's clock: each node's by the offset its agent
    /// measured, each submission by its dispatcher's (what cannot be
    /// corrected is said).
    #[arg(long)]
    pub correct_clock: bool,
    /// The audit warns about a clock further than this from Redis TIME, ms.
    #[arg(long, value_name = "MS", default_value_t = CLOCK_SKEW_WARN_MS)]
    pub clock_skew_warn_ms: f64,
}

impl ReportArgs {
    /// How the run is read.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            correct_clock: self.correct_clock,
            clock_skew_warn_ms: self.clock_skew_warn_ms,
        }
    }
}

/// The files a report consists of.
pub const FILES: [&str; 7] = [
    "report.html",
    "report.md",
    "report.json",
    "tasks.csv",
    "nodes.csv",
    "profiles.csv",
    "throughput.csv",
];

/// Build the report of `input` and render every file, in memory.
pub fn build(
    input: &Path,
    dead_letters: Option<&Path>,
    opts: &LoadOptions,
) -> Result<(Report, OutputSet)> {
    let data = load::load(input, dead_letters, opts)?;
    let report = model::compute(&data);
    drop(data);
    let mut files = OutputSet::new();
    files.add(FILES[0], html::render(&report));
    files.add(FILES[1], markdown::render(&report));
    let mut json = serde_json::to_vec_pretty(&report).context("serialising report.json")?;
    json.push(b'\n');
    files.add(FILES[2], json);
    files.add(FILES[3], tables::tasks(&report)?);
    files.add(FILES[4], tables::nodes(&report)?);
    files.add(FILES[5], tables::profiles(&report)?);
    files.add(FILES[6], tables::throughput(&report)?);
    Ok((report, files))
}

/// Run the command: write the files, print the summary and where they are.
pub fn run(args: &ReportArgs) -> Result<Report> {
    let started = Instant::now();
    let (report, files) = build(
        &args.input,
        args.dead_letters.as_deref(),
        &args.load_options(),
    )?;
    let bytes = files.bytes();
    files.commit(&args.output)?;
    tracing::info!(
        "report of {} task(s) in {:.3} s, {} bytes, peak RSS {} MB",
        report.counts.tasks,
        started.elapsed().as_secs_f64(),
        bytes,
        crate::fmt::opt(crate::fmt::peak_rss_mb().map(|mb| format!("{mb:.1}")))
    );
    print!("{}", summary::render(&report));
    println!("\nReport: {}", args.output.join(FILES[0]).display());
    Ok(report)
}
