//! Statistics shared by `report` and `compare`: quantiles, the two-sample
//! Kolmogorov–Smirnov test, RMSE, and binning of intervals onto a time grid.
//! Pure functions.

use serde::Serialize;

/// The `p` quantile (0 ≤ p ≤ 1) of `sorted` (ascending), interpolated
/// linearly between order statistics (numpy's default, "type 7"); NaN when
/// empty.
pub fn quantile(sorted: &[f64], p: f64) -> f64 {
    match sorted {
        [] => f64::NAN,
        [only] => *only,
        _ => {
            let h = (sorted.len() - 1) as f64 * p.clamp(0.0, 1.0);
            let lo = h.floor() as usize;
            let hi = (lo + 1).min(sorted.len() - 1);
            sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
        }
    }
}

/// Sort a sample for [`quantile`]; NaNs go last.
pub fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// The usual summary of a distribution.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Dist {
    pub n: usize,
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Dist {
    /// Summary of `sorted` (ascending); zeros when empty (n tells).
    pub fn of(sorted: &[f64]) -> Dist {
        if sorted.is_empty() {
            return Dist {
                n: 0,
                mean: 0.0,
                p50: 0.0,
                p95: 0.0,
                p99: 0.0,
                max: 0.0,
            };
        }
        Dist {
            n: sorted.len(),
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
            p50: quantile(sorted, 0.5),
            p95: quantile(sorted, 0.95),
            p99: quantile(sorted, 0.99),
            max: sorted[sorted.len() - 1],
        }
    }
}

/// A two-sample Kolmogorov–Smirnov test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct KsTest {
    /// sup |F₁(x) − F₂(x)|.
    pub statistic: f64,
    /// Asymptotic two-sided p-value: the Kolmogorov distribution's survival
    /// function at √(n·m/(n+m)) · D (scipy's `kstwobign.sf`).
    pub p_value: f64,
}

/// The two-sample KS test of `a` and `b`, both sorted ascending. Ties are
/// handled by stepping past every copy of a value before comparing the two
/// empirical CDFs. Empty samples give D = 0, p = 1.
pub fn ks_2samp(a: &[f64], b: &[f64]) -> KsTest {
    if a.is_empty() || b.is_empty() {
        return KsTest {
            statistic: 0.0,
            p_value: 1.0,
        };
    }
    let (n, m) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j) = (0, 0);
    let mut d: f64 = 0.0;
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / n - j as f64 / m).abs());
    }
    let en = (n * m / (n + m)).sqrt();
    KsTest {
        statistic: d,
        p_value: kolmogorov_sf(en * d),
    }
}

/// P(K > λ) for the Kolmogorov distribution K (the limit of √n·Dₙ).
///
/// Two series of the same function, each used where it converges fast:
/// 1 − (√(2π)/λ) Σ exp(−(2k−1)²π²/(8λ²)) for small λ, and
/// 2 Σ (−1)^(k−1) exp(−2k²λ²) for large λ.
pub fn kolmogorov_sf(lambda: f64) -> f64 {
    if lambda.is_nan() {
        return f64::NAN;
    }
    if lambda <= 0.0 {
        return 1.0;
    }
    if lambda < 1.0 {
        let w = std::f64::consts::PI.powi(2) / (8.0 * lambda * lambda);
        let mut sum = 0.0;
        for k in 1..=100 {
            let odd = (2 * k - 1) as f64;
            let term = (-odd * odd * w).exp();
            sum += term;
            if term < 1e-18 {
                break;
            }
        }
        (1.0 - (2.0 * std::f64::consts::PI).sqrt() / lambda * sum).clamp(0.0, 1.0)
    } else {
        let mut sum = 0.0;
        for k in 1..=100 {
            let kf = k as f64;
            let term = (-2.0 * kf * kf * lambda * lambda).exp();
            sum += if k % 2 == 1 { term } else { -term };
            if term < 1e-18 {
                break;
            }
        }
        (2.0 * sum).clamp(0.0, 1.0)
    }
}

/// Root mean square of `a[i] − b[i]`; 0 for empty input.
pub fn rmse(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    if n == 0 {
        return 0.0;
    }
    let sum: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    (sum / n as f64).sqrt()
}

/// A regular time grid: bucket `i` covers `[origin + i·width, origin + (i+1)·width)`
/// in ms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Grid {
    pub origin_ms: i64,
    pub width_ms: i64,
    pub buckets: usize,
}

impl Grid {
    /// A grid of at most `max_buckets` buckets, each at least `min_width_ms`
    /// wide, covering `[from, to]`.
    pub fn covering(from: i64, to: i64, max_buckets: usize, min_width_ms: i64) -> Grid {
        let span = (to - from).max(1);
        let max_buckets = max_buckets.max(1) as i64;
        let width = ((span + max_buckets - 1) / max_buckets).max(min_width_ms.max(1));
        Grid {
            origin_ms: from,
            width_ms: width,
            buckets: ((span + width - 1) / width).max(1) as usize,
        }
    }

    /// Where bucket `i` ends, in seconds from the origin.
    pub fn end_s(&self, i: usize) -> f64 {
        ((i as i64 + 1) * self.width_ms) as f64 / 1000.0
    }

