//! Continuous batching: every step runs one forward pass that mixes one decode token of each
//! running sequence with chunks of prompts being evaluated, under a token budget, over one paged
//! KV cache.
//!
//! A sequence's life: admitted from the queue when its whole prompt's blocks can be had (cached
//! prefix blocks are shared, not recomputed); its prompt is evaluated chunk by chunk; then it
//! gains one token per step. When a step needs a block and none is free, the newest running
//! sequence is preempted: its blocks are released and it waits at the head of the line to be
//! recomputed (its full blocks usually stay cached, so that costs little). Cancelled sequences
//! release their blocks before the next step.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use exo_models::{KvCache, LoadedModel, Logits, Scratch, Segment, BLOCK_TOKENS};
use tokio::sync::mpsc;

use crate::blocks::{chain, BlockPool, PrefixStats, ROOT};
use crate::decode::Decoder;
use crate::{EngineError, Event, Finished, GenerateParams, StopReason, Timings, TokenLogprob, Usage};

/// What happens when a sequence reaches its context window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ContextPolicy {
    /// Refuse requests whose prompt and `max_tokens` do not fit; generation stops at the window.
    #[default]
    Error,
    /// Drop the oldest conversation turns (keeping the system prompt) or the oldest prompt
    /// tokens until the prompt fits; generation stops at the window (as Ollama does).
    Truncate,
    /// Keep the first `n_keep` tokens and discard the oldest half of the rest whenever the
    /// window is full, then go on (as llama.cpp does).
    Shift,
}

impl ContextPolicy {
    /// Parses `error`, `truncate` or `shift`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "error" => Some(Self::Error),
            "truncate" => Some(Self::Truncate),
            "shift" => Some(Self::Shift),
            _ => None,
        }
    }

    /// The policy's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Truncate => "truncate",
            Self::Shift => "shift",
        }
    }
}

/// A request accepted by the engine, waiting for admission.
pub(crate) struct Job {
    pub(crate) id: u64,
    pub(crate) ids: Vec<u32>,
    pub(crate) params: GenerateParams,
    pub(crate) events: mpsc::UnboundedSender<Event>,
    pub(crate) submitted: Instant,
    /// The request's context window in tokens.
    pub(crate) ctx: usize,
    pub(crate) policy: ContextPolicy,
    /// Tokens [`ContextPolicy::Shift`] never discards.
    pub(crate) n_keep: usize,
    /// Higher runs first; ties in arrival order.
    pub(crate) priority: i32,
}

impl Job {
    fn cancelled(&self) -> bool {
        self.params.cancel.as_deref().is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

/// A running (or preempted) sequence.
struct Seq {
    job: Job,
    /// Prompt and generated tokens; the last one is fed to the model next.
    tokens: Vec<u32>,
    /// Leading tokens whose KV is in `blocks`.
    computed: usize,
    blocks: Vec<u32>,
    /// Hash-chain names of the leading full blocks registered for reuse.
    hashes: Vec<u64>,
    dec: Decoder,
    admitted: Instant,
    /// When the prompt was first evaluated in full.
    prompt_done: Option<Instant>,
}

impl Seq {
    /// Positions whose KV this sequence must hold before its next token is fed.
    fn needed(&self) -> usize {
        self.tokens.len()
    }
}

/// Counters published after every step.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SchedulerStats {
    pub(crate) running: usize,
    pub(crate) kv_tokens_running: usize,
    pub(crate) kv_tokens_cached: usize,
    pub(crate) kv_blocks_total: usize,
    pub(crate) kv_blocks_free: usize,
    pub(crate) prefix: PrefixStats,
    pub(crate) preemptions: u64,
}

/// The continuous-batching loop's state: one model, its KV cache and the sequences in it.
pub(crate) struct Scheduler {
    model: Arc<LoadedModel>,
    kv: KvCache,
    scratch: Scratch,
    pool: BlockPool,
    running: Vec<Seq>,
    preempted: VecDeque<Seq>,
    max_seqs: usize,
    preemptions: u64,
}

impl Scheduler {
    /// A scheduler over `kv` running at most `max_seqs` sequences, `scratch.max_tokens()` tokens
    /// per step.
    pub(crate) fn new(model: Arc<LoadedModel>, kv: KvCache, scratch: Scratch, max_seqs: usize) -> Self {
        let pool = BlockPool::new(kv.n_blocks());
        Self { model, kv, scratch, pool, running: Vec::new(), preempted: VecDeque::new(), max_seqs, preemptions: 0 }
    }

