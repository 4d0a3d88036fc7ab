//! Speculative decoding: a cheap drafter proposes the next tokens, the target model checks them
//! all in one forward pass, and every accepted token saves one sequential target pass.
//!
//! - [`Drafter`]: where drafts come from: a smaller model sharing the target's vocabulary
//!   ([`Drafter::model`], checked by [`check_pair`]) or prompt lookup ([`Drafter::ngram`]: the
//!   tokens that followed the latest earlier occurrence of the context's last n-gram).
//! - Verification keeps the target's output distribution exactly (Leviathan et al. 2023,
//!   "Fast Inference from Transformers via Speculative Decoding"; Chen et al. 2023): draft token
//!   `d` drawn from `q` is accepted with probability `min(1, p(d)/q(d))`; on rejection the token
//!   is drawn from `norm(max(0, p - q))`. `p` and `q` are both the distributions the request's
//!   sampler chain makes (penalties, top-k/top-p/min-p, temperature), so the chain's output is
//!   what is preserved. Prompt-lookup drafts are point masses (`q(d) = 1`). Greedy decoding is
//!   the special case where `p` and `q` are point masses: a draft is kept iff it is the target's
//!   argmax, so the output is the plain greedy output.
//! - [`DraftLength`]: how many tokens to draft next, from the measured acceptance rate and the
//!   measured cost of drafting and verifying.
//! - [`SpecStats`]: per-request counts for the API layers.

use std::sync::Arc;
use std::time::Instant;

use exo_models::{LoadedModel, LogitsRow, State};

use crate::sampler::{draw, Sampler};
use crate::EngineError;

/// How many tokens a step may draft, and whether the scheduler may decode plainly where that
/// is faster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecConfig {
    /// Most tokens drafted per step (`--draft-max`).
    pub draft_max: usize,
    /// Fewest tokens a model drafter drafts per step (`--draft-min`); prompt lookup drafts
    /// fewer when the match it found ends sooner.
    pub draft_min: usize,
    /// Speculate only where it measures faster (see `spec_gate`): the scheduler per batch size,
    /// a [`crate::Session`] for its one sequence; `false` (`--spec-always`): every step
    /// speculates.
    pub gate: bool,
}

impl Default for SpecConfig {
    /// llama.cpp's `--draft-max 16 --draft-min 0`, except that a step drafts at least one token:
    /// a step without a draft is plain decoding with extra bookkeeping.
    fn default() -> Self {
        Self { draft_max: 16, draft_min: 1, gate: true }
    }
}

impl SpecConfig {
    /// Checks `1 <= draft_min <= draft_max`; the message names the flags.
    pub fn validate(&self) -> Result<(), EngineError> {
        if self.draft_max == 0 || self.draft_min == 0 || self.draft_min > self.draft_max {
            return Err(EngineError::Speculation(format!(
                "--draft-min {} and --draft-max {} must satisfy 1 <= draft-min <= draft-max",
                self.draft_min, self.draft_max
            )));
        }
        Ok(())
    }
}

/// Speculative decoding for an engine ([`crate::EngineConfig::speculation`]): every request
/// without log-probabilities or a constraint is decoded speculatively, its drafts verified for
/// the whole batch in the scheduler's one forward pass per step.
#[derive(Clone, Debug)]
pub struct Speculation {
    /// Where drafts come from.
    pub source: DraftSource,
    /// How many tokens a step may draft.
    pub config: SpecConfig,
}

/// Where an engine's drafts come from.
#[derive(Clone)]
pub enum DraftSource {
    /// A smaller model sharing the target's vocabulary (checked by [`check_pair`] at start).
    /// It keeps its own paged KV cache with as many blocks as the target's, indexed by the
    /// same block ids.
    Model(Arc<LoadedModel>),
    /// Prompt lookup (see [`Drafter::ngram`]).
    Ngram,
}

impl std::fmt::Debug for DraftSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Model(m) => write!(f, "Model({})", m.info.path.display()),
            Self::Ngram => f.write_str("Ngram"),
        }
    }
}

