//! The Anthropic Messages API: `POST /v1/messages`, whole or as its event stream
//! (`message_start`, `content_block_start`, `content_block_delta`..., `content_block_stop`,
//! `message_delta`, `message_stop`).
//!
//! Sampling defaults are Anthropic's (temperature 1, no top-p or top-k). Content is string content
//! or `text`, `tool_use` and `tool_result` blocks; other block types (images) get a 400 naming the
//! block. `tools` and `tool_choice` go through `structured` as OpenAI's do; calls come back as
//! `tool_use` blocks with `stop_reason: "tool_use"` (streamed as `input_json_delta`s).

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use exo_engine::tools::{Tool, ToolCall, ToolChoice};
use exo_engine::{Event, GenerateParams, Request, SamplerConfig, StopReason};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::body::{check_range, from_value, JsonBody};
use crate::error::{Api, ApiError};
use crate::generation::{response_id, submit, Generation, Scheduling};
use crate::openai::{join_text_parts, ContentPart};
use crate::structured::{arguments_object, prepare, CallReader, ChatSpec, Piece};
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
    tools: Option<Vec<ToolDefinition>>,
    tool_choice: Option<AnthropicToolChoice>,
    #[serde(flatten)]
    scheduling: Scheduling,
}

#[derive(Deserialize)]
struct ToolDefinition {
    name: String,
    description: Option<String>,
    input_schema: Value,
}

/// `tool_choice`: `{"type": "auto" | "any" | "none"}` or `{"type": "tool", "name": ...}`.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum AnthropicToolChoice {
    Auto,
    Any,
    None,
    Tool { name: String },
}

#[derive(Deserialize)]
struct Message {
    role: Role,
    content: MessageContent,
}

/// A message's content: a string, or blocks of which `tool_use` and `tool_result` carry calls.
#[derive(Deserialize)]
#[serde(untagged)]
enum MessageContent {
    Text(String),
    Blocks(Vec<Value>),
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
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "at least one message is required"));
    }
    let mut messages = Vec::with_capacity(req.messages.len() + 1);
    if let Some(system) = &req.system {
        messages.push(json!({ "role": "system", "content": system.text("system")? }));
    }
    for (i, m) in req.messages.iter().enumerate() {
        openai_messages(m, &format!("messages[{i}].content"), &mut messages)?;
    }
    let tools = req.tools.as_deref().map(openai_tools).transpose()?.unwrap_or_default();
    let choice = match &req.tool_choice {
        None | Some(AnthropicToolChoice::Auto) => ToolChoice::Auto,
        Some(AnthropicToolChoice::Any) => ToolChoice::Required,
        Some(AnthropicToolChoice::None) => ToolChoice::None,
        Some(AnthropicToolChoice::Tool { name }) => ToolChoice::Function(name.clone()),
    };
    let sampler = SamplerConfig {
        temperature: req.temperature.unwrap_or(1.0),
        top_p: req.top_p.unwrap_or(1.0),
        top_k: req.top_k.map_or(0, |k| k as usize),
        min_p: 0.0,
        ..SamplerConfig::default()
    };
    let max_tokens = Some(usize::try_from(req.max_tokens).unwrap_or(usize::MAX));
    let model = state.model(&req.model)?;
    let spec = ChatSpec { messages: Value::Array(messages), tools, choice, format: None, schema_field: ".input_schema" };
    let prepared = prepare(&model, spec).await?;
    let stop = req.stop_sequences.clone().unwrap_or_default();
    let params = GenerateParams { sampler, stop, constraint: prepared.constraint, ..GenerateParams::default() };
    let request = req.scheduling.apply(Request { max_tokens, ..Request::new(prepared.prompt, params) })?;
    let generation = submit(&state, model, request).await?;
    let id = response_id("msg_");
    if req.stream == Some(true) {
        return Ok(stream(id, generation, prepared.calls).into_response());
    }
    let name = generation.model().name.clone();
    let out = generation.collect().await?;
    let (text, calls) = prepared.calls.split(&out.text);
    let (mut stop_reason, stop_sequence) = stop_reason(&out.finished.reason);
    let mut content = Vec::with_capacity(calls.len() + 1);
    if !text.is_empty() || calls.is_empty() {
        content.push(json!({ "type": "text", "text": text }));
    }
    if !calls.is_empty() {
        stop_reason = "tool_use";
        content.extend(calls.iter().map(|c| tool_use(c, arguments_object(c))));
    }
    Ok(Json(json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": name,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": usage(&out.finished, true),
    }))
    .into_response())
}

/// Anthropic's `usage` (`input_tokens` too unless in a stream's `message_delta`, which has
/// only the output count), plus exo's `speculation` object (as in OpenAI's usage) when the
/// request was decoded speculatively.
fn usage(f: &exo_engine::Finished, input: bool) -> Value {
    let mut u = json!({ "output_tokens": f.usage.completion_tokens });
    if input {
        u["input_tokens"] = json!(f.usage.prompt_tokens);
    }
    if let Some(s) = &f.speculation {
        u["speculation"] = crate::openai::speculation(s);
    }
    u
}

