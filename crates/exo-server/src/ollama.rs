//! The Ollama API: `/api/version`, `/api/tags`, `/api/show`, `/api/ps`, `/api/generate` and
//! `/api/chat`, streaming newline-delimited JSON by default (as Ollama does) and ending with an
//! object that has `done: true`, the reason and the counts and durations (in nanoseconds); and
//! `/api/embed` with the legacy `/api/embeddings`.
//!
//! Sampling defaults are Ollama's (temperature 0.8, top_k 40, top_p 0.9, repeat_penalty 1.1 over
//! the last 64 tokens). Models stay loaded for the server's lifetime, so `keep_alive` is accepted
//! and has no effect. `num_ctx` is the request's context window (prompt plus generation must fit
//! it) up to the server's `--ctx-size`, beyond which a running slot cannot grow. Unknown `options` are ignored, as Ollama
//! ignores them. `logprobs`/`top_logprobs` report each token as OpenAI's chat API does.
//! Structured outputs (`format`: `"json"` or a JSON schema) are enforced by constrained decoding;
//! `/api/chat` `tools` come back as `message.tool_calls` with the arguments as objects.
//!
//! Embeddings follow Ollama: an empty `input` (or `prompt`) loads the model and answers no
//! vectors, `truncate` (default true) cuts texts to the model's limit, and with `truncate: false`
//! an over-long text is a 400 naming it. `options` and `keep_alive` are accepted and ignored.

use std::convert::Infallible;
use std::time::{Duration, Instant, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use exo_engine::constrain::JsonGrammar;
use exo_engine::tools::{Tool, ToolCall, ToolChoice};
use exo_engine::{Event, Finished, GenerateParams, Prompt, Request, SamplerConfig, StopReason};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::body::{check_range, from_value, JsonBody};
use crate::embedding::{check_dimensions, input_texts, EmbedRequest};
use crate::error::{Api, ApiError};
use crate::generation::{rfc3339, scheduled, submit, Generation};
use crate::models::{Runner, ServedModel};
use crate::openai::token_logprobs;
use crate::structured::{arguments_object, constraint, prepare, schema_grammar, CallReader, ChatSpec, Piece};
use crate::AppState;

#[derive(Deserialize)]
struct GenerateRequest {
    model: String,
    prompt: Option<String>,
    system: Option<String>,
    raw: Option<bool>,
    images: Option<Vec<String>>,
    suffix: Option<String>,
    template: Option<String>,
    context: Option<Vec<i64>>,
}

#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    messages: Option<Vec<Message>>,
    tools: Option<Value>,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    content: Option<String>,
    images: Option<Vec<String>>,
    tool_calls: Option<Value>,
    tool_name: Option<String>,
}

/// Fields `/api/generate` and `/api/chat` share.
#[derive(Deserialize)]
struct Common {
    stream: Option<bool>,
    format: Option<Value>,
    think: Option<Value>,
    logprobs: Option<bool>,
    top_logprobs: Option<u64>,
    #[serde(default)]
    options: Options,
}

/// The `options` exo reads; see the module doc for the rest.
#[derive(Deserialize, Default)]
struct Options {
    num_predict: Option<i64>,
    temperature: Option<f32>,
    top_k: Option<i64>,
    top_p: Option<f32>,
    min_p: Option<f32>,
    seed: Option<i64>,
    stop: Option<Vec<String>>,
    num_ctx: Option<u64>,
    num_keep: Option<i64>,
    repeat_penalty: Option<f32>,
    repeat_last_n: Option<i64>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
}

/// The request body of `/api/embed`.
#[derive(Deserialize)]
pub(crate) struct EmbedBody {
    model: String,
    input: Option<Value>,
    truncate: Option<bool>,
    dimensions: Option<u64>,
}

/// The request body of the legacy `/api/embeddings`.
#[derive(Deserialize)]
pub(crate) struct EmbeddingsBody {
    model: String,
    prompt: Option<String>,
}

/// The answer of `/api/embed`, written through `Serialize` so that vectors go out as f32.
#[derive(Serialize)]
struct EmbedAnswer<'a> {
    model: &'a str,
    embeddings: Vec<&'a [f32]>,
    total_duration: u64,
    load_duration: u64,
    prompt_eval_count: usize,
}

/// The answer of `/api/embeddings`.
#[derive(Serialize)]
struct LegacyEmbedAnswer<'a> {
    embedding: &'a [f32],
}

/// The request body of `/api/show`.
#[derive(Deserialize)]
pub(crate) struct ShowRequest {
    model: Option<String>,
    /// The field's name before Ollama 0.1.x renamed it `model`.
    name: Option<String>,
}

