//! The tracer for real: the agent binary, real ffmpeg, real eBPF, as root.
//! These tests share the machine's tracepoints and CPUs, so they run one at a
//! time (`SERIAL`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use tracekit_tests::{
    Offline, epoch_ms, read_json, read_jsonl, require_root, require_tool, test_video, wait_for_file,
};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn ready(test: &str) -> bool {
    require_root(test) && require_tool(test, "ffmpeg") && require_tool(test, "ffprobe")
}

const AGENT: &str = env!("CARGO_BIN_EXE_tracekit-agent");

/// An agent in `trace` mode writing to `<dir>/<run>/`.
struct Agent {
    child: Child,
    node_dir: PathBuf,
}

impl Agent {
    fn start(dir: &Path, run: &str, args: &[&str]) -> Agent {
        let node_dir = dir.join(run);
        let child = Command::new(AGENT)
            .args(["trace", "--run-id", run, "--node-id", "test-node", "--logs"])
            .arg(dir)
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting tracekit-agent");
        wait_for_file(&node_dir.join("node_meta.json"), Duration::from_secs(30))
            .expect("agent did not start");
        Agent { child, node_dir }
    }

    /// SIGTERM and wait; the agent must exit cleanly.
    fn stop(mut self) -> PathBuf {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("waiting for the agent");
        assert!(status.success(), "agent exited with {status}");
        self.node_dir.clone()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run the agent in worker scope on `command` until it ends.
fn trace_command(dir: &Path, run: &str, extra: &[&str], command: &[&str]) -> PathBuf {
    let status = Command::new(AGENT)
        .args(["trace", "--run-id", run, "--node-id", "test-node", "--logs"])
        .arg(dir)
        .args(extra)
        .arg("--")
        .args(command)
        .stdin(Stdio::null())
        .status()
        .expect("running tracekit-agent");
    assert!(status.code().is_some(), "agent died: {status}");
    dir.join(run)
}

fn invocations(node_dir: &Path) -> Vec<Value> {
    read_jsonl(&node_dir.join("CTS/invocations.jsonl")).expect("invocations.jsonl")
}

fn samples(node_dir: &Path) -> Vec<Value> {
    read_jsonl(&node_dir.join("CTS/proc_metrics.jsonl")).expect("proc_metrics.jsonl")
}

/// The invocation record of `pid`.
fn invocation_of(invs: &[Value], pid: u32) -> &Value {
    invs.iter()
        .find(|i| int(i, "pid") == pid as i64)
        .unwrap_or_else(|| panic!("pid {pid} not traced: {invs:?}"))
}

fn int(v: &Value, k: &str) -> i64 {
    v[k].as_i64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

fn float(v: &Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

/// Samples of each pid must tile [ts_start, ts_end] and add up to cpu_ms.
fn check_tiling(node_dir: &Path) {
    let mut by_pid: HashMap<i64, Vec<Value>> = HashMap::new();
    for s in samples(node_dir) {
        by_pid.entry(int(&s, "pid")).or_default().push(s);
    }
    for inv in invocations(node_dir) {
        let pid = int(&inv, "pid");
        let rows = by_pid
            .get(&pid)
            .unwrap_or_else(|| panic!("no samples for {inv}"));
        let dt: i64 = rows.iter().map(|s| int(s, "dt_ms")).sum();
        assert_eq!(
            dt,
            int(&inv, "ts_end") - int(&inv, "ts_start"),
            "tiling of {inv}"
        );
        assert_eq!(
            int(rows.last().expect("a sample"), "ts_ms"),
            int(&inv, "ts_end")
        );
        let cpu: f64 = rows.iter().map(|s| float(s, "cpu_ms")).sum();
        assert!(
            (cpu - float(&inv, "cpu_ms")).abs() < 0.01,
            "samples add to {cpu}, total {}",
            float(&inv, "cpu_ms")
        );
        for w in rows.windows(2) {
            assert!(
                int(&w[1], "ts_ms") > int(&w[0], "ts_ms"),
                "time goes forward"
            );
        }
    }
}

/// Spawn `args`, wait4 it, and return (pid, wait status, rusage CPU ms,
/// epoch ms before spawn, epoch ms after reaping).
fn run_with_rusage(args: &[&str]) -> (u32, i32, f64, i64, i64) {
    let t0 = epoch_ms();
    let child = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawning");
    let pid = child.id();
    let (status, cpu) = reap_with_rusage(child);
    (pid, status, cpu, t0, epoch_ms())
}

/// wait4 `child`: its wait status and rusage CPU ms (user + sys).
fn reap_with_rusage(child: Child) -> (i32, f64) {
    let pid = child.id();
    let mut status = 0;
    // SAFETY: wait4 on our own child with out-params we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid as i32, &mut status, 0, &mut ru) };
    assert_eq!(r, pid as i32, "wait4");
    std::mem::forget(child); // reaped above
    let ms = |tv: libc::timeval| tv.tv_sec as f64 * 1000.0 + tv.tv_usec as f64 / 1000.0;
    (status, ms(ru.ru_utime) + ms(ru.ru_stime))
}

#[test]
fn cpu_time_and_times_match_the_kernel() {
    let _s = serial();
    if !ready("cpu_time_and_times_match_the_kernel") {
        return;
    }
    let input = test_video(640, 360, 4).expect("test video");
    let input = input.to_str().expect("utf-8 path");
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = |name: &str| tmp.path().join(name).to_string_lossy().into_owned();
    let agent = Agent::start(
        tmp.path(),
        "acc",
        &["--scope", "host", "--interval-ms", "100"],
    );
    let (o1, o2, o3) = (out("st.mp4"), out("mt.mp4"), out("hevc.mp4"));
    let encodes: Vec<(&str, Vec<&str>)> = vec![
        (
            "x264 single-threaded",
            vec![
                "ffmpeg",
                "-nostdin",
                "-loglevel",
                "error",
                "-y",
                "-threads",
                "1",
                "-i",
                input,
                "-c:v",
                "libx264",
                "-preset",
                "fast",
                "-threads",
                "1",
                &o1,
            ],
        ),
        (
            "x264 multi-threaded",
            vec![
                "ffmpeg",
                "-nostdin",
                "-loglevel",
                "error",
                "-y",
                "-i",
                input,
                "-c:v",
                "libx264",
                "-preset",
                "medium",
                "-threads",
                "4",
                &o2,
            ],
        ),
        (
            "x265",
            vec![
                "ffmpeg",
                "-nostdin",
                "-loglevel",
                "error",
                "-y",
                "-i",
                input,
                "-c:v",
                "libx265",
                "-preset",
                "ultrafast",
                "-x265-params",
                "log-level=error",
                &o3,
            ],
        ),
    ];
    let mut runs = Vec::new();
    for (name, args) in &encodes {
        let (pid, status, cpu, t0, t1) = run_with_rusage(args);
        assert_eq!(status, 0, "{name} failed");
        runs.push((*name, pid, cpu, t0, t1));
    }
    let dir = agent.stop();
    let invs = invocations(&dir);
    for (name, pid, cpu, t0, t1) in runs {
        let inv = invocation_of(&invs, pid);
        let traced = float(inv, "cpu_ms");
        let err = (traced - cpu).abs() / cpu;
        eprintln!(
            "{name}: traced {traced:.1} ms, rusage {cpu:.1} ms ({:+.3} %), start +{} ms, end -{} ms",
            (traced - cpu) / cpu * 100.0,
            int(inv, "ts_start") - t0,
            t1 - int(inv, "ts_end")
        );
        assert!(
            err <= 0.005,
            "{name}: traced {traced} ms vs rusage {cpu} ms"
        );
        assert!(
            (int(inv, "ts_start") - t0).abs() <= 5,
            "{name}: exec time {inv} vs {t0}"
        );
        assert!(
            (t1 - int(inv, "ts_end")).abs() <= 5,
            "{name}: exit time {inv} vs {t1}"
        );
        assert_eq!(inv["exit_code"], 0);
    }
    check_tiling(&dir);
}

/// A process's CPU clock (clock_getcpuclockid(3)), ms.
fn process_cpu_ms(pid: u32) -> f64 {
    let mut clock: libc::clockid_t = 0;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: out-params we own.
    unsafe {
        assert_eq!(libc::clock_getcpuclockid(pid as i32, &mut clock), 0);
        assert_eq!(libc::clock_gettime(clock, &mut ts), 0);
    }
    ts.tv_sec as f64 * 1000.0 + ts.tv_nsec as f64 / 1e6
}

#[test]
fn adopts_running_processes() {
    let _s = serial();
    if !ready("adopts_running_processes") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    // A multi-threaded encode that is already running when the agent starts.
    let child = Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-f", "lavfi", "-i"])
        .args(["testsrc=size=640x360:rate=25", "-t", "25"])
        .args(["-c:v", "libx264", "-preset", "medium", "-threads", "4"])
        .args(["-f", "null", "-"])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawning ffmpeg");
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(800));
    let before = process_cpu_ms(pid);
    let agent = Agent::start(
        tmp.path(),
        "adopt",
        &["--scope", "host", "--interval-ms", "100"],
    );
    let after = process_cpu_ms(pid);
    let (status, total) = reap_with_rusage(child);
    assert_eq!(status, 0, "ffmpeg failed");
    let dir = agent.stop();
    let invs = invocations(&dir);
    let inv = invocation_of(&invs, pid);
    assert_eq!(inv["pre_existing"], true, "{inv}");
    assert_eq!(inv["exit_code"], 0, "{inv}");
    // It counts from adoption, which came between the two readings.
    let traced = float(inv, "cpu_ms");
    let slack = total * 0.005;
    eprintln!("adopted after {before:.1}-{after:.1} ms of {total:.1} ms: traced {traced:.1} ms");
    assert!(
        traced <= total - before + slack && traced >= total - after - slack,
        "traced {traced} ms; expected {:.1}..{:.1}",
        total - after,
        total - before
    );
    check_tiling(&dir);
}

#[test]
fn exec_from_a_thread_keeps_the_whole_total() {
    let _s = serial();
    if !ready("exec_from_a_thread_keeps_the_whole_total") || !require_tool("exec", "python3") {
        return;
    }
    let input = test_video(640, 360, 2).expect("test video");
    let tmp = tempfile::tempdir().expect("tempdir");
    let agent = Agent::start(tmp.path(), "thread-exec", &["--scope", "host"]);
    // A process whose second thread execs ffmpeg: the kernel ends the main
    // thread and the exec'ing thread becomes the leader under the same pid.
    let script = format!(
        "import os, threading\n\
         def spin():\n    sum(range(3_000_000))\n\
         busy = threading.Thread(target=spin); busy.start(); busy.join()\n\
         threading.Thread(target=lambda: os.execvp('ffmpeg', ['ffmpeg', '-nostdin', \
         '-loglevel', 'error', '-y', '-i', {input:?}, '-c:v', 'libx264', '-preset', 'fast', \
         {out:?}])).start()\n\
         threading.Event().wait()\n",
        input = input.to_str().expect("utf-8 path"),
        out = tmp.path().join("o.mp4").to_str().expect("utf-8 path"),
    );
    // The interpreter itself: a wrapper (a pyenv shim) would add its own
    // children's CPU to the rusage.
    let python = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3");
    let python = String::from_utf8(python.stdout).expect("utf-8");
    let (pid, status, cpu, _, _) = run_with_rusage(&[python.trim(), "-c", &script]);
    assert_eq!(status, 0, "the exec'd ffmpeg failed");
    let dir = agent.stop();
    let invs = invocations(&dir);
    let inv = invocation_of(&invs, pid);
    assert_eq!(inv["comm"], "ffmpeg", "{inv}");
    let traced = float(inv, "cpu_ms");
    eprintln!("exec from a thread: traced {traced:.1} ms, rusage {cpu:.1} ms");
    assert!(
        (traced - cpu).abs() / cpu <= 0.005,
        "traced {traced} ms vs rusage {cpu} ms"
    );
    check_tiling(&dir);
}

/// The kernel samples each live process every interval: evenly spaced
/// lines, each with a CPU figure the process could have used in that time
/// and its resident memory.
#[test]
fn samples_every_interval() {
    let _s = serial();
    if !ready("samples_every_interval") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = trace_command(
        tmp.path(),
        "interval",
        &["--interval-ms", "100"],
        &[
            "ffmpeg",
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1280x720:rate=25",
            "-t",
            "6",
            "-c:v",
            "libx264",
            "-preset",
            "fast",
            "-f",
            "null",
            "-",
        ],
    );
    let invs = invocations(&dir);
    assert_eq!(invs.len(), 1, "{invs:?}");
    let inv = &invs[0];
    let run_ms = int(inv, "ts_end") - int(inv, "ts_start");
    let rows: Vec<Value> = samples(&dir)
        .into_iter()
        .filter(|s| s["pid"] == inv["pid"])
        .collect();
    // The first interval starts at exec and the last ends at exit: both are
    // partial. Every one between is a whole interval.
    let inner = &rows[1..rows.len() - 1];
    println!(
        "{} samples over {run_ms} ms, dt {:?}",
        rows.len(),
        inner.iter().map(|s| int(s, "dt_ms")).collect::<Vec<_>>()
    );
    assert!(
        inner.len() as i64 >= run_ms / 100 - 2,
        "{} whole intervals in {run_ms} ms",
        inner.len()
    );
    // The timer keeps its phase, but on a VM a firing can come late, or be
    // skipped when the vCPU was descheduled for longer than a period: the
    // typical interval is exact, nearly all are within half of one, and
    // none is longer than a few.
    let mut dts: Vec<i64> = inner.iter().map(|s| int(s, "dt_ms")).collect();
    dts.sort_unstable();
    let median = dts[dts.len() / 2];
    assert!((99..=101).contains(&median), "median interval {median} ms");
    let near = dts.iter().filter(|dt| (50..=150).contains(*dt)).count();
    assert!(near * 10 >= dts.len() * 9, "intervals {dts:?}");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    for s in inner {
        let dt = int(s, "dt_ms");
        assert!((1..=500).contains(&dt), "interval of {dt} ms: {s}");
        // A running thread's runtime is current to the last scheduler tick
        // (4 ms at 250 Hz) at each reading.
        let cpu = float(s, "cpu_ms");
        assert!(
            cpu <= dt as f64 * cores + 10.0,
            "more CPU than the machine has: {s}"
        );
        assert!(int(s, "rss_kb") > 1024, "no resident memory: {s}");
    }
    let peak = rows.iter().map(|s| int(s, "rss_kb")).max().unwrap_or(0);
    assert_eq!(inv["rss_peak_kb"], peak, "the peak is the largest sample");
    check_tiling(&dir);
}

#[test]
fn sees_every_short_process() {
    let _s = serial();
    if !ready("sees_every_short_process") {
        return;
    }
    let input = test_video(320, 240, 1).expect("test video");
    let tmp = tempfile::tempdir().expect("tempdir");
    let script = format!(
        "i=0; while [ $i -lt 200 ]; do ffprobe -v error -show_format '{}' >/dev/null || exit 1; i=$((i+1)); done",
        input.display()
    );
    let dir = trace_command(tmp.path(), "short", &[], &["sh", "-c", &script]);
    let invs: Vec<Value> = invocations(&dir)
        .into_iter()
        .filter(|i| i["comm"] == "ffprobe")
        .collect();
    assert_eq!(invs.len(), 200, "exec/exit records of 200 ffprobe runs");
    for inv in &invs {
        assert!(float(inv, "cpu_ms") > 0.0, "no CPU recorded: {inv}");
        assert_eq!(inv["exit_code"], 0, "{inv}");
    }
    // The shell does not match --match: it is not in the trace.
    assert!(invocations(&dir).iter().all(|i| i["comm"] == "ffprobe"));
    check_tiling(&dir);
}

#[test]
fn records_exit_status() {
    let _s = serial();
    if !ready("records_exit_status") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let script = "ffmpeg -version >/dev/null; \
                  ffmpeg -no-such-option 2>/dev/null; \
                  ffmpeg -nostdin -loglevel error -f lavfi -i testsrc -f null - & p=$!; \
                  sleep 1; kill -9 $p; wait $p; exit 0";
    // A pattern that is not a set of exact names: matched in user space.
    let dir = trace_command(
        tmp.path(),
        "status",
        &["--match", "^ff(mpeg|probe)$"],
        &["sh", "-c", script],
    );
    let invs = invocations(&dir);
    assert_eq!(invs.len(), 3, "{invs:?}");
    let mut by_start = invs.clone();
    by_start.sort_by_key(|i| int(i, "ts_start"));
    assert_eq!(
        by_start[0]["exit_code"], 0,
        "ffmpeg -version: {}",
        by_start[0]
    );
    assert_eq!(by_start[1]["exit_code"], 1, "bad option: {}", by_start[1]);
    assert_eq!(by_start[2]["signal"], 9, "SIGKILL: {}", by_start[2]);
    assert!(by_start[2]["exit_code"].is_null());
    assert!(
        float(&by_start[2], "cpu_ms") > 100.0,
        "the killed encode ran: {}",
        by_start[2]
    );
    check_tiling(&dir);
}

#[test]
fn worker_scope_sees_only_its_own() {
    let _s = serial();
    if !ready("worker_scope_sees_only_its_own") {
        return;
    }
    let input = test_video(640, 360, 4).expect("test video");
    let input = input.to_str().expect("utf-8 path");
    let tmp = tempfile::tempdir().expect("tempdir");
    let host = Agent::start(tmp.path(), "host", &["--scope", "host"]);
    let spawn_agent = |run: &str| {
        let out = tmp.path().join(format!("{run}.mp4"));
        Command::new(AGENT)
            .args(["trace", "--run-id", run, "--node-id", run, "--logs"])
            .arg(tmp.path())
            .args([
                "--",
                "ffmpeg",
                "-nostdin",
                "-loglevel",
                "error",
                "-y",
                "-i",
                input,
            ])
            .args(["-c:v", "libx264", "-preset", "veryfast"])
            .arg(&out)
            .spawn()
            .expect("starting an agent")
    };
    let (mut a, mut b) = (spawn_agent("a"), spawn_agent("b"));
    let (pa, pb) = (a.id() as i64, b.id() as i64);
    assert!(a.wait().expect("agent a").success());
    assert!(b.wait().expect("agent b").success());
    let host_dir = host.stop();
    let ia = invocations(&tmp.path().join("a"));
    let ib = invocations(&tmp.path().join("b"));
    assert_eq!(ia.len(), 1, "agent a: {ia:?}");
    assert_eq!(ib.len(), 1, "agent b: {ib:?}");
    assert_eq!(int(&ia[0], "ppid"), pa, "agent a traced another's process");
    assert_eq!(int(&ib[0], "ppid"), pb, "agent b traced another's process");
    let ih = invocations(&host_dir);
    for own in [&ia[0], &ib[0]] {
        assert!(
            ih.iter().any(|h| h["pid"] == own["pid"]),
            "host scope missed {own}"
        );
    }
}

#[test]
fn procfs_collector_writes_the_same_files() {
    let _s = serial();
    if !ready("procfs_collector_writes_the_same_files") {
        return;
    }
    let input = test_video(640, 360, 4).expect("test video");
    let input = input.to_str().expect("utf-8 path");
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("o.mp4");
    let out = out.to_str().expect("utf-8 path");
    let cmd = [
        "ffmpeg",
        "-nostdin",
        "-loglevel",
        "error",
        "-y",
        "-i",
        input,
        "-c:v",
        "libx264",
        "-preset",
        "medium",
        out,
    ];
    let ebpf = trace_command(tmp.path(), "ebpf", &["--interval-ms", "100"], &cmd);
    let procfs = trace_command(
        tmp.path(),
        "procfs",
        &["--collector", "procfs", "--interval-ms", "100"],
        &cmd,
    );
    for dir in [&ebpf, &procfs] {
        for f in [
            "node_meta.json",
            "CTS/invocations.jsonl",
            "CTS/proc_metrics.jsonl",
            "CTS/nodes.json",
            "CTS/tracer_stats.json",
        ] {
            assert!(dir.join(f).exists(), "{} lacks {f}", dir.display());
        }
        assert_eq!(invocations(dir).len(), 1);
        check_tiling(dir);
    }
    let meta: Value = read_json(&procfs.join("node_meta.json")).expect("meta");
    assert_eq!(meta["collector"], "procfs");
    let meta: Value = read_json(&ebpf.join("node_meta.json")).expect("meta");
    assert_eq!(meta["collector"], "ebpf");
    let (e, p) = (&invocations(&ebpf)[0], &invocations(&procfs)[0]);
    // Same keys in both: the formats agree.
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        k.retain(|k| k != "exit_code" && k != "signal" && k != "filename");
        k.sort();
        k
    };
    assert_eq!(keys(e), keys(p));
    // The known loss: procfs misses the tail (and its clock has 10 ms ticks).
    eprintln!(
        "CPU: ebpf {} ms, procfs {} ms",
        float(e, "cpu_ms"),
        float(p, "cpu_ms")
    );
    assert!(float(p, "cpu_ms") <= float(e, "cpu_ms") * 1.05);
}

/// The procfs collector sees a process start only by scanning `/proc`: it
/// must scan every interval even after a spell with nothing to trace.
#[test]
fn idle_procfs_collector_keeps_scanning() {
    let _s = serial();
    if !ready("idle_procfs_collector_keeps_scanning") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    // A process of its own name: `comm` is the name it was run by.
    let probe = tmp.path().join("tkidleprobe");
    std::os::unix::fs::symlink("/bin/sleep", &probe).expect("symlink");
    let agent = Agent::start(
        tmp.path(),
        "idle",
        &[
            "--collector",
            "procfs",
            "--scope",
            "host",
            "--match",
            "^tkidleprobe$",
            "--interval-ms",
            "100",
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));
    let status = Command::new(&probe)
        .arg("1")
        .status()
        .expect("running the probe");
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(300));
    let dir = agent.stop();
    let invs = invocations(&dir);
    assert_eq!(invs.len(), 1, "the 1 s process after 1.5 s idle: {invs:?}");
    assert_eq!(invs[0]["comm"], "tkidleprobe");
}

#[test]
fn falls_back_to_procfs_without_privilege() {
    let _s = serial();
    if !ready("falls_back_to_procfs_without_privilege") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    // Let the unprivileged agent write its trace.
    Command::new("chmod")
        .arg("777")
        .arg(tmp.path())
        .status()
        .expect("chmod");
    let status = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(AGENT)
        .args(["trace", "--run-id", "nopriv", "--logs"])
        .arg(tmp.path())
        .args(["--", "ffmpeg", "-version"])
        .stdout(Stdio::null())
        .status()
        .expect("running the agent as nobody");
    assert!(status.success());
    let meta: Value = read_json(&tmp.path().join("nopriv/node_meta.json")).expect("meta");
    assert_eq!(meta["collector"], "procfs");
    let reason = meta["fallback_reason"]
        .as_str()
        .expect("a reason is recorded");
    assert!(reason.contains("CAP_BPF"), "{reason}");
    // Asking for eBPF explicitly is an error, not a silent fallback.
    let status = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(AGENT)
        .args([
            "trace",
            "--collector",
            "ebpf",
            "--run-id",
            "strict",
            "--logs",
        ])
        .arg(tmp.path())
        .args(["--", "true"])
        .status()
        .expect("running the agent as nobody");
    assert!(!status.success());
}

/// Processes the test started and must end, however it ends.
struct Procs(Vec<Child>);

impl Procs {
    fn spawn(&mut self, program: &Path, args: &[&str]) -> u32 {
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", program.display()));
        let pid = child.id();
        self.0.push(child);
        pid
    }