    /// Whether nothing is running or waiting to be resumed.
    pub(crate) fn is_idle(&self) -> bool {
        self.running.is_empty() && self.preempted.is_empty()
    }

    /// Counters for metrics.
    pub(crate) fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            running: self.running.len() + self.preempted.len(),
            kv_tokens_running: self.running.iter().map(|s| s.computed).sum(),
            kv_tokens_cached: self.pool.idle_cached() * BLOCK_TOKENS,
            kv_blocks_total: self.pool.total(),
            kv_blocks_free: self.pool.available(),
            prefix: self.pool.stats(),
            preemptions: self.preemptions,
        }
    }

    /// Admits preempted sequences, then jobs from the front of `queue`, while there is room.
    pub(crate) fn admit(&mut self, queue: &mut VecDeque<Job>) {
        while self.running.len() < self.max_seqs {
            if let Some(seq) = self.preempted.pop_front() {
                match self.resume(seq) {
                    Ok(()) => continue,
                    Err(seq) => {
                        self.preempted.push_front(*seq);
                        return;
                    }
                }
            }
            let Some(job) = queue.pop_front() else { return };
            if job.cancelled() {
                continue;
            }
            let tok = &self.model.tokenizer;
            let start = Instant::now();
            let dec = Decoder::new(tok, &job.params, job.ids.len(), start);
            let seq = Seq {
                tokens: job.ids.clone(),
                job,
                computed: 0,
                blocks: Vec::new(),
                hashes: Vec::new(),
                dec,
                admitted: start,
                prompt_done: None,
            };
            let blocks_needed = seq.needed().div_ceil(BLOCK_TOKENS);
            if blocks_needed > self.pool.total() {
                let e = EngineError::Internal(format!(
                    "the prompt needs {blocks_needed} KV blocks of {BLOCK_TOKENS} tokens but the cache has {}; raise --kv-memory",
                    self.pool.total()
                ));
                let _ = seq.job.events.send(Event::Error(e));
                continue;
            }
            match self.resume(seq) {
                Ok(()) => {
                    let seq = self.running.last_mut().expect("just admitted");
                    seq.dec.out.reused_tokens = seq.computed;
                    let _ = seq.job.events.send(Event::Started { prompt_tokens: seq.job.ids.len() });
                }
                Err(seq) => {
                    // Not enough blocks yet: it keeps its place at the head of the queue.
                    queue.push_front(seq.job);
                    return;
                }
            }
        }
    }

    /// Gives `seq` its cached prefix and blocks for the rest of its tokens, and runs it; hands
    /// it back if the blocks are not there.
    fn resume(&mut self, mut seq: Seq) -> Result<(), Box<Seq>> {
        let total = seq.needed();
        let blocks_needed = total.div_ceil(BLOCK_TOKENS);
        // The last token is always computed (its logits are needed), so the block holding it
        // is never taken from the cache.
        let reusable = (total - 1) / BLOCK_TOKENS;
        let (mut shared, mut hashes) = (Vec::new(), Vec::new());
        let mut parent = ROOT;
        for chunk in seq.tokens.chunks_exact(BLOCK_TOKENS).take(reusable) {
            let Some(b) = self.pool.lookup(parent, chunk) else { break };
            shared.push(b);
            parent = chain(parent, chunk);
            hashes.push(parent);
        }
        // Headroom of one block beyond the prompt when others are running, so a newly
        // admitted sequence does not preempt one of them on its first generated token.
        let fresh = blocks_needed - shared.len();
        if self.pool.available() < fresh + self.running.len().min(1) {
            for b in shared {
                self.pool.release(b);
            }
            return Err(Box::new(seq));
        }
        seq.hashes = hashes;
        seq.computed = shared.len() * BLOCK_TOKENS;
        seq.blocks = shared;
        for _ in 0..fresh {
            seq.blocks.push(self.pool.alloc().expect("availability checked above"));
        }
        self.running.push(seq);
        Ok(())
    }

    /// One forward pass for every running sequence; sequences that finish are answered and
    /// removed.
    pub(crate) fn step(&mut self) {
        self.drop_cancelled();
        if !self.grow() {
            return;
        }
        let budget = self.scratch.max_tokens();
        // Decode tokens first (one per sequence past its prompt), then prompt chunks in arrival
        // order with what is left of the budget.
        let mut plan: Vec<(usize, usize)> = Vec::with_capacity(self.running.len());
        let mut used = 0;
        for (i, s) in self.running.iter().enumerate() {
            if s.tokens.len() - s.computed == 1 {
                plan.push((i, 1));
                used += 1;
            }
        }
        for (i, s) in self.running.iter().enumerate() {
            let left = s.tokens.len() - s.computed;
            if left > 1 && used < budget {
                let n = left.min(budget - used);
                plan.push((i, n));
                used += n;
            }
        }
        if plan.is_empty() {
            return;
        }
        let segments: Vec<Segment> = plan
            .iter()
            .map(|&(i, n)| {
                let s = &self.running[i];
                let ends = s.computed + n == s.tokens.len();
                Segment {
                    tokens: &s.tokens[s.computed..s.computed + n],
                    pos0: s.computed,
                    blocks: &s.blocks,
                    logits: if ends { Logits::Last } else { Logits::None },
                }
            })
            .collect();
        let ran = self.model.transformer.forward_batch(&mut self.kv, &mut self.scratch, &segments);
        drop(segments);
        if let Err(e) = ran {
            // Nothing a request can send makes the model fail (tokens come from the tokenizer
            // and the sampler), so this is a bug: the sequences in the batch end with it.
            let mut failed: Vec<usize> = plan.iter().map(|p| p.0).collect();
            failed.sort_unstable();
            for i in failed.into_iter().rev() {
                let seq = self.running.remove(i);
                self.release(&seq);
                let _ = seq.job.events.send(Event::Error(EngineError::Internal(e.to_string())));
            }
            return;
        }

        let mut row = 0;
        let mut done: Vec<(usize, Option<StopReason>)> = Vec::new();
        let mut failed: Vec<(usize, EngineError)> = Vec::new();
        for &(i, n) in &plan {
            let s = &mut self.running[i];
            s.computed += n;
            if s.computed < s.tokens.len() {
                continue;
            }
            let logits = self.scratch.logits_row(row);
            row += 1;
            if s.prompt_done.is_none() {
                s.prompt_done = Some(Instant::now());
                s.dec.out.prompt_time = s.admitted.elapsed();
                if s.dec.wants_nothing() {
                    done.push((i, None));
                    continue;
                }
            }
            let stepped = s.dec.step(&self.model.tokenizer, logits, &s.tokens, &mut chunks_to(&s.job.events));
            match stepped {
                Ok(Some(id)) => {
                    s.tokens.push(id);
                    if s.tokens.len() > s.job.ctx {
                        if s.job.policy == ContextPolicy::Shift && s.job.n_keep + 2 < s.job.ctx {
                            shift(s, &mut self.pool);
                        } else {
                            done.push((i, Some(StopReason::ContextFull)));
                        }
                    }
                }
                Ok(None) => done.push((i, None)),
                Err(e) => failed.push((i, e)),
            }
        }
        self.register_full_blocks();
        let mut ended: Vec<(usize, Result<Option<StopReason>, EngineError>)> =
            done.into_iter().map(|(i, r)| (i, Ok(r))).chain(failed.into_iter().map(|(i, e)| (i, Err(e)))).collect();
        ended.sort_unstable_by_key(|d| d.0);
        for (i, how) in ended.into_iter().rev() {
            let seq = self.running.remove(i);
            match how {
                Ok(reason) => self.finish(seq, reason),
                Err(e) => {
                    self.release(&seq);
                    let _ = seq.job.events.send(Event::Error(e));
                }
            }
        }
    }

    /// Makes every newly computed full block findable by later requests.
    fn register_full_blocks(&mut self) {
        for s in &mut self.running {
            while s.hashes.len() < s.computed / BLOCK_TOKENS {
                let i = s.hashes.len();
                let parent = if i == 0 { ROOT } else { s.hashes[i - 1] };
                let h = self.pool.register(s.blocks[i], parent, &s.tokens[i * BLOCK_TOKENS..(i + 1) * BLOCK_TOKENS]);
                s.hashes.push(h);
            }
        }
    }

    /// Gives every running sequence the blocks its next token needs, preempting the newest
    /// sequences when the pool runs dry. Returns whether anything is left to run.
    fn grow(&mut self) -> bool {
        let mut i = 0;
        while i < self.running.len() {
            let need = self.running[i].needed().div_ceil(BLOCK_TOKENS);
            while self.running[i].blocks.len() < need {
                match self.pool.alloc() {
                    Some(b) => self.running[i].blocks.push(b),
                    None => {
                        // The newest sequence gives way; if that is this one, it waits.
                        let victim = self.running.pop().expect("sequence i is running");
                        self.preempt(victim);
                        if i >= self.running.len() {
                            return !self.running.is_empty();
                        }
                    }
                }
            }
            i += 1;
        }
        !self.running.is_empty()
    }

    /// Releases `seq`'s blocks and queues it for recomputation ahead of new requests.
    fn preempt(&mut self, mut seq: Seq) {
        self.preemptions += 1;
        self.release(&seq);
        seq.blocks.clear();
        seq.computed = 0;
        // Keep arrival order among preempted sequences.
        let at = self.preempted.partition_point(|s| s.job.id < seq.job.id);
        self.preempted.insert(at, seq);
    }

    /// Stops and answers sequences whose request was cancelled (the client went away).
    fn drop_cancelled(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].job.cancelled() {
                let seq = self.running.remove(i);
                self.finish(seq, Some(StopReason::Cancelled));
            } else {
                i += 1;
            }
        }
        let (keep, gone): (VecDeque<Seq>, VecDeque<Seq>) = std::mem::take(&mut self.preempted).into_iter().partition(|s| !s.job.cancelled());
        self.preempted = keep;
        for seq in gone {
            self.finish(seq, Some(StopReason::Cancelled));
        }
    }

    fn release(&mut self, seq: &Seq) {
        for &b in &seq.blocks {
            self.pool.release(b);
        }
    }

    /// Releases `seq`'s blocks and sends its final event.
    fn finish(&mut self, seq: Seq, reason: Option<StopReason>) {
        self.release(&seq);
        let Seq { job, dec, admitted, .. } = seq;
        let events = &job.events;
        let done = dec.finish(reason, &mut chunks_to(events));
        let finished = Finished {
            reason: done.stop_reason.clone(),
            usage: Usage { prompt_tokens: done.prompt_tokens, cached_tokens: done.reused_tokens, completion_tokens: done.tokens.len() },
            timings: Timings {
                queued: admitted.saturating_duration_since(job.submitted),
                prompt: done.prompt_time,
                first_token: done.time_to_first_token,
                generation: done.gen_time,
            },
        };
        let _ = events.send(Event::Done(finished));
    }

    /// Answers every sequence with `error` and empties the scheduler (after a panic inside a
    /// step, when its bookkeeping cannot be trusted); the pool starts afresh.
    pub(crate) fn fail_all(&mut self, error: &str) {
        for seq in self.running.drain(..).chain(self.preempted.drain(..)) {
            let _ = seq.job.events.send(Event::Error(EngineError::Internal(error.to_string())));
        }
        self.pool = BlockPool::new(self.kv.n_blocks());
    }
}