/// `GET /api/version`.
pub(crate) async fn version() -> Json<Value> {
    Json(json!({ "version": env!("CARGO_PKG_VERSION") }))
}

/// `GET /api/tags`: the served models.
pub(crate) async fn tags(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let models = state.models()?.iter().map(|m| listing(m, json!({ "modified_at": rfc3339(m.modified_at) })));
    Ok(Json(json!({ "models": models.collect::<Vec<_>>() })))
}

/// `GET /api/ps`: the loaded models (all of them, always).
pub(crate) async fn ps(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let models = state.models()?.iter().map(|m| listing(m, json!({ "size_vram": 0, "context_length": m.context_length() })));
    Ok(Json(json!({ "models": models.collect::<Vec<_>>() })))
}

/// A model's entry in `/api/tags` and `/api/ps`: what both list, plus `extra`'s fields.
fn listing(m: &ServedModel, extra: Value) -> Value {
    let mut entry = json!({ "name": m.name, "model": m.name, "size": m.size, "details": details(m) });
    if let (Some(entry), Value::Object(extra)) = (entry.as_object_mut(), extra) {
        entry.extend(extra);
    }
    entry
}

/// `POST /api/show`.
pub(crate) async fn show(State(state): State<AppState>, JsonBody(req): JsonBody<ShowRequest>) -> Result<Json<Value>, ApiError> {
    let name = req.model.or(req.name).ok_or_else(|| ApiError::invalid("model", "missing"))?;
    let m = state.model(&name)?;
    let info = m.info();
    let arch = m.arch();
    let mut model_info = json!({
        "general.architecture": arch,
        "general.name": info.name,
        "general.parameter_count": info.n_params,
    });
    let (template, hyper) = match &m.runner {
        Runner::Generator(engine) => {
            let lm = engine.model();
            let c = lm.transformer.config();
            let template = lm.tokenizer.chat_template().map(|t| t.source().to_string()).unwrap_or_default();
            let hyper = json!({
                format!("{arch}.context_length"): c.train_ctx,
                format!("{arch}.embedding_length"): c.hidden,
                format!("{arch}.block_count"): c.n_layers,
                format!("{arch}.attention.head_count"): c.n_heads,
                format!("{arch}.attention.head_count_kv"): c.n_kv_heads,
                format!("{arch}.feed_forward_length"): c.ffn_dim,
                "tokenizer.vocab_size": c.vocab_size,
            });
            (template, hyper)
        }
        Runner::Embedder(runner) => {
            let e = runner.embedder();
            let c = e.config();
            // Ollama's keys for BERT GGUFs; the context is the text limit sentence-transformers uses.
            let hyper = json!({
                format!("{arch}.context_length"): e.max_tokens(),
                format!("{arch}.embedding_length"): e.dim(),
                format!("{arch}.block_count"): c.n_layers,
                format!("{arch}.attention.head_count"): c.n_heads,
                format!("{arch}.feed_forward_length"): c.ffn_dim,
                format!("{arch}.pooling_type"): e.pooling().name(),
                format!("{arch}.normalize_embeddings"): e.normalizes(),
                "tokenizer.vocab_size": c.vocab_size,
            });
            (String::new(), hyper)
        }
    };
    if let (Some(all), Value::Object(hyper)) = (model_info.as_object_mut(), hyper) {
        all.extend(hyper);
    }
    Ok(Json(json!({
        "license": "",
        "modelfile": format!("# Served by exo\nFROM {}\n", info.path.display()),
        "parameters": "",
        "template": template,
        "details": details(&m),
        "model_info": model_info,
        "capabilities": m.capabilities(),
        "modified_at": rfc3339(m.modified_at),
    })))
}

fn details(m: &ServedModel) -> Value {
    json!({
        "parent_model": "",
        "format": m.info().format,
        "family": m.arch(),
        "families": [m.arch()],
        "parameter_size": m.parameter_size(),
        "quantization_level": m.quantization(),
    })
}

