//! One sequence's generation loop: prefill with prefix reuse, then sample, detokenize, stop.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use exo_models::{LoadedModel, State};
use exo_tokenizer::StreamDecoder;

use crate::constrain::{Constraint, ConstraintState};
use crate::logprobs::{LogprobScratch, TokenLogprob};
use crate::sampler::{Sampler, SamplerConfig};
use crate::speculative::{Drafter, SpecStats};
use crate::stop::{StopMatcher, StopScan};
use crate::EngineError;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling settings.
    pub sampler: SamplerConfig,
    /// Generation stops before any of these strings; the string itself is not emitted.
    pub stop: Vec<String>,
    /// Keep going past end-of-generation tokens (benchmarks).
    pub ignore_eos: bool,
    /// Report each generated token's log-probability and this many most likely alternatives
    /// (`Some(0)`: the token's own only); `None` computes nothing.
    pub logprobs: Option<usize>,
    /// Set from another thread to stop: checked before every forward pass, so generation ends
    /// (with [`StopReason::Cancelled`]) within one decode step or prompt batch.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Only tokens that continue this document may be sampled; generation ends once it is
    /// complete and nothing may follow.
    pub constraint: Option<Arc<Constraint>>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            sampler: SamplerConfig::default(),
            stop: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            cancel: None,
            constraint: None,
        }
    }
}

/// Why generation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-generation token, or the constrained document is complete.
    Eog,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The context filled up.
    ContextFull,
    /// A stop string appeared (the string is given).
    StopString(String),
    /// The caller's callback asked to stop, or [`GenerateParams::cancel`] was set.
    Cancelled,
}

/// The result of [`Session::generate`].
#[derive(Clone, Debug)]
pub struct Completion {
    /// Generated text (stop string excluded).
    pub text: String,
    /// Generated token ids (an end-of-generation token excluded).
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub stop_reason: StopReason,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV was already cached from the previous call and not recomputed.
    pub reused_tokens: usize,
    /// Time spent on the prompt.
    pub prompt_time: Duration,
    /// Time from the call until the first generated token was sampled.
    pub time_to_first_token: Duration,
    /// Time spent generating after the first token.
    pub gen_time: Duration,
    /// Drafted and accepted token counts when the tokens were decoded speculatively; `None`
    /// for plain decoding (no drafter, or a request that cannot be speculated).
    pub speculation: Option<SpecStats>,
}

/// A sequence's KV cache and the tokens it holds, reused across calls that share a prefix
/// (a chat that grows turn by turn recomputes only the new turn).
pub struct Session {
    state: State,
    cached: Vec<u32>,
    drafter: Option<Drafter>,
}

impl Session {
    /// A session with room for `ctx` tokens (at most the model's context length), evaluating
    /// prompts `batch` tokens at a time.
    pub fn new(model: &LoadedModel, ctx: usize, batch: usize) -> Result<Self, EngineError> {
        Ok(Self { state: model.transformer.new_state(ctx, batch)?, cached: Vec::with_capacity(ctx), drafter: None })
    }

    /// Decodes speculatively with `drafter` from now on (`None`: plainly). A model drafter must
    /// have been made for this session's context size and batch.
    pub fn set_drafter(&mut self, drafter: Option<Drafter>) {
        self.drafter = drafter;
    }

    /// Context size in tokens.
    pub fn ctx(&self) -> usize {
        self.state.ctx()
    }

    /// The tokens whose KV is cached.
    pub fn tokens(&self) -> &[u32] {
        &self.cached
    }

    /// Forgets the cache.
    pub fn clear(&mut self) {
        self.state.truncate(0);
        self.cached.clear();
    }

    /// The model's state (logits of the last evaluated token).
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Evaluates `prompt`, reusing the longest cached prefix, and leaves the logits of its last
    /// token in the state. Returns how many tokens were reused.
    pub fn prefill(&mut self, model: &LoadedModel, prompt: &[u32]) -> Result<usize, EngineError> {
        self.prefill_until(model, prompt, None).map(|(reused, _)| reused)
    }