    /// SIGKILL one of them and reap it.
    fn kill(&mut self, pid: u32) {
        if let Some(i) = self.0.iter().position(|c| c.id() == pid) {
            let mut c = self.0.swap_remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A copy of `system_binary` named `name` in `dir`/`sub`, so its processes
/// get that comm.
fn renamed(dir: &Path, sub: &str, system_binary: &str, name: &str) -> PathBuf {
    let d = dir.join(sub);
    std::fs::create_dir_all(&d).expect("creating a bin dir");
    let path = d.join(name);
    std::fs::copy(system_binary, &path).unwrap_or_else(|e| panic!("copying {system_binary}: {e}"));
    path
}

/// utime + stime of `pid` from /proc/<pid>/stat, ms.
fn stat_cpu_ms(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the comm's closing parenthesis: state is field 3, utime 14.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks * 1000.0 / hz)
}

/// Linear interpolation of (epoch ms, value) readings at `t`.
fn interpolate(readings: &[(i64, f64)], t: i64) -> f64 {
    let after = readings
        .iter()
        .position(|&(ts, _)| ts >= t)
        .unwrap_or_else(|| panic!("no reading at or after {t}"));
    assert!(after > 0, "no reading before {t}");
    let (t0, v0) = readings[after - 1];
    let (t1, v1) = readings[after];
    v0 + (v1 - v0) * (t - t0) as f64 / (t1 - t0).max(1) as f64
}

/// Samples of each pid, in order.
fn samples_by_pid(node_dir: &Path) -> HashMap<i64, Vec<Value>> {
    let mut by_pid: HashMap<i64, Vec<Value>> = HashMap::new();
    for s in samples(node_dir) {
        by_pid.entry(int(&s, "pid")).or_default().push(s);
    }
    by_pid
}

#[test]
fn samples_adopted_processes_at_once() {
    let _s = serial();
    if !ready("samples_adopted_processes_at_once") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let sleeper = renamed(tmp.path(), "s", "/bin/sleep", "tkadopt");
    let spinner = renamed(tmp.path(), "c", "/bin/sh", "tkadopt");
    let mut procs = Procs(Vec::new());
    let sleepers: Vec<u32> = (0..50).map(|_| procs.spawn(&sleeper, &["120"])).collect();
    let spin = procs.spawn(&spinner, &["-c", "while :; do :; done"]);
    std::thread::sleep(Duration::from_millis(300));

    // The spinner's CPU, read from /proc every 20 ms while it is traced.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut readings = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t0 = epoch_ms();
                let cpu = stat_cpu_ms(spin).expect("the spinner's stat");
                let t1 = epoch_ms();
                readings.push(((t0 + t1) / 2, cpu));
                std::thread::sleep(Duration::from_millis(20));
            }
            readings
        })
    };
    let agent = Agent::start(
        tmp.path(),
        "adopt-quiet",
        &[
            "--scope",
            "host",
            "--match",
            "^tkadopt$",
            "--interval-ms",
            "200",
        ],
    );
    let started = epoch_ms();
    // Nothing starts or ends from here on. The agent drains the kernel's
    // samples every 10 s: by then they are in the file.
    std::thread::sleep(Duration::from_millis(10_800));
    let drained = samples_by_pid(&agent.node_dir);
    let dir = agent.stop();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let readings = reader.join().expect("the /proc reader");

