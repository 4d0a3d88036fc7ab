//! The OpenAI API: `GET /v1/models`, `POST /v1/chat/completions` and the legacy
//! `POST /v1/completions`, streaming as server-sent events that end with `data: [DONE]`, and
//! `POST /v1/embeddings`.
//!
//! Sampling defaults are OpenAI's (temperature 1, top_p 1, no top-k or min-p), so a client gets
//! what it would from the API it was written for. `top_k`, `min_p` and `repeat_penalty` are
//! accepted as extensions, as llama.cpp's and vLLM's servers do.
//!
//! `response_format` (JSON mode, JSON Schema) is enforced by constrained decoding. `tools` reach
//! the model through its chat template (or exo's instructions where the template has none; see
//! `structured`); its calls come back as `tool_calls`, and `tool_choice` `required` or a named
//! function forces one call whose arguments follow the function's schema.
//!
//! Embeddings come as JSON floats or, with `encoding_format: "base64"` (what the `openai` Python
//! client asks for unless told otherwise), as the base64 of the little-endian f32 bytes. A text
//! over the model's token limit is truncated, as sentence-transformers does, rather than refused.

use std::convert::Infallible;
use std::time::SystemTime;

use axum::extract::{Path, State};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use exo_engine::constrain::JsonGrammar;
use exo_engine::tools::{Tool, ToolCall, ToolChoice};
use exo_engine::{Event, Finished, GenerateParams, Prompt, Request, SamplerConfig, StopReason, TokenLogprob};
use exo_tokenizer::Tokenizer;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::body::{check_range, from_value, JsonBody};
use crate::embedding::{check_dimensions, input_texts, EmbedRequest};
use crate::error::{Api, ApiError};
use crate::generation::{response_id, scheduled, submit, unix_secs, Generation};
use crate::models::ServedModel;
use crate::structured::{prepare, schema_grammar, CallReader, ChatSpec, Piece};
use crate::AppState;

/// Most alternatives per token OpenAI's `top_logprobs` allows.
const MAX_TOP_LOGPROBS: u64 = 20;
/// Most alternatives per token the legacy `logprobs` allows.
const MAX_LEGACY_LOGPROBS: u64 = 5;

/// Fields chat and legacy completions share.
#[derive(Deserialize)]
struct Common {
    model: String,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    stop: Option<Stop>,
    max_tokens: Option<u64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<i64>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    n: Option<u64>,
    logit_bias: Option<serde_json::Map<String, Value>>,
    top_k: Option<u64>,
    min_p: Option<f32>,
    repeat_penalty: Option<f32>,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// `stop`: one string or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct ChatFields {
    messages: Vec<Message>,
    max_completion_tokens: Option<u64>,
    logprobs: Option<bool>,
    top_logprobs: Option<u64>,
    tools: Option<Value>,
    tool_choice: Option<Value>,
    response_format: Option<ResponseFormat>,
}

