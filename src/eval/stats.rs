//! Means with bootstrap 95% intervals, and paired comparisons of two runs.

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// A mean over scenarios with its percentile-bootstrap 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub mean: f64,
    pub ci95: [f64; 2],
    pub n: usize,
}

const RESAMPLES: usize = 2000;

pub fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// The mean of `xs` with a 95% percentile-bootstrap interval (seeded, so reruns agree).
pub fn bootstrap(xs: &[f64], seed: u64) -> Estimate {
    let m = mean(xs);
    if xs.len() < 2 {
        return Estimate {
            mean: m,
            ci95: [m, m],
            n: xs.len(),
        };
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let means: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            let mut s = 0.0;
            for _ in 0..xs.len() {
                s += xs[rng.random_range(0..xs.len())];
            }
            s / xs.len() as f64
        })
        .collect();
    percentile_interval(m, means, xs.len())
}

/// `mean` with the 2.5th and 97.5th percentiles of its bootstrap resamples as its interval.
fn percentile_interval(mean: f64, mut means: Vec<f64>, n: usize) -> Estimate {
    means.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| means[((q * (RESAMPLES - 1) as f64).round() as usize).min(RESAMPLES - 1)];
    Estimate {
        mean,
        ci95: [at(0.025), at(0.975)],
        n,
    }
}

/// The macro average of several groups (each domain's mean, averaged with equal weight, as the
/// paper's Table 1 averages its datasets) with a stratified percentile-bootstrap 95% interval:
/// every resample redraws each group from itself, so a small domain keeps its weight and its
/// own spread. `n` counts the observations of all groups; empty groups are left out.
pub fn macro_bootstrap(groups: &[Vec<f64>], seed: u64) -> Estimate {
    let groups: Vec<&Vec<f64>> = groups.iter().filter(|g| !g.is_empty()).collect();
    let n = groups.iter().map(|g| g.len()).sum();
    let m = mean(&groups.iter().map(|g| mean(g)).collect::<Vec<_>>());
    if groups.is_empty() || groups.iter().all(|g| g.len() < 2) {
        return Estimate {
            mean: m,
            ci95: [m, m],
            n,
        };
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let means: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            let mut total = 0.0;
            for g in &groups {
                let mut s = 0.0;
                for _ in 0..g.len() {
                    s += g[rng.random_range(0..g.len())];
                }
                total += s / g.len() as f64;
            }
            total / groups.len() as f64
        })
        .collect();
    percentile_interval(m, means, n)
}

/// B − A over paired observations, with B's win rate (ties count half).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Paired {
    pub diff: Estimate,
    pub win_rate: f64,
}

pub fn paired(a: &[f64], b: &[f64], seed: u64) -> Paired {
    assert_eq!(a.len(), b.len());
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| y - x).collect();
    let wins: f64 = d
        .iter()
        .map(|x| {
            if *x > 1e-12 {
                1.0
            } else if *x < -1e-12 {
                0.0
            } else {
                0.5
            }
        })
        .sum();
    Paired {
        diff: bootstrap(&d, seed),
        win_rate: if d.is_empty() {
            f64::NAN
        } else {
            wins / d.len() as f64
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_contains_the_mean_and_shrinks_with_n() {
        let small: Vec<f64> = (0..10).map(|i| (i % 3) as f64).collect();
        let big: Vec<f64> = (0..1000).map(|i| (i % 3) as f64).collect();
        let s = bootstrap(&small, 1);
        let b = bootstrap(&big, 1);
        assert!(s.ci95[0] <= s.mean && s.mean <= s.ci95[1]);
        assert!((b.mean - 1.0).abs() < 0.01);
        assert!(b.ci95[1] - b.ci95[0] < s.ci95[1] - s.ci95[0]);
        // Population sd of {0,1,2} is 0.816; the 95% half-width at n=1000 is about 0.05.
        let half = (b.ci95[1] - b.ci95[0]) / 2.0;
        assert!(
            (half - 1.96 * 0.816 / 1000f64.sqrt()).abs() < 0.01,
            "{half}"
        );
        assert_eq!(bootstrap(&small, 1), bootstrap(&small, 1));
    }

    #[test]
    fn macro_average_weighs_domains_equally_and_resamples_within_them() {
        // A large domain at 0 and a small one at 1: the pooled mean is near 0, the macro 0.5.
        let big = vec![0.0; 990];
        let small = vec![1.0; 10];
        let m = macro_bootstrap(&[big.clone(), small.clone()], 3);
        assert!((m.mean - 0.5).abs() < 1e-12);
        assert_eq!(m.n, 1000);
        // Constant within each domain: every stratified resample has the same macro mean.
        assert_eq!(m.ci95, [0.5, 0.5]);
        // Spread within a domain widens the interval; one domain is its plain bootstrap.
        let spread: Vec<f64> = (0..40).map(|i| (i % 2) as f64).collect();
        let w = macro_bootstrap(&[spread.clone(), small], 3);
        assert!(w.ci95[0] < 0.75 && 0.75 < w.ci95[1], "{w:?}");
        let one = macro_bootstrap(std::slice::from_ref(&spread), 3);
        assert!((one.mean - bootstrap(&spread, 3).mean).abs() < 1e-12);
        assert!(one.ci95[0] < 0.5 && 0.5 < one.ci95[1]);
        // Empty groups are not domains.
        assert!((macro_bootstrap(&[vec![], vec![0.2, 0.4]], 1).mean - 0.3).abs() < 1e-12);
    }

    #[test]
    fn paired_difference_and_win_rate() {
        let a = [0.1, 0.2, 0.3, 0.4];
        let b = [0.2, 0.2, 0.5, 0.3];
        let p = paired(&a, &b, 0);
        assert!((p.diff.mean - 0.05).abs() < 1e-12);
        assert!((p.win_rate - (1.0 + 0.5 + 1.0 + 0.0) / 4.0).abs() < 1e-12);
    }
}
