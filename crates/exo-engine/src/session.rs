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
}

/// A sequence's KV cache and the tokens it holds, reused across calls that share a prefix
/// (a chat that grows turn by turn recomputes only the new turn).
pub struct Session {
    state: State,
    cached: Vec<u32>,
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
        Ok(Self { state: model.transformer.new_state_with(ctx, batch, kv_type)?, cached: Vec::with_capacity(ctx) })
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
    pub fn generate(
        &mut self,
        model: &LoadedModel,
        prompt: &[u32],
        params: &GenerateParams,
        mut on_text: impl FnMut(&str, &[TokenLogprob]) -> ControlFlow<()>,
    ) -> Result<Completion, EngineError> {
        params.sampler.validate().map_err(EngineError::Sampler)?;
        let cancel = params.cancel.as_deref();
        let cancelled = || cancel.is_some_and(|c| c.load(Ordering::Relaxed));
        let start = Instant::now();
        let (reused, complete) = self.prefill_until(model, prompt, cancel)?;
        let tok = &model.tokenizer;
        let mut dec = Decoder::new(tok, params, prompt.len(), start);
        dec.out.reused_tokens = reused;
        dec.out.prompt_time = start.elapsed();
        if !complete {
            return Ok(dec.finish(Some(StopReason::Cancelled), &mut on_text));
        }
        if dec.wants_nothing() {
            return Ok(dec.finish(None, &mut on_text));
        }
        while let Some(id) = dec.step(tok, self.state.last_logits(), &self.cached, &mut on_text)? {
            if self.cached.len() >= self.state.ctx() {
                return Ok(dec.finish(Some(StopReason::ContextFull), &mut on_text));
            }
            if cancelled() {
                return Ok(dec.finish(Some(StopReason::Cancelled), &mut on_text));
            }
            model.transformer.forward(&mut self.state, &[id], false)?;
            self.cached.push(id);
        }
        Ok(dec.finish(None, &mut on_text))
    }
}
