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
//!
//! With speculation, a decoding sequence's step feeds its pending token followed by drafts
//! (from prompt lookup, or from a draft model run over the whole batch first), and the target
//! verifies them all in the same one forward pass. A draft model keeps its own cache with as
//! many blocks as the target's and follows the same block tables: a position's rows sit in the
//! same block id in both. Rows written for rejected drafts lie past the sequence's length and
//! are overwritten later; attention reads only positions up to each query's own.
//!
//! Speculation is turned off for steps whose batch size it measurably slows down (see
//! [`crate::spec_gate`]). The draft model is then not run at all, and neither for requests that
//! decode plainly (log-probabilities, constraints): it falls behind and catches up on the
//! tokens it missed, in batched chunks, when the sequence next drafts. A full block joins the
//! prefix cache as soon as the target holds it; the draft records which blocks it holds rows
//! for, so a request reusing a block the draft missed has the draft catch up from there.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use exo_models::{KvCache, LoadedModel, Logits, LogitsRow, Scratch, Segment, BLOCK_TOKENS};
use tokio::sync::mpsc;

use crate::blocks::{chain, BlockPool, PrefixStats, ROOT};
use crate::decode::Decoder;
use crate::spec_gate::SpecGate;
use crate::speculative::{ngram_lookup, propose, verify_drafts, Costs, DraftLength, SpecConfig, SpecStats};
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
    /// Speculation for this request; `None` when it decodes plainly.
    spec: Option<SeqSpec>,
    /// Leading tokens whose KV the draft model holds.
    drafted_to: usize,
    /// The sequence has a token the draft model cannot read (an id past its vocabulary), so
    /// the draft model no longer follows it.
    draft_blind: bool,
}

/// One sequence's speculation.
struct SeqSpec {
    length: DraftLength,
    stats: SpecStats,
    /// Drafts of the current step, appended to the sequence's tokens from drafting until
    /// verification.
    drafts: usize,
    /// The distributions they were drawn from (`None`: a point mass, prompt lookup).
    dists: Vec<Option<Vec<(u32, f32)>>>,
}

/// The scheduler's speculative decoding.
pub(crate) struct SpecEngine {
    cfg: SpecConfig,
    draft: Option<DraftModel>,
    /// Chooses per step whether to speculate (`None`: always, `--spec-always`).
    gate: Option<SpecGate>,
}

impl SpecEngine {
    /// Speculation with `cfg`, drafting with `draft` or, without one, by prompt lookup.
    pub(crate) fn new(cfg: SpecConfig, draft: Option<DraftModel>) -> Self {
        Self { cfg, draft, gate: None }
    }
}

/// A draft model over its own KV cache, whose block ids are the target's.
pub(crate) struct DraftModel {
    model: Arc<LoadedModel>,
    kv: KvCache,
    scratch: Scratch,
    /// Token ids both vocabularies share; only those are drafted.
    shared: usize,
    masked: Vec<f32>,
    /// Per block id, the hash-chain name of the full block whose rows this cache holds there
    /// (`ROOT`: none known), so a reused block is known to be valid for the draft too.
    holds: Vec<u64>,
}

impl DraftModel {
    /// `model` with `kv` (as many blocks as the target's) and `scratch` (the target's batch and
    /// context), drafting ids below `shared`.
    pub(crate) fn new(model: Arc<LoadedModel>, kv: KvCache, scratch: Scratch, shared: usize) -> Self {
        let holds = vec![ROOT; kv.n_blocks()];
        Self { model, kv, scratch, shared, masked: Vec::new(), holds }
    }

    /// Whether the draft can read every token of `tokens`.
    fn reads(&self, tokens: &[u32]) -> bool {
        let rows = self.model.transformer.config().vocab_size;
        tokens.iter().all(|&t| (t as usize) < rows)
    }
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
    /// Decode steps run with and without speculation (`[plain, speculative]`) by the gate.
    pub(crate) spec_gate_steps: [u64; 2],
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
    spec: Option<SpecEngine>,
}

