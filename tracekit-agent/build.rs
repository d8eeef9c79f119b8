//! Compiles the eBPF object into OUT_DIR so a plain `cargo build` embeds it.

fn main() {
    commit();
    for src in tracekit_ebpf::build::sources() {
        println!("cargo:rerun-if-changed={}", src.display());
    }
    println!("cargo:rerun-if-env-changed=CLANG");
    let out =
        std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"))
            .join("tracekit.bpf.o");
    if let Err(e) = tracekit_ebpf::build::compile(&out) {
        // One line that says what to install; cargo shows it as the error.
        eprintln!("error: {e}");
        println!("cargo:warning={}", e.0.lines().next().unwrap_or_default());
        std::process::exit(1);
    }
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
