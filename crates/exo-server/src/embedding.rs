//! Embeddings on behalf of an API handler: the texts of a request, read from its `input`, run
//! through the model's [`Embedder`] off the async workers, a bounded number at a time.
//!
//! An encoder pass over a request is one blocking computation that uses every kernel thread, so
//! requests are admitted as generation's are: `--parallel` compute at once, `--queue-size` more
//! wait, and any beyond that get 503 with Retry-After instead of piling up.

use std::sync::Arc;

use exo_engine::EngineLoad;
use exo_models::{Embedder, Embedding, ModelError};
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::error::{ApiError, ErrorKind};
use crate::AppState;

/// Most texts one request may embed, as OpenAI allows.
pub(crate) const MAX_INPUTS: usize = 2048;

/// An embedding model and the admission of requests to it.
pub(crate) struct EmbeddingRunner {
    embedder: Arc<Embedder>,
    /// Permits for requests computing.
    running: Arc<Semaphore>,
    /// Permits for requests computing or waiting; none left: 503.
    admitted: Arc<Semaphore>,
    parallel: usize,
    capacity: usize,
}

/// What a request asks to embed: `texts` from the field `param`, and whether a text over the
/// model's token limit is cut (else refused, naming it).
pub(crate) struct EmbedRequest {
    pub(crate) texts: Vec<String>,
    pub(crate) param: &'static str,
    pub(crate) truncate: bool,
}

impl EmbeddingRunner {
    /// Serves `embedder`, computing `parallel` requests at once and letting `queue` more wait.
    pub(crate) fn new(embedder: Embedder, parallel: usize, queue: usize) -> Self {
        let capacity = parallel + queue;
        Self {
            embedder: Arc::new(embedder),
            running: Arc::new(Semaphore::new(parallel)),
            admitted: Arc::new(Semaphore::new(capacity)),
            parallel,
            capacity,
        }
    }

    /// The model.
    pub(crate) fn embedder(&self) -> &Embedder {
        &self.embedder
    }

    /// Requests waiting and computing, in the shape the metrics report for engines (an encoder
    /// keeps no KV cache).
    pub(crate) fn load(&self) -> EngineLoad {
        let present = self.capacity - self.admitted.available_permits();
        let running = self.parallel - self.running.available_permits();
        EngineLoad { queued: present.saturating_sub(running), running, ..EngineLoad::default() }
    }

    /// Embeds `req.texts` for the model named `model`, recording the request in the metrics.
    pub(crate) async fn embed(&self, state: &AppState, model: &str, req: EmbedRequest) -> Result<Vec<Embedding>, ApiError> {
        let admitted = self.admitted.clone().try_acquire_owned().map_err(|_| {
            let message = format!("model '{model}' has {} embedding requests computing or waiting; retry shortly", self.capacity);
            ApiError::new(ErrorKind::Unavailable, message)
        })?;
        // Cannot fail: the semaphore is never closed.
        let running = self.running.clone().acquire_owned().await.map_err(|e| ApiError::new(ErrorKind::Internal, e.to_string()))?;
        let embedder = self.embedder.clone();
        // The permits move into the computation: a client that disconnects while it runs frees
        // its place only once the work it started is done.
        let embedded = tokio::task::spawn_blocking(move || {
            let _permits = (admitted, running);
            compute(&embedder, &req)
        })
            .await
            .map_err(|e| ApiError::new(ErrorKind::Internal, format!("embedding failed: {e}")))??;
        state.metrics.record_embedding(model, embedded.len(), embedded.iter().map(|e| e.tokens).sum());
        Ok(embedded)
    }
}

fn compute(embedder: &Embedder, req: &EmbedRequest) -> Result<Vec<Embedding>, ApiError> {
    let field = |i: usize| if req.texts.len() == 1 { req.param.to_string() } else { format!("{}[{i}]", req.param) };
    let model_error = |e: ModelError| match e {
        ModelError::EmptyText { index } => ApiError::invalid(&field(index), "the text tokenizes to nothing; there is nothing to embed"),
        other => ApiError::new(ErrorKind::Internal, other.to_string()),
    };
    if !req.truncate {
        for (i, text) in req.texts.iter().enumerate() {
            let n = embedder.count_tokens(text).map_err(model_error)?;
            if n > embedder.max_tokens() {
                let limit = embedder.max_tokens();
                return Err(ApiError::invalid(&field(i), format!("{n} tokens, more than the model's limit of {limit} (truncate is false)")));
            }
        }
    }
    let texts: Vec<&str> = req.texts.iter().map(String::as_str).collect();
    embedder.embed(&texts).map_err(model_error)
}

/// The texts of an `input` field: a string or a list of strings, at most [`MAX_INPUTS`]; an
/// empty list gives none (each API decides what that means). Lists of token ids, which OpenAI
/// accepts, are refused: ids from another tokenizer (tiktoken's, as LangChain sends) would mean
/// different text to this model.
pub(crate) fn input_texts(input: &Value, param: &str) -> Result<Vec<String>, ApiError> {
    let items = match input {
        Value::String(s) => return Ok(vec![s.clone()]),
        Value::Array(items) => items,
        _ => return Err(ApiError::invalid(param, "must be a string or a list of strings")),
    };
    if items.len() > MAX_INPUTS {
        return Err(ApiError::invalid(param, format!("{} texts, more than the limit of {MAX_INPUTS} per request", items.len())));
    }
    let token_ids = !items.is_empty() && items.iter().all(Value::is_number) || items.iter().any(Value::is_array);
    if token_ids {
        let why = "token ids are not supported: send the texts, which exo tokenizes with the model's own tokenizer";
        return Err(ApiError::invalid(param, why));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| item.as_str().map(str::to_string).ok_or_else(|| ApiError::invalid(&format!("{param}[{i}]"), "must be a string")))
        .collect()
}

/// Checks a requested vector length: exo returns the model's full vectors only.
pub(crate) fn check_dimensions(dimensions: Option<u64>, embedder: &Embedder, model: &str) -> Result<(), ApiError> {
    match dimensions {
        Some(d) if d != embedder.dim() as u64 => Err(ApiError::invalid(
            "dimensions",
            format!("{d} is not supported: '{model}' gives {}-dimensional vectors and exo does not shorten them", embedder.dim()),
        )),
        _ => Ok(()),
    }
}