/// What speculation did for one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpecStats {
    /// Tokens proposed by the drafter.
    pub drafted: usize,
    /// Proposed tokens the target accepted.
    pub accepted: usize,
    /// Target forward passes that verified drafts (each also yields one token of its own).
    pub steps: usize,
}

impl SpecStats {
    /// `accepted / drafted` (0 when nothing was drafted).
    pub fn acceptance_rate(&self) -> f64 {
        if self.drafted == 0 { 0.0 } else { self.accepted as f64 / self.drafted as f64 }
    }
}

/// The n-gram lengths prompt lookup tries, longest first: a longer match predicts better, and
/// below two tokens almost every context "matches" something unrelated.
const NGRAM_MAX: usize = 4;
const NGRAM_MIN: usize = 2;

/// llama.cpp's limit (`SPEC_VOCAB_MAX_SIZE_DIFFERENCE`) on how many trailing tokens (padding,
/// added tokens) one vocabulary of a pair may have beyond the other.
const MAX_VOCAB_DIFFERENCE: usize = 128;

/// Checks that `draft` can draft for `target`: both tokenize the same way (BOS, EOS, added BOS)
/// and their vocabularies agree token by token on every id both have, and differ in size by at
/// most 128 trailing tokens, as llama.cpp's `common_speculative_are_compatible` requires.
/// Returns the number of shared ids; the draft proposes only those.
pub fn check_pair(target: &LoadedModel, draft: &LoadedModel) -> Result<usize, EngineError> {
    let (t, d) = (&target.tokenizer, &draft.tokenizer);
    let fail = |what: String| {
        Err(EngineError::DraftMismatch {
            draft: draft.info.path.display().to_string(),
            target: target.info.path.display().to_string(),
            what,
        })
    };
    if t.bos_id() != d.bos_id() || t.adds_bos() != d.adds_bos() {
        return fail(format!(
            "BOS differs (target: id {:?}, added {}; draft: id {:?}, added {})",
            t.bos_id(),
            t.adds_bos(),
            d.bos_id(),
            d.adds_bos()
        ));
    }
    if t.eos_id() != d.eos_id() {
        return fail(format!("EOS differs (target: id {:?}; draft: id {:?})", t.eos_id(), d.eos_id()));
    }
    let (nt, nd) = (t.vocab_size(), d.vocab_size());
    if nt.abs_diff(nd) > MAX_VOCAB_DIFFERENCE {
        return fail(format!(
            "vocabulary sizes differ by more than {MAX_VOCAB_DIFFERENCE} (target: {nt} tokens; draft: {nd})"
        ));
    }
    let shared = nt.min(nd);
    for id in 0..shared as u32 {
        let (a, b) = (t.token_text(id), d.token_text(id));
        if a != b {
            return fail(format!("token {id} is {a:?} in the target but {b:?} in the draft"));
        }
    }
    for (who, m) in [("target", target), ("draft", draft)] {
        let rows = m.transformer.config().vocab_size;
        if rows < shared {
            return fail(format!("the {who}'s output layer has {rows} rows, fewer than its {shared} tokens"));
        }
    }
    Ok(shared)
}

/// Where drafts come from, with the state that makes them.
pub struct Drafter {
    source: Source,
    length: DraftLength,
    tokens: Vec<u32>,
    dists: Vec<Option<Vec<(u32, f32)>>>,
}

enum Source {
    Model(Box<ModelDrafter>),
    Ngram,
}

/// A draft model with its own KV cache, kept in step with the target's tokens.
struct ModelDrafter {
    model: Arc<LoadedModel>,
    state: State,
    cached: Vec<u32>,
    shared: usize,
    masked: Vec<f32>,
}

impl Drafter {
    /// The speculation settings it was made with.
    pub(crate) fn config(&self) -> SpecConfig {
        self.length.cfg
    }

