//! Compiles the eBPF object into OUT_DIR so a plain `cargo build` embeds it.

fn main() {
    tracekit_ebpf::build::emit_commit();
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
