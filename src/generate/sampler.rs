//! Turning logits into a token: penalties, bans, temperature, top-k, top-p, min-p.

use crate::model::{Error, Result};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Every knob of one generation call. Defaults are greedy decoding of up to 256 tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f32,
    /// Nucleus mass kept (1 = off).
    pub top_p: f32,
    /// Keep the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Drop tokens below `min_p` × the top probability (0 = off).
    pub min_p: f32,
    pub seed: u64,
    /// CTRL-style penalty on every token already in prompt or output (1 = off).
    pub repetition_penalty: f32,
    /// Ban tokens that would repeat an n-gram of prompt + output (0 = off; HumanLM uses 4).
    pub no_repeat_ngram: usize,
    pub stop: Vec<String>,
    /// Keep the stop string at the end of the text (default: strip it).
    pub keep_stop: bool,
    /// Samples of the same prompt, decoded together.
    pub n: usize,
    /// Keep generating past EOS (benchmarks).
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            max_new_tokens: 256,
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: 0,
            repetition_penalty: 1.0,
            no_repeat_ngram: 0,
            stop: vec![],
            keep_stop: false,
            n: 1,
            ignore_eos: false,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Msg(m.to_string()));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature must be a finite number ≥ 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top-p must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min-p must be in [0, 1]");
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad("repetition penalty must be > 0");
        }
        if self.max_new_tokens == 0 {
            return bad("max new tokens must be ≥ 1");
        }
        if self.n == 0 {
            return bad("n must be ≥ 1");
        }
        Ok(())
    }
}

/// Per-sample sampling state (its own seeded RNG, so a sample's tokens do not depend on how
/// many siblings share the batch).
pub struct Sampler {
    params: SamplingParams,
    rng: rand::rngs::StdRng,
    /// Scratch space for candidate (id, weight) pairs.
    scratch: Vec<(u32, f32)>,
}

/// Tokens whose probability is below this fraction of the top one are never sampled; keeps the
/// sort for top-p short without measurably changing the distribution.
const NEGLIGIBLE: f32 = 1e-9;

impl Sampler {
    pub fn new(params: &SamplingParams, seed: u64) -> Sampler {
        Sampler {
            params: params.clone(),
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            scratch: vec![],
        }
    }

    /// Choose the next token. `logits` is modified in place.
    pub fn sample(&mut self, logits: &mut [f32], prompt: &[u32], generated: &[u32]) -> u32 {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let mut seen = std::collections::HashSet::new();
            for &t in prompt.iter().chain(generated) {
                if seen.insert(t) {
                    if let Some(l) = logits.get_mut(t as usize) {
                        *l = if *l > 0.0 {
                            *l / p.repetition_penalty
                        } else {
                            *l * p.repetition_penalty
                        };
                    }
                }
            }
        }
        if p.no_repeat_ngram > 0 {
            for t in banned_by_ngram(prompt, generated, p.no_repeat_ngram) {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        if p.temperature <= 0.0 {
            return argmax(logits);
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            return argmax(logits);
        }
        let inv_t = 1.0 / p.temperature;
        let floor = NEGLIGIBLE.max(p.min_p);
        self.scratch.clear();
        let mut total = 0.0f32;
        for (i, &l) in logits.iter().enumerate() {
            let w = ((l - max) * inv_t).exp();
            total += w;
            if w >= floor {
                self.scratch.push((i as u32, w));
            }
        }
        let c = &mut self.scratch;
        if p.top_k > 0 || p.top_p < 1.0 {
            c.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        }
        if p.top_k > 0 && c.len() > p.top_k {
            c.truncate(p.top_k);
        }
        if p.top_p < 1.0 {
            // The nucleus is measured against the full distribution (before top-k), as in HF.
            let target = p.top_p * total;
            let mut cum = 0.0;
            let mut keep = c.len();
            for (j, &(_, w)) in c.iter().enumerate() {
                cum += w;
                if cum >= target {
                    keep = j + 1;
                    break;
                }
            }
            c.truncate(keep.max(1));
        }
        let kept: f32 = c.iter().map(|x| x.1).sum();
        let mut u = self.rng.random::<f32>() * kept;
        for &(id, w) in c.iter() {
            if u < w {
                return id;
            }
            u -= w;
        }
        c.last().map(|x| x.0).unwrap_or_else(|| argmax(logits))
    }
}

fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

/// Tokens that would complete an n-gram already present in prompt + generated.
pub fn banned_by_ngram(prompt: &[u32], generated: &[u32], n: usize) -> Vec<u32> {
    let seq: Vec<u32> = prompt.iter().chain(generated).copied().collect();
    if n == 0 || seq.len() < n {
        return vec![];
    }
    if n == 1 {
        return seq;
    }
    let prefix = &seq[seq.len() - (n - 1)..];
    let mut out = vec![];
    for i in 0..=seq.len() - n {
        if &seq[i..i + n - 1] == prefix {
            out.push(seq[i + n - 1]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ngram_ban_finds_completions() {
        // "1 2 3 | 1 2" → 3 would repeat the 3-gram "1 2 3".
        assert_eq!(banned_by_ngram(&[1, 2, 3], &[1, 2], 3), vec![3]);
        assert!(banned_by_ngram(&[1, 2, 3], &[2, 1], 3).is_empty());
    }

    #[test]
    fn same_seed_same_tokens() {
        let params = SamplingParams {
            temperature: 1.0,
            ..Default::default()
        };
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let draw = |seed| {
            let mut s = Sampler::new(&params, seed);
            (0..20)
                .map(|_| s.sample(&mut logits.clone(), &[], &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let params = SamplingParams {
            temperature: 1.5,
            top_k: 1,
            ..Default::default()
        };
        let mut s = Sampler::new(&params, 1);
        let logits = vec![0.1, 2.0, 1.9, -1.0];
        for _ in 0..10 {
            assert_eq!(s.sample(&mut logits.clone(), &[], &[]), 1);
        }
    }

    #[test]
    fn min_p_excludes_unlikely() {
        let params = SamplingParams {
            temperature: 1.0,
            min_p: 0.5,
            ..Default::default()
        };
        let mut s = Sampler::new(&params, 3);
        // exp(-1) ≈ 0.37 < 0.5: only token 0 survives.
        for _ in 0..20 {
            assert_eq!(s.sample(&mut [1.0, 0.0, -3.0], &[], &[]), 0);
        }
    }
}