/// `POST /api/generate`: a completion of `prompt`, through the chat template unless `raw`.
pub(crate) async fn generate(State(state): State<AppState>, JsonBody(body): JsonBody<Value>) -> Result<Response, ApiError> {
    let started = Instant::now();
    let req: GenerateRequest = from_value(&body)?;
    let common: Common = from_value(&body)?;
    let (mut params, max_tokens, ctx) = common.params()?;
    let format = common.format_grammar()?;
    reject_nonempty("images", req.images.as_ref().is_some_and(|v| !v.is_empty()), "images (exo serves text models)")?;
    reject_nonempty("suffix", req.suffix.as_ref().is_some_and(|s| !s.is_empty()), "a suffix (fill-in-the-middle)")?;
    reject_nonempty("template", req.template.as_ref().is_some_and(|s| !s.is_empty()), "a request template (the model's own chat template is used)")?;
    reject_nonempty("context", req.context.as_ref().is_some_and(|c| !c.is_empty()), "context (pass the conversation as text or use /api/chat)")?;
    let model = state.model(&req.model)?;
    model.engine()?;
    let prompt = req.prompt.unwrap_or_default();
    if prompt.is_empty() {
        // Ollama's way to load a model without generating.
        return Ok(Json(json!({ "model": model.name, "created_at": rfc3339(SystemTime::now()), "response": "", "done": true, "done_reason": "load" })).into_response());
    }
    let prompt = if req.raw == Some(true) {
        Prompt::Text(prompt)
    } else {
        let mut messages = Vec::new();
        if let Some(system) = req.system {
            messages.push(json!({ "role": "system", "content": system }));
        }
        messages.push(json!({ "role": "user", "content": prompt }));
        Prompt::Chat { messages: Value::Array(messages), tools: None }
    };
    if let Some(g) = format {
        params.constraint = Some(constraint(&model, g).await?);
    }
    let request = Request { max_tokens, ctx, n_keep: common.num_keep()?, ..Request::new(prompt, params) };
    let generation = submit(&state, model, scheduled(&body, request)?).await?;
    respond(generation, common.stream != Some(false), started, Kind::Generate, CallReader::none()).await
}

/// `POST /api/chat`.
pub(crate) async fn chat(State(state): State<AppState>, JsonBody(body): JsonBody<Value>) -> Result<Response, ApiError> {
    let started = Instant::now();
    let req: ChatRequest = from_value(&body)?;
    let common: Common = from_value(&body)?;
    let (mut params, max_tokens, ctx) = common.params()?;
    let format = common.format_grammar()?;
    let model = state.model(&req.model)?;
    model.engine()?;
    let messages = req.messages.unwrap_or_default();
    if messages.is_empty() {
        let message = json!({ "role": "assistant", "content": "" });
        return Ok(Json(json!({ "model": model.name, "created_at": rfc3339(SystemTime::now()), "message": message, "done": true, "done_reason": "load" })).into_response());
    }
    let mut rendered = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        reject_nonempty(&format!("messages[{i}].images"), m.images.is_some_and(|v| !v.is_empty()), "images (exo serves text models)")?;
        let mut msg = json!({ "role": m.role, "content": m.content.unwrap_or_default() });
        if let Some(calls) = m.tool_calls {
            msg["tool_calls"] = calls;
        }
        if let Some(name) = m.tool_name {
            msg["name"] = json!(name);
        }
        rendered.push(msg);
    }
    let tools = match req.tools.as_ref().filter(|t| !t.is_null()) {
        Some(t) => Tool::list_from_openai(t).map_err(|e| ApiError::invalid("tools", e))?,
        None => Vec::new(),
    };
    let spec = ChatSpec {
        messages: Value::Array(rendered),
        tools,
        choice: ToolChoice::Auto,
        format: format.map(|g| (g, "format")),
        schema_field: ".function.parameters",
    };
    let prepared = prepare(&model, spec).await?;
    params.constraint = prepared.constraint;
    let request = Request { max_tokens, ctx, n_keep: common.num_keep()?, ..Request::new(prepared.prompt, params) };
    let generation = submit(&state, model, scheduled(&body, request)?).await?;
    respond(generation, common.stream != Some(false), started, Kind::Chat, prepared.calls).await
}

/// `POST /api/embed`.
pub(crate) async fn embed(State(state): State<AppState>, JsonBody(req): JsonBody<EmbedBody>) -> Result<Response, ApiError> {
    let started = Instant::now();
    let model = state.model(&req.model)?;
    let runner = model.embeddings()?;
    check_dimensions(req.dimensions, runner.embedder(), &model.name)?;
    let texts = match &req.input {
        // Ollama reads a missing or empty string as "no input", an empty list item as a text.
        None => Vec::new(),
        Some(Value::String(s)) if s.is_empty() => Vec::new(),
        Some(input) => input_texts(input, "input")?,
    };
    let embedded = if texts.is_empty() {
        Vec::new()
    } else {
        runner.embed(&state, &model.name, EmbedRequest { texts, param: "input", truncate: req.truncate != Some(false) }).await?
    };
    Ok(Json(EmbedAnswer {
        model: &model.name,
        embeddings: embedded.iter().map(|e| e.vector.as_slice()).collect(),
        total_duration: started.elapsed().as_nanos() as u64,
        // The model was loaded before the server became ready.
        load_duration: 0,
        prompt_eval_count: embedded.iter().map(|e| e.tokens).sum(),
    })
    .into_response())
}