impl Scheduler {
    /// A scheduler over `kv` running at most `max_seqs` sequences, `scratch.max_tokens()` tokens
    /// per step, speculating with `spec`.
    pub(crate) fn new(model: Arc<LoadedModel>, kv: KvCache, scratch: Scratch, max_seqs: usize, mut spec: Option<SpecEngine>) -> Self {
        let pool = BlockPool::new(kv.n_blocks());
        if let Some(sp) = spec.as_mut() {
            sp.gate = sp.cfg.gate.then(|| SpecGate::new(max_seqs));
        }
        Self { model, kv, scratch, pool, running: Vec::new(), preempted: VecDeque::new(), max_seqs, preemptions: 0, spec }
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
            spec_gate_steps: self.spec.as_ref().and_then(|sp| sp.gate.as_ref()).map_or([0; 2], |g| g.steps),
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
            // As in a session, requests for log-probabilities or under a constraint decode
            // plainly (see `Session::generate`).
            let plain = job.params.logprobs.is_some() || job.params.constraint.is_some();
            let spec = self.spec.as_ref().filter(|_| !plain).map(|sp| SeqSpec {
                length: DraftLength::new(sp.cfg),
                stats: SpecStats::default(),
                drafts: 0,
                dists: Vec::new(),
            });
            let draft_blind = self.spec.as_ref().and_then(|sp| sp.draft.as_ref()).is_some_and(|d| !d.reads(&job.ids));
            let seq = Seq {
                spec,
                drafted_to: 0,
                draft_blind,
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
        // The draft holds the rows of the leading reused blocks it computed itself.
        let draft = self.spec.as_ref().and_then(|sp| sp.draft.as_ref());
        let draft_holds = draft.map_or(shared.len(), |d| shared.iter().zip(&hashes).take_while(|&(&b, &h)| d.holds[b as usize] == h).count());
        seq.hashes = hashes;
        seq.computed = shared.len() * BLOCK_TOKENS;
        seq.drafted_to = draft_holds * BLOCK_TOKENS;
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
        // Decode tokens first (one per sequence past its prompt, plus its drafts), then prompt
        // chunks in arrival order with what is left of the budget.
        let mut plan: Vec<(usize, usize)> = Vec::with_capacity(self.running.len());
        let mut used = 0;
        for (i, s) in self.running.iter().enumerate() {
            if s.tokens.len() - s.computed == 1 {
                plan.push((i, 1));
                used += 1;
            }
        }
        let decoding = plan.len();
        let t_step = Instant::now();
        let speculate = match self.spec.as_mut() {
            Some(sp) if decoding > 0 => sp.gate.as_mut().is_none_or(|g| g.decide(decoding)),
            _ => false,
        };
        if speculate {
            self.choose_draft_lengths(&plan, &mut used, budget);
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
        let prompts = plan.len() > decoding;
        let mut draft_secs = 0.0;
        let mut catching_up = false;
        if speculate {
            let t = Instant::now();
            let (decode_plan, prompt_plan) = plan.split_at_mut(decoding);
            catching_up = self.draft(decode_plan, prompt_plan);
            draft_secs = t.elapsed().as_secs_f64();
        }
        let emitted_before: usize = plan[..decoding].iter().map(|&(i, _)| self.running[i].dec.out.tokens.len()).sum();
        let t_verify = Instant::now();
        let segments: Vec<Segment> = plan
            .iter()
            .map(|&(i, n)| {
                let s = &self.running[i];
                let ends = s.computed + n == s.tokens.len();
                let verifies = s.spec.as_ref().is_some_and(|sp| sp.drafts > 0);
                Segment {
                    tokens: &s.tokens[s.computed..s.computed + n],
                    pos0: s.computed,
                    blocks: &s.blocks,
                    logits: if verifies {
                        Logits::All
                    } else if ends {
                        Logits::Last
                    } else {
                        Logits::None
                    },
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
        // Costs are measured only on steps that evaluated no prompt, which would swamp them.
        // Each sequence is charged its share of the step: of the verification pass in
        // proportion to the tokens it fed, of the drafting evenly. Its draft length then weighs
        // its own tokens against what its drafts add to the batch's step, so speculation backs
        // off as the batch grows and passes stop being cheap per token.
        let verify_secs = t_verify.elapsed().as_secs_f64();
        let fed_total: usize = plan.iter().map(|p| p.1).sum();
        let verifying = plan.iter().filter(|p| self.running[p.0].spec.as_ref().is_some_and(|sp| sp.drafts > 0)).count();
        let costs = |fed: usize| {
            (!prompts).then_some(Costs {
                draft_secs: draft_secs / verifying.max(1) as f64,
                fed,
                verify_secs: verify_secs * fed as f64 / fed_total as f64,
            })
        };

        let mut row = 0;
        let mut done: Vec<(usize, Option<StopReason>)> = Vec::new();
        let mut failed: Vec<(usize, EngineError)> = Vec::new();
        for &(i, n) in &plan {
            let s = &mut self.running[i];
            if s.spec.as_ref().is_some_and(|sp| sp.drafts > 0) {
                let scratch = &self.scratch;
                let ended = accept(s, &self.model, |j| scratch.row(row + j), costs(n));
                row += n;
                match ended {
                    Some(reason) => done.push((i, reason)),
                    None => self.check_context(i, &mut done),
                }
                continue;
            }
            s.computed += n;
            if s.computed < s.tokens.len() {
                continue;
            }
            let logits = self.scratch.row(row);
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
                    self.check_context(i, &mut done);
                }
                Ok(None) => done.push((i, None)),
                Err(e) => failed.push((i, e)),
            }
        }
        let emitted: usize = plan[..decoding].iter().map(|&(i, _)| self.running[i].dec.out.tokens.len()).sum::<usize>() - emitted_before;
        let secs = t_step.elapsed().as_secs_f64();
        tracing::debug!(
            decoding,
            fed = fed_total,
            speculate,
            emitted,
            draft_ms = draft_secs * 1e3,
            forward_ms = verify_secs * 1e3,
            step_ms = secs * 1e3,
            "scheduler step"
        );
        if let Some(gate) = self.spec.as_mut().and_then(|sp| sp.gate.as_mut()).filter(|_| decoding > 0) {
            gate.record(decoding, speculate, secs, emitted, !prompts && !catching_up);
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

    /// After sequence `i` gained tokens: at its window, shift it or end it.
    fn check_context(&mut self, i: usize, done: &mut Vec<(usize, Option<StopReason>)>) {
        let s = &mut self.running[i];
        if s.tokens.len() > s.job.ctx {
            if s.job.policy == ContextPolicy::Shift && s.job.n_keep + 2 < s.job.ctx {
                shift(s, &mut self.pool);
            } else {
                done.push((i, Some(StopReason::ContextFull)));
            }
        }
    }

    /// Sets how many tokens each speculating sequence among the `decoding` ones drafts this
    /// step (`SeqSpec::drafts`, filled in by [`Scheduler::draft`]): what its [`DraftLength`]
    /// asks, within `max_tokens`, its window, the batch budget (`used` of it taken) and the
    /// blocks it has or can get without preempting anyone.
    fn choose_draft_lengths(&mut self, decoding: &[(usize, usize)], used: &mut usize, budget: usize) {
        let Some(sp) = &self.spec else { return };
        let free = sp.draft.is_none();
        for &(i, _) in decoding {
            let s = &mut self.running[i];
            let Some(seq_spec) = s.spec.as_mut() else { continue };
            seq_spec.drafts = 0;
            if !free && s.draft_blind {
                continue;
            }
            // Drafts take the positions after the pending token; the step emits the accepted
            // ones plus one more token.
            let left = s.job.params.max_tokens.saturating_sub(s.dec.out.tokens.len() + 1);
            let room = s.job.ctx.saturating_sub(s.tokens.len());
            let mut k = seq_spec.length.next(left.min(room).min(budget - *used), free);
            while s.blocks.len() * BLOCK_TOKENS < s.tokens.len() + k {
                match self.pool.alloc() {
                    Some(b) => s.blocks.push(b),
                    None => k = s.blocks.len() * BLOCK_TOKENS - s.tokens.len(),
                }
            }
            seq_spec.drafts = k;
            *used += k;
        }
    }

    /// Appends to each speculating sequence among `decoding` the drafts it was given room for,
    /// setting its plan entry and `SeqSpec::drafts` to what it got. A draft model also
    /// evaluates the `prompts` chunks, so that its cache follows the target's, and first
    /// catches up on the tokens it missed while speculation was off. Returns whether it did
    /// more of that than a step's usual one or two tokens per sequence.
    fn draft(&mut self, decoding: &mut [(usize, usize)], prompts: &[(usize, usize)]) -> bool {
        let Some(sp) = &mut self.spec else { return false };
        let Some(dm) = &mut sp.draft else {
            let mut found = Vec::new();
            for (i, n) in decoding.iter_mut() {
                let s = &mut self.running[*i];
                let Some(seq_spec) = s.spec.as_mut() else { continue };
                found.clear();
                ngram_lookup(&s.tokens, seq_spec.drafts, &mut found);
                s.tokens.extend_from_slice(&found);
                seq_spec.drafts = found.len();
                seq_spec.dists.clear();
                seq_spec.dists.resize(found.len(), None);
                *n = 1 + found.len();
            }
            return false;
        };
        let min = sp.cfg.draft_min;
        // Round 0: prompt chunks, and each drafting sequence's tokens since the draft last saw
        // it (its pending token, and the last accepted draft when all were accepted). Each
        // entry: sequence, first position, tokens, whether its logits are wanted.
        let mut segs: Vec<(usize, usize, usize, bool)> = Vec::new();
        let mut room = dm.scratch.max_tokens();
        let mut catching_up = false;
        for &(i, n) in prompts {
            let s = &mut self.running[i];
            let n = (s.computed + n - s.drafted_to).min(room);
            if s.draft_blind || n == 0 {
                continue;
            }
            if !dm.reads(&s.tokens[s.drafted_to..s.drafted_to + n]) {
                s.draft_blind = true;
                continue;
            }
            segs.push((i, s.drafted_to, n, false));
            room -= n;
        }
        let mut drafting: Vec<usize> = Vec::new();
        for &(i, _) in decoding.iter() {
            let s = &mut self.running[i];
            let Some(seq_spec) = s.spec.as_mut() else { continue };
            if seq_spec.drafts == 0 {
                continue;
            }
            seq_spec.dists.clear();
            let behind = s.tokens.len() - s.drafted_to;
            if !dm.reads(&s.tokens[s.drafted_to..]) {
                s.draft_blind = true;
                seq_spec.drafts = 0;
                continue;
            }
            // A step feeds the draft the pending token and, after a fully accepted run, the
            // last draft; more means it missed steps.
            catching_up |= behind > 2;
            if behind > room {
                // Too far behind to catch up within this pass: it catches up as far as the
                // pass allows and this step decodes plainly.
                if room > 0 {
                    segs.push((i, s.drafted_to, room, false));
                    room = 0;
                }
                seq_spec.drafts = 0;
                continue;
            }
            segs.push((i, s.drafted_to, behind, true));
            room -= behind;
            drafting.push(i);
        }
        // Round r proposes each drafting sequence's draft r, until it has as many as it asked
        // for (`SeqSpec::drafts` until the end) or the draft is unsure.
        let mut round = 0;
        while !segs.is_empty() {
            let segments: Vec<Segment> = segs
                .iter()
                .map(|&(i, pos0, n, last)| {
                    let s = &self.running[i];
                    Segment {
                        tokens: &s.tokens[pos0..pos0 + n],
                        pos0,
                        blocks: &s.blocks,
                        logits: if last { Logits::Last } else { Logits::None },
                    }
                })
                .collect();
            let ran = dm.model.transformer.forward_batch(&mut dm.kv, &mut dm.scratch, &segments);
            drop(segments);
            if ran.is_err() {
                // The draft's failure changes nothing the target says: the sequences involved
                // stop drafting (their rows in the draft's cache are now unknown).
                for &(i, ..) in &segs {
                    self.running[i].draft_blind = true;
                }
                break;
            }
            let mut row = 0;
            let mut next = Vec::new();
            for &(i, pos0, n, last) in &segs {
                let s = &mut self.running[i];
                s.drafted_to = pos0 + n;
                if !last {
                    continue;
                }
                let logits = dm.scratch.logits_row(row);
                row += 1;
                let Some(seq_spec) = s.spec.as_mut() else { continue };
                let proposed = propose(logits, dm.shared, &mut dm.masked, round >= min, &s.tokens, s.dec.sampler_mut());
                let Some((d, q)) = proposed else { continue };
                s.tokens.push(d);
                seq_spec.dists.push(Some(q));
                if seq_spec.dists.len() < seq_spec.drafts {
                    next.push((i, s.tokens.len() - 1, 1, true));
                }
            }
            segs = next;
            round += 1;
        }
        for &i in &drafting {
            if let Some(seq_spec) = self.running[i].spec.as_mut() {
                seq_spec.drafts = seq_spec.dists.len();
            }
        }
        for (i, n) in decoding.iter_mut() {
            *n = 1 + self.running[*i].spec.as_ref().map_or(0, |sp| sp.drafts);
        }
        catching_up
    }

    /// Makes every newly computed full block findable by later requests, and notes which full
    /// blocks the draft model holds rows for (a request reusing a block the draft lacks has the
    /// draft compute them).
    fn register_full_blocks(&mut self) {
        let mut draft = self.spec.as_mut().and_then(|sp| sp.draft.as_mut());
        for s in &mut self.running {
            while s.hashes.len() < s.computed / BLOCK_TOKENS {
                let i = s.hashes.len();
                let parent = if i == 0 { ROOT } else { s.hashes[i - 1] };
                let h = self.pool.register(s.blocks[i], parent, &s.tokens[i * BLOCK_TOKENS..(i + 1) * BLOCK_TOKENS]);
                s.hashes.push(h);
                if let Some(d) = draft.as_deref_mut() {
                    // The block may hold the draft's rows of an earlier owner's tokens.
                    d.holds[s.blocks[i] as usize] = ROOT;
                }
            }
            if let Some(d) = draft.as_deref_mut() {
                let held = (s.drafted_to / BLOCK_TOKENS).min(s.hashes.len());
                for (&b, &h) in s.blocks[..held].iter().zip(&s.hashes) {
                    d.holds[b as usize] = h;
                }
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
        seq.drafted_to = 0;
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
        let Seq { job, dec, admitted, spec, .. } = seq;
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
            speculation: spec.map(|sp| sp.stats),
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

/// Verifies the drafts at the end of `s.tokens` against the target's logits `row(j)` for each
/// token fed after the pending one, then emits the accepted drafts and the target's own next
/// token one by one through the same end checks as plain decoding (EOS, stop strings,
/// `max_tokens`), so the output ends where it would have. Returns how the sequence ended, if
/// it did (`Some(None)`: the decoder holds the reason).
fn accept<'a>(s: &mut Seq, model: &LoadedModel, row: impl Fn(usize) -> LogitsRow<'a>, costs: Option<Costs>) -> Option<Option<StopReason>> {
    let sp = s.spec.as_mut().expect("only speculating sequences have drafts");
    let m = std::mem::take(&mut sp.drafts);
    let kept = s.tokens.len() - m;
    let drafts = s.tokens.split_off(kept);
    let next = verify_drafts(row, &drafts, &sp.dists, &mut s.tokens, s.dec.sampler_mut());
    let accepted = s.tokens.len() - kept;
    sp.stats.drafted += m;
    sp.stats.accepted += accepted;
    sp.stats.steps += 1;
    sp.length.record(m, accepted, costs);
    // The pending token and the accepted drafts have their rows now; the draft model's rows of
    // rejected drafts are stale.
    s.computed = s.tokens.len();
    s.drafted_to = s.drafted_to.min(s.computed);
    let emitted: Vec<u32> = s.tokens[kept..].iter().copied().chain([next]).collect();
    let mut on_text = chunks_to(&s.job.events);
    for (j, &id) in emitted.iter().enumerate() {
        let ended = if !s.job.params.ignore_eos && model.tokenizer.is_eog(id) {
            Some(Some(StopReason::Eog))
        } else {
            s.dec.push(id, None, &mut on_text).is_none().then_some(None)
        };
        if ended.is_some() {
            s.tokens.truncate(kept + j);
            s.computed = s.computed.min(s.tokens.len());
            return ended;
        }
    }
    s.tokens.push(next);
    None
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
    s.drafted_to = s.drafted_to.min(s.computed);
}