#[derive(Deserialize)]
struct Message {
    role: Role,
    content: Option<Content>,
    name: Option<String>,
    tool_calls: Option<Vec<RequestToolCall>>,
    tool_call_id: Option<String>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

/// Message content: a string, or a list of typed parts of which exo reads the text ones.
#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// A typed content part (OpenAI) or content block (Anthropic).
#[derive(Deserialize)]
pub(crate) struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

/// The text of `parts` joined by newlines; any part that is not text is refused, naming it
/// (`path` is the JSON path of the list).
pub(crate) fn join_text_parts(parts: &[ContentPart], path: &str) -> Result<String, ApiError> {
    let mut texts = Vec::with_capacity(parts.len());
    for (j, p) in parts.iter().enumerate() {
        match (p.kind.as_str(), &p.text) {
            ("text", Some(t)) => texts.push(t.as_str()),
            ("text", None) => return Err(ApiError::invalid(&format!("{path}[{j}].text"), "missing")),
            (other, _) => {
                let what = format!("content of type '{other}' (exo serves text models)");
                return Err(ApiError::unsupported(&format!("{path}[{j}].type"), what));
            }
        }
    }
    Ok(texts.join("\n"))
}

#[derive(Deserialize)]
struct RequestToolCall {
    id: Option<String>,
    function: FunctionCall,
}

#[derive(Deserialize)]
struct FunctionCall {
    name: String,
    arguments: String,
}

/// `response_format`.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

#[derive(Deserialize)]
pub(crate) struct JsonSchemaFormat {
    schema: Option<Value>,
}

#[derive(Deserialize)]
struct CompletionFields {
    prompt: Value,
    logprobs: Option<u64>,
    echo: Option<bool>,
    suffix: Option<String>,
    best_of: Option<u64>,
}

/// The body of `POST /v1/embeddings` (`user` is accepted and ignored).
#[derive(Deserialize)]
pub(crate) struct EmbeddingsRequest {
    model: String,
    input: Value,
    #[serde(default)]
    encoding_format: EncodingFormat,
    dimensions: Option<u64>,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum EncodingFormat {
    #[default]
    Float,
    Base64,
}

/// The answer of `POST /v1/embeddings`. Written through `Serialize` rather than `json!`, so
/// vectors go out as f32 (`0.1`), not widened to f64 (`0.10000000149011612`) at twice the bytes.
#[derive(Serialize)]
struct EmbeddingList<'a> {
    object: &'static str,
    data: Vec<EmbeddingObject<'a>>,
    model: &'a str,
    usage: EmbeddingUsage,
}

#[derive(Serialize)]
struct EmbeddingObject<'a> {
    object: &'static str,
    index: usize,
    embedding: EmbeddingVector<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum EmbeddingVector<'a> {
    Float(&'a [f32]),
    Base64(String),
}

#[derive(Serialize)]
struct EmbeddingUsage {
    prompt_tokens: usize,
    total_tokens: usize,
}

/// `GET /v1/models`.
pub(crate) async fn list_models(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let data: Vec<Value> = state.models()?.iter().map(|m| model_object(m)).collect();
    Ok(Json(json!({ "object": "list", "data": data })))
}

/// `GET /v1/models/{model}`.
pub(crate) async fn get_model(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(model_object(state.model(&name)?.as_ref())))
}

fn model_object(m: &ServedModel) -> Value {
    json!({ "id": m.name, "object": "model", "created": unix_secs(m.loaded_at), "owned_by": "exo" })
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(State(state): State<AppState>, JsonBody(body): JsonBody<Value>) -> Result<Response, ApiError> {
    let common: Common = from_value(&body)?;
    let chat: ChatFields = from_value(&body)?;
    let (mut params, stream, include_usage) = common.params()?;
    if chat.top_logprobs.is_some() && chat.logprobs != Some(true) {
        return Err(ApiError::invalid("top_logprobs", "requires logprobs to be true"));
    }
    check_range("top_logprobs", chat.top_logprobs, 0, MAX_TOP_LOGPROBS)?;
    if chat.logprobs == Some(true) {
        params.logprobs = Some(chat.top_logprobs.unwrap_or(0) as usize);
    }
    let format = response_format(chat.response_format.as_ref())?;
    let max_tokens = chat.max_completion_tokens.map(|n| ("max_completion_tokens", n));
    let max_tokens = checked_max_tokens(max_tokens.or(common.max_tokens.map(|n| ("max_tokens", n))))?;
    let tools = match chat.tools.as_ref().filter(|t| !t.is_null()) {
        Some(t) => Tool::list_from_openai(t).map_err(|e| ApiError::invalid("tools", e))?,
        None => Vec::new(),
    };
    let choice = ToolChoice::from_openai(chat.tool_choice.as_ref()).map_err(|e| ApiError::invalid("tool_choice", e))?;
    let messages = template_messages(&chat.messages)?;
    let model = state.model(&common.model)?;
    let spec = ChatSpec { messages, tools, choice, format: format.map(|g| (g, "response_format")), schema_field: ".function.parameters" };
    let prepared = prepare(&model, spec).await?;
    params.constraint = prepared.constraint;
    let request = scheduled(&body, Request { max_tokens, ..Request::new(prepared.prompt, params) })?;
    let generation = submit(&state, model, request).await?;
    let mut reply = Reply::new("chatcmpl-", true, include_usage, chat.logprobs == Some(true));
    reply.calls = prepared.calls;
    reply.send(generation, stream).await
}

/// `POST /v1/completions`.
pub(crate) async fn completions(State(state): State<AppState>, JsonBody(body): JsonBody<Value>) -> Result<Response, ApiError> {
    let common: Common = from_value(&body)?;
    let fields: CompletionFields = from_value(&body)?;
    let (mut params, stream, include_usage) = common.params()?;
    check_range("logprobs", fields.logprobs, 0, MAX_LEGACY_LOGPROBS)?;
    params.logprobs = fields.logprobs.map(|n| n as usize);
    if fields.echo == Some(true) {
        return Err(ApiError::unsupported("echo", "echoing the prompt"));
    }
    if fields.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::unsupported("suffix", "a suffix (fill-in-the-middle)"));
    }
    if fields.best_of.is_some_and(|n| n != 1) {
        return Err(ApiError::unsupported("best_of", "best_of other than 1"));
    }
    let prompt = match &fields.prompt {
        Value::String(s) => s.clone(),
        Value::Array(items) if items.len() == 1 && items[0].is_string() => items[0].as_str().unwrap_or_default().to_string(),
        _ => return Err(ApiError::invalid("prompt", "must be a string (or a list of one string)")),
    };
    let max_tokens = checked_max_tokens(common.max_tokens.map(|n| ("max_tokens", n)))?;
    let model = state.model(&common.model)?;
    let request = scheduled(&body, Request { max_tokens, ..Request::new(Prompt::Text(prompt), params) })?;
    let generation = submit(&state, model, request).await?;
    let reply = Reply::new("cmpl-", false, include_usage, fields.logprobs.is_some());
    reply.send(generation, stream).await
}

