//! The command-line surface as a binary mounts it.

use clap::{Parser, Subcommand};
use tracekit_trace::cli::{AuditArgs, ExportArgs, run_audit, run_export};
use tracekit_trace::export::TaskIdMode;
use tracekit_trace::opendc::{CpuSizing, UnmeasuredCpu};
use tracekit_trace::synth::{SynthNode, write_node};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    ExportOpendc(ExportArgs),
    Audit(AuditArgs),
}

#[test]
fn arguments_parse() {
    let cli = Cli::try_parse_from([
        "x",
        "export-opendc",
        "--input",
        "in",
        "--output",
        "out",
        "--task-id-mode",
        "sequential",
    ])
    .unwrap();
    let Cmd::ExportOpendc(a) = cli.cmd else {
        panic!("export")
    };
    assert_eq!(a.task_id_mode, TaskIdMode::Sequential);
    let cli = Cli::try_parse_from(["x", "export-opendc", "--input", "i", "--output", "o"]).unwrap();
    let Cmd::ExportOpendc(a) = cli.cmd else {
        panic!("export")
    };
    assert_eq!(a.task_id_mode, TaskIdMode::Auto);
    assert_eq!(a.cpu_sizing, CpuSizing::Peak);
    assert_eq!(a.unmeasured_cpu, UnmeasuredCpu::Skip);
    assert!(!a.correct_clock);
    let cli = Cli::try_parse_from([
        "x",
        "export-opendc",
        "--input",
        "i",
        "--output",
        "o",
        "--cpu-sizing",
        "p95",
        "--unmeasured-cpu",
        "shape-median",
        "--correct-clock",
    ])
    .unwrap();
    let Cmd::ExportOpendc(a) = cli.cmd else {
        panic!("export")
    };
    assert!(a.correct_clock && a.options().correct_clock);
    assert_eq!(a.cpu_sizing, CpuSizing::P95);
    assert_eq!(a.unmeasured_cpu, UnmeasuredCpu::ShapeMedian);
    for (flag, bad) in [("--cpu-sizing", "p50"), ("--unmeasured-cpu", "zero")] {
        assert!(
            Cli::try_parse_from([
                "x",
                "export-opendc",
                "--input",
                "i",
                "--output",
                "o",
                flag,
                bad
            ])
            .is_err()
        );
    }
    assert!(
        Cli::try_parse_from([
            "x",
            "export-opendc",
            "--input",
            "i",
            "--output",
            "o",
            "--task-id-mode",
            "x"
        ])
        .is_err()
    );
    let cli = Cli::try_parse_from(["x", "audit", "--input", "d", "--write", "--strict"]).unwrap();
    let Cmd::Audit(a) = cli.cmd else {
        panic!("audit")
    };
    assert!(a.write && a.strict);
    assert_eq!(a.options().clock_skew_warn_ms, 50.0);
    let cli =
        Cli::try_parse_from(["x", "audit", "--input", "d", "--clock-skew-warn-ms", "5"]).unwrap();
    let Cmd::Audit(a) = cli.cmd else {
        panic!("audit")
    };
    assert_eq!(a.options().clock_skew_warn_ms, 5.0);
}

#[test]
fn strict_audit_fails_on_problems_and_export_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let node = tmp.path().join("node");
    let mut cfg = SynthNode::new("n", 12);
    cfg.samples_per_task = 3;
    cfg.interval_ms = 100;
    cfg.fail_every = 5;
    write_node(&node, &cfg).unwrap();

    let lenient = AuditArgs {
        input: node.clone(),
        write: true,
        strict: false,
        clock_skew_warn_ms: 50.0,
    };
    let summary = run_audit(&lenient).unwrap();
    assert!(!summary.ok);
    assert_eq!(summary.totals.failed_tasks, 2);
    let md = std::fs::read_to_string(node.join("CTS/audit_report.md")).unwrap();
    assert!(
        md.contains("- non-zero exit or killed by a signal: 2"),
        "{md}"
    );
    assert!(md.contains("n-000004 (pid"), "{md}");

    let strict = AuditArgs {
        strict: true,
        ..lenient
    };
    let err = run_audit(&strict).unwrap_err();
    assert!(err.to_string().contains("2 problem(s)") || err.to_string().contains("problem"));

    let out = tmp.path().join("out");
    run_export(&ExportArgs {
        input: node,
        output: out.clone(),
        task_id_mode: TaskIdMode::Auto,
        cpu_sizing: CpuSizing::Peak,
        unmeasured_cpu: UnmeasuredCpu::Skip,
        correct_clock: false,
    })
    .unwrap();
    for f in [
        "tasks.parquet",
        "fragments.parquet",
        "small_datacenter.json",
        "experiment.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
        assert!(!out.join(format!("{f}.tmp")).exists(), "{f}.tmp");
    }
}
