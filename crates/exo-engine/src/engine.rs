//! The engine handle: the one way front ends reach generation.
//!
//! A front end builds a [`Request`], calls [`EngineHandle::submit`] and reads [`Event`]s from the
//! returned [`RequestStream`], from async code or a plain thread; dropping the stream cancels the
//! request. Behind it one engine thread runs the continuous-batching [`crate::scheduler`] over a
//! paged KV cache: requests wait in one bounded queue (highest priority first, then arrival
//! order) and join the running batch as soon as their prompt's blocks are available.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use exo_models::{KvType, LoadedModel, BLOCK_TOKENS};
use exo_tokenizer::TokenizerError;
use tokio::sync::mpsc;

use crate::context::fit_prompt;
use crate::scheduler::{ContextPolicy, DraftModel, Job, Scheduler, SchedulerStats, SpecEngine};
use crate::speculative::{check_pair, DraftSource, SpecStats, Speculation};
use crate::{EngineError, GenerateParams, Prompt, StopReason, TokenLogprob};

/// How the engine serves one model.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Context window of each request, in tokens (prompt plus generated tokens).
    pub ctx: usize,
    /// Requests generated at the same time (their decode tokens share each forward pass).
    pub parallel: usize,
    /// Requests that may wait to start; beyond that [`EngineHandle::submit`] refuses.
    pub queue: usize,
    /// Tokens per forward pass: one decode token per running request plus prompt chunks.
    pub batch: usize,
    /// How KV rows are stored.
    pub kv_type: KvType,
    /// Bytes for the KV cache; `None`: a quarter of the memory available now (at least one
    /// full context).
    pub kv_memory: Option<u64>,
    /// What happens at the context window when a request does not say.
    pub policy: ContextPolicy,
    /// Decode speculatively; `None`: plainly.
    pub speculation: Option<Speculation>,
}

impl EngineConfig {
    /// A configuration with `ctx` tokens per request, one request at a time, f16 KV, and the
    /// defaults of `exo serve`.
    pub fn new(ctx: usize) -> Self {
        Self { ctx, parallel: 1, queue: 64, batch: 512, kv_type: KvType::F16, kv_memory: None, policy: ContextPolicy::Error, speculation: None }
    }
}

/// One generation request.
#[derive(Clone, Debug)]
pub struct Request {
    /// What to continue.
    pub prompt: Prompt,
    /// Most tokens to generate; `None`: until the context is full. (The engine sets
    /// `params.max_tokens` from this.)
    pub max_tokens: Option<usize>,
    /// A smaller context window for this request (Ollama's `num_ctx`): prompt and generation
    /// must fit it. Larger values are capped at the engine's context; `None`: the engine's.
    pub ctx: Option<usize>,
    /// What to do at the context window; `None`: the engine's policy.
    pub policy: Option<ContextPolicy>,
    /// Leading prompt tokens that [`ContextPolicy::Shift`] and [`ContextPolicy::Truncate`]
    /// never drop (llama.cpp's `n_keep`); `None`: 0, or the system prompt for chats.
    pub n_keep: Option<usize>,
    /// Higher runs first among waiting requests; equal priorities run in arrival order.
    pub priority: i32,
    /// Sampling, stop strings, log-probabilities. A `cancel` flag given here is the one
    /// [`RequestStream::cancel`] sets; without one the engine makes its own.
    pub params: GenerateParams,
}

impl Request {
    /// A request for `prompt` with `params`: generation up to the window's end, the engine's
    /// window and policy, priority 0.
    pub fn new(prompt: Prompt, params: GenerateParams) -> Self {
        Self { prompt, max_tokens: None, ctx: None, policy: None, n_keep: None, priority: 0, params }
    }
}

/// What a [`RequestStream`] yields, in this order: `Started`, any number of `Chunk`s, then
/// `Done` or `Error` (nothing after).
#[derive(Debug)]
pub enum Event {
    /// The request joined the running batch and its prompt is being evaluated.
    Started {
        /// Tokens in the prompt.
        prompt_tokens: usize,
    },
    /// Generated text, with the log-probabilities of the tokens it came from when they were
    /// asked for (see [`Session::generate`]).
    Chunk {
        /// The text (whole UTF-8 characters, never part of a stop string).
        text: String,
        /// Log-probabilities of the tokens sampled since the previous chunk; empty unless
        /// [`GenerateParams::logprobs`] is set.
        logprobs: Vec<TokenLogprob>,
    },
    /// Generation ended normally.
    Done(Finished),
    /// Generation failed.
    Error(EngineError),
}

