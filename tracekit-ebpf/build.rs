//! Generates the Rust side of the kernel/user ABI from `bpf/tracekit.h`, so
//! the ABI is written once, in the header the kernel program includes.

use std::path::PathBuf;

use bindgen::callbacks::{IntKind, ParseCallbacks};

/// Array lengths are `usize` in Rust; every other constant `u32`.
#[derive(Debug)]
struct Kinds;

impl ParseCallbacks for Kinds {
    fn int_macro(&self, name: &str, _value: i64) -> Option<IntKind> {
        Some(match name {
            "TK_COMM_LEN" | "TK_FILENAME_LEN" => IntKind::Custom {
                name: "usize",
                is_signed: false,
            },
            _ => IntKind::U32,
        })
    }
}

fn main() {
    let header = PathBuf::from("bpf/tracekit.h");
    println!("cargo:rerun-if-changed={}", header.display());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("abi.rs");
    let generated = bindgen::Builder::default()
        .header(header.to_string_lossy())
        .allowlist_type("tk_.*")
        .allowlist_var("TK_.*")
        .use_core()
        .derive_default(true)
        .derive_partialeq(true)
        .derive_eq(true)
        .layout_tests(false)
        .parse_callbacks(Box::new(Kinds))
        .generate();
    let bindings = match generated {
        Ok(b) => b,
        Err(e) => {
            eprintln!(
                "generating the ABI from {}: {e} (bindgen needs libclang: apt-get install -y clang)",
                header.display()
            );
            std::process::exit(1);
        }
    };
    if let Err(e) = bindings.write_to_file(&out) {
        eprintln!("writing {}: {e}", out.display());
        std::process::exit(1);
    }
}