    /// [`Session::prefill`] that stops between prompt batches once `cancel` is set; also returns
    /// whether the whole prompt was evaluated.
    fn prefill_until(
        &mut self,
        model: &LoadedModel,
        prompt: &[u32],
        cancel: Option<&AtomicBool>,
    ) -> Result<(usize, bool), EngineError> {
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if prompt.len() > self.state.ctx() {
            return Err(EngineError::PromptTooLong { prompt: prompt.len(), ctx: self.state.ctx() });
        }
        let common = self.cached.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        // The last prompt token is always recomputed: its logits are what sampling needs.
        let reuse = common.min(prompt.len() - 1);
        self.state.truncate(reuse);
        self.cached.truncate(reuse);
        for chunk in prompt[reuse..].chunks(self.state.max_batch()) {
            if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Ok((reuse, false));
            }
            if let Err(e) = model.transformer.forward(&mut self.state, chunk, false) {
                self.clear();
                return Err(e.into());
            }
            self.cached.extend_from_slice(chunk);
        }
        Ok((reuse, true))
    }

    /// Generates a continuation of `prompt`, calling `on_text` with each piece of text as soon
    /// as it is final (complete UTF-8, not part of a possible stop string).
    ///
    /// With [`GenerateParams::logprobs`], each call also gets the log-probabilities of every
    /// token sampled since the previous call (one piece of text may come from several tokens,
    /// or a token may produce no text yet); otherwise that slice is empty. Tokens still without
    /// text at the end (a special token under `ignore_eos`) come in a last call with empty
    /// text; tokens of a stop string, whose text is never released, are not reported.
    ///
    /// With a drafter set ([`Session::set_drafter`]), tokens are decoded speculatively, except
    /// for requests with logprobs or a constraint, which decode plainly: a constraint would have
    /// to mask the target's and the draft's distributions while following each draft through
    /// the grammar, and logprobs would have to be taken from each verified row; neither is done
    /// yet, and the output is the same either way.
    pub fn generate(
        &mut self,
        model: &LoadedModel,
        prompt: &[u32],
        params: &GenerateParams,
        on_text: impl FnMut(&str, &[TokenLogprob]) -> ControlFlow<()>,
    ) -> Result<Completion, EngineError> {
        params.sampler.validate().map_err(EngineError::Sampler)?;
        let cancel = params.cancel.as_deref();
        let start = Instant::now();
        let (reused, complete) = self.prefill_until(model, prompt, cancel)?;
        let mut emitter = Emitter {
            decoder: StreamDecoder::new(&model.tokenizer, true),
            stops: StopMatcher::new(&params.stop),
            pending_logprobs: Vec::new(),
            on_text,
            out: Completion {
                text: String::new(),
                tokens: Vec::with_capacity(params.max_tokens.min(4096)),
                stop_reason: StopReason::MaxTokens,
                prompt_tokens: prompt.len(),
                reused_tokens: reused,
                prompt_time: start.elapsed(),
                time_to_first_token: Duration::ZERO,
                gen_time: Duration::ZERO,
                speculation: None,
            },
        };
        if !complete {
            emitter.out.stop_reason = StopReason::Cancelled;
            return Ok(emitter.out);
        }
        let mut sampler = Sampler::new(params.sampler.clone());
        let speculate = params.logprobs.is_none() && params.constraint.is_none();
        let first_at = match self.drafter.take() {
            Some(mut drafter) if speculate => {
                let r = self.generate_speculative(model, params, &mut sampler, &mut drafter, &mut emitter, start);
                self.drafter = Some(drafter);
                r?
            }
            other => {
                self.drafter = other;
                self.generate_plain(model, params, &mut sampler, &mut emitter, start)?
            }
        };
        let mut out = emitter.finish();
        out.gen_time = first_at.map_or(Duration::ZERO, |t| t.elapsed());
        Ok(out)
    }

    /// The plain loop: one forward pass per token. Returns when the first token was sampled.
    fn generate_plain<F: FnMut(&str, &[TokenLogprob]) -> ControlFlow<()>>(
        &mut self,
        model: &LoadedModel,
        params: &GenerateParams,
        sampler: &mut Sampler,
        emitter: &mut Emitter<F>,
        start: Instant,
    ) -> Result<Option<Instant>, EngineError> {
        let mut constraint = params.constraint.clone().map(ConstraintState::new);
        let mut first_at = None;
        let mut scratch = LogprobScratch::default();
        while emitter.out.tokens.len() < params.max_tokens {
            let logits = match constraint.as_mut() {
                Some(c) => c.mask_logits(self.state.last_logits())?,
                None => self.state.last_logits(),
            };
            let id = sampler.sample(logits, &self.cached);
            if first_at.is_none() {
                first_at = Some(Instant::now());
                emitter.out.time_to_first_token = start.elapsed();
            }
            if !params.ignore_eos && model.tokenizer.is_eog(id) {
                emitter.out.stop_reason = StopReason::Eog;
                break;
            }
            if let Some(c) = constraint.as_mut() {
                c.accept(id)?;
            }
            let logprob = params.logprobs.map(|n_top| scratch.token(self.state.last_logits(), id, n_top));
            if let Some(reason) = emitter.push(id, logprob, params) {
                emitter.out.stop_reason = reason;
                break;
            }
            if constraint.as_ref().is_some_and(ConstraintState::is_finished) {
                emitter.out.stop_reason = StopReason::Eog;
                break;
            }
            if let Some(reason) = self.no_room_or_cancelled(params) {
                emitter.out.stop_reason = reason;
                break;
            }
            model.transformer.forward(&mut self.state, &[id], false)?;
            self.cached.push(id);
        }
        Ok(first_at)
    }

    /// The speculative loop: each step verifies the drafter's tokens in one forward pass and
    /// emits the accepted ones plus one of the target's own. The tokens go through the same
    /// end checks as in [`Session::generate_plain`], one by one, so stop strings, EOS and
    /// max_tokens cut the output at the same token; the cache is then cut back to what was
    /// emitted. Returns when the first token was sampled.
    fn generate_speculative<F: FnMut(&str, &[TokenLogprob]) -> ControlFlow<()>>(
        &mut self,
        model: &LoadedModel,
        params: &GenerateParams,
        sampler: &mut Sampler,
        drafter: &mut Drafter,
        emitter: &mut Emitter<F>,
        start: Instant,
    ) -> Result<Option<Instant>, EngineError> {
        let mut stats = SpecStats::default();
        let mut first_at = None;
        let mut step_tokens = Vec::new();
        if params.max_tokens > 0 {
            step_tokens.push(sampler.sample(self.state.last_logits(), &self.cached));
            first_at = Some(Instant::now());
            emitter.out.time_to_first_token = start.elapsed();
        }
        // Each step's tokens: the pending token, fed by the next step, is the last of them.
        'steps: while !step_tokens.is_empty() {
            let base = self.cached.len();
            for (i, &id) in step_tokens.iter().enumerate() {
                let reason = if !params.ignore_eos && model.tokenizer.is_eog(id) {
                    Some(StopReason::Eog)
                } else {
                    emitter.push(id, None, params)
                };
                if let Some(reason) = reason {
                    emitter.out.stop_reason = reason;
                    // Keep the cache of exactly the tokens before the last one emitted, as
                    // the plain loop leaves it.
                    let keep = base - (step_tokens.len() - 1 - i);
                    self.state.truncate(keep);
                    self.cached.truncate(keep);
                    break 'steps;
                }
            }
            if let Some(reason) = self.no_room_or_cancelled(params) {
                emitter.out.stop_reason = reason;
                break;
            }
            let pending = *step_tokens.last().expect("a step yields at least one token");
            // Room for the pending token plus the drafts: the context, one forward batch, and
            // the tokens still allowed (the step emits the drafts it keeps plus one more).
            let room = self.state.ctx() - self.cached.len() - 1;
            let left = params.max_tokens - emitter.out.tokens.len() - 1;
            let limit = room.min(self.state.max_batch() - 1).min(left);
            step_tokens.clear();
            drafter.step(model, &mut self.state, &mut self.cached, pending, limit, sampler, &mut stats, &mut step_tokens)?;
        }
        emitter.out.speculation = Some(stats);
        Ok(first_at)
    }

    /// Why generation cannot feed another token: the context is full, or it was cancelled.
    fn no_room_or_cancelled(&self, params: &GenerateParams) -> Option<StopReason> {
        if self.cached.len() >= self.state.ctx() {
            return Some(StopReason::ContextFull);
        }
        if params.cancel.as_deref().is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Some(StopReason::Cancelled);
        }
        None
    }
}

