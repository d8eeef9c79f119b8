//! The kernel/user ABI: the constants and `#[repr(C)]` records of
//! `bpf/tracekit.h`, generated from it at build time (bindgen, see
//! `build.rs`), under Rust names; the names of the object's maps, programs
//! and globals; and the decoding of ring-buffer records. `abi_matches_c`
//! checks the generated layout against the host compiler's.

mod generated {
    #![allow(non_camel_case_types, non_upper_case_globals, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/abi.rs"));
}

pub use generated::{
    TK_COMM_LEN, TK_EV_EXEC, TK_EV_EXIT, TK_EV_FORK, TK_EV_SAMPLES, TK_FILENAME_LEN, TK_MAX_COMMS,
    TK_MAX_THREADS, TK_MAX_WATCHED, TK_PROC_EXITED, TK_PROC_GROUP_DEAD, TK_SCOPE_HOST,
    TK_SCOPE_WORKER, TK_SLICE, TK_SLOW_RUN_NS, TK_STAT_MAX, TK_STAT_PROCS_FULL,
    TK_STAT_RINGBUF_LOST, TK_STAT_SAMPLE_DROPPED, TK_STAT_SAMPLER_MAX_NS, TK_STAT_SAMPLER_MOVED,
    TK_STAT_SAMPLER_RUN_NS, TK_STAT_SAMPLER_RUNS, TK_STAT_SAMPLER_SLOW_RUNS, TK_STAT_SCOPE_FULL,
    TK_STAT_WALK_CUT,
};

/// Per traced process (key: tgid), map `procs` (`struct tk_proc`).
pub type TkProc = generated::tk_proc;
/// An exec/fork/exit ring-buffer record (`struct tk_event`).
pub type TkEvent = generated::tk_event;
/// One process's reading in a [`TkSamples`] record (`struct tk_sample`).
pub type TkSample = generated::tk_sample;
/// A sampler run's ring-buffer record, kind [`TK_EV_SAMPLES`] (`struct
/// tk_samples`), cut after its `count` entries.
pub type TkSamples = generated::tk_samples;
/// Which CPU samples, map `sampler` (`struct tk_sampler`).
pub type TkSampler = generated::tk_sampler;

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
    /// The sampler's BPF timer: it runs while some descriptor of this map
    /// is open.
    pub const MAP_TICKER: &str = "ticker";
    pub const GLOBAL_SCOPE: &str = "cfg_scope";
    pub const GLOBAL_COMM_FILTER: &str = "cfg_comm_filter";
    pub const GLOBAL_INTERVAL: &str = "cfg_interval_ns";
    /// The `iter/task` program the loader runs once to start the sampler's
    /// timer.
    pub const PROG_ARM: &str = "tk_arm";
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

/// A ring-buffer record, told apart by its first field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record<'a> {
    Event(TkEvent),
    Samples(Samples<'a>),
}

impl<'a> Record<'a> {
    /// Read a record from ring-buffer bytes; `None` if too short for its kind.
    pub fn from_bytes(bytes: &'a [u8]) -> Option<Record<'a>> {
        let kind = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?);
        if kind == TK_EV_SAMPLES {
            Samples::from_bytes(bytes).map(Record::Samples)
        } else {
            read::<TkEvent>(bytes).map(Record::Event)
        }
    }
}

/// A sampler run's readings, read in place from the ring buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Samples<'a> {
    /// The tick, `bpf_ktime_get_ns()`.
    pub ts_ns: u64,
    entries: &'a [u8],
}

impl<'a> Samples<'a> {
    const HEADER: usize = core::mem::offset_of!(TkSamples, samples);
    const ENTRY: usize = core::mem::size_of::<TkSample>();

    fn from_bytes(bytes: &'a [u8]) -> Option<Samples<'a>> {
        let header = bytes.get(..Self::HEADER)?;
        let at = |field: usize, len: usize| header.get(field..field + len);
        let count = u32::from_ne_bytes(
            at(core::mem::offset_of!(TkSamples, count), 4)?
                .try_into()
                .ok()?,
        ) as usize;
        let ts_ns = u64::from_ne_bytes(
            at(core::mem::offset_of!(TkSamples, ts_ns), 8)?
                .try_into()
                .ok()?,
        );
        if count > TK_SLICE as usize {
            return None;
        }
        let entries = bytes.get(Self::HEADER..Self::HEADER + count * Self::ENTRY)?;
        Some(Samples { ts_ns, entries })
    }

    /// The readings, in the order the sampler took them.
    pub fn iter(&self) -> impl Iterator<Item = TkSample> + 'a {
        self.entries
            .chunks_exact(Self::ENTRY)
            .filter_map(read::<TkSample>)
    }

    pub fn len(&self) -> usize {
        self.entries.len() / Self::ENTRY
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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
