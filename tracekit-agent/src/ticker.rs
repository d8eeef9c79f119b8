//! The agent's clock: a kernel timerfd, so the agent wakes once per period
//! and at no other time. The period is the collector's to choose
//! ([`crate::tracer::Collector::tick_every`]). Polled directly by the
//! trace-only loop, awaited through tokio by the worker.
//!
//! tokio's timer wheel wakes the thread at every wheel-level boundary on the
//! way to a deadline: strace showed three to four wake-ups per tick at a 1 s
//! interval. On a VM each wake-up from idle costs about half a millisecond of
//! CPU, so those wake-ups were most of the agent's own cost.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

pub struct Ticker {
    fd: OwnedFd,
    period: Duration,
}

impl Ticker {
    /// Ticks every `period`, the first one `period` from now (a sample at
    /// t=0 says nothing).
    pub fn new(period: Duration) -> Result<Ticker> {
        // SAFETY: timerfd_create has no memory preconditions.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error()).context("creating a timerfd");
        }
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let ticker = Ticker { fd, period };
        ticker.arm(period)?;
        Ok(ticker)
    }

    /// Tick every `period` from now on. The next tick comes when it was due,
    /// or one new period from now if that is sooner: a period that changes
    /// back and forth faster than it elapses must not put the tick off for
    /// ever.
    pub fn set_period(&mut self, period: Duration) -> Result<()> {
        if period == self.period {
            return Ok(());
        }
        let due = self.remaining()?.unwrap_or(period);
        self.arm_at(due.min(period), period)?;
        self.period = period;
        Ok(())
    }

    /// Time to the next tick, `None` if one is already due.
    fn remaining(&self) -> Result<Option<Duration>> {
        // SAFETY: timerfd_gettime writes the itimerspec we pass.
        let mut cur: libc::itimerspec = unsafe { std::mem::zeroed() };
        if unsafe { libc::timerfd_gettime(self.fd.as_raw_fd(), &mut cur) } != 0 {
            return Err(io::Error::last_os_error()).context("reading the timerfd");
        }
        let left = Duration::new(cur.it_value.tv_sec as u64, cur.it_value.tv_nsec as u32);
        Ok((!left.is_zero()).then_some(left))
    }

    /// Tick every `interval` from now on, the next one `interval` from now.
    fn arm(&self, interval: Duration) -> Result<()> {
        self.arm_at(interval, interval)
    }

    /// Tick in `first`, then every `interval`.
    fn arm_at(&self, first: Duration, interval: Duration) -> Result<()> {
        anyhow::ensure!(!interval.is_zero(), "the interval must be positive");
        let spec_of = |d: Duration| libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        };
        // A zero it_value would disarm the timer: a due tick fires at once.
        let first = first.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: spec_of(interval),
            it_value: spec_of(first),
        };
        // SAFETY: `spec` is a valid itimerspec; the old value is not wanted.
        if unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) }
            != 0
        {
            return Err(io::Error::last_os_error()).context("arming the timerfd");
        }
        Ok(())
    }

    /// Take the tick if one is due, without blocking. Ticks missed while
    /// the caller was busy count as one, and the next keeps the phase.
    pub fn take(&self) -> io::Result<bool> {
        let mut expirations = [0u8; 8];
        // SAFETY: reading 8 bytes into an 8-byte buffer we own.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                expirations.as_mut_ptr().cast(),
                expirations.len(),
            )
        };
        if n >= 0 {
            return Ok(true);
        }
        match io::Error::last_os_error() {
            e if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            e => Err(e),
        }
    }

    /// For tokio: the same clock, awaited.
    pub fn into_async(self) -> Result<AsyncTicker> {
        // SAFETY: the AsyncFd owns the ticker and its descriptor, which stays
        // open and the same for as long as it is registered.
        let fd = unsafe { AsyncFd::register_with_interest(self, Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("registering the timerfd with tokio: {e}"))?;
        Ok(AsyncTicker { fd })
    }
}

impl AsRawFd for Ticker {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

pub struct AsyncTicker {
    fd: AsyncFd<Ticker>,
}

impl AsyncTicker {
    /// See [`Ticker::set_period`].
    pub fn set_period(&mut self, period: Duration) -> Result<()> {
        self.fd.get_mut().set_period(period)
    }

    /// Wait for the next tick. Cancel-safe: a tick is taken only when this
    /// returns.
    pub async fn tick(&mut self) -> Result<()> {
        loop {
            let mut guard = self
                .fd
                .readable_mut()
                .await
                .context("waiting on the timerfd")?;
            match guard.try_io(|t| match t.get_ref().take()? {
                true => Ok(()),
                false => Err(io::ErrorKind::WouldBlock.into()),
            }) {
                Ok(result) => return result.context("reading the timerfd"),
                // Not expired yet (a spurious wake-up): wait again.
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn ticks_at_the_interval() {
        let ticker = Ticker::new(Duration::from_millis(30)).expect("ticker");
        assert!(!ticker.take().expect("take"), "no tick is due yet");
        let mut ticker = ticker.into_async().expect("async ticker");
        let t0 = std::time::Instant::now();
        for _ in 0..3 {
            ticker.tick().await.expect("tick");
        }
        let elapsed = t0.elapsed();
        assert!(elapsed >= Duration::from_millis(90), "{elapsed:?}");
    }

    #[test]
    fn a_changing_period_does_not_put_the_tick_off() {
        let mut ticker = Ticker::new(Duration::from_millis(200)).expect("ticker");
        let t0 = std::time::Instant::now();
        // Switching between a short and a long period more often than
        // either elapses: the first tick still comes about one short period
        // after the switching ends, far before the long one (a loaded
        // machine adds its delay to both).
        for i in 0..30 {
            let period = if i % 2 == 0 { 5_000 } else { 150 };
            ticker
                .set_period(Duration::from_millis(period))
                .expect("set period");
            std::thread::sleep(Duration::from_millis(10));
        }
        while !ticker.take().expect("take") {
            assert!(t0.elapsed() < Duration::from_secs(4), "the tick never came");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            t0.elapsed() < Duration::from_millis(2_500),
            "{:?}",
            t0.elapsed()
        );
    }

    #[test]
    fn refuses_a_zero_interval() {
        assert!(Ticker::new(Duration::ZERO).is_err());
    }
}