/// `POST /v1/embeddings`.
pub(crate) async fn embeddings(State(state): State<AppState>, JsonBody(req): JsonBody<EmbeddingsRequest>) -> Result<Response, ApiError> {
    let texts = input_texts(&req.input, "input")?;
    if texts.is_empty() {
        return Err(ApiError::invalid("input", "the list is empty; send at least one text"));
    }
    let model = state.model(&req.model)?;
    let runner = model.embeddings()?;
    check_dimensions(req.dimensions, runner.embedder(), &model.name)?;
    let embedded = runner.embed(&state, &model.name, EmbedRequest { texts, param: "input", truncate: true }).await?;
    let tokens: usize = embedded.iter().map(|e| e.tokens).sum();
    let data = embedded
        .iter()
        .enumerate()
        .map(|(index, e)| {
            let embedding = match req.encoding_format {
                EncodingFormat::Float => EmbeddingVector::Float(&e.vector),
                EncodingFormat::Base64 => {
                    let bytes: Vec<u8> = e.vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                    EmbeddingVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
            };
            EmbeddingObject { object: "embedding", index, embedding }
        })
        .collect();
    let usage = EmbeddingUsage { prompt_tokens: tokens, total_tokens: tokens };
    Ok(Json(EmbeddingList { object: "list", data, model: &model.name, usage }).into_response())
}

impl Common {
    /// Generation settings, whether to stream, and whether to end a stream with usage.
    fn params(&self) -> Result<(GenerateParams, bool, bool), ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::unsupported("n", "n other than 1 (one choice per request)"));
        }
        if self.logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
            return Err(ApiError::unsupported("logit_bias", "logit_bias"));
        }
        check_range("temperature", self.temperature, 0.0, 2.0)?;
        check_range("top_p", self.top_p, 0.0, 1.0)?;
        check_range("min_p", self.min_p, 0.0, 1.0)?;
        check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        check_range("repeat_penalty", self.repeat_penalty, f32::MIN_POSITIVE, f32::MAX)?;
        let sampler = SamplerConfig {
            temperature: self.temperature.unwrap_or(1.0),
            top_p: self.top_p.unwrap_or(1.0),
            top_k: self.top_k.map_or(0, |k| k as usize),
            min_p: self.min_p.unwrap_or(0.0),
            repeat_penalty: self.repeat_penalty.unwrap_or(1.0),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            // OpenAI seeds are any 64-bit integer; the bits are what matter.
            seed: self.seed.map(|s| s as u64),
            ..SamplerConfig::default()
        };
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        let stream = self.stream.unwrap_or(false);
        let include_usage = stream && self.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
        Ok((GenerateParams { sampler, stop, ..GenerateParams::default() }, stream, include_usage))
    }
}

