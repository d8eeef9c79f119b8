//! The report's CSV tables: `tasks.csv` (one row per task), `nodes.csv`,
//! `profiles.csv` and `throughput.csv`.

use anyhow::{Context, Result};
use serde::Serialize;

use super::model::Report;

fn csv_of<T: Serialize>(rows: impl IntoIterator<Item = T>) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for row in rows {
        w.serialize(row).context("writing a CSV row")?;
    }
    w.into_inner().context("finishing a CSV table")
}

/// `tasks.csv`: every task, in submission order.
pub fn tasks(r: &Report) -> Result<Vec<u8>> {
    csv_of(&r.tasks)
}

#[derive(Serialize)]
struct NodeCsv<'a> {
    node: &'a str,
    cores: u32,
    tasks: usize,
    done: usize,
    failed: usize,
    cpu_s: f64,
    mean_cores: f64,
    peak_rss_mb: f64,
    collector: Option<&'a str>,
    interval_ms: Option<u64>,
    events_lost: u64,
}

/// `nodes.csv`: one row per node.
pub fn nodes(r: &Report) -> Result<Vec<u8>> {
    csv_of(r.nodes.iter().map(|n| NodeCsv {
        node: &n.name,
        cores: n.cores,
        tasks: n.tasks,
        done: n.done,
        failed: n.failed,
        cpu_s: n.cpu_s,
        mean_cores: n.mean_cores,
        peak_rss_mb: n.peak_rss_mb,
        collector: n.collector.as_deref(),
        interval_ms: n.interval_ms,
        events_lost: n.events_lost,
    }))
}

#[derive(Serialize)]
struct ProfileCsv<'a> {
    profile: &'a str,
    tasks: usize,
    done: usize,
    failed: usize,
    wait_p50_s: f64,
    wait_p95_s: f64,
    wait_p99_s: f64,
    wait_max_s: f64,
    run_mean_s: f64,
    run_p50_s: f64,
    run_p95_s: f64,
    run_max_s: f64,
    cpu_s: f64,
    mean_cores: f64,
}

/// `profiles.csv`: one row per profile.
pub fn profiles(r: &Report) -> Result<Vec<u8>> {
    csv_of(r.profiles.iter().map(|p| ProfileCsv {
        profile: &p.name,
        tasks: p.tasks,
        done: p.done,
        failed: p.failed,
        wait_p50_s: p.wait_s.p50,
        wait_p95_s: p.wait_s.p95,
        wait_p99_s: p.wait_s.p99,
        wait_max_s: p.wait_s.max,
        run_mean_s: p.run_s.mean,
        run_p50_s: p.run_s.p50,
        run_p95_s: p.run_s.p95,
        run_max_s: p.run_s.max,
        cpu_s: p.cpu_s,
        mean_cores: p.mean_cores,
    }))
}

#[derive(Serialize)]
struct MinuteCsv {
    minute: usize,
    completions: u64,
    cumulative: u64,
}

/// `throughput.csv`: completions per minute since the first submission.
pub fn throughput(r: &Report) -> Result<Vec<u8>> {
    let mut total = 0;
    csv_of(
        r.throughput
            .per_minute
            .iter()
            .enumerate()
            .map(|(minute, &completions)| {
                total += completions;
                MinuteCsv {
                    minute,
                    completions,
                    cumulative: total,
                }
            }),
    )
}
