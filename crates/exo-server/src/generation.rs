//! One generation on behalf of an API handler: submit to the model's engine, read its events
//! (recording metrics as it finishes), or collect them into one answer.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use exo_engine::{ContextPolicy, EngineHandle, Event, Finished, Request, RequestStream, TokenLogprob};
use exo_tokenizer::Tokenizer;

use crate::error::{ApiError, ErrorKind};
use crate::models::ServedModel;
use crate::AppState;

/// A submitted request. Dropping it cancels the generation (a client that disconnects drops the
/// response stream holding it).
pub(crate) struct Generation {
    stream: RequestStream,
    engine: EngineHandle,
    model: Arc<ServedModel>,
    state: AppState,
}

/// Everything a non-streaming answer needs.
pub(crate) struct Output {
    pub(crate) text: String,
    /// Log-probabilities of the generated tokens, when asked for.
    pub(crate) logprobs: Vec<TokenLogprob>,
    pub(crate) finished: Finished,
}

/// exo's extensions to every generation API's body: what happens at the context window
/// (`context_policy`: `error`, `truncate` or `shift`; `n_keep`: leading prompt tokens never
/// dropped, as in llama.cpp's server) and the place in the queue (`priority`: higher first).
#[derive(serde::Deserialize)]
pub(crate) struct Scheduling {
    context_policy: Option<String>,
    n_keep: Option<u64>,
    priority: Option<i32>,
}

/// `request` with the [`Scheduling`] fields of `body` applied.
pub(crate) fn scheduled(body: &serde_json::Value, request: Request) -> Result<Request, ApiError> {
    crate::body::from_value::<Scheduling>(body)?.apply(request)
}

impl Scheduling {
    /// `request` with these fields applied.
    pub(crate) fn apply(self, request: Request) -> Result<Request, ApiError> {
        let policy = match self.context_policy.as_deref() {
            None => request.policy,
            Some(name) => Some(ContextPolicy::parse(name).ok_or_else(|| {
                ApiError::invalid("context_policy", format!("'{name}' is not a context policy (use error, truncate or shift)"))
            })?),
        };
        let n_keep = self.n_keep.map(|n| usize::try_from(n).unwrap_or(usize::MAX)).or(request.n_keep);
        Ok(Request { policy, n_keep, priority: self.priority.unwrap_or(request.priority), ..request })
    }
}

/// Submits `request` to `model` (a 400 if it does not generate text). Template rendering and
/// tokenization of a large prompt take milliseconds to seconds, so they run off the async workers.
pub(crate) async fn submit(state: &AppState, model: Arc<ServedModel>, request: Request) -> Result<Generation, ApiError> {
    let engine = model.engine()?.clone();
    let submitter = engine.clone();
    let submitted = tokio::task::spawn_blocking(move || submitter.submit(request))
        .await
        .map_err(|e| ApiError::new(ErrorKind::Internal, format!("submitting the request failed: {e}")))?;
    let stream = submitted.map_err(ApiError::from_submit)?;
    Ok(Generation { stream, engine, model, state: state.clone() })
}

impl Generation {
    /// The next event; `None` after `Done` or `Error`.
    pub(crate) async fn next(&mut self) -> Option<Event> {
        let event = self.stream.next().await;
        if let Some(Event::Done(f)) = &event {
            self.state.metrics.record_generation(&self.model.name, f);
        }
        event
    }

    /// The model generating.
    pub(crate) fn model(&self) -> &ServedModel {
        &self.model
    }

    /// The model's tokenizer.
    pub(crate) fn tokenizer(&self) -> &Tokenizer {
        &self.engine.model().tokenizer
    }

    /// Tokens in the prompt.
    pub(crate) fn prompt_tokens(&self) -> usize {
        self.stream.prompt_tokens()
    }

    /// Reads every event into one answer.
    pub(crate) async fn collect(mut self) -> Result<Output, ApiError> {
        let mut text = String::new();
        let mut logprobs = Vec::new();
        while let Some(event) = self.next().await {
            match event {
                Event::Started { .. } => {}
                Event::Chunk { text: t, logprobs: l } => {
                    text.push_str(&t);
                    logprobs.extend(l);
                }
                Event::Done(finished) => return Ok(Output { text, logprobs, finished }),
                Event::Error(e) => return Err(ApiError::from_engine(e)),
            }
        }
        Err(ApiError::new(ErrorKind::Internal, "the engine ended the request without an answer"))
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// An RFC 3339 UTC timestamp (`2025-01-02T03:04:05.678Z`), as Ollama's `created_at`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// A fresh response id: `prefix` and 24 random hex digits.
pub(crate) fn response_id(prefix: &str) -> String {
    format!("{prefix}{:024x}", rand::random::<u128>() >> 32)
}