    /// Drafts with the model `draft` for sequences of up to `ctx` tokens fed `batch` at a time
    /// (the target session's sizes). Fails if the pair does not pass [`check_pair`] or the
    /// draft cannot hold `ctx` tokens.
    pub fn model(target: &LoadedModel, draft: Arc<LoadedModel>, ctx: usize, batch: usize, cfg: SpecConfig) -> Result<Self, EngineError> {
        cfg.validate()?;
        let shared = check_pair(target, &draft)?;
        // f16 KV as the target session keeps by default, so a model drafting for itself
        // proposes exactly what the target would sample.
        let state = draft.transformer.new_state_with(ctx, batch, exo_models::KvType::F16).map_err(|e| {
            EngineError::Speculation(format!("the draft model {} cannot hold the context: {e}", draft.info.path.display()))
        })?;
        let source = Source::Model(Box::new(ModelDrafter { model: draft, state, cached: Vec::new(), shared, masked: Vec::new() }));
        Ok(Self::with(source, cfg))
    }

    /// Prompt lookup: drafts the tokens that followed the latest earlier occurrence of the
    /// context's last 4, 3 or 2 tokens (Saxena 2023, "Prompt Lookup Decoding"); no model, so
    /// drafting costs nothing and pays off when the answer repeats the prompt (code edits,
    /// quotes, summaries).
    pub fn ngram(cfg: SpecConfig) -> Result<Self, EngineError> {
        cfg.validate()?;
        Ok(Self::with(Source::Ngram, cfg))
    }

    fn with(source: Source, cfg: SpecConfig) -> Self {
        Self { source, length: DraftLength::new(cfg), tokens: Vec::new(), dists: Vec::new() }
    }

    /// One speculative step. `state`/`cached` hold the target's KV and its tokens; `pending` is
    /// the newest sampled token, not yet fed. Drafts at most `limit` tokens, verifies them with
    /// `pending` in one target forward pass and appends the tokens to emit to `out`: the
    /// accepted drafts, then one token sampled by the target (a rejected draft's replacement, or
    /// the token after the last draft). Afterwards the target's cache holds `pending` and the
    /// accepted drafts; the last token of `out` is the new pending one.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn step(
        &mut self,
        target: &LoadedModel,
        state: &mut State,
        cached: &mut Vec<u32>,
        pending: u32,
        limit: usize,
        sampler: &mut Sampler,
        stats: &mut SpecStats,
        out: &mut Vec<u32>,
    ) -> Result<(), EngineError> {
        let mut history = Vec::with_capacity(cached.len() + 1 + limit);
        history.extend_from_slice(cached);
        history.push(pending);
        let k = self.length.next(limit, matches!(self.source, Source::Ngram));

        self.tokens.clear();
        self.dists.clear();
        let mut draft_secs = 0.0;
        if k > 0 {
            match &mut self.source {
                Source::Model(m) => {
                    let min = self.length.cfg.draft_min;
                    draft_secs = m.draft(&mut history, k, min, sampler, &mut self.tokens, &mut self.dists)?;
                }
                Source::Ngram => {
                    ngram_lookup(&history, k, &mut self.tokens);
                    self.dists.resize(self.tokens.len(), None);
                }
            }
        }
        let n = self.tokens.len();

        let base = cached.len();
        let t_verify = Instant::now();
        let mut feed = Vec::with_capacity(n + 1);
        feed.push(pending);
        feed.extend_from_slice(&self.tokens);
        target.transformer.forward(state, &feed, true)?;
        cached.extend_from_slice(&feed);
        let verify_secs = t_verify.elapsed().as_secs_f64();

        let kept = history.len();
        let next = verify_drafts(|i| state.row(i), &self.tokens, &self.dists, &mut history, sampler);
        let accepted = history.len() - kept;
        out.extend_from_slice(&history[kept..]);
        out.push(next);
        if accepted < n {
            state.truncate(base + 1 + accepted);
            cached.truncate(base + 1 + accepted);
        }
        if n > 0 {
            stats.drafted += n;
            stats.accepted += accepted;
            stats.steps += 1;
        }
        self.length.record(n, accepted, Some(Costs { draft_secs, fed: n + 1, verify_secs }));
        Ok(())
    }
}

