//! SIGINT and SIGTERM as a descriptor (signalfd), for the trace-only loop,
//! which waits with poll(2) rather than an async runtime.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use anyhow::{Context, Result};

use crate::sys;

pub struct StopSignals {
    fd: OwnedFd,
}

impl StopSignals {
    /// Block SIGINT and SIGTERM in this thread and receive them on a
    /// descriptor instead. Call it before other threads start (they inherit
    /// the mask); children get a clean mask from `std::process::Command`.
    pub fn new() -> Result<StopSignals> {
        let fd = sys::stop_signalfd().context("receiving SIGINT/SIGTERM on a signalfd")?;
        Ok(StopSignals { fd })
    }

    /// The signal that arrived, if any (without blocking).
    pub fn take(&self) -> Result<Option<i32>> {
        sys::signalfd_take(self.fd.as_fd()).context("reading the signalfd")
    }
}

impl AsRawFd for StopSignals {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
