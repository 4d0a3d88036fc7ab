//! Perplexity and KL divergence over a text, as llama.cpp's `llama-perplexity` defines them, so
//! exo's numbers can be set next to llama.cpp's.
//!
//! The whole text is tokenized once (with BOS when the vocabulary adds one) and cut into
//! non-overlapping chunks of `ctx` tokens; each chunk is evaluated from an empty cache with its
//! first token replaced by BOS, and only the second half of each chunk is scored: position `j`
//! (for `ctx/2 <= j < ctx-1`) predicts token `j+1`, so every scored token has at least `ctx/2`
//! tokens of context. PPL is `exp(mean NLL)` and its standard error `sd(NLL)/sqrt(n) * PPL`
//! (llama.cpp's first-order estimate).
//!
//! With a base model, the KL divergence `sum p_base * (log p_base - log p_model)` of each scored
//! position is averaged, and the share of positions whose most likely token agrees is counted
//! (llama.cpp's `--kl-divergence` "same top p").

use exo_models::LoadedModel;

use crate::EngineError;

/// How the text is cut and evaluated.
#[derive(Clone, Debug)]
pub struct PerplexityParams {
    /// Tokens per chunk (llama.cpp's `-c`, default 512).
    pub ctx: usize,
    /// Tokens per forward call (at most `ctx`).
    pub batch: usize,
    /// Evaluate at most this many chunks (all by default).
    pub max_chunks: Option<usize>,
}

impl Default for PerplexityParams {
    fn default() -> Self {
        Self { ctx: 512, batch: 512, max_chunks: None }
    }
}

/// Sums of negative log-likelihoods (nats) of scored tokens.
#[derive(Clone, Copy, Debug, Default)]
struct Nll {
    sum: f64,
    sum_sq: f64,
    count: usize,
}

impl Nll {
    fn add(&mut self, nll: f64) {
        self.sum += nll;
        self.sum_sq += nll * nll;
        self.count += 1;
    }

    fn mean(&self) -> f64 {
        self.sum / self.count.max(1) as f64
    }

    /// Standard error of the mean.
    fn stderr(&self) -> f64 {
        if self.count < 2 {
            return 0.0;
        }
        let n = self.count as f64;
        let var = (self.sum_sq / n - self.mean() * self.mean()).max(0.0);
        (var / (n - 1.0)).sqrt()
    }

    fn ppl(&self) -> (f64, f64) {
        let ppl = self.mean().exp();
        (ppl, self.stderr() * ppl)
    }
}

/// Progress after each chunk.
#[derive(Clone, Copy, Debug)]
pub struct ChunkProgress {
    /// Chunks done (1-based).
    pub done: usize,
    /// Chunks in all.
    pub total: usize,
    /// Perplexity of the tokens scored so far.
    pub ppl: f64,
    /// Mean KL divergence so far, when a base model is given.
    pub kld: Option<f64>,
}

/// KL divergence of a model's distributions from a base model's.
#[derive(Clone, Copy, Debug)]
pub struct KlDivergence {
    /// Mean KL divergence in nats.
    pub mean: f64,
    /// Standard error of the mean.
    pub stderr: f64,
    /// Fraction (0 to 1) of positions where both models' most likely token is the same.
    pub top1_agreement: f64,
    /// Perplexity of the base model on the same tokens.
    pub base_ppl: f64,
    /// Its standard error.
    pub base_ppl_stderr: f64,
}

/// The outcome of a run.
#[derive(Clone, Copy, Debug)]
pub struct PerplexityReport {
    /// Perplexity over every scored token.
    pub ppl: f64,
    /// Its standard error.
    pub ppl_stderr: f64,
    /// Chunks evaluated.
    pub chunks: usize,
    /// Tokens scored.
    pub scored: usize,
    /// Against the base model, when one is given.
    pub kld: Option<KlDivergence>,
}

/// Tokenizes `text` as llama.cpp's perplexity tool does: BOS when the vocabulary adds one,
/// special-token texts taken literally.
pub fn tokenize(model: &LoadedModel, text: &str) -> Result<Vec<u32>, EngineError> {
    Ok(model.tokenizer.encode(text, true, false)?)
}

