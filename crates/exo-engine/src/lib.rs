//! Generation: the token loop over a model, its sampler chain and stop conditions.
//!
//! - [`Session`]: one sequence's KV cache; [`Session::generate`] evaluates a prompt (reusing the
//!   cached prefix) and streams the continuation.
//! - [`sampler`]: penalties, top-k, top-p, min-p, temperature and a seeded draw, in llama.cpp's
//!   order.
//! - [`stop`]: stop strings over streamed text.
//! - [`perplexity`]: llama.cpp's perplexity and KL-divergence measures over a text.

pub mod perplexity;
pub mod sampler;
mod session;
pub mod stop;

pub use sampler::{Sampler, SamplerConfig};
pub use session::{Completion, GenerateParams, Session, StopReason};

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
}