impl ModelDrafter {
    /// Brings the draft's cache to `history` (reusing the common prefix), then drafts up to `k`
    /// tokens, recording each one's distribution; past `min` tokens, drafting stops where the
    /// draft is unsure of the next token (see [`DRAFT_P_MIN`]). `history` gets the drafts
    /// appended while drafting (for penalties) and is restored before returning. Returns the
    /// seconds a step in the steady state spends: evaluating a new prompt is left out, as it
    /// happens once a request and says nothing about the next steps.
    fn draft(
        &mut self,
        history: &mut Vec<u32>,
        k: usize,
        min: usize,
        sampler: &mut Sampler,
        tokens: &mut Vec<u32>,
        dists: &mut Vec<Option<Vec<(u32, f32)>>>,
    ) -> Result<f64, EngineError> {
        let common = self.cached.iter().zip(history.iter()).take_while(|(a, b)| a == b).count();
        // The newest token is always fed again: its logits are what drafting starts from.
        let reuse = common.min(history.len() - 1);
        self.state.truncate(reuse);
        self.cached.truncate(reuse);
        let rows = self.model.transformer.config().vocab_size;
        if history[reuse..].iter().any(|&t| t as usize >= rows) {
            // The target sampled a token past the draft's vocabulary (a padding id): the draft
            // cannot read this context, so the steps of this request go undrafted.
            return Ok(0.0);
        }
        let mut t = Instant::now();
        let batch = self.state.max_batch();
        for chunk in history[reuse..].chunks(batch) {
            self.forward(chunk)?;
        }
        // A step feeds at most the last accepted draft and the target's token.
        if history.len() - reuse > 2 {
            t = Instant::now();
        }
        let len = history.len();
        for i in 0..k {
            let Some((d, q)) = propose(self.state.last_logits(), self.shared, &mut self.masked, i >= min, history, sampler) else {
                break;
            };
            tokens.push(d);
            dists.push(Some(q));
            history.push(d);
            if i + 1 < k {
                self.forward(&[d])?;
            }
        }
        history.truncate(len);
        Ok(t.elapsed().as_secs_f64())
    }

    fn forward(&mut self, tokens: &[u32]) -> Result<(), EngineError> {
        if let Err(e) = self.model.transformer.forward(&mut self.state, tokens, false) {
            self.state.truncate(0);
            self.cached.clear();
            return Err(e.into());
        }
        self.cached.extend_from_slice(tokens);
        Ok(())
    }
}

/// Chooses a draft model's next token from its `logits` after `history`: ids past the `shared`
/// vocabulary are never proposed (they mean nothing to the target; `masked` is scratch for
/// cutting them off). `may_stop`: past the minimum draft length, no token is proposed where the
/// draft is unsure (see [`DRAFT_P_MIN`]). Returns the token and the distribution it was drawn
/// from, which verification needs.
pub(crate) fn propose(
    logits: &[f32],
    shared: usize,
    masked: &mut Vec<f32>,
    may_stop: bool,
    history: &[u32],
    sampler: &mut Sampler,
) -> Option<(u32, Vec<(u32, f32)>)> {
    let logits = if logits.len() > shared {
        masked.clear();
        masked.extend_from_slice(&logits[..shared]);
        &masked[..]
    } else {
        logits
    };
    if may_stop && top_probability(logits) < DRAFT_P_MIN {
        return None;
    }
    let q = sampler.distribution(logits, history).to_vec();
    let d = if q.len() == 1 { q[0].0 } else { draw(&q, sampler.uniform()) };
    Some((d, q))
}

