//! Log-probabilities of generated tokens, as the OpenAI and Ollama APIs report them.
//!
//! They are taken from the model's own distribution (log-softmax of the raw logits, before
//! penalties, temperature or truncation), as OpenAI and llama.cpp's server report them by default:
//! the numbers then describe the model, not the sampling settings of one request.

use crate::sampler::log_softmax;

/// A generated token with its log-probability and the most likely alternatives at its position.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    /// The token chosen.
    pub id: u32,
    /// Its log-probability (natural log).
    pub logprob: f32,
    /// The most likely tokens at this position with their log-probabilities, most likely first
    /// (as many as [`crate::GenerateParams::logprobs`] asked for; may include the chosen one).
    pub top: Vec<(u32, f32)>,
}

/// Computes [`TokenLogprob`]s, reusing its buffer across tokens.
#[derive(Default)]
pub(crate) struct LogprobScratch {
    logprobs: Vec<f32>,
}

impl LogprobScratch {
    /// The log-probability of `chosen` under `logits` and the `n_top` most likely tokens.
    pub(crate) fn token(&mut self, logits: &[f32], chosen: u32, n_top: usize) -> TokenLogprob {
        log_softmax(logits, &mut self.logprobs);
        let lp = &self.logprobs;
        let mut top: Vec<(u32, f32)> = Vec::with_capacity(n_top + 1);
        if n_top > 0 {
            for (i, &l) in lp.iter().enumerate() {
                // Ties keep the lower id first, as a stable sort by descending value would.
                if top.len() == n_top && top.last().is_some_and(|&(_, worst)| l <= worst) {
                    continue;
                }
                let at = top.partition_point(|&(_, v)| v >= l);
                top.insert(at, (i as u32, l));
                top.truncate(n_top);
            }
        }
        TokenLogprob { id: chosen, logprob: lp.get(chosen as usize).copied().unwrap_or(f32::NEG_INFINITY), top }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_is_sorted_and_matches_log_softmax() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, -1.0];
        let t = LogprobScratch::default().token(&logits, 2, 3);
        let lse = logits.iter().map(|l| l.exp()).sum::<f32>().ln();
        assert!((t.logprob - (2.0 - lse)).abs() < 1e-6);
        let ids: Vec<u32> = t.top.iter().map(|p| p.0).collect();
        assert_eq!(ids, vec![1, 3, 2]);
        assert!((t.top[0].1 - (3.0 - lse)).abs() < 1e-6);
    }

    #[test]
    fn no_alternatives_when_none_asked() {
        assert!(LogprobScratch::default().token(&[0.0, 1.0], 1, 0).top.is_empty());
    }
}