/// Scores `tokens` with `model` (and compares with `base`, if given), calling `progress` after
/// each chunk.
pub fn perplexity(
    model: &LoadedModel,
    base: Option<&LoadedModel>,
    tokens: &[u32],
    params: &PerplexityParams,
    mut progress: impl FnMut(ChunkProgress),
) -> Result<PerplexityReport, EngineError> {
    let ctx = params.ctx;
    if ctx < 4 {
        return Err(EngineError::Perplexity(format!("a context of {ctx} tokens is too small to score (at least 4)")));
    }
    // llama.cpp refuses fewer than two chunks' worth of tokens.
    if tokens.len() < 2 * ctx {
        return Err(EngineError::Perplexity(format!(
            "the text has {} tokens; perplexity with a context of {ctx} needs at least {} (2 x ctx)",
            tokens.len(),
            2 * ctx
        )));
    }
    let vocab = model.transformer.config().vocab_size;
    if let Some(b) = base {
        let bv = b.transformer.config().vocab_size;
        if bv != vocab {
            return Err(EngineError::Perplexity(format!("the base model has {bv} vocabulary entries, the model {vocab}")));
        }
    }
    let total = params.max_chunks.map_or(tokens.len() / ctx, |m| m.min(tokens.len() / ctx));
    let batch = params.batch.clamp(1, ctx);
    let bos = model.tokenizer.bos_id().filter(|_| model.tokenizer.adds_bos());
    let first = ctx / 2;
    let mut state = model.transformer.new_state(ctx, batch)?;
    let mut base_state = base.map(|b| b.transformer.new_state(ctx, batch)).transpose()?;
    let (mut nll, mut base_nll, mut kld) = (Nll::default(), Nll::default(), Nll::default());
    let mut agree = 0usize;
    let mut base_logp = Vec::new();
    for c in 0..total {
        let mut chunk = tokens[c * ctx..(c + 1) * ctx].to_vec();
        if let Some(bos) = bos {
            chunk[0] = bos;
        }
        let targets = &tokens[c * ctx + first + 1..(c + 1) * ctx];
        if let (Some(b), Some(bs)) = (base, base_state.as_mut()) {
            base_logp.clear();
            for_scored_rows(b, bs, &chunk, first, |j, row| {
                let lp = log_softmax(row);
                base_nll.add(-lp[targets[j] as usize]);
                base_logp.push(lp);
            })?;
        }
        for_scored_rows(model, &mut state, &chunk, first, |j, row| {
            let lp = log_softmax(row);
            nll.add(-lp[targets[j] as usize]);
            if let Some(b) = base_logp.get(j) {
                kld.add(b.iter().zip(&lp).map(|(&pb, &pm)| pb.exp() * (pb - pm)).sum());
                agree += usize::from(argmax(b) == argmax(&lp));
            }
        })?;
        progress(ChunkProgress { done: c + 1, total, ppl: nll.ppl().0, kld: base.map(|_| kld.mean()) });
    }
    let (ppl, ppl_stderr) = nll.ppl();
    let kld = base.map(|_| {
        let (base_ppl, base_ppl_stderr) = base_nll.ppl();
        KlDivergence {
            mean: kld.mean(),
            stderr: kld.stderr(),
            top1_agreement: agree as f64 / kld.count.max(1) as f64,
            base_ppl,
            base_ppl_stderr,
        }
    });
    Ok(PerplexityReport { ppl, ppl_stderr, chunks: total, scored: nll.count, kld })
}

/// Evaluates `chunk` from an empty cache and calls `f(j - first, logits)` for each scored
/// position `j` (`first <= j < len-1`).
fn for_scored_rows(
    model: &LoadedModel,
    state: &mut exo_models::State,
    chunk: &[u32],
    first: usize,
    mut f: impl FnMut(usize, &[f32]),
) -> Result<(), EngineError> {
    let vocab = model.transformer.config().vocab_size;
    state.truncate(0);
    let mut pos = 0;
    for part in chunk.chunks(state.max_batch()) {
        model.transformer.forward(state, part, true)?;
        for (i, row) in state.logits().chunks_exact(vocab).enumerate() {
            let j = pos + i;
            if j >= first && j + 1 < chunk.len() {
                f(j - first, row);
            }
        }
        pos += part.len();
    }
    Ok(())
}

/// Natural-log probabilities, summed in f64 as llama.cpp does.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    row.iter().map(|&x| x as f64 - lse).collect()
}

fn argmax(v: &[f64]) -> usize {
    v.iter().enumerate().fold((0, f64::NEG_INFINITY), |best, (i, &x)| if x > best.1 { (i, x) } else { best }).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nll_statistics() {
        let mut n = Nll::default();
        for x in [1.0, 2.0, 3.0] {
            n.add(x);
        }
        let (ppl, err) = n.ppl();
        assert!((ppl - 2f64.exp()).abs() < 1e-12);
        // sd of {1,2,3} is 1 (n-1 denominator), the mean's is 1/sqrt(3).
        assert!((err - 2f64.exp() * (2.0f64 / 3.0 / 2.0).sqrt()).abs() < 1e-12, "{err}");
        let lp = log_softmax(&[0.0, 0.0]);
        assert!((lp[0] - 0.5f64.ln()).abs() < 1e-12);
    }
}