/// Verifies `drafts` (drawn from `dists`, `None` for a point mass) against the target's logits
/// `row(i)` for the position of draft `i`, where `history` ends with the token before the
/// first draft. Accepted drafts are appended to `history`; returns the token the target adds
/// after them: a rejected draft's replacement, or one sampled from `row(drafts.len())` when
/// every draft was accepted.
pub(crate) fn verify_drafts<'a>(
    row: impl Fn(usize) -> LogitsRow<'a>,
    drafts: &[u32],
    dists: &[Option<Vec<(u32, f32)>>],
    history: &mut Vec<u32>,
    sampler: &mut Sampler,
) -> u32 {
    // Plain greedy: the target's distribution is a point mass on its argmax, so a draft is
    // accepted exactly when it is that argmax, and otherwise replaced by it; a GPU finds the
    // argmaxes without copying the rows back.
    if sampler.is_plain_greedy() {
        for (i, &d) in drafts.iter().enumerate() {
            let t = row(i).argmax();
            if t != d {
                return t;
            }
            history.push(d);
        }
        return row(drafts.len()).argmax();
    }
    let mut p = Vec::new();
    for (i, &d) in drafts.iter().enumerate() {
        p.clear();
        p.extend_from_slice(sampler.distribution(row(i).values(), history));
        if let Some(x) = verify(&p, dists[i].as_deref(), d, sampler) {
            return x;
        }
        history.push(d);
    }
    sampler.sample(row(drafts.len()).values(), history)
}

/// A model draft stops before a token its own softmax gives less than this: such tokens are
/// mostly rejected, and on a CPU each costs a draft pass and a verified position
/// (llama.cpp's `--draft-p-min` default of 0.75 through 2025). Prompt lookup has no such
/// signal and relies on the draft length alone.
const DRAFT_P_MIN: f32 = 0.75;

/// The largest probability of the softmax of `logits`.
fn top_probability(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    1.0 / logits.iter().map(|&l| (l - max).exp()).sum::<f32>()
}

/// Decides draft token `d` against the target's distribution `p` (`(token, probability)`,
/// summing to 1). `q` is the drafter's distribution, `None` for a point mass on `d`. Returns
/// `None` if `d` is accepted, or the token drawn in its place.
fn verify(p: &[(u32, f32)], q: Option<&[(u32, f32)]>, d: u32, sampler: &mut Sampler) -> Option<u32> {
    let prob = |dist: &[(u32, f32)], id: u32| dist.iter().find(|c| c.0 == id).map_or(0.0, |c| c.1);
    let pd = prob(p, d);
    let qd = q.map_or(1.0, |q| prob(q, d));
    // pd >= qd: always accepted, no draw spent (greedy agreement lands here).
    if pd >= qd {
        return None;
    }
    if pd > 0.0 && sampler.uniform() < pd / qd {
        return None;
    }
    // The residual max(0, p - q), over p's support (elsewhere p is 0).
    let mut residual: Vec<(u32, f32)> = match q {
        None => p.iter().map(|&(id, pp)| (id, if id == d { 0.0 } else { pp })).collect(),
        Some(q) => {
            let mut by_id = q.to_vec();
            by_id.sort_unstable_by_key(|c| c.0);
            let q_of = |id: u32| by_id.binary_search_by_key(&id, |c| c.0).map_or(0.0, |i| by_id[i].1);
            p.iter().map(|&(id, pp)| (id, (pp - q_of(id)).max(0.0))).collect()
        }
    };
    let sum: f32 = residual.iter().map(|c| c.1).sum();
    if sum <= 0.0 {
        // p and q agree up to rounding, yet the draw rejected: p itself is the residual's limit.
        return Some(draw(p, sampler.uniform()));
    }
    residual.iter_mut().for_each(|c| c.1 /= sum);
    Some(draw(&residual, sampler.uniform()))
}

