//! Activation statistics on calibration text, for choosing a quantization format per tensor.
//!
//! The mean square of every input column of every matrix, `E[x_c²]`, over the tokens of a text:
//! the weights of [`exo_quant::plan::weighted_error`]. A column that carries large activations
//! (the outlier channels of LLM hidden states) makes its weights' rounding errors count more.

use std::collections::BTreeMap;

use crate::transformer::Transformer;
use crate::ModelError;

/// The calibration text used when none is given: about 3 kB of English prose, dialogue, code,
/// numbers, a list and a few other languages, written for exo (so no licence question), to
/// exercise the kinds of input a chat model sees.
pub const DEFAULT_TEXT: &str = include_str!("calibration.txt");

/// Where a matrix reads its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Site {
    /// The normed residual entering attention (q, k, v).
    AttnIn,
    /// The attention output (the output projection).
    AttnOut,
    /// The normed residual entering the feed-forward block (gate, up).
    FfnIn,
    /// The gated activation (down).
    FfnDown,
    /// The final normed hidden state (the LM head).
    Head,
}

/// Sums of squared activations per input column, per (layer, site).
#[derive(Debug, Default)]
pub struct ActivationStats {
    sums: BTreeMap<(usize, Site), (Vec<f64>, u64)>,
}

impl ActivationStats {
    /// Adds the rows of `x` (`cols` values each) at `layer`'s `site`.
    pub(crate) fn add(&mut self, layer: usize, site: Site, x: &[f32], cols: usize) {
        let (sum, n) = self.sums.entry((layer, site)).or_insert_with(|| (vec![0.0; cols], 0));
        for row in x.chunks_exact(cols) {
            for (s, &v) in sum.iter_mut().zip(row) {
                *s += f64::from(v) * f64::from(v);
            }
            *n += 1;
        }
    }

    /// The mean square of each input column of tensor `name` (a GGUF name), or `None` for
    /// tensors whose input is not a recorded activation (an untied token embedding).
    pub fn column_weights(&self, name: &str, tied_embeddings: bool) -> Option<Vec<f64>> {
        let key = match name {
            "output.weight" => (usize::MAX, Site::Head),
            "token_embd.weight" if tied_embeddings => (usize::MAX, Site::Head),
            _ => {
                let (layer, part) = name.strip_prefix("blk.")?.split_once('.')?;
                let site = match part {
                    "attn_q.weight" | "attn_k.weight" | "attn_v.weight" => Site::AttnIn,
                    "attn_output.weight" => Site::AttnOut,
                    "ffn_gate.weight" | "ffn_up.weight" => Site::FfnIn,
                    "ffn_down.weight" => Site::FfnDown,
                    _ => return None,
                };
                (layer.parse().ok()?, site)
            }
        };
        let (sum, n) = if key.1 == Site::Head {
            self.sums.iter().find(|(k, _)| k.1 == Site::Head).map(|(_, v)| v)?
        } else {
            self.sums.get(&key)?
        };
        Some(sum.iter().map(|s| s / (*n).max(1) as f64).collect())
    }

    /// [`ActivationStats::column_weights`] in f32, the importance
    /// [`exo_quant::quantize_weighted`] takes.
    pub fn importance(&self, name: &str, tied_embeddings: bool) -> Option<Vec<f32>> {
        self.column_weights(name, tied_embeddings).map(|w| w.iter().map(|&v| v as f32).collect())
    }

    /// Tokens seen at the first layer's input.
    pub fn tokens(&self) -> u64 {
        self.sums.get(&(0, Site::AttnIn)).map_or(0, |s| s.1)
    }
}

/// Runs `tokens` through `t` in independent chunks of `ctx` tokens and returns the statistics of
/// every matrix input (every position, the LM head's included).
pub fn collect(t: &Transformer, tokens: &[u32], ctx: usize) -> Result<ActivationStats, ModelError> {
    let ctx = ctx.min(t.config().train_ctx).max(1);
    let mut state = t.new_state(ctx, ctx)?;
    state.record_activations();
    for chunk in tokens.chunks(ctx) {
        state.truncate(0);
        t.forward(&mut state, chunk, true)?;
    }
    Ok(state.take_activations().unwrap_or_default())
}

/// A model's next-token distributions on a token sample, to measure the KL divergence of
/// another version of the model (one tensor quantized) from it.
pub struct KlProbe {
    tokens: Vec<u32>,
    vocab: usize,
    base_logp: Vec<f32>,
}

impl KlProbe {
    /// Runs `tokens` (one chunk) through `t` and keeps its log-probabilities at every position.
    pub fn new(t: &Transformer, tokens: &[u32]) -> Result<Self, ModelError> {
        let vocab = t.config().vocab_size;
        let base_logp = log_probs(t, tokens)?;
        Ok(Self { tokens: tokens.to_vec(), vocab, base_logp })
    }

    /// Mean over positions of `KL(base ‖ t)`, in nats.
    pub fn kl(&self, t: &Transformer) -> Result<f64, ModelError> {
        let logp = log_probs(t, &self.tokens)?;
        let mut total = 0f64;
        for (b, q) in self.base_logp.chunks_exact(self.vocab).zip(logp.chunks_exact(self.vocab)) {
            total += b.iter().zip(q).map(|(&lb, &lq)| f64::from(lb.exp()) * f64::from(lb - lq)).sum::<f64>();
        }
        Ok(total / self.tokens.len().max(1) as f64)
    }
}

/// Log-softmax of the logits at every position of `tokens`.
fn log_probs(t: &Transformer, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
    let mut state = t.new_state(tokens.len().max(1), tokens.len().max(1))?;
    t.forward(&mut state, tokens, true)?;
    let vocab = t.config().vocab_size;
    let mut out = state.logits().to_vec();
    for row in out.chunks_exact_mut(vocab) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = max + row.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
        row.iter_mut().for_each(|l| *l -= lse);
    }
    Ok(out)
}