    for pid in sleepers.iter().chain([&spin]) {
        assert!(
            drained.get(&(*pid as i64)).is_some_and(|r| r.len() >= 40),
            "pid {pid}: {} samples in the file after the first drain",
            drained.get(&(*pid as i64)).map_or(0, Vec::len)
        );
    }
    let by_pid = samples_by_pid(&dir);
    let window = epoch_ms() - started;
    for pid in sleepers.iter().chain([&spin]) {
        let rows = by_pid
            .get(&(*pid as i64))
            .unwrap_or_else(|| panic!("no samples for pid {pid}"));
        // Every interval but the odd one a VM's timer skips.
        assert!(
            rows.len() as i64 >= (window - 1500) / 200 * 9 / 10,
            "pid {pid}: {} samples in {window} ms",
            rows.len()
        );
        for w in rows.windows(2) {
            assert!(
                int(&w[1], "ts_ms") - int(&w[0], "ts_ms") <= 600,
                "pid {pid}: a gap between {} and {}",
                w[0],
                w[1]
            );
        }
    }
    // The spinner's samples add up to its CPU over the same window.
    let rows = &by_pid[&(spin as i64)];
    let from = int(&rows[0], "ts_ms") - int(&rows[0], "dt_ms");
    let to = int(rows.last().expect("a sample"), "ts_ms");
    let traced: f64 = rows.iter().map(|s| float(s, "cpu_ms")).sum();
    let expected = interpolate(&readings, to) - interpolate(&readings, from);
    eprintln!(
        "spinner: traced {traced:.1} ms, /proc/{spin}/stat {expected:.1} ms over {} ms",
        to - from
    );
    assert!(
        (traced - expected).abs() <= expected * 0.01,
        "traced {traced:.1} ms, /proc says {expected:.1} ms"
    );
}

