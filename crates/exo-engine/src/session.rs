//! One sequence's generation loop: prefill with prefix reuse, then sample, detokenize, stop.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use exo_models::{LoadedModel, State};
use exo_tokenizer::StreamDecoder;

use crate::constrain::{Constraint, ConstraintState};
use crate::sampler::{Sampler, SamplerConfig};
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
    /// Only tokens that continue this document may be sampled; generation ends once it is
    /// complete and nothing may follow.
    pub constraint: Option<Arc<Constraint>>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self { max_tokens: 256, sampler: SamplerConfig::default(), stop: Vec::new(), ignore_eos: false, constraint: None }
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
    /// The caller's callback asked to stop.
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
    pub fn new(model: &LoadedModel, ctx: usize, batch: usize) -> Result<Self, EngineError> {
        Ok(Self { state: model.transformer.new_state(ctx, batch)?, cached: Vec::with_capacity(ctx) })
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
            if let Err(e) = model.transformer.forward(&mut self.state, chunk, false) {
                self.clear();
                return Err(e.into());
            }
            self.cached.extend_from_slice(chunk);
        }
        Ok(reuse)
    }

    /// Generates a continuation of `prompt`, calling `on_text` with each piece of text as soon
    /// as it is final (complete UTF-8, not part of a possible stop string).
    pub fn generate(
        &mut self,
        model: &LoadedModel,
        prompt: &[u32],
        params: &GenerateParams,
        mut on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Completion, EngineError> {
        params.sampler.validate().map_err(EngineError::Sampler)?;
        let start = Instant::now();
        let reused = self.prefill(model, prompt)?;
        let prompt_time = start.elapsed();

        let tok = &model.tokenizer;
        let mut sampler = Sampler::new(params.sampler.clone());
        let mut decoder = StreamDecoder::new(tok, true);
        let mut stops = StopMatcher::new(&params.stop);
        let mut out = Completion {
            text: String::new(),
            tokens: Vec::with_capacity(params.max_tokens.min(4096)),
            stop_reason: StopReason::MaxTokens,
            prompt_tokens: prompt.len(),
            reused_tokens: reused,
            prompt_time,
            time_to_first_token: Duration::ZERO,
            gen_time: Duration::ZERO,
        };
        let mut constraint = params.constraint.clone().map(ConstraintState::new);
        let mut first_at = None;
        let mut emit = |text: &str, out: &mut Completion| {
            out.text.push_str(text);
            if text.is_empty() { ControlFlow::Continue(()) } else { on_text(text) }
        };
        while out.tokens.len() < params.max_tokens {
            let logits = match constraint.as_mut() {
                Some(c) => c.mask_logits(self.state.last_logits())?,
                None => self.state.last_logits(),
            };
            let id = sampler.sample(logits, &self.cached);
            if first_at.is_none() {
                first_at = Some(Instant::now());
                out.time_to_first_token = start.elapsed();
            }
            if !params.ignore_eos && tok.is_eog(id) {
                out.stop_reason = StopReason::Eog;
                break;
            }
            if let Some(c) = constraint.as_mut() {
                c.accept(id)?;
            }
            out.tokens.push(id);
            if let Some(piece) = decoder.push(id) {
                match stops.push(&piece) {
                    StopScan::Continue(text) => {
                        if emit(&text, &mut out).is_break() {
                            out.stop_reason = StopReason::Cancelled;
                            break;
                        }
                    }
                    StopScan::Stop(text, s) => {
                        let _ = emit(&text, &mut out);
                        out.stop_reason = StopReason::StopString(s);
                        break;
                    }
                }
            }
            if constraint.as_ref().is_some_and(ConstraintState::is_finished) {
                out.stop_reason = StopReason::Eog;
                break;
            }
            if out.tokens.len() >= params.max_tokens {
                break;
            }
            if self.cached.len() >= self.state.ctx() {
                out.stop_reason = StopReason::ContextFull;
                break;
            }
            model.transformer.forward(&mut self.state, &[id], false)?;
            self.cached.push(id);
        }
        if !matches!(out.stop_reason, StopReason::StopString(_) | StopReason::Cancelled) {
            let tail = decoder.finish();
            let text = match stops.push(&tail) {
                StopScan::Continue(t) => t + &stops.finish(),
                StopScan::Stop(t, s) => {
                    out.stop_reason = StopReason::StopString(s);
                    t
                }
            };
            let _ = emit(&text, &mut out);
        }
        out.gen_time = first_at.map_or(Duration::ZERO, |t| t.elapsed());
        Ok(out)
    }
}
