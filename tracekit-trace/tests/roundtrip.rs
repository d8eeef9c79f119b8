//! Files → audit → export on generated traces written with `TraceWriter`,
//! checked against the generator's truth and against numbers computed here
//! independently from the files.
#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;

use common::{in_export_order, read_fragments, read_tasks, two_node_run, write_run};
use tracekit_trace::audit::audit;
use tracekit_trace::export::{TaskIdMode, export_opendc};
use tracekit_trace::reader::discover;
use tracekit_trace::synth::{SynthNode, TruthTask, write_node};

/// Every task: fragments tile its duration exactly and carry its CPU; the
/// task row follows SPEC.md from those fragments.
fn check_export(out: &Path, truth: &[TruthTask], hosts: &HashMap<String, (f64, u32)>) {
    let tasks = read_tasks(&out.join("tasks.parquet"));
    let frags = read_fragments(&out.join("fragments.parquet"));
    let ordered = in_export_order(truth);
    assert_eq!(tasks.len(), ordered.len());
    assert_eq!(frags.len(), ordered.len(), "every task has fragments");
    for (row, t) in tasks.iter().zip(&ordered) {
        let (mhz, cores) = hosts[&t.node];
        let what = format!("{} (pid {}, id {})", t.trace_id, t.pid, row.id);
        assert_eq!(row.submission_time, t.ts_enqueue, "{what}");
        assert_eq!(row.name.as_deref(), Some(t.trace_id.as_str()), "{what}");
        let duration = (t.ts_end - t.ts_start).max(1);
        assert_eq!(row.duration, duration, "{what}");
        let f = &frags[&row.id];
        assert_eq!(
            f.iter().map(|x| x.0).sum::<i64>(),
            duration,
            "{what}: fragments tile the run"
        );
        assert!(f.iter().all(|x| x.0 > 0), "{what}: no empty fragment");
        let cpu: f64 = f.iter().map(|&(d, u)| u / mhz * d as f64).sum();
        assert!(
            (cpu - t.cpu_ms).abs() < 2e-3,
            "{what}: fragments carry {cpu} ms of CPU, the task used {}",
            t.cpu_ms
        );
        let usages: Vec<f64> = f.iter().map(|x| x.1).collect();
        assert!(usages.iter().all(|&u| u >= 0.1 && u <= mhz * cores as f64));
        // Peak sizing: the replay clips nothing.
        let cap = usages.iter().copied().fold(0.0, f64::max);
        assert_eq!(row.cpu_capacity, cap, "{what}");
        // The fewest cores that carry it, so that OpenDC's filters fit it.
        let count = ((cap / mhz).ceil() as i32).clamp(1, cores as i32);
        assert_eq!(row.cpu_count, count, "{what}");
        assert!(row.cpu_capacity / row.cpu_count as f64 <= mhz, "{what}");
        assert!(row.cpu_count as u32 <= cores, "{what}");
        assert_eq!(row.mem_capacity, t.peak_rss_kb.max(1024) as i64, "{what}");
    }
}

fn hosts(run: &Path) -> HashMap<String, (f64, u32)> {
    discover(run)
        .unwrap()
        .into_iter()
        .map(|n| {
            // The one frequency per node: nodes.json's, in whole MHz.
            let info = &n.nodes[0];
            (
                n.meta.node.clone(),
                (info.cpu_freq_mhz.round(), info.cpu_cores),
            )
        })
        .collect()
}