/// `POST /api/embeddings`: one `prompt`, one `embedding` (Ollama's older endpoint).
pub(crate) async fn embeddings(State(state): State<AppState>, JsonBody(req): JsonBody<EmbeddingsBody>) -> Result<Response, ApiError> {
    let model = state.model(&req.model)?;
    let runner = model.embeddings()?;
    let prompt = req.prompt.unwrap_or_default();
    let embedded = if prompt.is_empty() {
        Vec::new()
    } else {
        runner.embed(&state, &model.name, EmbedRequest { texts: vec![prompt], param: "prompt", truncate: true }).await?
    };
    let embedding = embedded.first().map_or(&[][..], |e| e.vector.as_slice());
    Ok(Json(LegacyEmbedAnswer { embedding }).into_response())
}

fn reject_nonempty(param: &str, present: bool, what: &str) -> Result<(), ApiError> {
    if present { Err(ApiError::unsupported(param, what)) } else { Ok(()) }
}

impl Common {
    /// The grammar `format` asks for: `"json"` any JSON object, an object a JSON schema.
    fn format_grammar(&self) -> Result<Option<JsonGrammar>, ApiError> {
        match &self.format {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) if s == "json" => Ok(Some(JsonGrammar::any_object())),
            Some(schema @ Value::Object(_)) => schema_grammar(schema, "format").map(Some),
            Some(other) => Err(ApiError::invalid("format", format!("must be \"json\" or a JSON schema object, not {other}"))),
        }
    }

    /// `options.num_keep`: prompt tokens a context shift keeps (-1: the whole prompt, which
    /// the engine caps at half the window).
    fn num_keep(&self) -> Result<Option<usize>, ApiError> {
        check_range("options.num_keep", self.options.num_keep, -1, i64::MAX)?;
        Ok(self.options.num_keep.map(|n| if n < 0 { usize::MAX } else { n as usize }))
    }

    /// Generation settings, the token limit (`None`: until the context is full) and the
    /// request's context window (`num_ctx`).
    fn params(&self) -> Result<(GenerateParams, Option<usize>, Option<usize>), ApiError> {
        if self.think.as_ref().is_some_and(|t| t != &Value::Bool(false) && !t.is_null()) {
            return Err(ApiError::unsupported("think", "thinking (the served models do not think)"));
        }
        let o = &self.options;
        check_range("options.temperature", o.temperature, 0.0, f32::MAX)?;
        check_range("options.top_p", o.top_p, 0.0, 1.0)?;
        check_range("options.min_p", o.min_p, 0.0, 1.0)?;
        check_range("options.repeat_penalty", o.repeat_penalty, f32::MIN_POSITIVE, f32::MAX)?;
        check_range("options.num_predict", o.num_predict, -2, i64::MAX)?;
        check_range("options.repeat_last_n", o.repeat_last_n, -1, i64::MAX)?;
        check_range("options.num_ctx", o.num_ctx, 1, u64::MAX)?;
        let sampler = SamplerConfig {
            temperature: o.temperature.unwrap_or(0.8),
            top_k: o.top_k.map_or(40, |k| k.max(0) as usize),
            top_p: o.top_p.unwrap_or(0.9),
            min_p: o.min_p.unwrap_or(0.0),
            repeat_penalty: o.repeat_penalty.unwrap_or(1.1),
            presence_penalty: o.presence_penalty.unwrap_or(0.0),
            frequency_penalty: o.frequency_penalty.unwrap_or(0.0),
            // -1 means the whole context, which at most holds that many tokens.
            penalty_last_n: match o.repeat_last_n {
                None => 64,
                Some(-1) => usize::MAX,
                Some(n) => n as usize,
            },
            // Ollama's -1 (and any negative seed) means a random one.
            seed: o.seed.filter(|&s| s >= 0).map(|s| s as u64),
        };
        check_range("top_logprobs", self.top_logprobs, 0, 20)?;
        let logprobs = (self.logprobs == Some(true)).then(|| self.top_logprobs.unwrap_or(0) as usize);
        let stop = o.stop.clone().unwrap_or_default();
        // -1: no limit; -2: fill the context. Both end when the context is full here.
        let max_tokens = o.num_predict.filter(|&n| n >= 0).map(|n| n as usize);
        let ctx = o.num_ctx.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        Ok((GenerateParams { sampler, stop, logprobs, ..GenerateParams::default() }, max_tokens, ctx))
    }
}

