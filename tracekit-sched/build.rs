//! Records the commit this is built from.

fn main() {
    tracekit_ebpf::build::emit_commit();
}