#[test]
fn run_directory_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let truth = two_node_run(&run, 150);
    assert!(
        truth.iter().any(|t| t.ts_start == t.ts_end),
        "zero-length tasks"
    );
    assert!(
        truth.iter().any(|t| t.samples == 1),
        "tasks shorter than a sample"
    );

    let summary = audit(&run).unwrap();
    assert!(summary.ok, "problems: {:?}", summary.problems);
    assert_eq!(summary.nodes.len(), 2);
    assert_eq!(summary.totals.invocations, 300);
    assert_eq!(summary.totals.tiling_mismatches, 0);
    assert_eq!(summary.totals.cpu_offenders, 0);
    summary.write_reports().unwrap();
    let md = std::fs::read_to_string(run.join("node-a/CTS/audit_report.md")).unwrap();
    assert!(md.contains("PID match rate: 100.00%"), "{md}");
    assert!(md.contains("- collector: ebpf"));
    assert!(md.contains("| handle_sched_switch | 1000000 | 180000000 | 180.0 |"));

    let out = tmp.path().join("opendc");
    let report = export_opendc(&run, &out, TaskIdMode::Auto).unwrap();
    // PIDs repeat within and across nodes, so auto falls back to sequential.
    assert_eq!(report.id_mode, TaskIdMode::Sequential);
    assert_eq!(report.tasks, 300);
    assert_eq!(report.samples_unmatched, 0);
    assert_eq!(report.tasks_without_samples, 0);
    // Exact traces need no filling, but for the 1 ms given to zero-length runs.
    let zero = truth.iter().filter(|t| t.ts_start == t.ts_end).count() as i64;
    assert_eq!(report.gap_ms, zero);
    check_export(&out, &truth, &hosts(&run));
    let ids: Vec<i32> = read_tasks(&out.join("tasks.parquet"))
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, (1..=300).collect::<Vec<_>>());

    let dc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("small_datacenter.json")).unwrap()).unwrap();
    assert_eq!(
        dc,
        serde_json::json!({"clusters":[{"name":"C01","hosts":[
            {"name":"H01","count":1,"cpu":{"coreCount":2,"coreSpeed":3100},
             "memory":{"memorySize":"8192 MiB"}},
            {"name":"H02","count":1,"cpu":{"coreCount":4,"coreSpeed":2400},
             "memory":{"memorySize":"16384 MiB"}}]}]})
    );
}

#[test]
fn reused_pid_never_merges_tasks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let mut cfg = SynthNode::new("solo", 60);
    cfg.samples_per_task = 6;
    cfg.interval_ms = 100;
    cfg.slots = 1;
    cfg.pid_span = 1; // one PID for every task
    let truth = write_node(&dir, &cfg).unwrap();
    assert!(truth.iter().all(|t| t.pid == truth[0].pid));
    assert!(
        truth.windows(2).any(|w| w[0].ts_end == w[1].ts_start),
        "the generator should produce a same-millisecond reuse"
    );

    let summary = audit(&dir).unwrap();
    assert!(summary.ok, "{:?}", summary.problems);
    assert_eq!(summary.totals.reused_pids, 1);
    assert_eq!(summary.totals.tasks_with_samples, 60);

    // Forcing PIDs as ids would merge the tasks: refused.
    let out = tmp.path().join("opendc");
    let err = export_opendc(&dir, &out, TaskIdMode::Pid).unwrap_err();
    assert!(
        err.to_string().contains("names more than one task"),
        "{err}"
    );
    let report = export_opendc(&dir, &out, TaskIdMode::Auto).unwrap();
    assert_eq!(report.id_mode, TaskIdMode::Sequential);
    let mut h = HashMap::new();
    h.insert("solo".to_string(), (cfg.mhz, cfg.cores));
    check_export(&out, &truth, &h);
}

#[test]
fn unique_pids_become_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let mut cfg = SynthNode::new("solo", 30);
    cfg.samples_per_task = 4;
    cfg.interval_ms = 100;
    cfg.pid_span = 1000; // no reuse
    let truth = write_node(&dir, &cfg).unwrap();
    let out = tmp.path().join("opendc");
    let report = export_opendc(&dir, &out, TaskIdMode::Auto).unwrap();
    assert_eq!(report.id_mode, TaskIdMode::Pid);
    let rows = read_tasks(&out.join("tasks.parquet"));
    let ordered = in_export_order(&truth);
    for (row, t) in rows.iter().zip(&ordered) {
        assert_eq!(row.id as u32, t.pid);
    }
    let seq = tmp.path().join("seq");
    export_opendc(&dir, &seq, TaskIdMode::Sequential).unwrap();
    let rows = read_tasks(&seq.join("tasks.parquet"));
    assert_eq!(rows.last().map(|r| r.id), Some(30));
}