/// Which endpoint an answer is for: text goes in `response` or in `message.content`.
#[derive(Clone, Copy)]
enum Kind {
    Generate,
    Chat,
}

impl Kind {
    fn object(self, model: &str, text: &str, done: bool) -> Value {
        let created_at = rfc3339(SystemTime::now());
        match self {
            Kind::Generate => json!({ "model": model, "created_at": created_at, "response": text, "done": done }),
            Kind::Chat => json!({
                "model": model,
                "created_at": created_at,
                "message": { "role": "assistant", "content": text },
                "done": done,
            }),
        }
    }

    /// One streamed object per piece: text, or a message holding one call.
    fn pieces(self, model: &str, pieces: Vec<Piece>) -> Vec<Value> {
        let line = |piece| match piece {
            Piece::Text(t) => self.object(model, &t, false),
            Piece::Call(c) => {
                let mut o = self.object(model, "", false);
                o["message"]["tool_calls"] = tool_calls(&[c]);
                o
            }
        };
        pieces.into_iter().map(line).collect()
    }

    /// The final object: `text` (empty when streamed) with the reason, counts and durations.
    fn last(self, model: &str, text: &str, f: &Finished, started: Instant) -> Value {
        let mut o = self.object(model, text, true);
        let ns = |d: Duration| d.as_nanos() as u64;
        let t = &f.timings;
        o["done_reason"] = json!(match f.reason {
            StopReason::MaxTokens | StopReason::ContextFull => "length",
            _ => "stop",
        });
        o["total_duration"] = json!(ns(started.elapsed()));
        // The model was loaded before the server became ready.
        o["load_duration"] = json!(0);
        o["prompt_eval_count"] = json!(f.usage.prompt_tokens);
        o["prompt_eval_duration"] = json!(ns(t.prompt));
        o["eval_count"] = json!(f.usage.completion_tokens);
        o["eval_duration"] = json!(ns(t.first_token.saturating_sub(t.prompt) + t.generation));
        // exo's own fields, present only for a speculatively decoded request.
        if let Some(s) = f.speculation {
            o["draft_tokens"] = json!(s.drafted);
            o["draft_accepted"] = json!(s.accepted);
            o["draft_acceptance_rate"] = json!(s.acceptance_rate());
        }
        o
    }
}

/// One JSON object per line, as Ollama streams.
fn ndjson_line(v: &Value) -> Result<Bytes, Infallible> {
    let mut line = v.to_string();
    line.push('\n');
    Ok(Bytes::from(line))
}

/// Ollama's `message.tool_calls`: arguments as objects, no ids.
fn tool_calls(calls: &[ToolCall]) -> Value {
    let call = |c: &ToolCall| json!({ "function": { "name": c.name, "arguments": arguments_object(c) } });
    calls.iter().map(call).collect()
}

/// The answer, whole or streamed; `calls` splits the model's tool calls from its text.
async fn respond(mut generation: Generation, stream: bool, started: Instant, kind: Kind, mut calls: CallReader) -> Result<Response, ApiError> {
    let model = generation.model().name.clone();
    let tok = generation.tokenizer().clone();
    if !stream {
        let out = generation.collect().await?;
        let (text, found) = calls.split(&out.text);
        let mut last = kind.last(&model, &text, &out.finished, started);
        if !found.is_empty() {
            last["message"]["tool_calls"] = tool_calls(&found);
        }
        if !out.logprobs.is_empty() {
            last["logprobs"] = token_logprobs(&tok, &out.logprobs).into();
        }
        return Ok(Json(last).into_response());
    }
    let lines = async_stream::stream! {
        while let Some(event) = generation.next().await {
            match event {
                Event::Started { .. } => {}
                Event::Chunk { text, logprobs } => {
                    let mut lines = kind.pieces(&model, calls.push(&text));
                    if !logprobs.is_empty() {
                        if lines.is_empty() {
                            lines.push(kind.object(&model, "", false));
                        }
                        lines[0]["logprobs"] = token_logprobs(&tok, &logprobs).into();
                    }
                    for line in lines {
                        yield ndjson_line(&line);
                    }
                }
                Event::Done(f) => {
                    for line in kind.pieces(&model, calls.finish()) {
                        yield ndjson_line(&line);
                    }
                    yield ndjson_line(&kind.last(&model, "", &f, started));
                    break;
                }
                Event::Error(e) => {
                    yield ndjson_line(&ApiError::from_engine(e).body(Api::Ollama));
                    break;
                }
            }
        }
    };
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response())
}
