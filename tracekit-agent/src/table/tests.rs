//! The table driven by synthetic event sequences: no kernel, no root.

use super::*;

/// Epoch = monotonic + 1_000_000_000_000 ms, so a kernel time of `s` seconds
/// is epoch ms 1e12 + 1000·s.
fn clock() -> Clock {
    Clock::with_offset_ns(1_000_000_000_000 * 1_000_000)
}

const T0: i64 = 1_000_000_000_000;

fn ms(t: u64) -> u64 {
    t * 1_000_000
}

fn table() -> ProcessTable {
    ProcessTable::new(
        Matcher::new("^ffmpeg$").expect("regex"),
        "n1".into(),
        "cloud".into(),
        CollectorKind::Ebpf,
    )
}

fn start(pid: u32, comm: &str, at_ms: u64) -> Event {
    Event::Start(ProcStart {
        pid,
        ppid: 1,
        comm: comm.into(),
        filename: format!("/usr/bin/{comm}"),
        start_ns: ms(at_ms),
        pre_existing: false,
        forked: false,
        image: 0,
    })
}

fn sample(pid: u32, at_ms: u64, cpu_ms: u64, rss_kb: u64) -> Event {
    Event::Sample(KernelSample {
        pid,
        ts_ns: ms(at_ms),
        cpu_ns: ms(cpu_ms),
        rss_kb: Some(rss_kb),
    })
}

fn exit(pid: u32, at_ms: u64, cpu_ms: u64) -> Event {
    Event::Exit(ProcExit {
        pid,
        end_ns: ms(at_ms),
        cpu_ns: ms(cpu_ms),
        status: Some(0),
        rss_kb: None,
    })
}

fn run(t: &mut ProcessTable, events: Vec<Event>) -> Output {
    let mut out = Output::default();
    t.apply(events, &clock(), &mut out);
    out
}

fn samples_of(out: &Output, pid: u32) -> Vec<ProcSample> {
    out.lines
        .iter()
        .filter_map(|l| match l {
            Line::Sample(s) if s.pid == pid => Some(s.clone()),
            _ => None,
        })
        .collect()
}

fn invocations(out: &Output) -> Vec<&Invocation> {
    out.lines
        .iter()
        .filter_map(|l| match l {
            Line::Invocation(i) => Some(i.as_ref()),
            _ => None,
        })
        .collect()
}

/// The samples of `inv` tile its run and add up to its CPU.
fn assert_tiles(samples: &[ProcSample], inv: &Invocation) {
    let dt: i64 = samples.iter().map(|s| s.dt_ms).sum();
    assert_eq!(dt, inv.ts_end - inv.ts_start, "{samples:?}");
    let cpu: f64 = samples.iter().map(|s| s.cpu_ms).sum();
    assert!(
        (cpu - inv.cpu_ms.unwrap_or(-1.0)).abs() < 1e-9,
        "{samples:?} {inv:?}"
    );
    assert_eq!(samples.last().map(|s| s.ts_ms), Some(inv.ts_end));
    for w in samples.windows(2) {
        assert!(w[1].ts_ms > w[0].ts_ms, "{samples:?}");
    }
}

#[test]
fn exec_samples_exit_tile_the_run() {
    let mut t = table();
    let out = run(
        &mut t,
        vec![
            start(10, "ffmpeg", 1000),
            sample(10, 1200, 150, 5000),
            sample(10, 1400, 330, 7000),
            exit(10, 1500, 400),
        ],
    );
    assert_eq!(
        out.commands,
        vec![Command::Watch(10), Command::Forget(10)],
        "watched from exec, forgotten at exit"
    );
    let s = samples_of(&out, 10);
    assert_eq!(s.len(), 3);
    assert_eq!(
        (s[0].ts_ms, s[0].dt_ms, s[0].cpu_ms),
        (T0 + 1200, 200, 150.0)
    );
    assert_eq!((s[2].dt_ms, s[2].cpu_ms, s[2].rss_kb), (100, 70.0, 7000));
    let invs = invocations(&out);
    assert_eq!(invs.len(), 1);
    let inv = invs[0];
    assert_eq!(
        (inv.ts_start, inv.ts_end, inv.cpu_ms),
        (T0 + 1000, T0 + 1500, Some(400.0))
    );
    assert_eq!(inv.trace_id, format!("n1-10-{}", T0 + 1000));
    assert_eq!(inv.extra["rss_peak_kb"], 7000);
    assert_eq!(inv.exit_code, Some(0));
    assert_tiles(&s, inv);
    assert_eq!(out.finished.len(), 1);
    let c = t.counts();
    assert_eq!((c.processes_seen, c.exits_recorded, c.samples), (1, 1, 3));
    assert_eq!(t.live(), 0);
}

#[test]
fn a_non_matching_exec_is_forgotten_by_its_image() {
    let mut t = table();
    let mut e = start(11, "bash", 0);
    if let Event::Start(s) = &mut e {
        s.image = 3;
    }
    let out = run(&mut t, vec![e, sample(11, 200, 10, 1)]);
    assert_eq!(
        out.commands,
        vec![Command::ForgetImage { pid: 11, image: 3 }]
    );
    assert!(out.lines.is_empty());
    assert!(!t.is_traced(11));
}

