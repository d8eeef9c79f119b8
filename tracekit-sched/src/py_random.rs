//! Python's `random.Random` as the original dispatcher used it: seeded with
//! an integer (`random.seed(int)`: the Mersenne Twister's `init_by_array`
//! over the integer's 32-bit words, least significant first), then
//! `shuffle` and `randint`, which draw through `getrandbits` and rejection
//! (`_randbelow`). The same seed gives the original's task sequence.
//! The generator itself is `rand_mt`'s MT19937.

use rand_core::RngCore;
use rand_mt::Mt;

/// A Python-compatible random source.
pub struct PyRandom {
    mt: Mt,
}

impl PyRandom {
    /// `random.Random(seed)` (Python takes the absolute value; a `u64` has none
    /// to take). 0 is seeded like any other integer.
    pub fn seeded(seed: u64) -> PyRandom {
        let (lo, hi) = (seed as u32, (seed >> 32) as u32);
        let key: Vec<u32> = if hi == 0 { vec![lo] } else { vec![lo, hi] };
        PyRandom {
            mt: Mt::new_with_key(key),
        }
    }

    /// An unseeded generator (Python seeds `random.Random()` from the OS).
    pub fn from_os(os: &mut impl RngCore) -> PyRandom {
        let key: Vec<u32> = (0..624).map(|_| os.next_u32()).collect();
        PyRandom {
            mt: Mt::new_with_key(key),
        }
    }

    /// `getrandbits(k)`: `k` random bits, from 32-bit words least
    /// significant first, the last word's top bits kept.
    pub fn getrandbits(&mut self, k: u32) -> u128 {
        if k == 0 {
            return 0;
        }
        if k <= 32 {
            return u128::from(self.mt.next_u32() >> (32 - k));
        }
        let mut out = 0u128;
        let mut left = k;
        let mut shift = 0;
        while left > 0 {
            let mut word = self.mt.next_u32();
            if left < 32 {
                word >>= 32 - left;
            }
            out |= u128::from(word) << shift;
            shift += 32;
            left = left.saturating_sub(32);
        }
        out
    }

    /// `_randbelow(n)`: uniform in `0..n` by rejection on `n`'s bit length.
    pub fn randbelow(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let k = u64::BITS - n.leading_zeros();
        loop {
            let r = self.getrandbits(k);
            if r < u128::from(n) {
                return r as u64;
            }
        }
    }

    /// `randint(a, b)`: uniform in `a..=b` (`a <= b`).
    pub fn randint(&mut self, a: u64, b: u64) -> u64 {
        a + self.randbelow(b - a + 1)
    }

    /// `shuffle(x)`: Fisher–Yates from the last element down.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.randbelow(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values printed by CPython 3.11 (`random.Random(s).getrandbits(32)`,
    /// `.getrandbits(70)`, `.randint(1, 10)`).
    #[test]
    fn matches_cpython_draws() {
        let mut r = PyRandom::seeded(42);
        assert_eq!(r.getrandbits(32), 2_746_317_213);
        let mut r = PyRandom::seeded(1 << 40);
        assert_eq!(r.getrandbits(70), PY_BITS70_SEED_2_40);
        let mut r = PyRandom::seeded(20_250_901);
        let draws: Vec<u64> = (0..8).map(|_| r.randint(1, 10)).collect();
        assert_eq!(draws, PY_RANDINT_20250901);
    }

    const PY_BITS70_SEED_2_40: u128 = 781_279_065_922_817_498_497;
    const PY_RANDINT_20250901: [u64; 8] = [1, 9, 4, 3, 9, 4, 6, 6];
}