/// Appends to `out` up to `k` tokens that followed the latest earlier occurrence of the last
/// n tokens of `context`, trying n from [`NGRAM_MAX`] down to [`NGRAM_MIN`].
pub(crate) fn ngram_lookup(context: &[u32], k: usize, out: &mut Vec<u32>) {
    let len = context.len();
    for n in (NGRAM_MIN..=NGRAM_MAX).rev() {
        if len <= n {
            continue;
        }
        let pattern = &context[len - n..];
        // Latest first: recent text predicts the next tokens best (a loop being repeated, the
        // line just above).
        if let Some(at) = (0..len - n).rev().find(|&i| &context[i..i + n] == pattern) {
            let from = at + n;
            out.extend_from_slice(&context[from..(from + k).min(len)]);
            return;
        }
    }
}

/// Chooses how many tokens to draft next: the k in `[draft_min, draft_max]` that maximises
/// expected tokens per second.
///
/// A step that drafts k tokens, each accepted with probability `a` until the first rejection,
/// yields `(1 - a^(k+1)) / (1 - a)` tokens (the accepted run plus the target's own token) and
/// costs `k * draft + verify(k + 1)`. `a` is estimated from the accepted runs and rejections
/// seen (the maximum-likelihood estimate for that geometric model), `draft` as the mean
/// seconds per drafted token, and `verify(t) = v0 + v1 t` by least squares over the measured
/// verification passes: on a CPU a pass over 16 tokens costs several single-token passes, so
/// verifying is not free. Older steps weigh less (a decay of [`DECAY`] per step), so the
/// length follows the text (code repeats more than prose).
pub(crate) struct DraftLength {
    pub(crate) cfg: SpecConfig,
    /// Decayed counts of accepted drafts and of rejections.
    accepted: f64,
    rejected: f64,
    /// Decayed seconds spent drafting and tokens drafted.
    draft_secs: f64,
    drafted: f64,
    /// Decayed sums for the least-squares fit of verification time against tokens fed.
    fit: [f64; 5],
}

/// Weight of the previous step's measurements relative to the newest.
const DECAY: f64 = 0.9;

impl DraftLength {
    pub(crate) fn new(cfg: SpecConfig) -> Self {
        // Prior: as if 3 of 4 drafted tokens had been accepted (same-family pairs and prompt
        // lookup on code accept 60-90%), forgotten within a few steps.
        Self { cfg, accepted: 3.0, rejected: 1.0, draft_secs: 0.0, drafted: 0.0, fit: [0.0; 5] }
    }

    /// Tokens to draft next, at most `limit` (the room left before max_tokens or the context
    /// end). `free_draft`: drafts cost nothing to make (prompt lookup), so only the
    /// verification cost bounds the length.
    pub(crate) fn next(&self, limit: usize, free_draft: bool) -> usize {
        let hi = self.cfg.draft_max.min(limit);
        let lo = self.cfg.draft_min.min(hi);
        if self.fit[0] == 0.0 {
            // Nothing measured yet: a short first draft measures the costs cheaply.
            return 4.clamp(lo, hi);
        }
        let a = (self.accepted / (self.accepted + self.rejected)).min(0.999);
        let draft = if free_draft || self.drafted == 0.0 { 0.0 } else { self.draft_secs / self.drafted };
        let (v0, v1) = self.verify_line();
        let rate = |k: usize| {
            let tokens = (1.0 - a.powi(k as i32 + 1)) / (1.0 - a);
            tokens / (k as f64 * draft + v0 + v1 * (k + 1) as f64).max(1e-9)
        };
        (lo..=hi).max_by(|&x, &y| rate(x).total_cmp(&rate(y))).unwrap_or(lo)
    }

    /// `(v0, v1)` of `verify(t) = v0 + v1 t`; while every pass had the same length the slope is
    /// unknown and taken as 0.
    fn verify_line(&self) -> (f64, f64) {
        let [n, sx, sy, sxx, sxy] = self.fit;
        let var = n * sxx - sx * sx;
        if var <= 1e-9 * n * n {
            return (sy / n, 0.0);
        }
        let v1 = ((n * sxy - sx * sy) / var).max(0.0);
        (((sy - v1 * sx) / n).max(0.0), v1)
    }

