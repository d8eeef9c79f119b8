//! The kernel/user ABI: every shared struct's size and field offsets in
//! `bpf/tracekit.h`, as the host C compiler lays them out, must equal those
//! of the Rust types generated from it (bindgen can misread a header; the C
//! compiler is the reference). BPF and x86-64/arm64 share the C layout rules
//! for these types.

use std::collections::HashMap;
use std::mem::{offset_of, size_of};
use std::process::Command;

use tracekit_ebpf::*;

/// Compile a probe that prints `name value` for every size, offset and
/// constant, and parse its output.
fn c_layout() -> HashMap<String, u64> {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path().join("probe.c");
    let bin = dir.path().join("probe");
    let mut body = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include \"tracekit.h\"\nint main(void){\n",
    );
    let structs: [(&str, &[&str]); 5] = [
        (
            "tk_proc",
            &[
                "cpu_ns",
                "start_ns",
                "exit_ns",
                "threads",
                "ppid",
                "exit_code",
                "flags",
                "image",
                "_pad",
                "signal",
                "rss_pages",
                "task",
                "last_rt",
                "last_cpu_ns",
                "last_rss_pages",
            ],
        ),
        (
            "tk_event",
            &[
                "kind",
                "pid",
                "ppid",
                "exit_code",
                "ts_ns",
                "start_ns",
                "cpu_ns",
                "rss_pages",
                "image",
                "_pad",
                "comm",
                "filename",
            ],
        ),
        ("tk_sample", &["pid", "rss_pages", "cpu_ns"]),
        ("tk_samples", &["kind", "count", "ts_ns", "samples"]),
        ("tk_sampler", &["cpu", "next", "last_ns", "tick_ns"]),
    ];
    for (s, fields) in structs {
        body += &format!("printf(\"{s}.size %zu\\n\", sizeof(struct {s}));\n");
        for f in fields {
            body += &format!("printf(\"{s}.{f} %zu\\n\", offsetof(struct {s}, {f}));\n");
        }
    }
    for c in [
        "TK_COMM_LEN",
        "TK_FILENAME_LEN",
        "TK_MAX_COMMS",
        "TK_MAX_WATCHED",
        "TK_SCOPE_WORKER",
        "TK_SCOPE_HOST",
        "TK_EV_EXEC",
        "TK_EV_FORK",
        "TK_EV_EXIT",
        "TK_EV_SAMPLES",
        "TK_SLICE",
        "TK_MAX_THREADS",
        "TK_PROC_GROUP_DEAD",
        "TK_PROC_EXITED",
        "TK_STAT_RINGBUF_LOST",
        "TK_STAT_PROCS_FULL",
        "TK_STAT_SCOPE_FULL",
        "TK_STAT_WALK_CUT",
        "TK_STAT_SAMPLE_DROPPED",
        "TK_STAT_SAMPLER_MOVED",
        "TK_STAT_SAMPLER_RUNS",
        "TK_STAT_SAMPLER_RUN_NS",
        "TK_STAT_SAMPLER_MAX_NS",
        "TK_STAT_SAMPLER_SLOW_RUNS",
        "TK_SLOW_RUN_NS",
        "TK_STAT_MAX",
    ] {
        body += &format!("printf(\"{c} %lu\\n\", (unsigned long)({c}));\n");
    }
    body += "return 0;}\n";
    std::fs::write(&src, body).expect("write probe");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .arg("-I")
        .arg(tracekit_ebpf_bpf_dir())
        .arg(&src)
        .arg("-o")
        .arg(&bin)
        .status()
        .unwrap_or_else(|e| panic!("running {cc}: {e}"));
    assert!(status.success(), "compiling the ABI probe failed");
    let out = Command::new(&bin).output().expect("run probe");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').expect("name value");
            (k.to_string(), v.parse().expect("number"))
        })
        .collect()
}

fn tracekit_ebpf_bpf_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bpf")
}

