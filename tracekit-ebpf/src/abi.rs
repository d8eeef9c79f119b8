//! Rust mirror of `bpf/tracekit.h`. Keep both in step: `abi_matches_c` fails
//! otherwise.

/// Length of `comm` in the kernel (TASK_COMM_LEN).
pub const TK_COMM_LEN: usize = 16;
/// Bytes of the exec filename carried by an event.
pub const TK_FILENAME_LEN: usize = 128;
/// Entries of the `comms` filter map.
pub const TK_MAX_COMMS: u32 = 64;
/// Entries of the `watched` map: processes sampled at once.
pub const TK_MAX_WATCHED: u32 = 16384;

/// `cfg_scope`: the agent's descendants only.
pub const TK_SCOPE_WORKER: u32 = 0;
/// `cfg_scope`: every process on the host.
pub const TK_SCOPE_HOST: u32 = 1;

/// A process in scope called exec.
pub const TK_EV_EXEC: u32 = 1;
/// A traced process forked a child process.
pub const TK_EV_FORK: u32 = 2;
/// The last thread of a traced process is gone; `cpu_ns` is final.
pub const TK_EV_EXIT: u32 = 3;
/// A live process's CPU clock and RSS at a tick ([`TkSample`]).
pub const TK_EV_SAMPLE: u32 = 4;

/// Threads the sampler walks per process.
pub const TK_MAX_THREADS: u32 = 512;

/// Every thread called exit: `exit_code` is set.
pub const TK_PROC_GROUP_DEAD: u32 = 1;
/// The last thread switched out for good: `cpu_ns` and `exit_ns` are final.
pub const TK_PROC_EXITED: u32 = 2;

/// Ring buffer full: an event was dropped.
pub const TK_STAT_RINGBUF_LOST: u32 = 0;
/// `procs` map full: a process was not traced.
pub const TK_STAT_PROCS_FULL: u32 = 1;
/// `scope` map full: a descendant left the scope.
pub const TK_STAT_SCOPE_FULL: u32 = 2;
/// A sample walked [`TK_MAX_THREADS`] threads and stopped short.
pub const TK_STAT_WALK_CUT: u32 = 3;
/// A sample not taken: the ring buffer was 3/4 full.
pub const TK_STAT_SAMPLE_DROPPED: u32 = 4;
/// The sampling CPU stopped firing (offline): another took over.
pub const TK_STAT_SAMPLER_MOVED: u32 = 5;
/// Number of counters in `stats`.
pub const TK_STAT_MAX: u32 = 6;

/// Names of the maps and programs in the object.
pub mod names {
    pub const MAP_SCOPE: &str = "scope";
    pub const MAP_PROCS: &str = "procs";
    pub const MAP_EVENTS: &str = "events";
    pub const MAP_STATS: &str = "stats";
    pub const MAP_COMMS: &str = "comms";
    pub const MAP_WATCHED: &str = "watched";
    pub const MAP_WATCHED_LEN: &str = "watched_len";
    pub const MAP_SAMPLER: &str = "sampler";
    pub const GLOBAL_SCOPE: &str = "cfg_scope";
    pub const GLOBAL_COMM_FILTER: &str = "cfg_comm_filter";
    pub const GLOBAL_INTERVAL: &str = "cfg_interval_ns";
    /// The sampler, a `perf_event` program on a cpu-clock event.
    pub const PROG_SAMPLE: &str = "tk_sample";
    /// The `iter/task` program that completes adopted processes.
    pub const PROG_ADOPT: &str = "tk_adopt";
    /// (program, tracepoint) pairs, all `tp_btf`.
    pub const PROGRAMS: [(&str, &str); 4] = [
        ("tk_exec", "sched_process_exec"),
        ("tk_fork", "sched_process_fork"),
        ("tk_exit", "sched_process_exit"),
        ("tk_switch", "sched_switch"),
    ];
}

/// Per traced process (key: tgid), map `procs`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TkProc {
    /// CPU of its threads that have ended (see `tracekit.h`); the total once
    /// [`TK_PROC_EXITED`] is set.
    pub cpu_ns: u64,
    pub start_ns: u64,
    pub exit_ns: u64,
    pub threads: u32,
    pub ppid: u32,
    pub exit_code: i32,
    pub flags: u32,
    /// Execs since tracing began: which image an event is about.
    pub image: u32,
    pub _pad: u32,
    /// The process's `signal_struct` (kernel address), 0 until known.
    pub signal: u64,
    /// Resident pages when the last thread called exit.
    pub rss_pages: u64,
}

/// One ring-buffer record.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TkEvent {
    pub kind: u32,
    pub pid: u32,
    pub ppid: u32,
    pub exit_code: i32,
    pub ts_ns: u64,
    pub start_ns: u64,
    pub cpu_ns: u64,
    pub rss_pages: u64,
    pub image: u32,
    pub _pad: u32,
    pub comm: [u8; TK_COMM_LEN],
    pub filename: [u8; TK_FILENAME_LEN],
}

/// One sample record (`kind` [`TK_EV_SAMPLE`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TkSample {
    pub kind: u32,
    pub pid: u32,
    pub ts_ns: u64,
    /// The process's CPU clock, ns.
    pub cpu_ns: u64,
    pub rss_pages: u64,
}

/// Which CPU samples, map `sampler` (one entry).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TkSampler {
    /// The CPU that samples.
    pub cpu: u32,
    pub _pad: u32,
    /// Its last firing (`bpf_ktime_get_ns`), 0 before the first.
    pub last_ns: u64,
}

/// A ring-buffer record, told apart by its first field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    Event(TkEvent),
    Sample(TkSample),
}

impl Record {
    /// Read a record from ring-buffer bytes; `None` if too short for its kind.
    pub fn from_bytes(bytes: &[u8]) -> Option<Record> {
        let kind = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?);
        if kind == TK_EV_SAMPLE {
            read::<TkSample>(bytes).map(Record::Sample)
        } else {
            read::<TkEvent>(bytes).map(Record::Event)
        }
    }
}

/// Plain old data at the start of `bytes`, if long enough.
fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < core::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: only used with the #[repr(C)] integer-only records above, for
    // which any bytes are a value; the length is checked; read_unaligned
    // copes with any alignment of the ring buffer slice.
    Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// A NUL-terminated kernel string as text.
pub fn c_str(bytes: &[u8]) -> &str {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    core::str::from_utf8(&bytes[..end]).unwrap_or("")
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] data with no padding holes read as values.
    unsafe impl aya::Pod for super::TkProc {}
    unsafe impl aya::Pod for super::TkEvent {}
    unsafe impl aya::Pod for super::TkSampler {}
}
