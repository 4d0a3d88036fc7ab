//! Turning logits into the next token: penalties, top-k, top-p, min-p, temperature, seeded draw.
//!
//! The order of the chain and the penalty formulas follow llama.cpp's default sampler chain, so
//! the same settings mean the same thing in both.

use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::HashMap;

/// Sampling settings. The defaults are llama.cpp's (`llama-cli`) defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// Softmax temperature; `0` (or less) picks the most likely token (greedy).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; `0` disables.
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p`; `1` disables.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; `0` disables.
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recent tokens by this; `1` disables.
    pub repeat_penalty: f32,
    /// Subtract this from the logit of every token seen recently.
    pub presence_penalty: f32,
    /// Subtract this times the count of each token seen recently.
    pub frequency_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub penalty_last_n: usize,
    /// Seed of the random draw; `None` draws one from the OS.
    pub seed: Option<u64>,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            seed: None,
        }
    }
}

impl SamplerConfig {
    /// Settings that always pick the most likely token.
    pub fn greedy() -> Self {
        Self { temperature: 0.0, ..Self::default() }
    }

    /// Checks ranges; the message names the setting and its valid range.
    pub fn validate(&self) -> Result<(), String> {
        let check = |ok: bool, msg: String| if ok { Ok(()) } else { Err(msg) };
        check(self.temperature.is_finite() && self.temperature >= 0.0, format!("temperature {} must be >= 0", self.temperature))?;
        check((0.0..=1.0).contains(&self.top_p), format!("top_p {} must be in [0, 1]", self.top_p))?;
        check((0.0..=1.0).contains(&self.min_p), format!("min_p {} must be in [0, 1]", self.min_p))?;
        check(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0, format!("repeat_penalty {} must be > 0", self.repeat_penalty))?;
        check(self.presence_penalty.is_finite(), format!("presence_penalty {} must be finite", self.presence_penalty))?;
        check(self.frequency_penalty.is_finite(), format!("frequency_penalty {} must be finite", self.frequency_penalty))
    }
}

/// A sampler with its random state and reusable buffers.
pub struct Sampler {
    cfg: SamplerConfig,
    rng: StdRng,
    candidates: Vec<(u32, f32)>,
    /// The candidates' logits before the softmax, in their sorted order.
    raw: Vec<f32>,
    counts: HashMap<u32, u32>,
    logits: Vec<f32>,
}

impl Sampler {
    /// A sampler for `cfg`; the same seed gives the same draws.
    pub fn new(cfg: SamplerConfig) -> Self {
        let rng = match cfg.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Self { cfg, rng, candidates: Vec::new(), raw: Vec::new(), counts: HashMap::new(), logits: Vec::new() }
    }

    /// The settings.
    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Whether this sampler always takes the raw logits' [`argmax`]: greedy, with every penalty
    /// neutral, so that the logits themselves need not be read (on a GPU, only the index is).
    pub fn is_plain_greedy(&self) -> bool {
        self.cfg.temperature <= 0.0 && self.penalties_neutral()
    }

    /// Whether every penalty leaves the logits as they are (the draw then depends on the logits
    /// alone, not on the history).
    fn penalties_neutral(&self) -> bool {
        let c = &self.cfg;
        c.repeat_penalty == 1.0 && c.presence_penalty == 0.0 && c.frequency_penalty == 0.0
    }

    /// Picks the next token from `logits` given the tokens so far (`history`, for penalties).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        self.distribution(logits, history);
        if self.cfg.temperature <= 0.0 {
            return self.candidates[0].0;
        }
        let r = self.uniform();
        draw(&self.candidates, r)
    }

    /// The distribution [`Sampler::sample`] draws from: `(token, probability)` pairs, most likely
    /// first, summing to 1 (one pair of probability 1 when greedy). Speculative decoding
    /// compares the target's and the draft's through it, so both see the same penalties,
    /// truncation and temperature.
    pub fn distribution(&mut self, logits: &[f32], history: &[u32]) -> &[(u32, f32)] {
        self.logits.clear();
        self.logits.extend_from_slice(logits);
        self.apply_penalties(history);
        self.candidates.clear();
        if self.cfg.temperature <= 0.0 {
            self.candidates.push((argmax(&self.logits), 1.0));
            return &self.candidates;
        }
        self.candidates.extend(self.logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));

        // top-k: partial selection, then sort only the survivors.
        let k = if self.cfg.top_k == 0 { self.candidates.len() } else { self.cfg.top_k.min(self.candidates.len()) };
        if k < self.candidates.len() {
            self.candidates.select_nth_unstable_by(k - 1, by_logit_desc);
            self.candidates.truncate(k);
        }
        self.truncate_top_k_survivors();
        &self.candidates
    }

    /// `Some(top_k)` when this sampler's draw depends on the logits only through their `top_k`
    /// largest (sampling with a top-k and every penalty neutral), so that a GPU can select
    /// those and [`Sampler::sample_top_k`] finish the draw from them.
    pub fn top_k_suffices(&self) -> Option<usize> {
        let c = &self.cfg;
        (c.temperature > 0.0 && c.top_k > 0 && self.penalties_neutral()).then_some(c.top_k)
    }

    /// [`Sampler::sample`] from the `top_k` largest logits alone (`(token, logit)` in any order,
    /// all of them when the vocabulary is smaller), for a sampler whose
    /// [`Sampler::top_k_suffices`]: the same chain from top-p on, and the same draw.
    pub fn sample_top_k(&mut self, top: &[(u32, f32)]) -> u32 {
        self.candidates.clear();
        self.candidates.extend_from_slice(top);
        self.truncate_top_k_survivors();
        let r = self.uniform();
        draw(&self.candidates, r)
    }

    /// The chain after top-k on `candidates` (`(token, logit)`): sorted most likely first, cut by
    /// top-p and min-p at temperature 1, then the survivors' probabilities at the temperature.
    fn truncate_top_k_survivors(&mut self) {
        self.candidates.sort_unstable_by(by_logit_desc);
        self.raw.clear();
        self.raw.extend(self.candidates.iter().map(|c| c.1));

        // Probabilities at temperature 1 for top-p and min-p, as llama.cpp's chain computes them
        // before the temperature step.
        softmax_candidates(&mut self.candidates, 1.0);
        if self.cfg.top_p < 1.0 {
            let mut cum = 0.0;
            let mut keep = self.candidates.len();
            for (i, c) in self.candidates.iter().enumerate() {
                cum += c.1;
                if cum >= self.cfg.top_p {
                    keep = i + 1;
                    break;
                }
            }
            self.candidates.truncate(keep.max(1));
        }
        if self.cfg.min_p > 0.0 {
            let floor = self.candidates[0].1 * self.cfg.min_p;
            let keep = self.candidates.iter().take_while(|c| c.1 >= floor).count();
            self.candidates.truncate(keep.max(1));
        }

        // Temperature on the surviving logits (cuts keep a prefix, so `raw` lines up).
        for (c, &l) in self.candidates.iter_mut().zip(&self.raw) {
            c.1 = l;
        }
        softmax_candidates(&mut self.candidates, self.cfg.temperature);
    }

    /// A uniform draw in `[0, 1)` from the sampler's seeded stream.
    pub fn uniform(&mut self) -> f32 {
        self.rng.random()
    }

    fn apply_penalties(&mut self, history: &[u32]) {
        let c = &self.cfg;
        if c.penalty_last_n == 0 || self.penalties_neutral() {
            return;
        }
        self.counts.clear();
        let start = history.len().saturating_sub(c.penalty_last_n);
        for &t in &history[start..] {
            *self.counts.entry(t).or_default() += 1;
        }
        for (&tok, &n) in &self.counts {
            let Some(l) = self.logits.get_mut(tok as usize) else { continue };
            if *l > 0.0 {
                *l /= c.repeat_penalty;
            } else {
                *l *= c.repeat_penalty;
            }
            *l -= n as f32 * c.frequency_penalty + c.presence_penalty;
        }
    }
}

/// The token at cumulative probability `r` (in `[0, 1)`) of `dist` (`(token, probability)`
/// pairs summing to 1).
pub fn draw(dist: &[(u32, f32)], r: f32) -> u32 {
    let mut cum = 0.0;
    for c in dist {
        cum += c.1;
        if r < cum {
            return c.0;
        }
    }
    // Rounding can leave `r` above the last sum: take the last token with any probability,
    // never one that constrained decoding masked out.
    dist.iter().rev().find(|c| c.1 > 0.0).or(dist.first()).map_or(0, |c| c.0)
}

pub use exo_models::argmax;

fn by_logit_desc(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1)
}

fn softmax_candidates(c: &mut [(u32, f32)], temperature: f32) {
    let max = c.iter().map(|x| x.1).fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for x in c.iter_mut() {
        x.1 = ((x.1 - max) / temperature).exp();
        sum += x.1;
    }
    for x in c.iter_mut() {
        x.1 /= sum;
    }
}

/// Log-softmax of `logits` into `out` (same length).
pub fn log_softmax(logits: &[f32], out: &mut Vec<f32>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
    out.clear();
    out.extend(logits.iter().map(|&l| l - lse));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SamplerConfig {
        SamplerConfig { seed: Some(7), ..SamplerConfig::default() }
    }

    #[test]
    fn greedy_picks_the_first_maximum() {
        let mut s = Sampler::new(SamplerConfig::greedy());
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0], &[]), 1);
    }

    #[test]
    fn same_seed_same_draws_and_different_seed_differs() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let flat = SamplerConfig { top_k: 0, top_p: 1.0, min_p: 0.0, temperature: 1.0, ..cfg() };
        let draw = |seed| {
            let mut s = Sampler::new(SamplerConfig { seed: Some(seed), ..flat.clone() });
            (0..50).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }

    #[test]
    fn sampling_from_the_top_k_alone_draws_what_sampling_from_all_logits_draws() {
        let logits: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin() * 4.0 + (i % 7) as f32 * 0.1).collect();
        for (top_k, top_p, min_p, temperature) in [(40, 0.95, 0.05, 0.8), (5, 1.0, 0.0, 1.5), (200, 0.5, 0.0, 0.3)] {
            let c = SamplerConfig { top_k, top_p, min_p, temperature, seed: Some(7), ..cfg() };
            let mut all = Sampler::new(c.clone());
            let mut top = Sampler::new(c);
            assert_eq!(top.top_k_suffices(), Some(top_k));
            // The k largest in reverse index order, as a GPU may return them.
            let mut order: Vec<u32> = (0..logits.len() as u32).collect();
            order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
            let mut k_largest: Vec<(u32, f32)> = order[..top_k].iter().map(|&i| (i, logits[i as usize])).collect();
            k_largest.sort_by_key(|&(i, _)| std::cmp::Reverse(i));
            let from_all: Vec<u32> = (0..200).map(|_| all.sample(&logits, &[])).collect();
            let from_top: Vec<u32> = (0..200).map(|_| top.sample_top_k(&k_largest)).collect();
            assert_eq!(from_all, from_top, "top_k {top_k}");
            assert!(from_all.iter().collect::<std::collections::HashSet<_>>().len() > 1, "the draws vary");
        }
    }

    #[test]
    fn top_k_suffices_only_without_penalties_when_sampling_with_a_top_k() {
        assert_eq!(Sampler::new(cfg()).top_k_suffices(), Some(40));
        assert_eq!(Sampler::new(SamplerConfig { top_k: 0, ..cfg() }).top_k_suffices(), None);
        assert_eq!(Sampler::new(SamplerConfig::greedy()).top_k_suffices(), None);
        assert_eq!(Sampler::new(SamplerConfig { repeat_penalty: 1.1, ..cfg() }).top_k_suffices(), None);
        assert_eq!(Sampler::new(SamplerConfig { presence_penalty: 0.5, ..cfg() }).top_k_suffices(), None);
        assert_eq!(Sampler::new(SamplerConfig { frequency_penalty: 0.5, ..cfg() }).top_k_suffices(), None);
    }

    #[test]
    fn top_k_one_is_greedy_and_min_p_cuts_the_tail() {
        let mut s = Sampler::new(SamplerConfig { top_k: 1, temperature: 5.0, ..cfg() });
        for _ in 0..20 {
            assert_eq!(s.sample(&[1.0, 2.0, 0.5], &[]), 1);
        }
        // p(0) = e^0 / (e^0 + e^-10) ~ 1; min_p 0.5 removes token 1 entirely.
        let mut s = Sampler::new(SamplerConfig { top_k: 0, top_p: 1.0, min_p: 0.5, temperature: 1.0, ..cfg() });
        for _ in 0..50 {
            assert_eq!(s.sample(&[0.0, -10.0], &[]), 0);
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_sufficient_set() {
        // Probabilities 0.7, 0.2, 0.1: top_p 0.8 keeps tokens 0 and 1, never 2.
        let logits = [0.7f32.ln(), 0.2f32.ln(), 0.1f32.ln()];
        let mut s = Sampler::new(SamplerConfig { top_k: 0, top_p: 0.8, min_p: 0.0, temperature: 1.0, ..cfg() });
        let draws: Vec<u32> = (0..400).map(|_| s.sample(&logits, &[])).collect();
        assert!(!draws.contains(&2));
        assert!(draws.contains(&1));
    }

    #[test]
    fn penalties_follow_llama_cpp_formulas() {
        let mut s = Sampler::new(SamplerConfig { repeat_penalty: 2.0, presence_penalty: 0.5, frequency_penalty: 0.25, ..SamplerConfig::greedy() });
        s.logits = vec![4.0, -1.0, 3.0];
        s.apply_penalties(&[0, 0, 1]);
        // token 0: 4/2 - (2*0.25 + 0.5) = 1.0; token 1: -1*2 - (0.25 + 0.5) = -2.75; token 2 untouched.
        assert_eq!(s.logits, vec![1.0, -2.75, 3.0]);
    }

    #[test]
    fn validate_names_the_setting() {
        let bad = SamplerConfig { top_p: 1.5, ..SamplerConfig::default() };
        assert!(bad.validate().unwrap_err().contains("top_p"));
    }
}
