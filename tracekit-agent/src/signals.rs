//! SIGINT and SIGTERM as a descriptor (signalfd), for the trace-only loop,
//! which waits with poll(2) rather than an async runtime.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use anyhow::{Context, Result};

pub struct StopSignals {
    fd: OwnedFd,
}

impl StopSignals {
    /// Block SIGINT and SIGTERM in this thread and receive them on a
    /// descriptor instead. Call it before other threads start (they inherit
    /// the mask); children get a clean mask from `std::process::Command`.
    pub fn new() -> Result<StopSignals> {
        // SAFETY: sigset_t is plain data, initialised by sigemptyset; the
        // calls get valid pointers to it.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if r != 0 {
                return Err(io::Error::from_raw_os_error(r)).context("blocking SIGINT/SIGTERM");
            }
            let raw = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
            if raw < 0 {
                return Err(io::Error::last_os_error()).context("creating a signalfd");
            }
            Ok(StopSignals {
                fd: OwnedFd::from_raw_fd(raw),
            })
        }
    }

    /// The signal that arrived, if any (without blocking).
    pub fn take(&self) -> Result<Option<i32>> {
        // SAFETY: signalfd_siginfo is plain data; read fills at most its size.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        match n {
            n if n == size as isize => Ok(Some(info.ssi_signo as i32)),
            n if n < 0 => match io::Error::last_os_error() {
                e if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                e => Err(e).context("reading the signalfd"),
            },
            n => anyhow::bail!("short read from the signalfd ({n} bytes)"),
        }
    }
}

impl AsRawFd for StopSignals {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
