//! Generation: the token loop over a model, its sampler chain and stop conditions.
//!
//! - [`EngineHandle`]: what front ends (the HTTP server) talk to: submit a [`Request`], read its
//!   [`Event`]s from a [`RequestStream`], drop the stream to cancel. Behind it, a
//!   continuous-batching scheduler runs every request in one paged KV cache with prefix reuse
//!   and a [`ContextPolicy`] at the context window.
//! - [`Session`]: one sequence's KV cache; [`Session::generate`] evaluates a prompt (reusing the
//!   cached prefix) and streams the continuation, with [`TokenLogprob`]s on request.
//! - [`Prompt`]: text as is, or chat messages rendered with the model's chat template.
//! - [`sampler`]: penalties, top-k, top-p, min-p, temperature and a seeded draw, in llama.cpp's
//!   order.
//! - [`speculative`]: speculative decoding with a draft model or prompt lookup, for one
//!   session ([`Session::set_drafter`]) or every request of an engine
//!   ([`EngineConfig::speculation`], verified batch-wide in the scheduler's forward pass).
//! - [`stop`]: stop strings over streamed text.
//! - [`constrain`]: JSON and JSON Schema constrained decoding (token masking).
//! - [`tools`]: tool calls: prompting with tools, parsing calls, forcing them.
//! - [`perplexity`]: llama.cpp's perplexity and KL-divergence measures over a text.

mod blocks;
pub mod constrain;
mod context;
mod decode;
mod engine;
mod logprobs;
pub mod perplexity;
mod prompt;
pub mod sampler;
mod scheduler;
mod session;
mod spec_gate;
pub mod speculative;
pub mod stop;
pub mod tools;

pub use scheduler::ContextPolicy;
pub use engine::{available_memory, EngineConfig, EngineHandle, EngineLoad, Event, Finished, Request, RequestStream, SubmitError, Timings, Usage};
pub use logprobs::TokenLogprob;
pub use prompt::Prompt;
pub use sampler::{Sampler, SamplerConfig};
pub use session::{Completion, GenerateParams, Session, StopReason};
pub use speculative::{DraftSource, Drafter, SpecConfig, SpecStats, Speculation};

/// Errors from generation. Messages name the limit involved.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model failed (bad token, context, kernel).
    #[error(transparent)]
    Model(#[from] exo_models::ModelError),
    /// The prompt has no tokens.
    #[error("the prompt is empty: at least one token is needed")]
    EmptyPrompt,
    /// The prompt does not fit the context.
    #[error("the prompt has {prompt} tokens but the context size is {ctx}; use a larger --ctx-size or a shorter prompt")]
    PromptTooLong {
        /// Prompt tokens.
        prompt: usize,
        /// Context size.
        ctx: usize,
    },
    /// The text could not be tokenized.
    #[error(transparent)]
    Tokenizer(#[from] exo_tokenizer::TokenizerError),
    /// A perplexity run cannot be done as asked (text too short, vocabularies differ).
    #[error("perplexity: {0}")]
    Perplexity(String),
    /// A sampler setting is out of range.
    #[error("invalid sampling setting: {0}")]
    Sampler(String),
    /// A bug or a resource failure inside the engine (a worker that could not start, a panic
    /// caught while generating); the engine itself keeps running.
    #[error("internal engine error: {0}")]
    Internal(String),
    /// A speculative-decoding setting is out of range.
    #[error("speculative decoding: {0}")]
    Speculation(String),
    /// The draft model cannot draft for the target (their vocabularies differ).
    #[error("draft model {draft} cannot draft for {target}: {what}")]
    DraftMismatch {
        /// The draft model's path.
        draft: String,
        /// The target model's path.
        target: String,
        /// What differs, with both values.
        what: String,
    },
    /// Constrained decoding reached a token it cannot accept.
    #[error("constrained decoding: {0}")]
    Constraint(String),
}
