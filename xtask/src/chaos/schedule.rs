//! The fault schedule: which fault hits which process when, and for how
//! long, drawn from a seed (the same seed gives the same schedule).

use std::fmt;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What a fault does to its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// kill -9 an agent, start it again after the outage.
    KillAgent,
    /// SIGTERM an agent (it hands its tasks back), start it again.
    TermAgent,
    /// SIGSTOP an agent past the heartbeat timeout, then SIGCONT.
    StopAgent,
    /// kill -9 a central, start it again.
    KillCentral,
    /// SIGTERM a central, start it again.
    TermCentral,
    /// Stop Redis (kill -9 or SIGTERM) shorter than the heartbeat timeout.
    RedisShort,
    /// Stop Redis longer than the heartbeat timeout.
    RedisLong,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::KillAgent,
        Kind::TermAgent,
        Kind::StopAgent,
        Kind::KillCentral,
        Kind::TermCentral,
        Kind::RedisShort,
        Kind::RedisLong,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::KillAgent => "kill -9 agent",
            Kind::TermAgent => "SIGTERM agent",
            Kind::StopAgent => "SIGSTOP agent",
            Kind::KillCentral => "kill -9 central",
            Kind::TermCentral => "SIGTERM central",
            Kind::RedisShort => "Redis outage (short)",
            Kind::RedisLong => "Redis outage (long)",
        }
    }
}

/// What a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Agent(usize),
    Central(usize),
    Redis,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Agent(i) => write!(f, "node{}", i + 1),
            Target::Central(i) => write!(f, "central{}", i + 1),
            Target::Redis => write!(f, "redis"),
        }
    }
}

/// One fault: at `at` (from the start of the schedule) `kind` hits
/// `target`, which is restored (restarted, resumed) after `down`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fault {
    pub at: Duration,
    pub kind: Kind,
    pub target: Target,
    pub down: Duration,
    /// Redis outages: stopped by kill -9 (else SIGTERM).
    pub hard: bool,
}

/// What the schedule is drawn from.
#[derive(Debug, Clone)]
pub struct Params {
    pub seed: u64,
    /// Length of the fault window.
    pub duration: Duration,
    pub agents: usize,
    pub centrals: usize,
    pub heartbeat_timeout: Duration,
    /// Longest long Redis outage.
    pub long_outage_max: Duration,
    /// Include long Redis outages.
    pub long_outage: bool,
    /// Mean time between faults.
    pub mean_gap: Duration,
}

/// A long Redis outage per this much of the window (at least one).
const LONG_OUTAGE_EVERY: Duration = Duration::from_secs(200);

/// Faults in order of time.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub faults: Vec<Fault>,
}

impl Schedule {
    /// Every kind of fault once at a random time, then more at random
    /// (`mean_gap` apart on average); a target is hit by one fault at a time
    /// and every fault is over before the window ends.
    pub fn draw(p: &Params) -> Schedule {
        let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
        let mut faults: Vec<Fault> = Vec::new();
        let mut kinds: Vec<Kind> = Kind::ALL
            .into_iter()
            .filter(|k| p.long_outage || *k != Kind::RedisLong)
            .filter(|k| p.centrals > 0 || !matches!(k, Kind::KillCentral | Kind::TermCentral))
            .collect();
        let required = kinds.len();
        let extra = (p.duration.as_secs_f64() / p.mean_gap.as_secs_f64().max(0.1)) as usize;
        // Long outages are few (one per LONG_OUTAGE_EVERY of window): they
        // take a good part of it.
        let random_kinds: Vec<Kind> = kinds
            .iter()
            .copied()
            .filter(|k| *k != Kind::RedisLong)
            .collect();
        if p.long_outage {
            let more = (p.duration.as_secs() / LONG_OUTAGE_EVERY.as_secs()).saturating_sub(1);
            kinds.extend((0..more).map(|_| Kind::RedisLong));
        }
        for _ in 0..extra.saturating_sub(kinds.len()) {
            kinds.push(random_kinds[rng.random_range(0..random_kinds.len())]);
        }
        for (n, kind) in kinds.into_iter().enumerate() {
            // The required faults get more tries to find room.
            let tries = if n < required || kind == Kind::RedisLong {
                200
            } else {
                10
            };
            for _ in 0..tries {
                if let Some(f) = draw_one(&mut rng, p, kind)
                    && !faults.iter().any(|g| overlaps(g, &f))
                {
                    faults.push(f);
                    break;
                }
            }
        }
        faults.sort_by_key(|a| a.at);
        Schedule { faults }
    }