/// How a request ended.
#[derive(Clone, Debug)]
pub struct Finished {
    /// Why generation stopped.
    pub reason: StopReason,
    /// Token counts.
    pub usage: Usage,
    /// Where the time went.
    pub timings: Timings,
    /// Drafted and accepted token counts when the request was decoded speculatively; `None`
    /// when the engine has no drafter or the request cannot be speculated (log-probabilities or
    /// a constraint).
    pub speculation: Option<SpecStats>,
}

/// Token counts of one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV was found in the prefix cache and not recomputed.
    pub cached_tokens: usize,
    /// Tokens generated (an end-of-generation token not counted).
    pub completion_tokens: usize,
}

/// Time spent on one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timings {
    /// Waiting in the queue.
    pub queued: Duration,
    /// Evaluating the prompt.
    pub prompt: Duration,
    /// From leaving the queue to the first generated token (prompt included).
    pub first_token: Duration,
    /// Generating after the first token.
    pub generation: Duration,
}

/// Why [`EngineHandle::submit`] refused a request. Every variant is the caller's to fix (or to
/// retry, for `QueueFull`); messages name the numbers involved.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The queue holds as many requests as it may.
    #[error("the server is busy: {capacity} requests are already waiting; retry later")]
    QueueFull {
        /// Requests the queue holds.
        capacity: usize,
    },
    /// Prompt plus `max_tokens` exceed the context.
    #[error(
        "the prompt has {prompt_tokens} tokens and max_tokens is {max_tokens}: {} tokens in all, more than the context size of {ctx} tokens",
        prompt_tokens.saturating_add(*max_tokens)
    )]
    TooLong {
        /// Tokens in the prompt.
        prompt_tokens: usize,
        /// Tokens asked for.
        max_tokens: usize,
        /// Context size.
        ctx: usize,
    },
    /// The prompt alone leaves no room to generate.
    #[error("the prompt has {prompt_tokens} tokens, which leaves no room to generate in the context size of {ctx} tokens")]
    PromptFillsContext {
        /// Tokens in the prompt.
        prompt_tokens: usize,
        /// Context size.
        ctx: usize,
    },
    /// The prompt has no tokens.
    #[error("the prompt is empty: at least one token is needed")]
    EmptyPrompt,
    /// The chat template refused the messages, or the text could not be tokenized.
    #[error(transparent)]
    Prompt(#[from] TokenizerError),
    /// A sampling setting is out of range.
    #[error("invalid sampling setting: {0}")]
    Sampler(String),
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    Closed,
}

/// How busy an engine is right now, and how its KV cache is used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineLoad {
    /// Requests waiting to start.
    pub queued: usize,
    /// Requests generating (preempted ones waiting to resume included).
    pub running: usize,
    /// Tokens in the KV cache held by running requests.
    pub kv_tokens_running: usize,
    /// Tokens in cached blocks nobody holds, kept for prefix reuse.
    pub kv_tokens_cached: usize,
    /// KV cache capacity in tokens.
    pub kv_capacity: usize,
    /// Bytes of KV cache per token.
    pub kv_bytes_per_token: usize,
    /// KV blocks that can be allocated now (free or cached but unused).
    pub kv_blocks_free: usize,
    /// KV blocks in all.
    pub kv_blocks_total: usize,
    /// Prompt tokens looked up in the prefix cache (whole blocks).
    pub prefix_lookup_tokens: u64,
    /// Of those, tokens reused.
    pub prefix_hit_tokens: u64,
    /// Times a running request gave up its KV blocks to make room, to be recomputed later.
    pub preemptions: u64,
    /// Decode steps the speculation gate ran plainly, because speculation measured slower at
    /// their batch size (0 without speculation or with `--spec-always`).
    pub spec_plain_steps: u64,
    /// Decode steps the speculation gate ran speculatively.
    pub spec_steps: u64,
}

/// A running engine for one model. Cloning is cheap; the engine thread stops once the last
/// clone is dropped and the requests it holds are done.
#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
}

/// The receiving end of one request: its [`Event`]s in order. Dropping it (or
/// [`RequestStream::cancel`]) cancels the request: a queued one is removed, a running one stops
/// before the next forward pass and releases its KV blocks.
pub struct RequestStream {
    events: mpsc::UnboundedReceiver<Event>,
    cancel: Arc<AtomicBool>,
    shared: Arc<Shared>,
    id: u64,
    prompt_tokens: usize,
}

struct Shared {
    model: Arc<LoadedModel>,
    config: EngineConfig,
    queue: Mutex<Queue>,
    wake: Condvar,
    next_id: AtomicU64,
    /// The scheduler's counters after its latest step.
    stats: Mutex<(SchedulerStats, usize)>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
}