    /// Records a step: `drafted` tokens of which the first `accepted` were kept, and what the
    /// step cost where that was measured apart from other work (a batch that also evaluated
    /// prompts says nothing about the cost of drafting).
    pub(crate) fn record(&mut self, drafted: usize, accepted: usize, costs: Option<Costs>) {
        if drafted > 0 {
            self.accepted = self.accepted * DECAY + accepted as f64;
            self.rejected = self.rejected * DECAY + f64::from(u8::from(accepted < drafted));
        }
        let Some(Costs { draft_secs, fed, verify_secs }) = costs else { return };
        if drafted > 0 {
            self.draft_secs = self.draft_secs * DECAY + draft_secs;
            self.drafted = self.drafted * DECAY + drafted as f64;
        }
        let x = fed as f64;
        for (s, v) in self.fit.iter_mut().zip([1.0, x, verify_secs, x * x, x * verify_secs]) {
            *s = *s * DECAY + v;
        }
    }
}

/// What one speculative step cost.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Costs {
    /// Seconds spent drafting.
    pub(crate) draft_secs: f64,
    /// Tokens the verification pass fed per sequence.
    pub(crate) fed: usize,
    /// Seconds the verification pass took.
    pub(crate) verify_secs: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SamplerConfig;

    /// Pearson's chi-square of `counts` against probabilities `expected` (cells whose expected
    /// count is under 5 pooled into one), with its degrees of freedom.
    fn chi_square(counts: &[usize], expected: &[f64]) -> (f64, usize) {
        let n: usize = counts.iter().sum();
        let (mut stat, mut cells, mut pool_o, mut pool_e) = (0.0, 0, 0.0, 0.0);
        for (&o, &p) in counts.iter().zip(expected) {
            let e = p * n as f64;
            if e < 5.0 {
                pool_o += o as f64;
                pool_e += e;
            } else {
                stat += (o as f64 - e).powi(2) / e;
                cells += 1;
            }
        }
        if pool_e > 0.0 {
            stat += (pool_o - pool_e).powi(2) / pool_e;
            cells += 1;
        }
        (stat, cells - 1)
    }

    /// The chi-square value exceeded with probability 0.001 (Wilson–Hilferty).
    fn critical(df: usize) -> f64 {
        let d = df as f64;
        let z = 3.090; // standard normal quantile of 0.999
        d * (1.0 - 2.0 / (9.0 * d) + z * (2.0 / (9.0 * d)).sqrt()).powi(3)
    }

    /// Draws `n` tokens the way one verified position does: a draft from `q` (or the point
    /// mass `point`), then [`verify`] against `p`.
    fn verified(p: &[(u32, f32)], q: Option<&[(u32, f32)]>, point: u32, n: usize) -> Vec<usize> {
        let mut s = Sampler::new(SamplerConfig { seed: Some(11), ..SamplerConfig::default() });
        let mut counts = vec![0; p.len()];
        for _ in 0..n {
            let d = match q {
                Some(q) => draw(q, s.uniform()),
                None => point,
            };
            let x = verify(p, q, d, &mut s).unwrap_or(d);
            counts[p.iter().position(|c| c.0 == x).expect("a token outside p's support")] += 1;
        }
        counts
    }

    #[test]
    fn rejection_sampling_keeps_the_target_distribution() {
        // Target and draft disagree in every way: different order, a draft token (4) the target
        // never picks, a target token (3) the draft never proposes.
        let p = [(0, 0.4), (1, 0.3), (2, 0.2), (3, 0.1), (4, 0.0)];
        let q = [(4, 0.3), (2, 0.3), (0, 0.3), (1, 0.1)];
        let want: Vec<f64> = p.iter().map(|c| f64::from(c.1)).collect();
        for (name, counts) in [
            ("model draft", verified(&p, Some(&q), 0, 20_000)),
            ("point-mass draft of a likely token", verified(&p, None, 0, 20_000)),
            ("point-mass draft of an impossible token", verified(&p, None, 4, 20_000)),
        ] {
            let (stat, df) = chi_square(&counts, &want);
            assert!(stat < critical(df), "{name}: chi-square {stat:.1} over {df} df for {counts:?}");
        }
        // The test has power: the drafts kept as they are (no rejection) do not pass.
        let mut s = Sampler::new(SamplerConfig { seed: Some(3), ..SamplerConfig::default() });
        let mut naive = vec![0; p.len()];
        for _ in 0..20_000 {
            let d = draw(&q, s.uniform());
            naive[p.iter().position(|c| c.0 == d).unwrap()] += 1;
        }
        let (stat, df) = chi_square(&naive, &want);
        assert!(stat > critical(df), "accepting every draft should not look like p (chi-square {stat:.1})");
    }

    #[test]
    fn greedy_agreement_is_accepted_and_disagreement_replaced_by_the_argmax() {
        let mut s = Sampler::new(SamplerConfig::greedy());
        assert_eq!(verify(&[(7, 1.0)], Some(&[(7, 1.0)]), 7, &mut s), None);
        assert_eq!(verify(&[(7, 1.0)], Some(&[(5, 1.0)]), 5, &mut s), Some(7));
        assert_eq!(verify(&[(7, 1.0)], None, 5, &mut s), Some(7));
    }

    #[test]
    fn ngram_lookup_takes_the_latest_longest_match() {
        let mut out = Vec::new();
        // "1 2 3" occurs at 0 (followed by 4 5) and at 5 (followed by 9); the suffix "2 3"
        // matches both; the latest wins.
        ngram_lookup(&[1, 2, 3, 4, 5, 1, 2, 3, 9, 7, 2, 3], 2, &mut out);
        assert_eq!(out, vec![9, 7]);
        out.clear();
        // A 3-gram match beats a later 2-gram one.
        ngram_lookup(&[8, 2, 3, 4, 6, 2, 3, 5, 8, 2, 3], 3, &mut out);
        assert_eq!(out, vec![4, 6, 2]);
        out.clear();
        // The continuation stops at the end of the context; no match, no draft.
        ngram_lookup(&[5, 6, 1, 5, 6], 4, &mut out);
        assert_eq!(out, vec![1, 5, 6]);
        out.clear();
        ngram_lookup(&[1, 2, 3, 4], 4, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn draft_length_follows_acceptance_and_cost() {
        let cfg = SpecConfig { draft_max: 16, draft_min: 1, gate: true };
        let mut good = DraftLength::new(cfg);
        let mut bad = DraftLength::new(cfg);
        assert_eq!(good.next(100, false), 4);
        // Verification: 10 ms plus 1 ms per token; drafting 2 ms per token.
        for k in [4usize, 6, 8, 5, 7, 9, 4, 6, 8, 10] {
            good.record(k, k, Some(Costs { draft_secs: 0.002 * k as f64, fed: k + 1, verify_secs: 0.010 + 0.001 * (k + 1) as f64 }));
            bad.record(k, 0, Some(Costs { draft_secs: 0.002 * k as f64, fed: k + 1, verify_secs: 0.010 + 0.001 * (k + 1) as f64 }));
        }
        let (v0, v1) = good.verify_line();
        assert!((v0 - 0.010).abs() < 1e-6 && (v1 - 0.001).abs() < 1e-6, "fit {v0} + {v1} t");
        // Every draft accepted: draft as much as allowed; none accepted: the minimum.
        assert_eq!(good.next(100, false), 16);
        assert_eq!(good.next(5, false), 5);
        assert_eq!(bad.next(100, false), 1);
        let cfg = SpecConfig { draft_max: 8, draft_min: 3, gate: true };
        assert!(cfg.validate().is_ok());
        assert!(SpecConfig { draft_max: 2, draft_min: 3, gate: true }.validate().unwrap_err().to_string().contains("--draft-min 3"));
    }
}