#[test]
fn recovers_lost_events_at_once() {
    let _s = serial();
    if !ready("recovers_lost_events_at_once") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let burst = renamed(tmp.path(), "b", "/bin/true", "tkburst");
    let sleeper = renamed(tmp.path(), "s", "/bin/sleep", "tkburst");
    let spinner = renamed(tmp.path(), "c", "/bin/sh", "tkburst");
    let mut procs = Procs(Vec::new());
    let agent = Agent::start(
        tmp.path(),
        "lost",
        &[
            "--scope",
            "host",
            "--match",
            "^tkburst$",
            "--interval-ms",
            "100",
        ],
    );
    // Traced through its exec event; its exit will be lost.
    let spin = procs.spawn(&spinner, &["-c", "while :; do :; done"]);
    std::thread::sleep(Duration::from_millis(1500));
    let agent_pid = agent.child.id() as i32;
    // SAFETY: signalling the agent this test started.
    unsafe { libc::kill(agent_pid, libc::SIGSTOP) };
    // Fill the ring buffer (2 MiB) with exec and exit events (208 bytes
    // each) while the agent sleeps: what follows is lost.
    let status = Command::new("/bin/sh")
        .args([
            "-c",
            &format!(
                "i=0; while [ $i -lt 7000 ]; do {}; i=$((i+1)); done",
                burst.display()
            ),
        ])
        .status()
        .expect("the burst");
    assert!(status.success());
    let spin_cpu = process_cpu_ms(spin);
    procs.kill(spin);
    let late = procs.spawn(&sleeper, &["60"]);
    std::thread::sleep(Duration::from_millis(300));
    let resumed = epoch_ms();
    // SAFETY: as above.
    unsafe { libc::kill(agent_pid, libc::SIGCONT) };
    std::thread::sleep(Duration::from_millis(2000));
    let dir = agent.stop();

    let stats: Value = read_json(&dir.join("CTS/tracer_stats.json")).expect("tracer_stats.json");
    assert!(int(&stats, "events_lost") > 0, "nothing was lost: {stats}");
    assert!(int(&stats, "exits_recovered") >= 1, "{stats}");
    // The exit whose event was lost is recorded with its CPU.
    let invs = invocations(&dir);
    let inv = invocation_of(&invs, spin);
    let traced = float(inv, "cpu_ms");
    eprintln!("lost exit: traced {traced:.1} ms, CPU clock before the kill {spin_cpu:.1} ms");
    assert!(
        traced >= spin_cpu && traced <= spin_cpu * 1.01 + 20.0,
        "traced {traced} ms, clock {spin_cpu} ms: {inv}"
    );
    assert_eq!(inv["signal"], 9, "{inv}");
    // The process whose exec was lost is sampled from the first interval
    // after the agent resumed.
    let by_pid = samples_by_pid(&dir);
    let rows = by_pid
        .get(&(late as i64))
        .unwrap_or_else(|| panic!("the process whose exec was lost has no samples"));
    let first = int(&rows[0], "ts_ms");
    eprintln!(
        "lost exec: first sample {} ms after resuming",
        first - resumed
    );
    assert!(
        first <= resumed + 500,
        "first sample {} ms after resuming",
        first - resumed
    );
    assert!(rows.len() >= 10, "{} samples in 2 s", rows.len());
}