/// Turns sampled tokens into released text: detokenizes, holds back possible stop strings,
/// batches log-probabilities with the text they belong to.
struct Emitter<F> {
    decoder: StreamDecoder,
    stops: StopMatcher,
    pending_logprobs: Vec<TokenLogprob>,
    on_text: F,
    out: Completion,
}

impl<F: FnMut(&str, &[TokenLogprob]) -> ControlFlow<()>> Emitter<F> {
    /// Takes a generated token (not end-of-generation); returns why generation ends with it,
    /// if it does.
    fn push(&mut self, id: u32, logprob: Option<TokenLogprob>, params: &GenerateParams) -> Option<StopReason> {
        self.pending_logprobs.extend(logprob);
        self.out.tokens.push(id);
        if let Some(piece) = self.decoder.push(id) {
            match self.stops.push(&piece) {
                StopScan::Continue(text) => {
                    if self.emit(&text, false).is_break() {
                        return Some(StopReason::Cancelled);
                    }
                }
                StopScan::Stop(text, s) => {
                    let _ = self.emit(&text, false);
                    return Some(StopReason::StopString(s));
                }
            }
        }
        (self.out.tokens.len() >= params.max_tokens).then_some(StopReason::MaxTokens)
    }

    /// Releases `text`. `last`: the final flush, which also reports tokens that produced no
    /// text (a special token under `ignore_eos`).
    fn emit(&mut self, text: &str, last: bool) -> ControlFlow<()> {
        self.out.text.push_str(text);
        if text.is_empty() && (!last || self.pending_logprobs.is_empty()) {
            return ControlFlow::Continue(());
        }
        let flow = (self.on_text)(text, &self.pending_logprobs);
        self.pending_logprobs.clear();
        flow
    }

    /// Flushes the text held back (unless generation ended on a stop string or was cancelled)
    /// and returns the completion.
    fn finish(mut self) -> Completion {
        if !matches!(self.out.stop_reason, StopReason::StopString(_) | StopReason::Cancelled) {
            let tail = self.decoder.finish();
            let (text, last) = match self.stops.push(&tail) {
                StopScan::Continue(t) => (t + &self.stops.finish(), true),
                StopScan::Stop(t, s) => {
                    self.out.stop_reason = StopReason::StopString(s);
                    (t, false)
                }
            };
            let _ = self.emit(&text, last);
        }
        self.out
    }
}
