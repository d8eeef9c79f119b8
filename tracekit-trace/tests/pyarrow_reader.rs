//! An independent reader: pyarrow, installed from PyPI into a private venv,
//! checks the schema (types, required) and every value of the export.
//!
//! The venv is cached under the cargo target directory (`pyarrow-venv`) so it
//! is built once. Set `TRACEKIT_SKIP_PYARROW=1` to skip where PyPI cannot be
//! reached (the test says so instead of passing quietly).
#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use tracekit_trace::export::{ExportOptions, TaskIdMode, export_opendc, export_opendc_with};
use tracekit_trace::opendc::{CpuSizing, UnmeasuredCpu};

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

fn has_pyarrow(venv: &Path) -> bool {
    Command::new(venv.join("bin/python"))
        .args(["-c", "import pyarrow"])
        .status()
        .is_ok_and(|s| s.success())
}

/// The cached venv with pyarrow, built on first use (in a temporary
/// directory renamed into place, so concurrent runs never see half a venv).
fn pyarrow_venv() -> PathBuf {
    let venv = target_dir().join("pyarrow-venv");
    if has_pyarrow(&venv) {
        return venv;
    }
    std::fs::create_dir_all(target_dir()).unwrap();
    let building = target_dir().join(format!("pyarrow-venv.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&building)
        .status()
        .expect("running python3 -m venv");
    assert!(ok.success(), "python3 -m venv failed");
    let ok = Command::new(building.join("bin/pip"))
        .args(["install", "--quiet", "pyarrow"])
        .status()
        .expect("running pip");
    assert!(
        ok.success(),
        "pip install pyarrow failed (is PyPI reachable?)"
    );
    if !has_pyarrow(&venv) {
        let _ = std::fs::remove_dir_all(&venv);
        if std::fs::rename(&building, &venv).is_err() && has_pyarrow(&venv) {
            // Another run won the race; use its venv.
            let _ = std::fs::remove_dir_all(&building);
        }
    } else {
        let _ = std::fs::remove_dir_all(&building);
    }
    // A venv's scripts hold absolute paths; run python by path, which works
    // after the rename since the interpreter resolves its prefix from pyvenv.cfg.
    assert!(
        has_pyarrow(&venv),
        "pyarrow not importable from {}",
        venv.display()
    );
    venv
}

fn run_check(venv: &Path, run: &Path, out: &Path) {
    run_check_as(venv, run, out, &ExportOptions::default());
}

fn run_check_as(venv: &Path, run: &Path, out: &Path, opts: &ExportOptions) {
    let (ok, text) = check_output(venv, run, out, opts);
    assert!(ok, "pyarrow check failed:\n{text}");
    assert!(text.starts_with("ok:"), "{text}");
}

/// (passed, stdout + stderr) of the Python check.
fn check_output(venv: &Path, run: &Path, out: &Path, opts: &ExportOptions) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pyarrow_check.py");
    let output = Command::new(venv.join("bin/python"))
        .arg(script)
        .arg(run)
        .arg(out)
        .arg(opts.cpu_sizing.to_string())
        .arg(opts.unmeasured.to_string())
        .output()
        .expect("running the pyarrow check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn pyarrow_reads_the_export_as_opendc_wants_it() {
    if std::env::var_os("TRACEKIT_SKIP_PYARROW").is_some() {
        eprintln!(
            "SKIPPED: TRACEKIT_SKIP_PYARROW is set; the independent pyarrow check did not run"
        );
        return;
    }
    let venv = pyarrow_venv();
    let tmp = tempfile::tempdir().unwrap();

    // Two nodes, PIDs reused within and across them: sequential ids.
    let run = tmp.path().join("run");
    common::two_node_run(&run, 120);
    let out = tmp.path().join("opendc");
    let report = export_opendc(&run, &out, TaskIdMode::Auto).unwrap();
    assert_eq!(report.id_mode, TaskIdMode::Sequential);
    run_check(&venv, &run, &out);

    // One node with unique PIDs: the PIDs are the ids.
    let run2 = tmp.path().join("run2");
    let mut cfg = tracekit_trace::synth::SynthNode::new("solo", 40);
    cfg.samples_per_task = 10;
    cfg.interval_ms = 250;
    cfg.pid_span = 100;
    common::write_run(&run2, &[cfg]);
    let out2 = tmp.path().join("opendc2");
    let report = export_opendc(&run2, &out2, TaskIdMode::Auto).unwrap();
    assert_eq!(report.id_mode, TaskIdMode::Pid);
    run_check(&venv, &run2, &out2);

    // Real traces of the eBPF tracer.
    let real = common::real_run(&tmp.path().join("real"));
    let out3 = tmp.path().join("opendc3");
    export_opendc(&real, &out3, TaskIdMode::Auto).unwrap();
    run_check(&venv, &real, &out3);

    // The original's P95 sizing, behind its flag: every task still fits.
    let p95 = ExportOptions {
        cpu_sizing: CpuSizing::P95,
        ..Default::default()
    };
    let out4 = tmp.path().join("opendc4");
    let report = export_opendc_with(&run, &out4, &p95).unwrap();
    assert!(report.clipped_cpu_ms > 0.0 && report.clipped_cpu_ms == report.p95_clip_ms);
    run_check_as(&venv, &run, &out4, &p95);

    // Traces of the original collector: unknown CPU skipped, or given the
    // original's quarter core.
    let legacy = tmp.path().join("legacy");
    common::original_node(&legacy);
    for unmeasured in [UnmeasuredCpu::Skip, UnmeasuredCpu::Original] {
        let opts = ExportOptions {
            unmeasured,
            ..Default::default()
        };
        let out5 = tmp.path().join(format!("opendc-legacy-{unmeasured}"));
        export_opendc_with(&legacy, &out5, &opts).unwrap();
        run_check_as(&venv, &legacy, &out5, &opts);
    }

    // The check is not vacuous: one node's export against another's trace
    // fails, and so does a P95 export checked as peak.
    let (ok, text) = check_output(&venv, &run, &out2, &ExportOptions::default());
    assert!(!ok && text.contains("error(s)"), "{text}");
    let (ok, text) = check_output(&venv, &run, &out4, &ExportOptions::default());
    assert!(!ok && text.contains("exceeds cpu_capacity"), "{text}");
}
