//! `report.html` and `compare.html` in a real browser: headless Chromium
//! renders each page to a PNG, which must show the charts (not blank, the
//! profile colours drawn), and its DOM must hold every chart.
//!
//! Needs Debian's `chromium` (`.ci/run` installs it). Without it the tests
//! say SKIPPED, except under CI (`CI` set), where they fail.
//! `TRACEKIT_SCREENSHOTS=DIR` keeps the PNGs for a person to look at.
#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod runs;

use std::path::{Path, PathBuf};
use std::process::Command;

use runs::{opendc_of, sched, synth_run};

/// The browser, or None (SKIPPED) outside CI.
fn chromium() -> Option<PathBuf> {
    for name in ["chromium", "chromium-browser"] {
        if let Ok(out) = Command::new("which").arg(name).output()
            && out.status.success()
        {
            let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
            return Some(PathBuf::from(path));
        }
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "chromium is not installed (apt-get install -y chromium): CI must run the browser test"
        );
    }
    eprintln!("SKIPPED: chromium is not installed (apt-get install -y chromium)");
    None
}

/// Run chromium headless on `page` with `mode` (`--screenshot=…` or
/// `--dump-dom`); returns stdout.
fn browse(browser: &Path, page: &Path, mode: &str, width: u32, height: u32) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--window-size={width},{height}"))
        .arg(mode)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("running chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Decoded RGBA pixels.
fn pixels(png_path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
    let decoder = png::Decoder::new(std::fs::File::open(png_path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let step = info.color_type.samples();
    assert!(step >= 3, "colour PNG expected, got {:?}", info.color_type);
    let px = buf[..info.buffer_size()]
        .chunks(step)
        .map(|c| [c[0], c[1], c[2]])
        .collect();
    (info.width, info.height, px)
}

/// Pixels close to `hex` (`#rrggbb`).
fn count_colour(px: &[[u8; 3]], hex: &str) -> usize {
    let v = u32::from_str_radix(&hex[1..], 16).unwrap();
    let want = [(v >> 16) as u8, (v >> 8) as u8, v as u8];
    px.iter()
        .filter(|p| p.iter().zip(want).all(|(a, b)| a.abs_diff(b) <= 6))
        .count()
}

fn check_page(browser: &Path, page: &Path, name: &str, ids: &[&str], colours: &[&str]) -> String {
    let shot_dir = tempfile::tempdir().unwrap();
    let shot = shot_dir.path().join(format!("{name}.png"));
    browse(
        browser,
        page,
        &format!("--screenshot={}", shot.display()),
        1100,
        3000,
    );
    if let Some(keep) = std::env::var_os("TRACEKIT_SCREENSHOTS") {
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::copy(&shot, Path::new(&keep).join(format!("{name}.png"))).unwrap();
    }
    let (w, h, px) = pixels(&shot);
    assert_eq!((w, h), (1100, 3000));
    let white = px.iter().filter(|p| p.iter().all(|&c| c >= 250)).count();
    let inked = px.len() - white;
    assert!(
        inked * 100 > px.len(),
        "{name}: only {inked} of {} pixels drawn",
        px.len()
    );
    for c in colours {
        let n = count_colour(&px, c);
        assert!(n > 200, "{name}: colour {c} drawn on {n} pixels only");
    }
    let dom = browse(browser, page, "--dump-dom", 1100, 3000);
    for id in ids {
        assert!(
            dom.contains(&format!("<svg id=\"{id}\"")),
            "{name}: no chart {id} in the DOM"
        );
    }
    dom
}

#[test]
fn report_html_draws_every_chart_in_chromium() {
    let Some(browser) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (run, _) = synth_run(dir.path(), 2, 30, 8, 500);
    let out = dir.path().join("report");
    sched()
        .args(["report", "--input"])
        .arg(&run)
        .arg("--output")
        .arg(&out)
        .assert()
        .success();
    let dom = check_page(
        &browser,
        &out.join("report.html"),
        "report",
        &[
            "chart-gantt",
            "chart-cores",
            "chart-rss",
            "chart-tasks",
            "chart-completions",
            "chart-wait-cdf",
        ],
        // The first two profiles' colours (Gantt bars, node curves).
        &["#4e79a7", "#f28e2b"],
    );
    assert_eq!(dom.matches("<g class=\"task ").count(), 60);
    assert!(dom.matches("<path class=\"series\"").count() >= 8);
}

#[test]
fn compare_html_draws_both_curves_in_chromium() {
    let Some(browser) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (run, _) = synth_run(dir.path(), 2, 30, 8, 500);
    let sim = dir.path().join("opendc");
    opendc_of(&run, &sim, true, 15_000, 1.05);
    let out = dir.path().join("compare");
    sched()
        .args(["compare", "--run"])
        .arg(&run)
        .arg("--opendc")
        .arg(&sim)
        .arg("--output")
        .arg(&out)
        .assert()
        .success();
    let dom = check_page(
        &browser,
        &out.join("compare.html"),
        "compare",
        &[
            "chart-cumulative",
            "chart-throughput",
            "chart-wait-cdf",
            "chart-run-error",
        ],
        &["#4e79a7", "#f28e2b"],
    );
    assert!(dom.contains("FAIL"));
    assert!(dom.matches("data-series=\"simulated\"").count() >= 3);
}