#[test]
fn sampling_survives_its_cpu_going_offline() {
    let _s = serial();
    if !ready("sampling_survives_its_cpu_going_offline") {
        return;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let hotplug = Path::new("/sys/devices/system/cpu/cpu1/online");
    if cpus < 2 || !hotplug.exists() {
        // The decision itself is unit-tested (tracer::ebpf::tests).
        assert!(
            std::env::var_os("CI").is_none() || cpus < 2,
            "CPU 1 cannot be taken offline here"
        );
        eprintln!("skipped: no CPU hotplug on this machine");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let spinner = renamed(tmp.path(), "c", "/bin/sh", "tkhotplug");
    let mut procs = Procs(Vec::new());
    let spin = procs.spawn(&spinner, &["-c", "while :; do :; done"]);
    let agent = Agent::start(
        tmp.path(),
        "hotplug",
        &[
            "--scope",
            "host",
            "--match",
            "^tkhotplug$",
            "--interval-ms",
            "100",
            "--sampler-cpu",
            "1",
        ],
    );
    std::thread::sleep(Duration::from_millis(2000));
    let offline_at = epoch_ms();
    {
        let _off = Offline::take(1).expect("taking CPU 1 offline");
        std::thread::sleep(Duration::from_millis(2000));
    }
    std::thread::sleep(Duration::from_millis(1000));
    let dir = agent.stop();
    let stats: Value = read_json(&dir.join("CTS/tracer_stats.json")).expect("tracer_stats.json");
    eprintln!("{stats}");
    assert!(int(&stats, "sampler_moves") >= 1, "{stats}");
    assert_ne!(stats["sampler_cpu"], 1, "{stats}");
    assert_eq!(stats["sampler_stalled"], false, "{stats}");
    let by_pid = samples_by_pid(&dir);
    let rows = &by_pid[&(spin as i64)];
    let gaps: Vec<i64> = rows.iter().map(|s| int(s, "dt_ms")).collect();
    let worst = gaps.iter().copied().max().unwrap_or(0);
    eprintln!("largest interval {worst} ms (CPU 1 went offline at {offline_at})");
    // The kernel hands sampling over after 250 ms of silence.
    assert!(worst <= 600, "intervals {gaps:?}");
    let after: Vec<&Value> = rows
        .iter()
        .filter(|s| int(s, "ts_ms") > offline_at + 1000)
        .collect();
    // About two seconds at 100 ms, less a late or skipped timer firing.
    assert!(
        after.len() >= 15,
        "{} samples after the CPU went offline",
        after.len()
    );
}

#[test]
fn forked_and_execd_processes_are_sampled_from_their_first_interval() {
    let _s = serial();
    if !ready("forked_and_execd_processes_are_sampled_from_their_first_interval") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let shell = renamed(tmp.path(), "c", "/bin/sh", "tkfork");
    let agent = Agent::start(
        tmp.path(),
        "fork",
        &[
            "--scope",
            "host",
            "--match",
            "^tkfork$",
            "--interval-ms",
            "100",
        ],
    );
    // An exec'd process (the shell) and its forked child that never execs
    // (a subshell, spinning): both are traced from their start.
    let out = Command::new(&shell)
        .args([
            "-c",
            "(i=0; while [ $i -lt 1500000 ]; do i=$((i+1)); done) & echo $!; wait",
        ])
        .output()
        .expect("running the shell");
    assert!(out.status.success());
    let child: i64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the child's pid");
    let dir = agent.stop();
    let invs = invocations(&dir);
    let by_pid = samples_by_pid(&dir);
    for inv in &invs {
        let pid = int(inv, "pid");
        let rows = &by_pid[&pid];
        let run = int(inv, "ts_end") - int(inv, "ts_start");
        if run < 300 {
            continue;
        }
        // The first sample comes within one interval (and a late timer) of
        // the start, and none is missing after it.
        assert!(
            int(&rows[0], "dt_ms") <= 150,
            "pid {pid}: first sample {} ms after its start",
            int(&rows[0], "dt_ms")
        );
        assert!(
            rows.len() as i64 >= run / 100 - 2,
            "pid {pid}: {} samples in {run} ms",
            rows.len()
        );
    }
    let forked = invocation_of(&invs, child as u32);
    assert!(
        int(forked, "ts_end") - int(forked, "ts_start") >= 300,
        "the forked child ran too briefly to judge: {forked}"
    );
    check_tiling(&dir);
}