/// Closes the queue when the last [`EngineHandle`] goes (the engine thread holds `Shared`, not
/// this).
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.lock_queue().closed = true;
        self.0.wake.notify_all();
    }
}

impl EngineHandle {
    /// Allocates the KV cache and starts the engine thread for `model`. With a draft model,
    /// `kv_memory` holds both models' caches, which have the same number of blocks; the pair
    /// must pass [`check_pair`].
    pub fn start(model: Arc<LoadedModel>, config: EngineConfig) -> Result<Self, EngineError> {
        let parallel = config.parallel.max(1);
        let batch = config.batch.max(parallel);
        let tf = &model.transformer;
        let scratch = tf.new_scratch(batch, config.ctx)?;
        let bytes_per_token = tf.new_kv_cache(config.kv_type, 0)?.bytes_per_token();
        let draft = match &config.speculation {
            Some(spec) => {
                spec.config.validate()?;
                match &spec.source {
                    DraftSource::Model(d) => {
                        let shared_vocab = check_pair(&model, d)?;
                        let cannot = |e: exo_models::ModelError| {
                            EngineError::Speculation(format!(
                                "the draft model {} cannot run a context of {} tokens: {e}",
                                d.info.path.display(),
                                config.ctx
                            ))
                        };
                        let draft_scratch = d.transformer.new_scratch(batch, config.ctx).map_err(cannot)?;
                        let draft_bytes = d.transformer.new_kv_cache(config.kv_type, 0).map_err(cannot)?.bytes_per_token();
                        Some((d.clone(), draft_scratch, draft_bytes, shared_vocab))
                    }
                    DraftSource::Ngram => None,
                }
            }
            None => None,
        };
        // Both caches index the same block ids, so a block costs a token's rows in each.
        let cache_bytes_per_token = bytes_per_token + draft.as_ref().map_or(0, |d| d.2);
        let block_bytes = (cache_bytes_per_token * BLOCK_TOKENS) as u64;
        let min_blocks = config.ctx.div_ceil(BLOCK_TOKENS) + 1;
        let budget = config.kv_memory.unwrap_or_else(|| default_kv_memory(tf).max(min_blocks as u64 * block_bytes));
        let n_blocks = (budget / block_bytes) as usize;
        if n_blocks < min_blocks {
            return Err(EngineError::Internal(format!(
                "a KV cache of {budget} bytes holds {} tokens ({} bytes per token{}, {}), less than one context of {} tokens; raise --kv-memory to at least {} or lower --ctx-size",
                n_blocks * BLOCK_TOKENS,
                cache_bytes_per_token,
                if draft.is_some() { " for the model and its draft" } else { "" },
                config.kv_type.name(),
                config.ctx,
                min_blocks as u64 * block_bytes
            )));
        }
        let kv = tf.new_kv_cache(config.kv_type, n_blocks)?;
        let spec = match (&config.speculation, draft) {
            (Some(s), Some((d, draft_scratch, _, shared_vocab))) => {
                let draft_kv = d.transformer.new_kv_cache(config.kv_type, n_blocks)?;
                Some(SpecEngine::new(s.config, Some(DraftModel::new(d, draft_kv, draft_scratch, shared_vocab))))
            }
            (Some(s), None) => Some(SpecEngine::new(s.config, None)),
            (None, _) => None,
        };
        let scheduler = Scheduler::new(model.clone(), kv, scratch, parallel, spec);
        let shared = Arc::new(Shared {
            model,
            config: EngineConfig { parallel, batch, ..config },
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            next_id: AtomicU64::new(0),
            stats: Mutex::new((scheduler.stats(), cache_bytes_per_token)),
        });
        let engine = shared.clone();
        std::thread::Builder::new()
            .name("exo-engine".into())
            .spawn(move || engine_loop(&engine, scheduler))
            .map_err(|e| EngineError::Internal(format!("cannot start the engine thread: {e}")))?;
        Ok(Self { _owner: Arc::new(Owner(shared.clone())), shared })
    }

    /// The model served.
    pub fn model(&self) -> &Arc<LoadedModel> {
        &self.shared.model
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.shared.config
    }