#[test]
fn torn_last_lines_are_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let mut cfg = SynthNode::new("torn", 20);
    cfg.samples_per_task = 5;
    cfg.interval_ms = 100;
    let truth = write_node(&dir, &cfg).unwrap();
    // What a kill -9 in the middle of a write leaves.
    for (file, tail) in [
        ("proc_metrics.jsonl", r#"{"ts_ms":17600000"#),
        ("invocations.jsonl", r#"{"trace_id":"torn-9999","pid":4"#),
    ] {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("CTS").join(file))
            .unwrap();
        f.write_all(tail.as_bytes()).unwrap();
    }
    let summary = audit(&dir).unwrap();
    assert!(
        summary.ok,
        "a torn tail is a warning: {:?}",
        summary.problems
    );
    assert_eq!(summary.totals.torn_tails, 2);
    assert_eq!(summary.totals.invocations, 20);
    assert!(summary.warnings.iter().any(|w| w.contains("torn")));
    let out = tmp.path().join("opendc");
    let report = export_opendc(&dir, &out, TaskIdMode::Auto).unwrap();
    assert_eq!(report.torn_tails, 2);
    assert_eq!(report.tasks, 20);
    let mut h = HashMap::new();
    h.insert("torn".to_string(), (cfg.mhz, cfg.cores));
    check_export(&out, &truth, &h);
}