/// The limit on generated tokens, from whichever field set it (`None`: until the context is full).
fn checked_max_tokens(field: Option<(&str, u64)>) -> Result<Option<usize>, ApiError> {
    match field {
        None => Ok(None),
        Some((name, 0)) => Err(ApiError::invalid(name, "must be at least 1")),
        Some((_, n)) => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
    }
}

/// The grammar `response_format` asks for, if any.
fn response_format(format: Option<&ResponseFormat>) -> Result<Option<JsonGrammar>, ApiError> {
    match format {
        None | Some(ResponseFormat::Text) => Ok(None),
        Some(ResponseFormat::JsonObject) => Ok(Some(JsonGrammar::any_object())),
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            let schema = json_schema.schema.clone().unwrap_or_else(|| json!({}));
            schema_grammar(&schema, "response_format.json_schema.schema").map(Some)
        }
    }
}

/// Messages as chat templates expect them: content as one string, `developer` as `system`,
/// tool-call arguments as objects (Hugging Face templates format them with `tojson`).
fn template_messages(messages: &[Message]) -> Result<Value, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "at least one message is required"));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let role = match m.role {
            Role::System | Role::Developer => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        };
        let content = match &m.content {
            Some(Content::Text(s)) => s.clone(),
            Some(Content::Parts(parts)) => join_text_parts(parts, &format!("messages[{i}].content"))?,
            None if m.role == Role::Assistant => String::new(),
            None => return Err(ApiError::invalid(&format!("messages[{i}].content"), "missing")),
        };
        let mut msg = json!({ "role": role, "content": content });
        if let Some(name) = &m.name {
            msg["name"] = json!(name);
        }
        if let Some(id) = &m.tool_call_id {
            msg["tool_call_id"] = json!(id);
        }
        if let Some(calls) = &m.tool_calls {
            let calls: Vec<Value> = calls
                .iter()
                .map(|c| {
                    let args = serde_json::from_str(&c.function.arguments).unwrap_or_else(|_| json!(c.function.arguments));
                    json!({ "id": c.id, "type": "function", "function": { "name": c.function.name, "arguments": args } })
                })
                .collect();
            msg["tool_calls"] = Value::Array(calls);
        }
        out.push(msg);
    }
    Ok(Value::Array(out))
}

/// A call as OpenAI writes it in `message.tool_calls`, or (with its `index`) in a streamed
/// `delta.tool_calls`.
fn tool_call(c: &ToolCall, index: Option<usize>) -> Value {
    let mut v = json!({ "id": c.id, "type": "function", "function": { "name": c.name, "arguments": c.arguments } });
    if let Some(i) = index {
        v["index"] = json!(i);
    }
    v
}

/// OpenAI's `finish_reason`.
fn finish_reason(reason: &StopReason) -> &'static str {
    match reason {
        StopReason::Eog | StopReason::StopString(_) | StopReason::Cancelled => "stop",
        StopReason::MaxTokens | StopReason::ContextFull => "length",
    }
}

/// OpenAI's `usage`, plus exo's `speculation` object when the request was decoded
/// speculatively: `{drafted, accepted, acceptance_rate, steps}`.
fn usage(f: &Finished) -> Value {
    let u = &f.usage;
    let mut o = json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": { "cached_tokens": u.cached_tokens },
    });
    if let Some(s) = f.speculation {
        o["speculation"] = speculation(&s);
    }
    o
}

/// The counts of a speculatively decoded request, as the APIs report them.
pub(crate) fn speculation(s: &exo_engine::SpecStats) -> Value {
    json!({ "drafted": s.drafted, "accepted": s.accepted, "acceptance_rate": s.acceptance_rate(), "steps": s.steps })
}