    /// The kinds of fault this schedule has, and how many of each.
    pub fn counts(&self) -> Vec<(Kind, usize)> {
        Kind::ALL
            .into_iter()
            .map(|k| (k, self.faults.iter().filter(|f| f.kind == k).count()))
            .collect()
    }

    pub fn print(&self, p: &Params) {
        println!(
            "Fault schedule (seed {}, {} s window, heartbeat timeout {} s): {} faults",
            p.seed,
            p.duration.as_secs(),
            p.heartbeat_timeout.as_secs_f64(),
            self.faults.len()
        );
        for f in &self.faults {
            let how = match f.kind {
                Kind::RedisShort | Kind::RedisLong if f.hard => " (kill -9)",
                Kind::RedisShort | Kind::RedisLong => " (SIGTERM)",
                _ => "",
            };
            println!(
                "  t={:>6.1}s  {:<22} {:<9} for {:>5.1}s{how}",
                f.at.as_secs_f64(),
                f.kind.name(),
                f.target.to_string(),
                f.down.as_secs_f64()
            );
        }
    }
}

/// Whether two faults hit the same target at overlapping times (a second
/// apart at least).
fn overlaps(a: &Fault, b: &Fault) -> bool {
    let gap = Duration::from_secs(1);
    a.target == b.target && a.at < b.at + b.down + gap && b.at < a.at + a.down + gap
}

fn secs(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> Duration {
    Duration::from_secs_f64(if hi > lo {
        rng.random_range(lo..hi)
    } else {
        lo
    })
}

/// A fault of `kind` at a random time and target, or None when it cannot
/// fit in the window.
fn draw_one(rng: &mut ChaCha8Rng, p: &Params, kind: Kind) -> Option<Fault> {
    let hb = p.heartbeat_timeout.as_secs_f64();
    let window = p.duration.as_secs_f64();
    let down = match kind {
        // Some restarts come before the node is declared dead, some after.
        Kind::KillAgent | Kind::TermAgent => secs(rng, 0.5, 2.0 * hb),
        Kind::StopAgent => secs(rng, hb + 2.0, hb + 10.0),
        Kind::KillCentral | Kind::TermCentral => secs(rng, 0.5, 5.0),
        Kind::RedisShort => secs(rng, 0.5, (hb / 2.0).max(1.0)),
        Kind::RedisLong => {
            let max = p.long_outage_max.as_secs_f64().min(window * 0.4);
            secs(rng, hb + 2.0, max.max(hb + 3.0))
        }
    };
    let target = match kind {
        Kind::KillAgent | Kind::TermAgent | Kind::StopAgent => {
            Target::Agent(rng.random_range(0..p.agents))
        }
        Kind::KillCentral | Kind::TermCentral => Target::Central(rng.random_range(0..p.centrals)),
        Kind::RedisShort | Kind::RedisLong => Target::Redis,
    };
    let hard = rng.random_bool(0.5);
    // Faults start after a short warm-up and end before the window does.
    let start = (window * 0.05).min(5.0);
    let latest = window - down.as_secs_f64() - 1.0;
    if latest <= start {
        return None;
    }
    Some(Fault {
        at: secs(rng, start, latest),
        kind,
        target,
        down,
        hard,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(seed: u64) -> Params {
        Params {
            seed,
            duration: Duration::from_secs(100),
            agents: 3,
            centrals: 2,
            heartbeat_timeout: Duration::from_secs(10),
            long_outage_max: Duration::from_secs(25),
            long_outage: true,
            mean_gap: Duration::from_secs(6),
        }
    }

    #[test]
    fn same_seed_same_schedule_and_every_kind_once() {
        for seed in 1..50 {
            let a = Schedule::draw(&params(seed));
            let b = Schedule::draw(&params(seed));
            assert_eq!(a.faults, b.faults);
            for (kind, n) in a.counts() {
                assert!(n >= 1, "seed {seed}: no {kind:?}");
            }
            for f in &a.faults {
                assert!(f.at + f.down < Duration::from_secs(100));
            }
            for (i, f) in a.faults.iter().enumerate() {
                for g in &a.faults[i + 1..] {
                    assert!(!overlaps(f, g), "seed {seed}: {f:?} and {g:?}");
                }
            }
        }
    }
}
