//! Every system call the agent makes without a safe wrapper in std, aya or
//! nix, each behind a safe function: the rest of the agent holds no
//! `unsafe` for the kernel's sake (aya does the same with its `sys` module).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// `Err(last OS error)` when a call returned a negative value.
fn check(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

// ---- clocks ----------------------------------------------------------------

fn clock_ns(clock: libc::clockid_t) -> Option<i128> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    let r = unsafe { libc::clock_gettime(clock, &mut ts) };
    (r == 0).then(|| ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128)
}

/// CLOCK_MONOTONIC now, ns (the clock of `bpf_ktime_get_ns`).
pub fn monotonic_ns() -> i128 {
    clock_ns(libc::CLOCK_MONOTONIC).unwrap_or(0)
}

/// CLOCK_REALTIME now, ns since the epoch.
pub fn realtime_ns() -> i128 {
    clock_ns(libc::CLOCK_REALTIME).unwrap_or(0)
}

/// The CPU time of process `pid` so far, ns, from its kernel CPU clock
/// (clock_getcpuclockid(3)); `None` once the process is reaped.
pub fn process_cpu_ns(pid: u32) -> Option<u64> {
    // MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED) of the kernel's posix-timers
    // ABI, as glibc builds it; computed here to spare clock_getcpuclockid's
    // extra system call.
    let clock: libc::clockid_t = (!(pid as libc::clockid_t) << 3) | 2;
    clock_ns(clock).map(|ns| ns as u64)
}

/// Seconds since the epoch as a UTC calendar time: (year, month, day, hour,
/// minute, second).
pub fn utc_now() -> (i32, u32, u32, u32, u32, u32) {
    // SAFETY: time(NULL) and gmtime_r on our own struct.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        libc::gmtime_r(&now, &mut tm);
    }
    (
        tm.tm_year + 1900,
        tm.tm_mon as u32 + 1,
        tm.tm_mday as u32,
        tm.tm_hour as u32,
        tm.tm_min as u32,
        tm.tm_sec as u32,
    )
}

// ---- system facts -----------------------------------------------------------

/// The page size, KiB.
pub fn page_size_kb() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as u64 / 1024 } else { 4 }
}

/// Clock ticks per second of /proc's utime and stime.
pub fn clock_ticks_per_s() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// This process's CPU time (user + system), ms.
pub fn self_cpu_ms() -> f64 {
    // SAFETY: getrusage writes the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let ms = |tv: libc::timeval| tv.tv_sec as f64 * 1000.0 + tv.tv_usec as f64 / 1000.0;
    ms(ru.ru_utime) + ms(ru.ru_stime)
}

/// Lift the locked-memory limit (older kernels charge BPF maps to it).
pub fn unlimit_memlock() -> io::Result<()> {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass.
    check(unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) }.into()).map(drop)
}

/// Run the calling thread on `cpu` only.
pub fn pin_thread_to_cpu(cpu: u32) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it
    // (checked below to be in range), and sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu as usize >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        libc::CPU_SET(cpu as usize, &mut set);
        check(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set).into())
            .map(drop)
    }
}

// ---- file systems -----------------------------------------------------------

/// The file system type (statfs f_type) of `path`.
pub fn fs_type(path: &std::ffi::CStr) -> io::Result<i64> {
    // SAFETY: statfs writes the struct we pass; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    check(unsafe { libc::statfs(path.as_ptr(), &mut st) }.into())?;
    Ok(st.f_type as i64)
}

/// Mount a file system of type `fstype` named `source` at `target`.
pub fn mount(
    source: &std::ffi::CStr,
    target: &std::ffi::CStr,
    fstype: &std::ffi::CStr,
) -> io::Result<()> {
    // SAFETY: NUL-terminated strings; no mount data.
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    check(r.into()).map(drop)
}

// ---- processes --------------------------------------------------------------

/// SIGKILL process `pid` (an error if it is gone).
pub fn kill_now(pid: i32) -> io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    check(unsafe { libc::kill(pid, libc::SIGKILL) }.into()).map(drop)
}

/// A descriptor that becomes readable when process `pid` ends.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags; no memory is passed.
    let raw = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) })?;
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw as RawFd) })
}

/// What the child does between fork and exec to confine itself: join the
/// cgroups behind `procs`, empty its capability bounding set (so not even a
/// task run as root gets a capability back at exec), take `groups`, `gid`
/// and `uid`, set no_new_privs, and die with its parent.
pub struct Confinement {
    pub procs: Vec<RawFd>,
    /// (uid, gid, supplementary groups); `None` keeps the agent's user.
    pub user: Option<(u32, u32, Vec<libc::gid_t>)>,
    /// The capabilities in the bounding set now (indexes), to drop.
    pub bounding: Vec<u8>,
}

