//! Mix splitting and the seeded task sequence (pure; SPEC "Dispatcher").
//!
//! The task sequence draws from Python's `random.Random(seed)` exactly as
//! the original dispatcher did ([`PyRandom`]: its Mersenne Twister, `shuffle`
//! and `randint`), so a seed gives the original's sequence. Seed 0 means
//! "unseeded" (OS entropy), as in the original.
//!
//! Other draws (tests, benchmarks, the dispatcher's id) use ChaCha8
//! ([`rng`]), whose output is fixed by its specification: [`uniform`] is
//! rejection sampling on `next_u64` (no modulo bias), [`shuffle`]
//! Fisher–Yates from the last element down.

use anyhow::{Context, bail};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::py_random::PyRandom;

/// The task sequence's generator for `seed`: Python's `random.Random(seed)`,
/// or for 0 one seeded from the OS (the original's `random.Random()`).
pub fn py_rng(seed: u64) -> PyRandom {
    if seed == 0 {
        PyRandom::from_os(&mut rng(0))
    } else {
        PyRandom::seeded(seed)
    }
}

/// The generator for `seed` (0 = a random seed from the OS).
pub fn rng(seed: u64) -> ChaCha8Rng {
    if seed == 0 {
        ChaCha8Rng::from_os_rng()
    } else {
        ChaCha8Rng::seed_from_u64(seed)
    }
}

/// A uniform integer in `0..=n`.
pub fn uniform(rng: &mut impl RngCore, n: u64) -> u64 {
    if n == u64::MAX {
        return rng.next_u64();
    }
    let range = n + 1;
    // Largest multiple of `range` that fits: draws at or above it are retried.
    let zone = u64::MAX - (u64::MAX - range + 1) % range;
    loop {
        let x = rng.next_u64();
        if x <= zone {
            return x % range;
        }
    }
}

/// Fisher–Yates shuffle, from the last element down.
pub fn shuffle<T>(rng: &mut impl RngCore, v: &mut [T]) {
    for i in (1..v.len()).rev() {
        let j = uniform(rng, i as u64) as usize;
        v.swap(i, j);
    }
}

/// Parses `a=3,b=2` (weights are non-negative integers; names keep their order).
pub fn parse_mix(s: &str) -> anyhow::Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, w) = part
            .split_once('=')
            .with_context(|| format!("--mix entry `{part}` is not NAME=WEIGHT"))?;
        let w: u64 = w.trim().parse().with_context(|| {
            format!("--mix weight `{w}` of `{name}` is not a non-negative integer")
        })?;
        out.push((name.trim().to_string(), w));
    }
    if out.is_empty() {
        bail!("--mix `{s}` names no profile");
    }
    if out.iter().all(|(_, w)| *w == 0) {
        bail!("--mix `{s}`: all weights are 0");
    }
    Ok(out)
}

/// Tasks per profile for `total`: floor(total·w/Σw) each, then the remainder
/// one each to profiles in descending weight order (stable for equal weights).
pub fn split(mix: &[(String, u64)], total: u64) -> Vec<u64> {
    let sum: u64 = mix.iter().map(|(_, w)| w).sum::<u64>().max(1);
    let mut counts: Vec<u64> = mix
        .iter()
        .map(|(_, w)| ((total as u128 * *w as u128) / sum as u128) as u64)
        .collect();
    let mut rem = total - counts.iter().sum::<u64>();
    let mut order: Vec<usize> = (0..mix.len()).collect();
    order.sort_by(|&a, &b| mix[b].1.cmp(&mix[a].1));
    for &i in order.iter().cycle().take(mix.len() * 2) {
        if rem == 0 {
            break;
        }
        counts[i] += 1;
        rem -= 1;
    }
    counts
}

/// The shuffled profile sequence for `--mix` with `--total`: in mix order,
/// then `random.shuffle`d.
pub fn sequence(mix: &[(String, u64)], total: u64, rng: &mut PyRandom) -> Vec<String> {
    let mut seq = Vec::with_capacity(total as usize);
    for ((name, _), n) in mix.iter().zip(split(mix, total)) {
        seq.extend(std::iter::repeat_n(name.clone(), n as usize));
    }
    rng.shuffle(&mut seq);
    seq
}

/// One profile drawn by weight (for `--mix` without `--total`), as the
/// original: `randint(1, Σw)`, then the first bucket whose cumulative
/// weight reaches it.
pub fn draw<'a>(mix: &'a [(String, u64)], rng: &mut PyRandom) -> &'a str {
    let sum: u64 = mix.iter().map(|(_, w)| w).sum();
    let r = rng.randint(1, sum);
    let mut acc = 0;
    for (name, w) in mix {
        acc += w;
        if r <= acc {
            return name;
        }
    }
    &mix[mix.len() - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix(s: &str) -> Vec<(String, u64)> {
        parse_mix(s).unwrap()
    }

    #[test]
    fn split_follows_the_spec() {
        // 100 over 3,2,2,3: 30,20,20,30 exactly.
        assert_eq!(split(&mix("m=3,f=2,h=2,l=3"), 100), vec![30, 20, 20, 30]);
        // 10 over 1,1,1: 3,3,3 + remainder 1 to the first of the (equal) heaviest.
        assert_eq!(split(&mix("a=1,b=1,c=1"), 10), vec![4, 3, 3]);
        // 7 over 1,5,2: floors 0,4,1 (5), remainder 2 -> b then c.
        assert_eq!(split(&mix("a=1,b=5,c=2"), 7), vec![0, 5, 2]);
        assert_eq!(split(&mix("a=0,b=1"), 3), vec![0, 3]);
        for total in 0..50 {
            assert_eq!(split(&mix("a=7,b=3,c=1"), total).iter().sum::<u64>(), total);
        }
    }

    #[test]
    fn parse_errors() {
        assert!(parse_mix("a").is_err());
        assert!(parse_mix("a=x").is_err());
        assert!(parse_mix("a=-1").is_err());
        assert!(parse_mix("a=0").is_err());
        assert!(parse_mix("").is_err());
        assert_eq!(mix(" a = 2 , b=1,"), vec![("a".into(), 2), ("b".into(), 1)]);
    }

    #[test]
    fn seeded_sequences_are_stable() {
        let m = mix("a=3,b=2,c=1");
        let s1 = sequence(&m, 60, &mut py_rng(20250901));
        let s2 = sequence(&m, 60, &mut py_rng(20250901));
        assert_eq!(s1, s2);
        assert_ne!(s1, sequence(&m, 60, &mut py_rng(7)));
        assert_eq!(s1.iter().filter(|x| *x == "a").count(), 30);
        // Pin the generator: this must never change between releases.
        let mut r = rng(42);
        let first: Vec<u64> = (0..5).map(|_| uniform(&mut r, 9)).collect();
        let mut r2 = ChaCha8Rng::seed_from_u64(42);
        let again: Vec<u64> = (0..5).map(|_| uniform(&mut r2, 9)).collect();
        assert_eq!(first, again);
    }

    #[test]
    fn uniform_and_draw_stay_in_range() {
        let mut r = rng(1);
        for n in [0u64, 1, 2, 9, 1000] {
            for _ in 0..200 {
                assert!(uniform(&mut r, n) <= n);
            }
        }
        let m = mix("a=1,b=0,c=1");
        let mut p = py_rng(1);
        for _ in 0..200 {
            assert_ne!(draw(&m, &mut p), "b");
        }
    }
}
