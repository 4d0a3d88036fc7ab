//! The engine handle: the one way front ends reach generation.
//!
//! A front end builds a [`Request`], calls [`EngineHandle::submit`] and reads [`Event`]s from the
//! returned [`RequestStream`], from async code or a plain thread; dropping the stream cancels the
//! request. This surface is what a continuous-batching scheduler will later sit behind. For now,
//! behind it are `parallel` worker threads, each owning one [`Session`] (so the next request a
//! worker serves reuses whatever prefix it shares with the previous one), fed in arrival order
//! from one bounded queue.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use exo_models::LoadedModel;
use exo_tokenizer::TokenizerError;
use tokio::sync::mpsc;

use crate::{Completion, EngineError, GenerateParams, Prompt, Session, StopReason, TokenLogprob};

/// How the engine serves one model.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Context size of each slot, in tokens (prompt plus generated tokens of one request).
    pub ctx: usize,
    /// Requests generated at the same time (one slot, KV cache and thread each).
    pub parallel: usize,
    /// Requests that may wait for a free slot; beyond that [`EngineHandle::submit`] refuses.
    pub queue: usize,
    /// Prompt tokens evaluated per forward pass.
    pub batch: usize,
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
    /// must fit it. Larger values are capped at the engine's context, which a slot cannot grow
    /// per request; `None`: the engine's.
    pub ctx: Option<usize>,
    /// Sampling, stop strings, log-probabilities. A `cancel` flag given here is the one
    /// [`RequestStream::cancel`] sets; without one the engine makes its own.
    pub params: GenerateParams,
}

/// What a [`RequestStream`] yields, in this order: `Started`, any number of `Chunk`s, then
/// `Done` or `Error` (nothing after).
#[derive(Debug)]
pub enum Event {
    /// A slot took the request and starts evaluating the prompt.
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
}

/// Token counts of one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV was reused from the slot's previous request.
    pub cached_tokens: usize,
    /// Tokens generated (an end-of-generation token not counted).
    pub completion_tokens: usize,
}

/// Time spent on one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timings {
    /// Waiting in the queue for a slot.
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
    /// Every slot is busy and the queue holds as many requests as it may.
    #[error("the server is busy: all slots are generating and {capacity} requests are already waiting; retry later")]
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

/// How busy an engine is right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineLoad {
    /// Requests waiting for a slot.
    pub queued: usize,
    /// Requests generating.
    pub running: usize,
    /// Tokens in the KV caches of slots serving a request (updated as requests start and end).
    pub kv_tokens_running: usize,
    /// Tokens kept in idle slots' KV caches for prefix reuse.
    pub kv_tokens_cached: usize,
    /// KV capacity of all slots, in tokens.
    pub kv_capacity: usize,
}

/// A running engine for one model. Cloning is cheap; the worker threads stop once the last
/// clone is dropped and the requests they hold are done.
#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
}

/// The receiving end of one request: its [`Event`]s in order. Dropping it (or
/// [`RequestStream::cancel`]) cancels the request: a queued one is removed, a running one stops
/// before its next forward pass and frees its slot.
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
    slots: Vec<SlotLoad>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Workers waiting for a job: a request they will take at once does not count as queued.
    idle: usize,
    closed: bool,
}

struct Job {
    id: u64,
    ids: Vec<u32>,
    params: GenerateParams,
    events: mpsc::UnboundedSender<Event>,
    submitted: Instant,
}

#[derive(Default)]
struct SlotLoad {
    busy: AtomicBool,
    kv_tokens: AtomicUsize,
}

/// Closes the queue when the last [`EngineHandle`] goes (workers hold `Shared`, not this).
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.lock_queue().closed = true;
        self.0.wake.notify_all();
    }
}

