//! Compiling the kernel program, shared by the agent's build script and
//! `cargo xtask build-ebpf` so both use the same flags.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Directory of the C sources.
pub fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bpf")
}

/// Files the object depends on (for `cargo:rerun-if-changed`).
pub fn sources() -> Vec<PathBuf> {
    ["tracekit.bpf.c", "tracekit.h", "kernel.h"]
        .iter()
        .map(|f| source_dir().join(f))
        .collect()
}

/// Why the object could not be built: one line that says what to do.
#[derive(Debug)]
pub struct BuildError(pub String);

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BuildError {}

/// The clang to use: `$CLANG`, else the first of clang, clang-19 … clang-14.
pub fn find_clang() -> Result<PathBuf, BuildError> {
    let runs = |c: &std::ffi::OsStr| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if let Some(c) = std::env::var_os("CLANG") {
        if runs(&c) {
            return Ok(PathBuf::from(c));
        }
        return Err(BuildError(format!(
            "clang not found at CLANG={}: install it with `apt-get install -y clang libbpf-dev`",
            PathBuf::from(c).display()
        )));
    }
    let names = [
        "clang", "clang-19", "clang-18", "clang-17", "clang-16", "clang-15", "clang-14",
    ];
    for name in names {
        if runs(std::ffi::OsStr::new(name)) {
            return Ok(PathBuf::from(name));
        }
    }
    Err(BuildError(
        "clang not found: install it with `apt-get install -y clang libbpf-dev` (or set CLANG)"
            .into(),
    ))
}

/// Compile `bpf/tracekit.bpf.c` to the BPF object `out`.
pub fn compile(out: &Path) -> Result<(), BuildError> {
    compile_source("tracekit.bpf.c", out)
}

/// Compile `bpf/<name>` (a program of this directory) to the BPF object `out`.
pub fn compile_source(name: &str, out: &Path) -> Result<(), BuildError> {
    let clang = find_clang()?;
    if !Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        return Err(BuildError(
            "libbpf headers not found: install them with `apt-get install -y libbpf-dev`".into(),
        ));
    }
    let (arch, triple) = match std::env::consts::ARCH {
        "aarch64" => ("arm64", "aarch64-linux-gnu"),
        "riscv64" => ("riscv", "riscv64-linux-gnu"),
        _ => ("x86", "x86_64-linux-gnu"),
    };
    let src = source_dir();
    let output = Command::new(&clang)
        .args([
            "-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror",
        ])
        .arg(format!("-D__TARGET_ARCH_{arch}"))
        .arg(format!("-I/usr/include/{triple}"))
        .arg("-I")
        .arg(&src)
        .arg("-c")
        .arg(src.join(name))
        .arg("-o")
        .arg(out)
        .output()
        .map_err(|e| BuildError(format!("running {}: {e}", clang.display())))?;
    if !output.status.success() {
        return Err(BuildError(format!(
            "{} failed to compile the eBPF program:\n{}",
            clang.display(),
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(())
}

/// Tell cargo the commit this is built from (`TRACEKIT_COMMIT`, for
/// `--version` and `node_meta.json`; "unknown" outside a git checkout). For
/// build scripts of crates one level below the workspace root.
pub fn emit_commit() {
    println!("cargo:rerun-if-changed=../.git/logs/HEAD");
    let out = Command::new("git")
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