/// A text callback that sends each piece as a [`Event::Chunk`] and stops the generation once
/// the client has gone.
fn chunks_to(events: &mpsc::UnboundedSender<Event>) -> impl FnMut(&str, &[TokenLogprob]) -> ControlFlow<()> + '_ {
    |text, logprobs| {
        let chunk = Event::Chunk { text: text.to_string(), logprobs: logprobs.to_vec() };
        if events.send(chunk).is_ok() { ControlFlow::Continue(()) } else { ControlFlow::Break(()) }
    }
}

/// Applies [`ContextPolicy::Shift`] to a sequence whose tokens just outgrew its window: keep
/// the first `n_keep`, drop the oldest half of the rest, and recompute from the last block that
/// is still valid (positions after the cut have moved).
fn shift(s: &mut Seq, pool: &mut BlockPool) {
    let n_keep = s.job.n_keep;
    let past = s.tokens.len() - 1;
    let discard = (past - n_keep) / 2;
    s.tokens.drain(n_keep..n_keep + discard);
    let valid_blocks = n_keep / BLOCK_TOKENS;
    for &b in &s.blocks[valid_blocks..] {
        pool.release(b);
    }
    s.blocks.truncate(valid_blocks);
    s.hashes.truncate(valid_blocks);
    s.computed = valid_blocks * BLOCK_TOKENS;
}