#[test]
fn abi_matches_c() {
    let c = c_layout();
    let rust: Vec<(&str, u64)> = vec![
        ("tk_proc.size", size_of::<TkProc>() as u64),
        ("tk_proc.cpu_ns", offset_of!(TkProc, cpu_ns) as u64),
        ("tk_proc.start_ns", offset_of!(TkProc, start_ns) as u64),
        ("tk_proc.exit_ns", offset_of!(TkProc, exit_ns) as u64),
        ("tk_proc.threads", offset_of!(TkProc, threads) as u64),
        ("tk_proc.ppid", offset_of!(TkProc, ppid) as u64),
        ("tk_proc.exit_code", offset_of!(TkProc, exit_code) as u64),
        ("tk_proc.flags", offset_of!(TkProc, flags) as u64),
        ("tk_proc.image", offset_of!(TkProc, image) as u64),
        ("tk_proc._pad", offset_of!(TkProc, _pad) as u64),
        ("tk_proc.signal", offset_of!(TkProc, signal) as u64),
        ("tk_proc.rss_pages", offset_of!(TkProc, rss_pages) as u64),
        ("tk_proc.task", offset_of!(TkProc, task) as u64),
        ("tk_proc.last_rt", offset_of!(TkProc, last_rt) as u64),
        (
            "tk_proc.last_cpu_ns",
            offset_of!(TkProc, last_cpu_ns) as u64,
        ),
        (
            "tk_proc.last_rss_pages",
            offset_of!(TkProc, last_rss_pages) as u64,
        ),
        ("tk_event.size", size_of::<TkEvent>() as u64),
        ("tk_event.kind", offset_of!(TkEvent, kind) as u64),
        ("tk_event.pid", offset_of!(TkEvent, pid) as u64),
        ("tk_event.ppid", offset_of!(TkEvent, ppid) as u64),
        ("tk_event.exit_code", offset_of!(TkEvent, exit_code) as u64),
        ("tk_event.ts_ns", offset_of!(TkEvent, ts_ns) as u64),
        ("tk_event.start_ns", offset_of!(TkEvent, start_ns) as u64),
        ("tk_event.cpu_ns", offset_of!(TkEvent, cpu_ns) as u64),
        ("tk_event.rss_pages", offset_of!(TkEvent, rss_pages) as u64),
        ("tk_event.image", offset_of!(TkEvent, image) as u64),
        ("tk_event._pad", offset_of!(TkEvent, _pad) as u64),
        ("tk_event.comm", offset_of!(TkEvent, comm) as u64),
        ("tk_event.filename", offset_of!(TkEvent, filename) as u64),
        ("tk_sampler.size", size_of::<TkSampler>() as u64),
        ("tk_sampler.cpu", offset_of!(TkSampler, cpu) as u64),
        ("tk_sampler.next", offset_of!(TkSampler, next) as u64),
        ("tk_sampler.last_ns", offset_of!(TkSampler, last_ns) as u64),
        ("tk_sampler.tick_ns", offset_of!(TkSampler, tick_ns) as u64),
        ("tk_sample.size", size_of::<TkSample>() as u64),
        ("tk_sample.pid", offset_of!(TkSample, pid) as u64),
        (
            "tk_sample.rss_pages",
            offset_of!(TkSample, rss_pages) as u64,
        ),
        ("tk_sample.cpu_ns", offset_of!(TkSample, cpu_ns) as u64),
        ("tk_samples.size", size_of::<TkSamples>() as u64),
        ("tk_samples.kind", offset_of!(TkSamples, kind) as u64),
        ("tk_samples.count", offset_of!(TkSamples, count) as u64),
        ("tk_samples.ts_ns", offset_of!(TkSamples, ts_ns) as u64),
        ("tk_samples.samples", offset_of!(TkSamples, samples) as u64),
        ("TK_COMM_LEN", TK_COMM_LEN as u64),
        ("TK_FILENAME_LEN", TK_FILENAME_LEN as u64),
        ("TK_MAX_COMMS", TK_MAX_COMMS as u64),
        ("TK_MAX_WATCHED", TK_MAX_WATCHED as u64),
        ("TK_SCOPE_WORKER", TK_SCOPE_WORKER as u64),
        ("TK_SCOPE_HOST", TK_SCOPE_HOST as u64),
        ("TK_EV_EXEC", TK_EV_EXEC as u64),
        ("TK_EV_FORK", TK_EV_FORK as u64),
        ("TK_EV_EXIT", TK_EV_EXIT as u64),
        ("TK_EV_SAMPLES", TK_EV_SAMPLES as u64),
        ("TK_SLICE", TK_SLICE as u64),
        ("TK_MAX_THREADS", TK_MAX_THREADS as u64),
        ("TK_PROC_GROUP_DEAD", TK_PROC_GROUP_DEAD as u64),
        ("TK_PROC_EXITED", TK_PROC_EXITED as u64),
        ("TK_STAT_RINGBUF_LOST", TK_STAT_RINGBUF_LOST as u64),
        ("TK_STAT_PROCS_FULL", TK_STAT_PROCS_FULL as u64),
        ("TK_STAT_SCOPE_FULL", TK_STAT_SCOPE_FULL as u64),
        ("TK_STAT_WALK_CUT", TK_STAT_WALK_CUT as u64),
        ("TK_STAT_SAMPLE_DROPPED", TK_STAT_SAMPLE_DROPPED as u64),
        ("TK_STAT_SAMPLER_MOVED", TK_STAT_SAMPLER_MOVED as u64),
        ("TK_STAT_SAMPLER_RUNS", TK_STAT_SAMPLER_RUNS as u64),
        ("TK_STAT_SAMPLER_RUN_NS", TK_STAT_SAMPLER_RUN_NS as u64),
        ("TK_STAT_SAMPLER_MAX_NS", TK_STAT_SAMPLER_MAX_NS as u64),
        (
            "TK_STAT_SAMPLER_SLOW_RUNS",
            TK_STAT_SAMPLER_SLOW_RUNS as u64,
        ),
        ("TK_SLOW_RUN_NS", TK_SLOW_RUN_NS as u64),
        ("TK_STAT_MAX", TK_STAT_MAX as u64),
    ];
    assert_eq!(
        c.len(),
        rust.len(),
        "the probe and the Rust side list different items"
    );
    for (name, value) in rust {
        assert_eq!(
            c.get(name),
            Some(&value),
            "{name}: C says {:?}, Rust {value}",
            c.get(name)
        );
    }
}