    /// Tokenizes and checks `request`, then queues it. Errors are the caller's to report: the
    /// prompt does not fit the context with `max_tokens` (under the `error` policy), the template
    /// refused the messages, a sampling setting is out of range, or the queue is full.
    pub fn submit(&self, request: Request) -> Result<RequestStream, SubmitError> {
        let ctx = request.ctx.map_or(self.shared.config.ctx, |c| c.min(self.shared.config.ctx));
        let policy = request.policy.unwrap_or(self.shared.config.policy);
        let fitted = fit_prompt(&self.shared.model.tokenizer, &request, ctx, policy)?;
        request.params.sampler.validate().map_err(SubmitError::Sampler)?;
        let (ids, n_keep, max_tokens) = (fitted.ids, fitted.n_keep, fitted.max_tokens);
        let prompt_tokens = ids.len();
        let mut params = GenerateParams { max_tokens, ..request.params };
        let cancel = params.cancel.get_or_insert_with(Default::default).clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut q = self.shared.lock_queue();
            if q.closed {
                return Err(SubmitError::Closed);
            }
            let capacity = self.shared.config.queue;
            if q.jobs.len() >= capacity {
                return Err(SubmitError::QueueFull { capacity });
            }
            let priority = request.priority;
            let at = q.jobs.partition_point(|j| j.priority >= priority);
            let job = Job { id, ids, params, events: tx, submitted: Instant::now(), ctx, policy, n_keep, priority };
            q.jobs.insert(at, job);
        }
        self.shared.wake.notify_one();
        Ok(RequestStream { events: rx, cancel, shared: self.shared.clone(), id, prompt_tokens })
    }

    /// Queue depth, running requests and KV cache use.
    pub fn load(&self) -> EngineLoad {
        let queued = self.shared.lock_queue().jobs.len();
        let (s, bytes_per_token) = *self.shared.stats.lock().unwrap_or_else(|p| p.into_inner());
        EngineLoad {
            queued,
            running: s.running,
            kv_tokens_running: s.kv_tokens_running,
            kv_tokens_cached: s.kv_tokens_cached,
            kv_capacity: s.kv_blocks_total * BLOCK_TOKENS,
            kv_bytes_per_token: bytes_per_token,
            kv_blocks_free: s.kv_blocks_free,
            kv_blocks_total: s.kv_blocks_total,
            prefix_lookup_tokens: s.prefix.lookup_tokens,
            prefix_hit_tokens: s.prefix.hit_tokens,
            preemptions: s.preemptions,
            spec_plain_steps: s.spec_gate_steps[0],
            spec_steps: s.spec_gate_steps[1],
        }
    }
}

impl RequestStream {
    /// The next event; `None` after `Done` or `Error`.
    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The next event, blocking the thread (not for use inside an async runtime).
    pub fn blocking_next(&mut self) -> Option<Event> {
        self.events.blocking_recv()
    }

    /// Tokens in the prompt, known from submission (after any truncation).
    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    /// Cancels the request (also done on drop).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.shared.lock_queue().jobs.retain(|j| j.id != self.id);
        // A running request is dropped at the next step; wake an idle engine so it is soon.
        self.shared.wake.notify_one();
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        self.cancel();
    }
}

impl Shared {
    /// Makes the scheduler's counters visible to [`EngineHandle::load`].
    fn publish(&self, scheduler: &Scheduler) {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).0 = scheduler.stats();
    }

    /// The queue lock. Every critical section is a push, a pop or a scan, so a panic while
    /// holding it cannot leave the queue inconsistent and poisoning is ignored.
    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The engine thread: admit what fits, run a step, publish counters; sleep while idle.
fn engine_loop(shared: &Shared, mut scheduler: Scheduler) {
    loop {
        {
            let mut q = shared.lock_queue();
            while scheduler.is_idle() && q.jobs.is_empty() {
                if q.closed {
                    return;
                }
                q = shared.wake.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            scheduler.admit(&mut q.jobs);
        }
        // Published before the step too, so a client that has seen its request start also
        // sees it counted as running.
        shared.publish(&scheduler);
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| scheduler.step())) {
            let what = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
            scheduler.fail_all(&format!("generation panicked: {}", what.unwrap_or_default()));
        }
        shared.publish(&scheduler);
    }
}

/// Bytes of memory the system reports available (`MemAvailable` in /proc/meminfo), where it
/// reports it.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info.lines().find(|l| l.starts_with("MemAvailable:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A quarter of the memory the system reports available, or 1 GiB where it reports nothing; with
/// the model on a GPU, at most 90% of the device memory still free (its layers' KV rows live
/// there).
fn default_kv_memory(tf: &exo_models::Transformer) -> u64 {
    let host = available_memory().map_or(1 << 30, |bytes| bytes / 4);
    match tf.device_free_memory() {
        Some(free) => host.min(free as u64 / 10 * 9),
        None => host,
    }
}