/// A token's text (invalid UTF-8 replaced) and its bytes.
fn token_text(tok: &Tokenizer, id: u32) -> (String, Vec<u8>) {
    let bytes = tok.token_bytes(id);
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

/// Chat completions' `logprobs`: `{"content": [{token, logprob, bytes, top_logprobs}]}`.
fn chat_logprobs(tok: &Tokenizer, lps: &[TokenLogprob]) -> Value {
    json!({ "content": token_logprobs(tok, lps), "refusal": null })
}

/// One `{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}` per token, the shape
/// OpenAI's chat completions and Ollama both use.
pub(crate) fn token_logprobs(tok: &Tokenizer, lps: &[TokenLogprob]) -> Vec<Value> {
    let entry = |id: u32, logprob: f32| {
        let (token, bytes) = token_text(tok, id);
        json!({ "token": token, "logprob": logprob, "bytes": bytes })
    };
    lps.iter()
        .map(|l| {
            let mut e = entry(l.id, l.logprob);
            e["top_logprobs"] = l.top.iter().map(|&(id, lp)| entry(id, lp)).collect();
            e
        })
        .collect()
}

/// Legacy completions' `logprobs`; `offset` is the completion's length in characters so far.
fn legacy_logprobs(tok: &Tokenizer, lps: &[TokenLogprob], offset: &mut usize) -> Value {
    let mut tokens = Vec::with_capacity(lps.len());
    let mut token_logprobs = Vec::with_capacity(lps.len());
    let mut top = Vec::with_capacity(lps.len());
    let mut offsets = Vec::with_capacity(lps.len());
    for l in lps {
        let (text, _) = token_text(tok, l.id);
        offsets.push(*offset);
        *offset += text.chars().count();
        tokens.push(text);
        token_logprobs.push(l.logprob);
        let alternatives: serde_json::Map<String, Value> = l.top.iter().map(|&(id, lp)| (token_text(tok, id).0, json!(lp))).collect();
        top.push(Value::Object(alternatives));
    }
    json!({ "tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets })
}

/// How to write one completion's answer, whole or streamed.
struct Reply {
    id: String,
    created: u64,
    /// A chat completion (else a legacy text completion).
    chat: bool,
    /// End a stream with a chunk holding the usage.
    include_usage: bool,
    /// Log-probabilities were asked for.
    logprobs: bool,
    /// Splits the model's calls from its text (chat with tools).
    calls: CallReader,
}

impl Reply {
    fn new(id_prefix: &str, chat: bool, include_usage: bool, logprobs: bool) -> Self {
        Self { id: response_id(id_prefix), created: unix_secs(SystemTime::now()), chat, include_usage, logprobs, calls: CallReader::none() }
    }

    /// Answers with the whole completion, or streams it.
    async fn send(mut self, generation: Generation, stream: bool) -> Result<Response, ApiError> {
        if stream {
            return Ok(self.stream(generation).into_response());
        }
        let tok = generation.tokenizer().clone();
        let model = generation.model().name.clone();
        let out = generation.collect().await?;
        let logprobs = self.logprobs(&tok, &out.logprobs, &mut 0);
        let mut choice = self.choice(&out.text, true, logprobs, Some(finish_reason(&out.finished.reason)));
        if self.chat {
            let (content, calls) = std::mem::replace(&mut self.calls, CallReader::none()).split(&out.text);
            if !calls.is_empty() {
                choice["finish_reason"] = json!("tool_calls");
                choice["message"]["tool_calls"] = calls.iter().map(|c| tool_call(c, None)).collect();
                choice["message"]["content"] = if content.is_empty() { Value::Null } else { json!(content) };
            }
        }
        let mut answer = self.object(&model, true, choice);
        answer["usage"] = usage(&out.finished);
        Ok(Json(answer).into_response())
    }

    /// The answer or chunk object around one choice.
    fn object(&self, model: &str, whole: bool, choice: Value) -> Value {
        let object = match (self.chat, whole) {
            (true, true) => "chat.completion",
            (true, false) => "chat.completion.chunk",
            (false, _) => "text_completion",
        };
        let mut o = json!({ "id": self.id, "object": object, "created": self.created, "model": model, "choices": [choice] });
        if self.include_usage && !whole {
            o["usage"] = Value::Null;
        }
        o
    }

    /// A choice: `message` (chat, whole), `delta` (chat, streamed) or `text` (legacy).
    fn choice(&self, text: &str, whole: bool, logprobs: Value, finish_reason: Option<&str>) -> Value {
        let mut c = json!({ "index": 0, "logprobs": logprobs, "finish_reason": finish_reason });
        match (self.chat, whole) {
            (true, true) => c["message"] = json!({ "role": "assistant", "content": text }),
            (true, false) if finish_reason.is_some() => c["delta"] = json!({}),
            (true, false) => c["delta"] = json!({ "content": text }),
            (false, _) => c["text"] = json!(text),
        }
        c
    }

    /// The `logprobs` of a choice; `offset` counts the characters of a legacy completion so far.
    fn logprobs(&self, tok: &Tokenizer, lps: &[TokenLogprob], offset: &mut usize) -> Value {
        match (self.logprobs, self.chat) {
            (false, _) => Value::Null,
            (true, true) => chat_logprobs(tok, lps),
            (true, false) => legacy_logprobs(tok, lps, offset),
        }
    }

    /// The streamed chunks of `pieces`; `logprobs` go with the first (or alone when there is
    /// none); `n_calls` counts the calls streamed so far.
    fn piece_chunks(&self, model: &str, pieces: Vec<Piece>, mut logprobs: Value, n_calls: &mut usize) -> Vec<Value> {
        let mut chunks = Vec::with_capacity(pieces.len().max(1));
        for piece in pieces {
            let logprobs = std::mem::take(&mut logprobs);
            let choice = match piece {
                Piece::Text(t) => self.choice(&t, false, logprobs, None),
                Piece::Call(c) => {
                    let mut choice = self.choice("", false, logprobs, None);
                    choice["delta"] = json!({ "tool_calls": [tool_call(&c, Some(*n_calls))] });
                    *n_calls += 1;
                    choice
                }
            };
            chunks.push(self.object(model, false, choice));
        }
        if !logprobs.is_null() {
            chunks.push(self.object(model, false, self.choice("", false, logprobs, None)));
        }
        chunks
    }

    fn stream(mut self, mut generation: Generation) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
        let data = |v: &Value| Ok(SseEvent::default().data(v.to_string()));
        let model = generation.model().name.clone();
        let tok = generation.tokenizer().clone();
        let stream = async_stream::stream! {
            let mut offset = 0;
            let mut n_calls = 0;
            if self.chat {
                let mut first = self.choice("", false, Value::Null, None);
                first["delta"] = json!({ "role": "assistant", "content": "" });
                yield data(&self.object(&model, false, first));
            }
            while let Some(event) = generation.next().await {
                match event {
                    Event::Started { .. } => {}
                    Event::Chunk { text, logprobs } => {
                        let logprobs = self.logprobs(&tok, &logprobs, &mut offset);
                        let pieces = self.calls.push(&text);
                        for chunk in self.piece_chunks(&model, pieces, logprobs, &mut n_calls) {
                            yield data(&chunk);
                        }
                    }
                    Event::Done(f) => {
                        let pieces = self.calls.finish();
                        for chunk in self.piece_chunks(&model, pieces, Value::Null, &mut n_calls) {
                            yield data(&chunk);
                        }
                        let reason = if n_calls > 0 { "tool_calls" } else { finish_reason(&f.reason) };
                        let last = self.choice("", false, Value::Null, Some(reason));
                        yield data(&self.object(&model, false, last));
                        if self.include_usage {
                            let mut usage_chunk = self.object(&model, false, Value::Null);
                            usage_chunk["choices"] = json!([]);
                            usage_chunk["usage"] = usage(&f);
                            yield data(&usage_chunk);
                        }
                        break;
                    }
                    Event::Error(e) => {
                        yield data(&ApiError::from_engine(e).body(Api::OpenAi));
                        break;
                    }
                }
            }
            yield Ok(SseEvent::default().data("[DONE]"));
        };
        Sse::new(stream)
    }
}