impl EngineHandle {
    /// Starts `config.parallel` worker threads for `model`, each with a KV cache of
    /// `config.ctx` tokens.
    pub fn start(model: Arc<LoadedModel>, config: EngineConfig) -> Result<Self, EngineError> {
        let parallel = config.parallel.max(1);
        let sessions = (0..parallel)
            .map(|_| Session::new(&model, config.ctx, config.batch))
            .collect::<Result<Vec<_>, _>>()?;
        let shared = Arc::new(Shared {
            model,
            config: EngineConfig { parallel, ..config },
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            slots: (0..parallel).map(|_| SlotLoad::default()).collect(),
            next_id: AtomicU64::new(0),
        });
        for (slot, session) in sessions.into_iter().enumerate() {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("exo-slot-{slot}"))
                .spawn(move || worker(&shared, slot, session))
                .map_err(|e| EngineError::Internal(format!("cannot start a worker thread: {e}")))?;
        }
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
    /// prompt does not fit the context with `max_tokens`, the template refused the messages, a
    /// sampling setting is out of range, or the queue is full.
    pub fn submit(&self, request: Request) -> Result<RequestStream, SubmitError> {
        let ids = request.prompt.tokenize(&self.shared.model.tokenizer)?;
        request.params.sampler.validate().map_err(SubmitError::Sampler)?;
        let ctx = request.ctx.map_or(self.shared.config.ctx, |c| c.min(self.shared.config.ctx));
        let prompt_tokens = ids.len();
        if prompt_tokens == 0 {
            return Err(SubmitError::EmptyPrompt);
        }
        let max_tokens = match request.max_tokens {
            Some(max_tokens) if prompt_tokens.saturating_add(max_tokens) > ctx => {
                return Err(SubmitError::TooLong { prompt_tokens, max_tokens, ctx })
            }
            Some(max_tokens) => max_tokens,
            None if prompt_tokens >= ctx => return Err(SubmitError::PromptFillsContext { prompt_tokens, ctx }),
            None => ctx - prompt_tokens,
        };
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
            if q.jobs.len() >= capacity + q.idle {
                return Err(SubmitError::QueueFull { capacity });
            }
            q.jobs.push_back(Job { id, ids, params, events: tx, submitted: Instant::now() });
        }
        self.shared.wake.notify_one();
        Ok(RequestStream { events: rx, cancel, shared: self.shared.clone(), id, prompt_tokens })
    }

    /// Queue depth, running requests and KV use.
    pub fn load(&self) -> EngineLoad {
        let queued = self.shared.lock_queue().jobs.len();
        let mut load = EngineLoad {
            queued,
            kv_capacity: self.shared.config.ctx * self.shared.slots.len(),
            ..EngineLoad::default()
        };
        for slot in &self.shared.slots {
            let tokens = slot.kv_tokens.load(Ordering::Relaxed);
            if slot.busy.load(Ordering::Relaxed) {
                load.running += 1;
                load.kv_tokens_running += tokens;
            } else {
                load.kv_tokens_cached += tokens;
            }
        }
        load
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

    /// Tokens in the prompt, known from submission.
    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    /// Cancels the request (also done on drop).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.shared.lock_queue().jobs.retain(|j| j.id != self.id);
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        self.cancel();
    }
}

impl Shared {
    /// The queue lock. A worker panicking while holding it cannot leave the queue inconsistent
    /// (every critical section is a push, a pop or a counter update), so poisoning is ignored.
    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks until there is a job to run; `None` once the engine is closed.
    fn next_job(&self) -> Option<Job> {
        let mut q = self.lock_queue();
        loop {
            while let Some(job) = q.jobs.pop_front() {
                if !job.params.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
                    return Some(job);
                }
            }
            if q.closed {
                return None;
            }
            q.idle += 1;
            q = self.wake.wait(q).unwrap_or_else(|p| p.into_inner());
            q.idle -= 1;
        }
    }
}

fn worker(shared: &Shared, slot: usize, mut session: Session) {
    let load = &shared.slots[slot];
    while let Some(job) = shared.next_job() {
        load.busy.store(true, Ordering::Relaxed);
        load.kv_tokens.store(job.ids.len(), Ordering::Relaxed);
        let queued = job.submitted.elapsed();
        let ran = catch_unwind(AssertUnwindSafe(|| run_job(&shared.model, &mut session, &job)));
        let event = match ran {
            Ok(Ok(done)) => Event::Done(finished(&done, queued)),
            Ok(Err(e)) => Event::Error(e),
            Err(panic) => {
                // The session may be half-updated; start the slot afresh rather than lose it.
                session.clear();
                let what = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
                Event::Error(EngineError::Internal(format!("generation panicked: {}", what.unwrap_or_default())))
            }
        };
        let _ = job.events.send(event);
        load.kv_tokens.store(session.tokens().len(), Ordering::Relaxed);
        load.busy.store(false, Ordering::Relaxed);
    }
}

fn run_job(model: &LoadedModel, session: &mut Session, job: &Job) -> Result<Completion, EngineError> {
    // A send fails only when the stream is gone, which also sets the cancel flag.
    let _ = job.events.send(Event::Started { prompt_tokens: job.ids.len() });
    session.generate(model, &job.ids, &job.params, |text, logprobs| {
        let chunk = Event::Chunk { text: text.to_string(), logprobs: logprobs.to_vec() };
        if job.events.send(chunk).is_ok() { ControlFlow::Continue(()) } else { ControlFlow::Break(()) }
    })
}

fn finished(done: &Completion, queued: Duration) -> Finished {
    Finished {
        reason: done.stop_reason.clone(),
        usage: Usage {
            prompt_tokens: done.prompt_tokens,
            cached_tokens: done.reused_tokens,
            completion_tokens: done.tokens.len(),
        },
        timings: Timings {
            queued,
            prompt: done.prompt_time,
            first_token: done.time_to_first_token,
            generation: done.gen_time,
        },
    }
}
