//! Records the commit this is built from.

fn main() {
    commit();
}

/// The commit this is built from, for `--version` and `node_meta.json`
/// ("unknown" outside a git checkout).
fn commit() {
    println!("cargo:rerun-if-changed=../.git/logs/HEAD");
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output();
    let sha = out
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    println!(
        "cargo:rustc-env=TRACEKIT_COMMIT={}",
        sha.unwrap_or_else(|| "unknown".into())
    );
}