#[test]
fn a_forked_child_waits_for_its_exec() {
    let mut t = table();
    // Forked by a traced process: it carries its parent's comm ("sh" here,
    // not matching), so nothing is decided until it execs.
    let fork = Event::Start(ProcStart {
        pid: 21,
        ppid: 20,
        comm: "sh".into(),
        filename: String::new(),
        start_ns: ms(100),
        pre_existing: false,
        forked: true,
        image: 0,
    });
    let out = run(&mut t, vec![fork]);
    assert!(out.commands.is_empty(), "{:?}", out.commands);
    let out = run(&mut t, vec![start(21, "ffmpeg", 150), exit(21, 400, 90)]);
    assert_eq!(out.commands, vec![Command::Watch(21), Command::Forget(21)]);
    assert_eq!(invocations(&out)[0].comm.as_deref(), Some("ffmpeg"));
}

#[test]
fn exec_from_another_thread_keeps_one_process() {
    let mut t = table();
    let mut out = run(
        &mut t,
        vec![start(30, "ffmpeg", 0), sample(30, 100, 40, 10)],
    );
    // The kernel reports the exec of a non-leader thread under the same
    // tgid: the same process, a new image, one record, nothing re-watched.
    let mut again = start(30, "ffmpeg", 120);
    if let Event::Start(s) = &mut again {
        s.filename = "/opt/ffmpeg".into();
    }
    let more = run(
        &mut t,
        vec![again, sample(30, 200, 90, 10), exit(30, 250, 100)],
    );
    assert_eq!(more.commands, vec![Command::Forget(30)]);
    out.lines.extend(more.lines);
    let invs = invocations(&out);
    assert_eq!(invs.len(), 1);
    assert_eq!(invs[0].filename.as_deref(), Some("/opt/ffmpeg"));
    assert_eq!(
        invs[0].ts_start, T0,
        "the process's start, not the second exec"
    );
    assert_tiles(&samples_of(&out, 30), invs[0]);
    assert_eq!(t.counts().processes_seen, 1);
}

#[test]
fn the_leader_ending_first_changes_nothing_until_the_last_thread() {
    let mut t = table();
    // The leader thread exits at 150; its threads run on and are sampled;
    // the one exit event comes with the last thread, with the whole total.
    let out = run(
        &mut t,
        vec![
            start(40, "ffmpeg", 0),
            sample(40, 100, 90, 10),
            sample(40, 200, 280, 10),
            sample(40, 300, 470, 10),
            exit(40, 340, 540),
        ],
    );
    let invs = invocations(&out);
    assert_eq!(invs.len(), 1);
    assert_eq!(invs[0].cpu_ms, Some(540.0));
    assert_tiles(&samples_of(&out, 40), invs[0]);
}

#[test]
fn a_recovered_exit_then_the_late_event_records_once() {
    let mut t = table();
    // Events were lost: the map walk recovers the exit; the original event
    // turns up later and must not make a second record.
    let out = run(
        &mut t,
        vec![
            start(50, "ffmpeg", 0),
            sample(50, 100, 50, 1),
            exit(50, 180, 95),
        ],
    );
    assert_eq!(invocations(&out).len(), 1);
    let late = run(&mut t, vec![exit(50, 180, 95), sample(50, 200, 99, 1)]);
    assert!(late.lines.is_empty(), "{:?}", late.lines);
    assert!(late.finished.is_empty());
    assert_eq!(late.commands, vec![Command::Forget(50)]);
    assert_eq!(t.counts().exits_recorded, 1);
}

#[test]
fn a_start_found_by_the_map_walk_is_traced_from_its_exec() {
    let mut t = table();
    // Its exec event was lost; the walk reports it with its exec time and
    // no file name (comm only).
    let walk = Event::Start(ProcStart {
        pid: 55,
        ppid: 1,
        comm: "ffmpeg".into(),
        filename: String::new(),
        start_ns: ms(0),
        pre_existing: false,
        forked: false,
        image: 0,
    });
    let out = run(
        &mut t,
        vec![walk, sample(55, 700, 650, 1), exit(55, 750, 700)],
    );
    let invs = invocations(&out);
    assert_eq!(invs[0].ts_start, T0);
    assert_eq!(invs[0].filename, None);
    assert_tiles(&samples_of(&out, 55), invs[0]);
}

#[test]
fn a_reused_pid_is_a_new_process() {
    let mut t = table();
    let out = run(
        &mut t,
        vec![
            start(60, "ffmpeg", 0),
            exit(60, 100, 30),
            start(60, "ffmpeg", 150),
            sample(60, 300, 20, 1),
            exit(60, 320, 25),
        ],
    );
    let invs = invocations(&out);
    assert_eq!(invs.len(), 2);
    assert_ne!(invs[0].trace_id, invs[1].trace_id);
    assert_eq!((invs[1].ts_start, invs[1].cpu_ms), (T0 + 150, Some(25.0)));
    assert_eq!(
        out.commands,
        vec![
            Command::Watch(60),
            Command::Forget(60),
            Command::Watch(60),
            Command::Forget(60)
        ]
    );
}

