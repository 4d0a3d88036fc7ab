//! The Anthropic Messages API: `POST /v1/messages`, whole or as its event stream
//! (`message_start`, `content_block_start`, `content_block_delta`..., `content_block_stop`,
//! `message_delta`, `message_stop`).
//!
//! Sampling defaults are Anthropic's (temperature 1, no top-p or top-k). Content is text: string
//! content or `text` blocks; other block types (images, tool use) get a 400 naming the block.

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use exo_engine::{Event, GenerateParams, Prompt, Request, SamplerConfig, StopReason};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::body::{check_range, JsonBody};
use crate::error::{Api, ApiError};
use crate::generation::{response_id, submit, Generation};
use crate::openai::{join_text_parts, ContentPart};
use crate::AppState;

/// The request body.
#[derive(Deserialize)]
pub(crate) struct MessagesRequest {
    model: String,
    max_tokens: u64,
    messages: Vec<Message>,
    system: Option<Content>,
    stop_sequences: Option<Vec<String>>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u64>,
    stream: Option<bool>,
    tools: Option<Vec<Value>>,
}

#[derive(Deserialize)]
struct Message {
    role: Role,
    content: Content,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Role {
    User,
    Assistant,
}

/// A string, or a list of content blocks.
#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Blocks(Vec<ContentPart>),
}

impl Content {
    fn text(&self, path: &str) -> Result<String, ApiError> {
        match self {
            Content::Text(s) => Ok(s.clone()),
            Content::Blocks(blocks) => join_text_parts(blocks, path),
        }
    }
}

/// `POST /v1/messages`.
pub(crate) async fn messages(State(state): State<AppState>, JsonBody(req): JsonBody<MessagesRequest>) -> Result<Response, ApiError> {
    if req.max_tokens == 0 {
        return Err(ApiError::invalid("max_tokens", "must be at least 1"));
    }
    check_range("temperature", req.temperature, 0.0, 1.0)?;
    check_range("top_p", req.top_p, 0.0, 1.0)?;
    if req.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::not_yet("tools", "tool use over the Messages API"));
    }
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "at least one message is required"));
    }
    let mut messages = Vec::with_capacity(req.messages.len() + 1);
    if let Some(system) = &req.system {
        messages.push(json!({ "role": "system", "content": system.text("system")? }));
    }
    for (i, m) in req.messages.iter().enumerate() {
        let role = match m.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        messages.push(json!({ "role": role, "content": m.content.text(&format!("messages[{i}].content"))? }));
    }
    let sampler = SamplerConfig {
        temperature: req.temperature.unwrap_or(1.0),
        top_p: req.top_p.unwrap_or(1.0),
        top_k: req.top_k.map_or(0, |k| k as usize),
        min_p: 0.0,
        ..SamplerConfig::default()
    };
    let params = GenerateParams { sampler, stop: req.stop_sequences.clone().unwrap_or_default(), ..GenerateParams::default() };
    let prompt = Prompt::Chat { messages: Value::Array(messages), tools: None };
    let max_tokens = Some(usize::try_from(req.max_tokens).unwrap_or(usize::MAX));
    let model = state.model(&req.model)?;
    let generation = submit(&state, model, Request { prompt, max_tokens, params }).await?;
    let id = response_id("msg_");
    if req.stream == Some(true) {
        return Ok(stream(id, generation).into_response());
    }
    let name = generation.model().name.clone();
    let out = generation.collect().await?;
    let (stop_reason, stop_sequence) = stop_reason(&out.finished.reason);
    Ok(Json(json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": name,
        "content": [{ "type": "text", "text": out.text }],
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": { "input_tokens": out.finished.usage.prompt_tokens, "output_tokens": out.finished.usage.completion_tokens },
    }))
    .into_response())
}

/// Anthropic's `stop_reason` and `stop_sequence`.
fn stop_reason(reason: &StopReason) -> (&'static str, Option<String>) {
    match reason {
        StopReason::StopString(s) => ("stop_sequence", Some(s.clone())),
        StopReason::MaxTokens | StopReason::ContextFull => ("max_tokens", None),
        StopReason::Eog | StopReason::Cancelled => ("end_turn", None),
    }
}

fn stream(id: String, mut generation: Generation) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let event = |name: &str, data: Value| Ok(SseEvent::default().event(name).data(data.to_string()));
    let model = generation.model().name.clone();
    let input_tokens = generation.prompt_tokens();
    let events = async_stream::stream! {
        let message = json!({
            "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": { "input_tokens": input_tokens, "output_tokens": 0 },
        });
        yield event("message_start", json!({ "type": "message_start", "message": message }));
        let block = json!({ "type": "text", "text": "" });
        yield event("content_block_start", json!({ "type": "content_block_start", "index": 0, "content_block": block }));
        while let Some(e) = generation.next().await {
            match e {
                Event::Started { .. } => {}
                Event::Chunk { text, .. } => {
                    let delta = json!({ "type": "text_delta", "text": text });
                    yield event("content_block_delta", json!({ "type": "content_block_delta", "index": 0, "delta": delta }));
                }
                Event::Done(f) => {
                    yield event("content_block_stop", json!({ "type": "content_block_stop", "index": 0 }));
                    let (stop_reason, stop_sequence) = stop_reason(&f.reason);
                    yield event("message_delta", json!({
                        "type": "message_delta",
                        "delta": { "stop_reason": stop_reason, "stop_sequence": stop_sequence },
                        "usage": { "output_tokens": f.usage.completion_tokens },
                    }));
                    yield event("message_stop", json!({ "type": "message_stop" }));
                    break;
                }
                Event::Error(e) => {
                    yield event("error", ApiError::from_engine(e).body(Api::Anthropic));
                    break;
                }
            }
        }
    };
    Sse::new(events)
}