/// Appends `m` to `out` as OpenAI messages: `tool_use` blocks become the assistant's
/// `tool_calls`, each `tool_result` block a `tool` message (before the user's text); `path` is
/// the JSON path of the content.
fn openai_messages(m: &Message, path: &str, out: &mut Vec<Value>) -> Result<(), ApiError> {
    let role = match m.role {
        Role::User => "user",
        Role::Assistant => "assistant",
    };
    let blocks = match &m.content {
        MessageContent::Text(s) => {
            out.push(json!({ "role": role, "content": s }));
            return Ok(());
        }
        MessageContent::Blocks(blocks) => blocks,
    };
    let (mut texts, mut calls) = (Vec::new(), Vec::new());
    for (j, b) in blocks.iter().enumerate() {
        let field = |name: &str| b.get(name).ok_or_else(|| ApiError::invalid(&format!("{path}[{j}].{name}"), "missing"));
        match b.get("type").and_then(Value::as_str) {
            Some("tool_use") => {
                let (id, name, input) = (field("id")?, field("name")?, field("input")?);
                calls.push(json!({ "id": id, "type": "function", "function": { "name": name, "arguments": input } }));
            }
            Some("tool_result") => {
                let id = field("tool_use_id")?;
                let content = match b.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(c) => from_value::<Content>(c)?.text(&format!("{path}[{j}].content"))?,
                };
                out.push(json!({ "role": "tool", "tool_call_id": id, "content": content }));
            }
            _ => texts.push(from_value::<ContentPart>(b)?),
        }
    }
    let text = join_text_parts(&texts, path)?;
    if !(text.is_empty() && out.last().is_some_and(|l| l["role"] == "tool") && calls.is_empty()) {
        let mut msg = json!({ "role": role, "content": text });
        if !calls.is_empty() {
            msg["tool_calls"] = Value::Array(calls);
        }
        out.push(msg);
    }
    Ok(())
}

/// Anthropic tools in OpenAI's shape, checked.
fn openai_tools(tools: &[ToolDefinition]) -> Result<Vec<Tool>, ApiError> {
    let list: Vec<Value> = tools
        .iter()
        .map(|t| json!({ "type": "function", "function": { "name": t.name, "description": t.description, "parameters": t.input_schema } }))
        .collect();
    Tool::list_from_openai(&Value::Array(list)).map_err(|e| ApiError::invalid("tools", e))
}

/// A `tool_use` content block; Anthropic's ids start with `toolu_`.
fn tool_use(c: &ToolCall, input: Value) -> Value {
    let id = format!("toolu_{}", c.id.strip_prefix("call_").unwrap_or(&c.id));
    json!({ "type": "tool_use", "id": id, "name": c.name, "input": input })
}

/// Anthropic's `stop_reason` and `stop_sequence`.
fn stop_reason(reason: &StopReason) -> (&'static str, Option<String>) {
    match reason {
        StopReason::StopString(s) => ("stop_sequence", Some(s.clone())),
        StopReason::MaxTokens | StopReason::ContextFull => ("max_tokens", None),
        StopReason::Eog | StopReason::Cancelled => ("end_turn", None),
    }
}

fn stream(id: String, mut generation: Generation, mut calls: CallReader) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
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
        let mut blocks = Blocks::default();
        while let Some(e) = generation.next().await {
            match e {
                Event::Started { .. } => {}
                Event::Chunk { text, .. } => {
                    for (name, data) in blocks.pieces(calls.push(&text)) {
                        yield event(name, data);
                    }
                }
                Event::Done(f) => {
                    for (name, data) in blocks.pieces(calls.finish()) {
                        yield event(name, data);
                    }
                    if blocks.count == 0 {
                        for (name, data) in blocks.pieces(vec![Piece::Text(String::new())]) {
                            yield event(name, data);
                        }
                    }
                    for (name, data) in blocks.close_text() {
                        yield event(name, data);
                    }
                    let (mut stop_reason, stop_sequence) = stop_reason(&f.reason);
                    if blocks.calls > 0 {
                        stop_reason = "tool_use";
                    }
                    yield event("message_delta", json!({
                        "type": "message_delta",
                        "delta": { "stop_reason": stop_reason, "stop_sequence": stop_sequence },
                        "usage": usage(&f, false),
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

/// The content blocks of a streamed message: a text block stays open while text comes; each
/// call is a `tool_use` block of its own.
#[derive(Default)]
struct Blocks {
    /// Blocks started so far.
    count: usize,
    /// `tool_use` blocks among them.
    calls: usize,
    /// The index of the open text block.
    open_text: Option<usize>,
}

impl Blocks {
    /// The events (name and data) that stream `pieces`.
    fn pieces(&mut self, pieces: Vec<Piece>) -> Vec<(&'static str, Value)> {
        let mut events = Vec::new();
        for piece in pieces {
            match piece {
                Piece::Text(text) => {
                    let index = match self.open_text {
                        Some(i) => i,
                        None => {
                            let i = self.start(&mut events, json!({ "type": "text", "text": "" }));
                            self.open_text = Some(i);
                            i
                        }
                    };
                    if !text.is_empty() {
                        let delta = json!({ "type": "text_delta", "text": text });
                        events.push(("content_block_delta", json!({ "type": "content_block_delta", "index": index, "delta": delta })));
                    }
                }
                Piece::Call(c) => {
                    events.extend(self.close_text());
                    let mut block = tool_use(&c, json!({}));
                    let index = self.start(&mut events, block.take());
                    self.calls += 1;
                    let delta = json!({ "type": "input_json_delta", "partial_json": c.arguments });
                    events.push(("content_block_delta", json!({ "type": "content_block_delta", "index": index, "delta": delta })));
                    events.push(("content_block_stop", json!({ "type": "content_block_stop", "index": index })));
                }
            }
        }
        events
    }

    /// Starts a block; returns its index.
    fn start(&mut self, events: &mut Vec<(&'static str, Value)>, block: Value) -> usize {
        let index = self.count;
        self.count += 1;
        events.push(("content_block_start", json!({ "type": "content_block_start", "index": index, "content_block": block })));
        index
    }

    /// Stops the open text block, if any.
    fn close_text(&mut self) -> Vec<(&'static str, Value)> {
        self.open_text.take().map(|i| ("content_block_stop", json!({ "type": "content_block_stop", "index": i }))).into_iter().collect()
    }
}