#[test]
fn samples_outside_a_process_life_are_dropped() {
    let mut t = table();
    let out = run(
        &mut t,
        vec![
            sample(70, 50, 5, 1), // before its exec event
            start(70, "ffmpeg", 100),
            exit(70, 300, 40),
            sample(70, 400, 45, 1), // after its exit
        ],
    );
    let s = samples_of(&out, 70);
    assert_eq!(s.len(), 1, "only the exit's line: {s:?}");
    assert_eq!((s[0].dt_ms, s[0].cpu_ms), (200, 40.0));
}

#[test]
fn an_exit_in_the_millisecond_of_the_last_sample_comes_one_later() {
    let mut t = table();
    let out = run(
        &mut t,
        vec![
            start(80, "ffmpeg", 0),
            sample(80, 100, 60, 1),
            exit(80, 100, 61),
        ],
    );
    let s = samples_of(&out, 80);
    assert_eq!(s.len(), 2);
    assert_eq!((s[1].ts_ms, s[1].dt_ms), (T0 + 101, 1));
    assert_tiles(&s, invocations(&out)[0]);
}

#[test]
fn a_process_adopted_at_start_counts_from_adoption() {
    let mut t = table();
    let adopted = Event::Start(ProcStart {
        pid: 90,
        ppid: 0,
        comm: "ffmpeg".into(),
        filename: "/usr/bin/ffmpeg".into(),
        start_ns: ms(5000),
        pre_existing: true,
        forked: false,
        image: 0,
    });
    let out = run(&mut t, vec![adopted]);
    assert_eq!(out.commands, vec![Command::Watch(90)], "sampled at once");
    let out = run(&mut t, vec![sample(90, 5200, 180, 1), exit(90, 5300, 270)]);
    let inv = invocations(&out)[0];
    assert_eq!(inv.extra["pre_existing"], true);
    assert_eq!(inv.ts_start, T0 + 5000);
    assert_tiles(&samples_of(&out, 90), inv);
}

#[test]
fn a_task_of_the_worker_keeps_its_trace_id_and_gets_no_generic_line() {
    let mut t = table();
    t.annotate(
        100,
        Annotation {
            trace_id: "run-7".into(),
            ts_enqueue: Some(1),
        },
    );
    let out = run(&mut t, vec![start(100, "ffmpeg", 0), exit(100, 50, 10)]);
    assert!(
        invocations(&out).is_empty(),
        "the worker writes a task's line"
    );
    assert_eq!(out.finished[0].trace_id, "run-7");
    assert_eq!(out.finished[0].ts_enqueue, 1);
    assert_eq!(samples_of(&out, 100).len(), 1);
}

#[test]
fn an_untraced_task_gets_the_worker_clock_and_no_cpu() {
    let mut t = table();
    t.annotate(
        101,
        Annotation {
            trace_id: "run-8".into(),
            ts_enqueue: None,
        },
    );
    let task = Annotation {
        trace_id: "run-8".into(),
        ts_enqueue: None,
    };
    let inv = t.untraced(101, task, 500, 900, 1 << 8);
    assert!(t.annotations.is_empty(), "its annotation is dropped");
    assert_eq!((inv.trace_id.as_str(), inv.ts_enqueue), ("run-8", 500));
    assert_eq!((inv.ts_start, inv.ts_end, inv.cpu_ms), (500, 900, None));
    assert_eq!((inv.exit_code, inv.signal), (Some(1), None));
}

#[test]
fn a_status_the_agent_reaped_fills_an_exit_without_one() {
    let mut t = table();
    t.note_status(110, 9); // killed by SIGKILL
    let mut e = exit(110, 100, 5);
    if let Event::Exit(x) = &mut e {
        x.status = None;
    }
    let out = run(&mut t, vec![start(110, "ffmpeg", 0), e]);
    let inv = invocations(&out)[0];
    assert_eq!((inv.exit_code, inv.signal), (None, Some(9)));
}

#[test]
fn the_agents_own_sampling_uses_its_readings() {
    let mut t = ProcessTable::new(
        Matcher::new("^ffmpeg$").expect("regex"),
        "n1".into(),
        "cloud".into(),
        CollectorKind::Procfs,
    );
    run(
        &mut t,
        vec![start(120, "ffmpeg", 0), start(121, "ffmpeg", 0)],
    );
    let mut out = Output::default();
    t.sample(
        T0 + 500,
        |pid| (pid == 120).then_some((ms(200), Some(3000))),
        &mut out,
    );
    let s = samples_of(&out, 120);
    assert_eq!((s[0].dt_ms, s[0].cpu_ms, s[0].rss_kb), (500, 200.0, 3000));
    assert!(samples_of(&out, 121).is_empty(), "no reading, no sample");
    // A reading below the last counts as the last: CPU never goes back.
    let mut out = Output::default();
    t.sample(T0 + 700, |_| Some((ms(150), None)), &mut out);
    assert_eq!(samples_of(&out, 120)[0].cpu_ms, 0.0);
}
