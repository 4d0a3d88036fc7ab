//! One sequence's generation loop: prefill with prefix reuse, then sample, detokenize, stop.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use exo_models::{KvType, LoadedModel, State};

use crate::constrain::Constraint;
use crate::decode::Decoder;
use crate::logprobs::TokenLogprob;
use crate::sampler::SamplerConfig;
use crate::spec_gate::SpecGate;
use crate::speculative::{Drafter, SpecStats};
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
    /// Whether speculation pays here, measured step by step (`None`: always speculate).
    gate: Option<SpecGate>,
}

impl Session {
    /// A session with room for `ctx` tokens (at most the model's context length), evaluating
    /// prompts `batch` tokens at a time.
    /// KV rows are stored in f16, as the engine and llama.cpp store them by default, so a
    /// session answers as a server does.
    pub fn new(model: &LoadedModel, ctx: usize, batch: usize) -> Result<Self, EngineError> {
        Self::with_kv_type(model, ctx, batch, KvType::F16)
    }

    /// [`Session::new`] with KV rows stored as `kv_type` (f32 is exact; q8_0 takes about half
    /// of f16's memory).
    pub fn with_kv_type(model: &LoadedModel, ctx: usize, batch: usize, kv_type: KvType) -> Result<Self, EngineError> {
        Ok(Self { state: model.transformer.new_state_with(ctx, batch, kv_type)?, cached: Vec::with_capacity(ctx), drafter: None, gate: None })
    }

    /// Decodes speculatively with `drafter` from now on (`None`: plainly). A model drafter must
    /// have been made for this session's context size and batch. Unless its config turns the
    /// gate off, steps speculate only while that measures faster than plain decoding, as in the
    /// scheduler (`spec_gate`): a draft model about as slow as the target (on a GPU, where small
    /// models are bound by launches, not bandwidth) then costs a few probe steps, not every step.
    pub fn set_drafter(&mut self, drafter: Option<Drafter>) {
        self.gate = drafter.as_ref().filter(|d| d.config().gate).map(|_| SpecGate::new(1));
        self.drafter = drafter;
    }

    /// Steps decoded plainly and speculatively (`[plain, speculative]`) by the speculation gate
    /// since the drafter was set.
    pub fn spec_gate_steps(&self) -> [u64; 2] {
        self.gate.as_ref().map_or([0; 2], |g| g.steps)
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
        mut on_text: impl FnMut(&str, &[TokenLogprob]) -> ControlFlow<()>,
    ) -> Result<Completion, EngineError> {
        params.sampler.validate().map_err(EngineError::Sampler)?;
        let start = Instant::now();
        let (reused, complete) = self.prefill_until(model, prompt, params.cancel.as_deref())?;
        let mut dec = Decoder::new(&model.tokenizer, params, prompt.len(), start);
        dec.out.reused_tokens = reused;
        dec.out.prompt_time = start.elapsed();
        if !complete {
            return Ok(dec.finish(Some(StopReason::Cancelled), &mut on_text));
        }
        if dec.wants_nothing() {
            return Ok(dec.finish(None, &mut on_text));
        }
        let speculate = params.logprobs.is_none() && params.constraint.is_none();
        let reason = match self.drafter.take() {
            Some(mut drafter) if speculate => {
                let r = self.generate_speculative(model, params, &mut drafter, &mut dec, &mut on_text);
                self.drafter = Some(drafter);
                r?
            }
            other => {
                self.drafter = other;
                self.generate_plain(model, params, &mut dec, &mut on_text)?
            }
        };
        Ok(dec.finish(reason, &mut on_text))
    }

    /// The plain loop: one forward pass per token. Returns why it ended where the decoder does
    /// not know (the context is full, or the request was cancelled).
    fn generate_plain(
        &mut self,
        model: &LoadedModel,
        params: &GenerateParams,
        dec: &mut Decoder,
        on_text: &mut impl FnMut(&str, &[TokenLogprob]) -> ControlFlow<()>,
    ) -> Result<Option<StopReason>, EngineError> {
        while let Some(id) = dec.step(&model.tokenizer, self.state.last_row(), &self.cached, on_text)? {
            if let Some(reason) = self.no_room_or_cancelled(params) {
                return Ok(Some(reason));
            }
            model.transformer.forward(&mut self.state, &[id], false)?;
            self.cached.push(id);
        }
        Ok(None)
    }

    /// The speculative loop: each step verifies the drafter's tokens in one forward pass and
    /// emits the accepted ones plus one of the target's own. The tokens go through the same
    /// end checks as in [`Session::generate_plain`], one by one, so stop strings, EOS and
    /// max_tokens cut the output at the same token; the cache is then cut back to what was
    /// emitted.
    fn generate_speculative(
        &mut self,
        model: &LoadedModel,
        params: &GenerateParams,
        drafter: &mut Drafter,
        dec: &mut Decoder,
        on_text: &mut impl FnMut(&str, &[TokenLogprob]) -> ControlFlow<()>,
    ) -> Result<Option<StopReason>, EngineError> {
        let mut stats = SpecStats::default();
        let mut step_tokens = vec![dec.sampler_mut().sample(self.state.last_logits(), &self.cached)];
        dec.mark_first_token();
        let mut reason = None;
        // The first step's draft model reads the prompt, which says nothing of later steps.
        let mut first = true;
        // Each step's tokens: the pending token, fed by the next step, is the last of them.
        'steps: while !step_tokens.is_empty() {
            let base = self.cached.len();
            for (i, &id) in step_tokens.iter().enumerate() {
                let ended = if !params.ignore_eos && model.tokenizer.is_eog(id) {
                    reason = Some(StopReason::Eog);
                    true
                } else {
                    dec.push(id, None, on_text).is_none()
                };
                if ended {
                    // Keep the cache of exactly the tokens before the last one emitted, as
                    // the plain loop leaves it.
                    let keep = base - (step_tokens.len() - 1 - i);
                    self.state.truncate(keep);
                    self.cached.truncate(keep);
                    break 'steps;
                }
            }
            if let Some(r) = self.no_room_or_cancelled(params) {
                reason = Some(r);
                break;
            }
            let pending = *step_tokens.last().expect("a step yields at least one token");
            // Room for the pending token plus the drafts: the context, one forward batch, and
            // the tokens still allowed (the step emits the drafts it keeps plus one more).
            let room = self.state.ctx() - self.cached.len() - 1;
            let left = params.max_tokens - dec.out.tokens.len() - 1;
            let limit = room.min(self.state.max_batch() - 1).min(left);
            step_tokens.clear();
            // A step the gate keeps plain drafts nothing: it feeds the pending token alone.
            let speculate = self.gate.as_mut().is_none_or(|g| g.decide(1));
            let t = Instant::now();
            let limit = if speculate { limit } else { 0 };
            drafter.step(model, &mut self.state, &mut self.cached, pending, limit, dec.sampler_mut(), &mut stats, &mut step_tokens)?;
            if let Some(g) = self.gate.as_mut() {
                g.record(1, speculate, t.elapsed().as_secs_f64(), step_tokens.len(), !first);
            }
            first = false;
        }
        dec.out.speculation = Some(stats);
        Ok(reason)
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
