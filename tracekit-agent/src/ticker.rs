//! The agent's clock: a kernel timerfd, so the agent wakes once per period
//! and at no other time. The period is the collector's to choose
//! ([`crate::tracer::Collector::tick_every`]). Polled directly by the
//! trace-only loop, awaited through tokio by the worker.
//!
//! tokio's timer wheel wakes the thread at every wheel-level boundary on the
//! way to a deadline (several wake-ups per tick, seen in strace). On a VM
//! each wake-up from idle costs CPU, so those wake-ups were most of the
//! agent's own cost.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::sys;

pub struct Ticker {
    fd: OwnedFd,
    period: Duration,
}

impl Ticker {
    /// Ticks every `period`, the first one `period` from now (a sample at
    /// t=0 says nothing).
    pub fn new(period: Duration) -> Result<Ticker> {
        let fd = sys::timerfd().context("creating a timerfd")?;
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
        sys::timerfd_remaining(self.fd.as_fd()).context("reading the timerfd")
    }

    /// Tick every `interval` from now on, the next one `interval` from now.
    fn arm(&self, interval: Duration) -> Result<()> {
        self.arm_at(interval, interval)
    }

    /// Tick in `first`, then every `interval`.
    fn arm_at(&self, first: Duration, interval: Duration) -> Result<()> {
        anyhow::ensure!(!interval.is_zero(), "the interval must be positive");
        sys::timerfd_arm(self.fd.as_fd(), first, interval).context("arming the timerfd")
    }

    /// Take the tick if one is due, without blocking. Ticks missed while
    /// the caller was busy count as one, and the next keeps the phase.
    pub fn take(&self) -> io::Result<bool> {
        sys::timerfd_take(self.fd.as_fd())
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
