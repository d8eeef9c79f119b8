//! Shared binding's CPU quota: max-min fair (water-filling) with weights.
//!
//! Each running task asks for up to its units in cores (a task of k units is
//! a k-vCPU machine) and has weight = units. The machine's cores are shared
//! in proportion to weight; a task whose share exceeds its demand is capped
//! there and the excess is shared among the others, until nothing is left or
//! everyone is satisfied. Recomputed whenever a task starts or ends.

/// One task's demand (cores) and weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Demand {
    pub cores: f64,
    pub weight: f64,
}

/// Cores granted to each task, in input order.
pub fn water_fill(capacity: f64, demands: &[Demand]) -> Vec<f64> {
    let mut grant = vec![0.0; demands.len()];
    let mut active: Vec<usize> = (0..demands.len())
        .filter(|&i| demands[i].cores > 0.0 && demands[i].weight > 0.0)
        .collect();
    let mut left = capacity.max(0.0);
    while !active.is_empty() && left > 1e-12 {
        let total_w: f64 = active.iter().map(|&i| demands[i].weight).sum();
        // Tasks that the proportional share would over-satisfy are capped.
        let capped: Vec<usize> = active
            .iter()
            .copied()
            .filter(|&i| demands[i].cores - grant[i] <= left * demands[i].weight / total_w + 1e-12)
            .collect();
        if capped.is_empty() {
            for &i in &active {
                grant[i] += left * demands[i].weight / total_w;
            }
            break;
        }
        for &i in &capped {
            left -= demands[i].cores - grant[i];
            grant[i] = demands[i].cores;
        }
        active.retain(|i| !capped.contains(i));
    }
    grant
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(cores: f64) -> Demand {
        Demand {
            cores,
            weight: cores,
        }
    }

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9)
    }

    #[test]
    fn oversubscribed_shares_by_weight() {
        let g = water_fill(2.0, &[d(1.0), d(2.0)]);
        assert!(close(&g, &[2.0 / 3.0, 4.0 / 3.0]), "{g:?}");
    }

    #[test]
    fn undersubscribed_gets_demand() {
        let g = water_fill(4.0, &[d(1.0), d(2.0)]);
        assert!(close(&g, &[1.0, 2.0]), "{g:?}");
    }

    #[test]
    fn small_demand_is_capped_and_excess_redistributed() {
        // Weights 1:1:1 on 3 cores, but the first wants only 0.5.
        let demands = [
            Demand {
                cores: 0.5,
                weight: 1.0,
            },
            Demand {
                cores: 4.0,
                weight: 1.0,
            },
            Demand {
                cores: 4.0,
                weight: 1.0,
            },
        ];
        let g = water_fill(3.0, &demands);
        assert!(close(&g, &[0.5, 1.25, 1.25]), "{g:?}");
        assert!((g.iter().sum::<f64>() - 3.0).abs() < 1e-9);
    }

    #[test]
    fn empty_and_zero() {
        assert!(water_fill(2.0, &[]).is_empty());
        assert_eq!(water_fill(2.0, &[d(0.0)]), vec![0.0]);
    }
}