/// The audit's numbers against numbers computed here from the raw files, on a
/// trace with known defects planted.
#[test]
fn audit_numbers_match_an_independent_count() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let mut cfg = SynthNode::new("defects", 80);
    cfg.samples_per_task = 6;
    cfg.interval_ms = 100;
    cfg.fail_every = 10;
    cfg.events_lost = 3;
    write_node(&dir, &cfg).unwrap();
    let cts = dir.join("CTS");

    // Plant defects by rewriting lines.
    let inv_path = cts.join("invocations.jsonl");
    let mut invs: Vec<serde_json::Value> = std::fs::read_to_string(&inv_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    invs[3]["cpu_ms"] = serde_json::json!(invs[3]["cpu_ms"].as_f64().unwrap() + 50.0); // CPU offender
    let q = invs[5]["ts_start"].as_i64().unwrap() + 1;
    invs[5]["ts_enqueue"] = serde_json::json!(q); // order violation
    invs[7]["trace_id"] = serde_json::Value::Null; // missing field
    invs.push(
        serde_json::json!({"trace_id":"ghost","pid":99999,"ts_enqueue":1,"ts_start":2,"ts_end":3}),
    );
    write_lines(&inv_path, &invs);

    let pm_path = cts.join("proc_metrics.jsonl");
    let mut samples: Vec<serde_json::Value> = std::fs::read_to_string(&pm_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    samples.remove(40); // a hole: that task no longer tiles
    let mut dup = samples[100].clone();
    dup["dt_ms"] = serde_json::json!(-5); // negative dt, and not later than its predecessor
    samples.insert(101, dup);
    write_lines(&pm_path, &samples);
    // One garbage line in the middle.
    let mut text = std::fs::read_to_string(&pm_path).unwrap();
    let at = text.match_indices('\n').nth(9).unwrap().0 + 1;
    text.insert_str(at, "not json\n");
    std::fs::write(&pm_path, text).unwrap();

    let summary = audit(&dir).unwrap();
    let c = &summary.totals;

    // Independent counts from the raw files.
    let inv_pids: HashSet<i64> = invs.iter().filter_map(|v| v["pid"].as_i64()).collect();
    let sample_pids: HashSet<i64> = samples.iter().filter_map(|v| v["pid"].as_i64()).collect();
    let failed = invs
        .iter()
        .filter(|v| {
            v["exit_code"].as_i64().is_some_and(|c| c != 0) || v["signal"].as_i64().is_some()
        })
        .count() as u64;
    let mut seen: HashMap<i64, i64> = HashMap::new();
    let mut monotonic = 0;
    for s in &samples {
        let (pid, ts) = (s["pid"].as_i64().unwrap(), s["ts_ms"].as_i64().unwrap());
        let zero_len = s["dt_ms"].as_i64() == Some(0);
        if seen
            .insert(pid, ts)
            .is_some_and(|prev| ts < prev || (ts == prev && !zero_len))
        {
            monotonic += 1;
        }
    }
    assert_eq!(c.invocations, invs.len() as u64);
    assert_eq!(c.samples, samples.len() as u64);
    assert_eq!(c.distinct_pids_invocations, inv_pids.len() as u64);
    assert_eq!(c.distinct_pids_samples, sample_pids.len() as u64);
    assert_eq!(
        c.matched_pids,
        inv_pids.intersection(&sample_pids).count() as u64
    );
    assert_eq!(c.failed_tasks, failed);
    assert_eq!(failed, 8);
    assert_eq!(c.missing_invocation_fields, [1, 0, 0, 0, 0]);
    assert_eq!(c.order_violations, 1);
    assert_eq!(c.negative_dt, 1);
    assert_eq!(c.monotonic_violations, monotonic);
    assert_eq!(monotonic, 1);
    assert_eq!(c.events_lost, 3);
    assert_eq!(c.bad_lines, 1);
    // Join samples to tasks here by (pid, start ≤ ts ≤ end), preferring the
    // run the sample's interval lies in when two runs touch.
    let mut per_task: HashMap<usize, (f64, i64, i64, i64)> = HashMap::new();
    for s in &samples {
        let (pid, ts, dt) = (
            s["pid"].as_i64().unwrap(),
            s["ts_ms"].as_i64().unwrap(),
            s["dt_ms"].as_i64().unwrap(),
        );
        let hits: Vec<usize> = (0..invs.len())
            .filter(|&i| {
                invs[i]["pid"].as_i64() == Some(pid)
                    && invs[i]["ts_start"].as_i64().unwrap() <= ts
                    && ts <= invs[i]["ts_end"].as_i64().unwrap()
            })
            .collect();
        let task = match hits.as_slice() {
            [] => continue,
            [one] => *one,
            many => *many
                .iter()
                .find(|&&i| invs[i]["ts_start"].as_i64().unwrap() <= ts - dt.max(0))
                .unwrap(),
        };
        let e = per_task.entry(task).or_insert((0.0, 0, i64::MAX, i64::MIN));
        e.0 += s["cpu_ms"].as_f64().unwrap();
        e.1 += dt;
        e.2 = e.2.min(ts - dt);
        e.3 = e.3.max(ts);
    }
    let (mut offenders, mut max_dev, mut tiling) = (0, 0.0f64, 0);
    for (&i, &(cpu, sum_dt, from, last)) in &per_task {
        let (start, end) = (
            invs[i]["ts_start"].as_i64().unwrap(),
            invs[i]["ts_end"].as_i64().unwrap(),
        );
        if sum_dt != end - start || from != start || last != end {
            tiling += 1;
        }
        if let Some(exact) = invs[i]["cpu_ms"].as_f64() {
            let dev = (cpu - exact).abs();
            max_dev = max_dev.max(dev);
            if dev > 1.0f64.max(0.001 * exact) {
                offenders += 1;
            }
        }
    }
    assert_eq!(c.cpu_offenders, offenders);
    assert!(offenders >= 3, "planted offender, hole and duplicate");
    assert!((c.cpu_max_abs_dev_ms - max_dev).abs() < 1e-9);
    assert_eq!(c.tiling_mismatches, tiling);
    assert!((1..=2).contains(&tiling), "{tiling}");
    assert_eq!(c.tasks_with_samples as usize, per_task.len());
    assert_eq!(c.tasks, 81);
    assert_eq!(c.tasks_with_samples, 80, "the ghost task has no sample");
    assert!(!summary.ok);
    for needle in [
        "lost 3 event",
        "failed",
        "tile",
        "off their exact total",
        "ts_enqueue ≤ ts_start",
        "dt_ms < 0",
        "unparseable",
        "lack trace_id",
        "have no sample",
    ] {
        assert!(
            summary.problems.iter().any(|p| p.contains(needle)),
            "no problem mentions {needle:?}: {:#?}",
            summary.problems
        );
    }
    let md = &summary.nodes[0].markdown;
    assert!(md.contains("- invocations.trace_id: 1 (1.23%)"), "{md}");
    assert!(md.contains("- events lost: 3"));
    assert!(
        md.contains("| defects-000003 (pid"),
        "offender listed: {md}"
    );
}

fn write_lines(path: &Path, values: &[serde_json::Value]) {
    let mut text = String::new();
    for v in values {
        text.push_str(&serde_json::to_string(v).unwrap());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn run_directory_of_several_runs_is_rejected_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let err = audit(tmp.path()).unwrap_err();
    assert!(
        err.to_string().contains("neither a node directory"),
        "{err}"
    );
    write_run(&tmp.path().join("r"), &[SynthNode::new("x", 2)]);
    assert!(audit(&tmp.path().join("r")).unwrap().ok);
}
