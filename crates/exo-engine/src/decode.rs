//! What happens to each new token of one sequence once the model has given its logits: sample
//! (under the request's constraint), detokenize, watch for stop strings and end-of-generation,
//! and hand finished text to the caller. [`crate::Session`] drives one of these; the scheduler
//! drives one per running request.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use exo_models::LogitsRow;
use exo_tokenizer::{StreamDecoder, Tokenizer};

use crate::constrain::ConstraintState;
use crate::logprobs::{LogprobScratch, TokenLogprob};
use crate::sampler::Sampler;
use crate::stop::{StopMatcher, StopScan};
use crate::{Completion, EngineError, GenerateParams, StopReason};

/// One sequence's generation state after its prompt.
pub(crate) struct Decoder {
    sampler: Sampler,
    stream: StreamDecoder,
    stops: StopMatcher,
    constraint: Option<ConstraintState>,
    max_tokens: usize,
    ignore_eos: bool,
    logprobs: Option<usize>,
    scratch: LogprobScratch,
    pending: Vec<TokenLogprob>,
    /// When decoding started (the prompt's evaluation began); time to first token counts from here.
    start: Instant,
    first_at: Option<Instant>,
    /// The completion so far; [`Decoder::finish`] completes it.
    pub(crate) out: Completion,
}

impl Decoder {
    /// A decoder for `params` after a prompt of `prompt_tokens` tokens, counting time from `start`.
    pub(crate) fn new(tok: &Tokenizer, params: &GenerateParams, prompt_tokens: usize, start: Instant) -> Self {
        Self {
            sampler: Sampler::new(params.sampler.clone()),
            stream: StreamDecoder::new(tok, true),
            stops: StopMatcher::new(&params.stop),
            constraint: params.constraint.clone().map(ConstraintState::new),
            max_tokens: params.max_tokens,
            ignore_eos: params.ignore_eos,
            logprobs: params.logprobs,
            scratch: LogprobScratch::default(),
            pending: Vec::new(),
            start,
            first_at: None,
            out: Completion {
                text: String::new(),
                tokens: Vec::with_capacity(params.max_tokens.min(4096)),
                stop_reason: StopReason::MaxTokens,
                prompt_tokens,
                reused_tokens: 0,
                prompt_time: Duration::ZERO,
                time_to_first_token: Duration::ZERO,
                gen_time: Duration::ZERO,
                speculation: None,
            },
        }
    }

    /// The request's sampler (speculative decoding draws through it).
    pub(crate) fn sampler_mut(&mut self) -> &mut Sampler {
        &mut self.sampler
    }

    /// Whether `max_tokens` is zero, so no token is to be sampled at all.
    pub(crate) fn wants_nothing(&self) -> bool {
        self.max_tokens == 0
    }

    /// Samples the token after `history` from `logits` and emits the text it completes.
    ///
    /// Returns the token to feed back to the model, or `None` once generation has ended (the
    /// reason is in `out.stop_reason`; call [`Decoder::finish`] next).
    pub(crate) fn step(
        &mut self,
        tok: &Tokenizer,
        row: LogitsRow<'_>,
        history: &[u32],
        on_text: &mut impl FnMut(&str, &[TokenLogprob]) -> ControlFlow<()>,
    ) -> Result<Option<u32>, EngineError> {
        // Plain greedy decoding needs only the argmax, and sampling with a top-k and no
        // penalties only the top-k logits, which a GPU finds without copying the logits back.
        let plain = self.constraint.is_none() && self.logprobs.is_none();
        let top = plain.then(|| self.sampler.top_k_suffices()).flatten().and_then(|k| row.top_k(k));
        let id = if plain && self.sampler.is_plain_greedy() {
            row.argmax()
        } else if let Some(top) = top {
            self.sampler.sample_top_k(&top)
        } else {
            let logits = row.values();
            let masked = match self.constraint.as_mut() {
                Some(c) => c.mask_logits(logits)?,
                None => logits,
            };
            self.sampler.sample(masked, history)
        };
        self.mark_first_token();
        if !self.ignore_eos && tok.is_eog(id) {
            self.out.stop_reason = StopReason::Eog;
            return Ok(None);
        }
        if let Some(c) = self.constraint.as_mut() {
            c.accept(id)?;
        }
        let logprob = self.logprobs.map(|n_top| self.scratch.token(row.values(), id, n_top));
        Ok(self.push(id, logprob, on_text).map(|()| id))
    }

    /// Notes that the first token has been chosen now (time to first token), if not yet.
    pub(crate) fn mark_first_token(&mut self) {
        if self.first_at.is_none() {
            self.first_at = Some(Instant::now());
            self.out.time_to_first_token = self.start.elapsed();
        }
    }

    /// Appends chosen token `id` (not end-of-generation) and emits the text it completes;
    /// `None` once generation has ended (a stop string, `max_tokens`, a finished constraint or
    /// a client gone), with the reason in `out.stop_reason`.
    pub(crate) fn push(
        &mut self,
        id: u32,
        logprob: Option<TokenLogprob>,
        on_text: &mut impl FnMut(&str, &[TokenLogprob]) -> ControlFlow<()>,
    ) -> Option<()> {
        self.pending.extend(logprob);
        self.out.tokens.push(id);
        if let Some(piece) = self.stream.push(id) {
            match self.stops.push(&piece) {
                StopScan::Continue(text) => {
                    if self.emit(&text, false, on_text).is_break() {
                        self.out.stop_reason = StopReason::Cancelled;
                        return None;
                    }
                }
                StopScan::Stop(text, s) => {
                    let _ = self.emit(&text, false, on_text);
                    self.out.stop_reason = StopReason::StopString(s);
                    return None;
                }
            }
        }
        if self.constraint.as_ref().is_some_and(ConstraintState::is_finished) {
            self.out.stop_reason = StopReason::Eog;
            return None;
        }
        if self.out.tokens.len() >= self.max_tokens {
            self.out.stop_reason = StopReason::MaxTokens;
            return None;
        }
        Some(())
    }

    /// Ends generation for `reason` (if it is still running) and flushes text held back for a
    /// possible stop string or an incomplete character; returns the completion.
    pub(crate) fn finish(
        mut self,
        reason: Option<StopReason>,
        on_text: &mut impl FnMut(&str, &[TokenLogprob]) -> ControlFlow<()>,
    ) -> Completion {
        if let Some(r) = reason {
            self.out.stop_reason = r;
        }
        if !matches!(self.out.stop_reason, StopReason::StopString(_) | StopReason::Cancelled) {
            let tail = self.stream.finish();
            let (text, last) = match self.stops.push(&tail) {
                StopScan::Continue(t) => (t + &self.stops.finish(), true),
                StopScan::Stop(t, s) => {
                    self.out.stop_reason = StopReason::StopString(s);
                    (t, false)
                }
            };
            let _ = self.emit(&text, last, on_text);
        }
        self.out.gen_time = self.first_at.map_or(Duration::ZERO, |t| t.elapsed());
        self.out
    }

    /// Appends `text` to the completion and passes it on with the pending log-probabilities.
    /// `last`: the final flush, which also reports tokens that produced no text (a special token
    /// under `ignore_eos`).
    fn emit(&mut self, text: &str, last: bool, on_text: &mut impl FnMut(&str, &[TokenLogprob]) -> ControlFlow<()>) -> ControlFlow<()> {
        self.out.text.push_str(text);
        if text.is_empty() && (!last || self.pending.is_empty()) {
            return ControlFlow::Continue(());
        }
        let flow = on_text(text, &self.pending);
        self.pending.clear();
        flow
    }
}