    /// Add `weight × (share of [from, to) in the bucket) ` to every bucket
    /// the interval overlaps; with `per_ms`, `weight` is spread by length
    /// (so a bucket gets weight × overlap / (to − from)), else each bucket
    /// gets weight × overlap / bucket width (a time average). A zero-length
    /// interval with `per_ms` puts its whole weight in its bucket.
    pub fn spread(&self, acc: &mut [f64], from: i64, to: i64, weight: f64, per_ms: bool) {
        let len = to - from;
        if len < 0 || weight == 0.0 {
            return;
        }
        let last = self.buckets as i64 - 1;
        let first_b = ((from - self.origin_ms).div_euclid(self.width_ms)).clamp(0, last);
        if len == 0 {
            if per_ms {
                acc[first_b as usize] += weight;
            }
            return;
        }
        let last_b = ((to - 1 - self.origin_ms).div_euclid(self.width_ms)).clamp(0, last);
        for b in first_b..=last_b {
            let b_from = self.origin_ms + b * self.width_ms;
            let b_to = b_from + self.width_ms;
            let overlap = (to.min(b_to) - from.max(b_from)).max(0) as f64;
            let share = if per_ms {
                overlap / len as f64
            } else {
                overlap / self.width_ms as f64
            };
            acc[b as usize] += weight * share;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn quantiles_interpolate_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0, 10.0];
        assert_eq!(quantile(&v, 0.5), 3.0);
        // numpy.percentile([1,2,3,4,10], [95, 99]) = 8.8, 9.76
        assert!(close(quantile(&v, 0.95), 8.8, 1e-12));
        assert!(close(quantile(&v, 0.99), 9.76, 1e-12));
        assert_eq!(quantile(&v, 1.0), 10.0);
        assert!(quantile(&[], 0.5).is_nan());
        let d = Dist::of(&v);
        assert_eq!((d.n, d.mean, d.max), (5, 4.0, 10.0));
    }

    /// Reference values from scipy 1.17.1: `scipy.stats.kstwobign.sf(x)`.
    #[test]
    fn kolmogorov_sf_matches_scipy() {
        let cases = [
            (0.1, 1.0),
            (0.3, 0.999_990_694_198_665_5),
            (0.5, 0.963_945_243_664_875_1),
            (0.8, 0.544_142_411_574_198_1),
            (0.99, 0.280_873_839_225_548_9),
            (1.0, 0.269_999_671_677_354_56),
            (1.2, 0.112_249_666_670_724_97),
            (1.358, 0.050_026_797_334_446_98),
            (2.0, 0.000_670_925_255_779_695_3),
            (3.0, 3.045_995_948_942_526e-8),
        ];
        for (x, want) in cases {
            let got = kolmogorov_sf(x);
            assert!(close(got, want, 1e-12), "sf({x}) = {got}, scipy {want}");
        }
        assert_eq!(kolmogorov_sf(0.0), 1.0);
    }

    /// Reference values from scipy 1.17.1: `ks_2samp(a, b, method="asymp")`
    /// gives the statistic; the p-value is `kstwobign.sf(sqrt(n*m/(n+m))*D)`.
    #[test]
    fn ks_2samp_matches_scipy() {
        let a = [0.1, 0.4, 0.4, 0.7, 1.2, 1.5, 2.0, 2.2, 3.1, 4.0];
        let b = [0.3, 0.4, 0.9, 1.9, 2.5, 2.6, 3.3, 3.9, 4.4, 5.0, 6.1, 7.0];
        let t = ks_2samp(&a, &b);
        assert!(close(t.statistic, 7.0 / 15.0, 1e-12), "D = {}", t.statistic);
        assert!(
            close(t.p_value, 0.185_738_851_082_789_3, 1e-12),
            "p = {}",
            t.p_value
        );
        let same = ks_2samp(&a, &a);
        assert_eq!((same.statistic, same.p_value), (0.0, 1.0));
        let b_far: Vec<f64> = (10..20).map(f64::from).collect();
        let far = ks_2samp(&a, &b_far);
        assert_eq!(far.statistic, 1.0);
        assert!(far.p_value < 0.01);
    }

    #[test]
    fn rmse_of_known_differences() {
        assert_eq!(rmse(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!(close(rmse(&[0.0, 0.0], &[3.0, 4.0]), 12.5f64.sqrt(), 1e-12));
        assert_eq!(rmse(&[], &[]), 0.0);
    }

    #[test]
    fn grid_spreads_intervals() {
        let g = Grid::covering(1000, 2000, 10, 1);
        assert_eq!((g.width_ms, g.buckets), (100, 10));
        let mut acc = vec![0.0; g.buckets];
        // Running from 1050 to 1250: half of bucket 0, all of 1, half of 2.
        g.spread(&mut acc, 1050, 1250, 1.0, false);
        assert_eq!(&acc[..4], &[0.5, 1.0, 0.5, 0.0]);
        let mut cpu = vec![0.0; g.buckets];
        // 200 ms of CPU over the same interval, spread by length.
        g.spread(&mut cpu, 1050, 1250, 200.0, true);
        assert_eq!(&cpu[..3], &[50.0, 100.0, 50.0]);
        g.spread(&mut cpu, 1999, 1999, 7.0, true);
        assert_eq!(cpu[9], 7.0);
        assert!(close(g.end_s(0), 0.1, 1e-12));
    }
}