impl Confinement {
    /// Run in the child after fork: async-signal-safe system calls only, on
    /// values prepared before the fork (no allocation, no locks).
    pub fn apply_in_child(&self) -> io::Result<()> {
        let fail = || Err(io::Error::last_os_error());
        // SAFETY: plain system calls on descriptors and buffers we own.
        unsafe {
            // "0" moves the writing process into the group.
            for &fd in &self.procs {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return fail();
                }
            }
            // Before the uid change: dropping needs CAP_SETPCAP.
            for &cap in &self.bounding {
                if libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) != 0 {
                    return fail();
                }
            }
            if libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ) != 0
            {
                return fail();
            }
            if let Some((uid, gid, groups)) = &self.user
                && (libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setresgid(*gid, *gid, *gid) != 0
                    || libc::setresuid(*uid, *uid, *uid) != 0)
            {
                return fail();
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return fail();
            }
            // After the uid change, which clears it: if the agent dies, so
            // does the task (a restarted agent also kills leftovers).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return fail();
            }
            if libc::getppid() == 1 {
                libc::_exit(137);
            }
        }
        Ok(())
    }
}

// ---- descriptors --------------------------------------------------------------

/// Read into `buf` from `fd` without blocking: `Ok(None)` if nothing waits.
fn read_nonblocking(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: reading at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    match io::Error::last_os_error() {
        e if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        e => Err(e),
    }
}

/// Wait until one of `fds` is readable, or `timeout` (`None`: for ever);
/// returns which are. An interrupted wait returns none ready.
pub fn poll_readable(fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    // SAFETY: `pfds` is a valid array of pollfd of the length given.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![false; fds.len()]);
        }
        return Err(e);
    }
    Ok(pfds.iter().map(|p| p.revents != 0).collect())
}

/// A timerfd on CLOCK_MONOTONIC, non-blocking.
pub fn timerfd() -> io::Result<OwnedFd> {
    // SAFETY: timerfd_create has no memory preconditions.
    let raw = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    check(raw.into())?;
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Arm timerfd `fd`: first expiry in `first` (at least 1 ns: zero would
/// disarm it), then every `interval`.
pub fn timerfd_arm(fd: BorrowedFd<'_>, first: Duration, interval: Duration) -> io::Result<()> {
    let spec_of = |d: Duration| libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    };
    let spec = libc::itimerspec {
        it_interval: spec_of(interval),
        it_value: spec_of(first.max(Duration::from_nanos(1))),
    };
    // SAFETY: `spec` is a valid itimerspec; the old value is not wanted.
    let r = unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
    check(r.into()).map(drop)
}

/// Time to timerfd `fd`'s next expiry, `None` if one is due already.
pub fn timerfd_remaining(fd: BorrowedFd<'_>) -> io::Result<Option<Duration>> {
    // SAFETY: timerfd_gettime writes the itimerspec we pass.
    let mut cur: libc::itimerspec = unsafe { std::mem::zeroed() };
    check(unsafe { libc::timerfd_gettime(fd.as_raw_fd(), &mut cur) }.into())?;
    let left = Duration::new(cur.it_value.tv_sec as u64, cur.it_value.tv_nsec as u32);
    Ok((!left.is_zero()).then_some(left))
}

/// Take timerfd `fd`'s expirations, without blocking: whether any were due.
pub fn timerfd_take(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut expirations = [0u8; 8];
    Ok(read_nonblocking(fd, &mut expirations)?.is_some())
}

/// Block SIGINT and SIGTERM in this thread and return a signalfd that
/// receives them instead.
pub fn stop_signalfd() -> io::Result<OwnedFd> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset; the calls
    // get valid pointers to it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        let raw = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
        check(raw.into())?;
        Ok(OwnedFd::from_raw_fd(raw))
    }
}

/// The signal number waiting on signalfd `fd`, if any (without blocking).
pub fn signalfd_take(fd: BorrowedFd<'_>) -> io::Result<Option<i32>> {
    let mut buf = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
    match read_nonblocking(fd, &mut buf)? {
        None => Ok(None),
        Some(n) if n == buf.len() => {
            // ssi_signo is the record's first field, a u32.
            let signo = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
            Ok(Some(signo as i32))
        }
        Some(n) => Err(io::Error::other(format!(
            "short read from the signalfd ({n} bytes)"
        ))),
    }
}

/// SIGINT's and SIGTERM's numbers, for naming what arrived.
pub const SIGINT: i32 = libc::SIGINT;
pub const SIGTERM: i32 = libc::SIGTERM;
