//! `exo serve`: OpenAI-, Ollama- and Anthropic-compatible HTTP APIs over exo's engine, so that
//! the clients people already use (the `openai`, `ollama` and `anthropic` Python packages, Open
//! WebUI, LangChain, lm-eval-harness) work against a local model unchanged.
//!
//! - `openai`, `ollama`, `anthropic`: each API's wire format, translated to and from
//!   engine [`Request`](exo_engine::Request)s and [`Event`](exo_engine::Event)s. No API talks to
//!   a model directly: `generation` submits to the model's [`EngineHandle`] and reads its events.
//! - `embedding`: embedding models ([`exo_models::Embedder`], served next to generators) behind
//!   `/v1/embeddings`, `/api/embed` and `/api/embeddings`, computed off the async workers.
//! - `error`: one error type; its status is decided once and its body written in the shape of
//!   the API the request was made to.
//! - `auth`: optional API key (`Authorization: Bearer` or `x-api-key`); `/health` stays open.
//! - `metrics`: `GET /metrics` in Prometheus text format.
//!
//! The server listens before the models are loaded: `GET /health` answers 503 until they are,
//! then 200, so orchestrators can wait for readiness.

mod anthropic;
mod auth;
mod body;
mod embedding;
mod error;
mod generation;
mod metrics;
mod models;
mod ollama;
mod openai;
mod structured;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use exo_engine::{DraftSource, EngineConfig, EngineHandle, Speculation};
use tokio::net::TcpListener;

use crate::embedding::EmbeddingRunner;
use crate::error::{ApiError, ErrorKind};
use crate::metrics::Metrics;
use crate::models::{Runner, ServedModel};

/// How to run the server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on (port 0 picks a free one; see [`Server::local_addr`]).
    pub addr: SocketAddr,
    /// Key every request but `GET /health` must present; `None` leaves the server open.
    pub api_key: Option<String>,
    /// The models to serve.
    pub models: Vec<ModelSpec>,
    /// Context size per slot in tokens; `None`: the model's training context, at most 4096.
    pub ctx_size: Option<usize>,
    /// Where generators run: device, GPU layers and f16 weight copies (embedding models always
    /// run on the CPU). Its `gpu_ctx` is replaced by `ctx_size`.
    pub placement: exo_models::LoadOptions,
    /// Requests each model generates (or embeds) at once.
    pub parallel: usize,
    /// How KV rows are stored.
    pub kv_type: exo_models::KvType,
    /// Bytes of KV cache per model; `None`: a quarter of the available memory.
    pub kv_memory: Option<u64>,
    /// How each generator's matrices are re-quantized while loading; `None`: as stored.
    pub quantize: Option<exo_models::auto::Quantize>,
    /// What happens at the context window when a request does not say.
    pub context_policy: exo_engine::ContextPolicy,
    /// Requests each model lets wait for a slot before answering 503.
    pub queue: usize,
    /// Largest request body accepted, in bytes (larger: 413).
    pub max_body_bytes: usize,
    /// Decode speculatively; `None`: plainly.
    pub speculation: Option<SpeculationSpec>,
}

/// Speculative decoding for every generator served.
#[derive(Clone, Debug)]
pub struct SpeculationSpec {
    /// A draft model (a `.gguf` file or Hugging Face directory) loaded once and shared by
    /// every generator, each of which it must be able to draft for; `None`: prompt lookup.
    pub draft: Option<PathBuf>,
    /// How many tokens a step may draft.
    pub config: exo_engine::SpecConfig,
}

/// One model to serve: the name clients ask for, and where it is.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    /// Name in the APIs' `model` field.
    pub name: String,
    /// A `.gguf` file or a Hugging Face directory: a text generator, or a sentence-transformers
    /// directory (see [`exo_models::is_embedding_model`]), served for embeddings.
    pub path: PathBuf,
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A model failed to load.
    #[error("loading model '{name}' ({path}): {source}")]
    Load {
        /// Its name.
        name: String,
        /// Its path.
        path: PathBuf,
        /// The cause.
        source: Box<exo_models::ModelError>,
    },
    /// The draft model failed to load.
    #[error("loading the draft model {path}: {source}")]
    Draft {
        /// Its path.
        path: PathBuf,
        /// The cause.
        source: Box<exo_models::ModelError>,
    },
    /// A model's engine could not start (a context size it does not support, say).
    #[error("starting model '{name}': {source}")]
    Engine {
        /// Its name.
        name: String,
        /// The cause.
        source: exo_engine::EngineError,
    },
    /// Serving failed.
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

/// A bound server, ready to [`Server::run`].
pub struct Server {
    listener: TcpListener,
    config: ServerConfig,
    state: AppState,
}

/// What every handler shares.
pub(crate) struct ServerState {
    /// Set once every model is loaded.
    models: OnceLock<Vec<Arc<ServedModel>>>,
    api_key: Option<String>,
    metrics: Metrics,
}

pub(crate) type AppState = Arc<ServerState>;

/// Prompt tokens per forward pass while evaluating prompts.
const PROMPT_BATCH: usize = 512;

impl Server {
    /// Binds `config.addr`. Models are loaded by [`Server::run`], while already answering
    /// `/health` with 503.
    pub async fn bind(config: ServerConfig) -> Result<Self, ServerError> {
        let listener = TcpListener::bind(config.addr).await.map_err(|source| ServerError::Bind { addr: config.addr, source })?;
        let state = Arc::new(ServerState { models: OnceLock::new(), api_key: config.api_key.clone(), metrics: Metrics::default() });
        Ok(Self { listener, config, state })
    }

    /// The address listened on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.addr)
    }

    /// Loads the models, then serves until Ctrl-C or SIGTERM.
    pub async fn run(self) -> Result<(), ServerError> {
        let app = router(self.state.clone(), self.config.max_body_bytes);
        let serve = axum::serve(self.listener, app).with_graceful_shutdown(shutdown_signal()).into_future();
        let config = self.config.clone();
        let load = tokio::task::spawn_blocking(move || load_models(&config));
        tokio::pin!(serve);
        tokio::select! {
            served = &mut serve => return served.map_err(ServerError::Io),
            loaded = load => {
                let models = loaded.map_err(|e| ServerError::Io(std::io::Error::other(e)))??;
                let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
                tracing::info!("serving {}", names.join(", "));
                let _ = self.state.models.set(models);
            }
        }
        serve.await.map_err(ServerError::Io)
    }
}

fn load_models(config: &ServerConfig) -> Result<Vec<Arc<ServedModel>>, ServerError> {
    let options = exo_models::LoadOptions { gpu_ctx: config.ctx_size, ..config.placement.clone() };
    let speculation = match &config.speculation {
        None => None,
        Some(SpeculationSpec { draft: None, config }) => Some(Speculation { source: DraftSource::Ngram, config: *config }),
        Some(SpeculationSpec { draft: Some(path), config }) => {
            let draft = exo_models::load(path, &options).map_err(|e| ServerError::Draft { path: path.clone(), source: Box::new(e) })?;
            Some(Speculation { source: DraftSource::Model(Arc::new(draft)), config: *config })
        }
    };
    let mut out = Vec::new();
    for spec in &config.models {
        let load_error = |source| ServerError::Load { name: spec.name.clone(), path: spec.path.clone(), source: Box::new(source) };
        let runner = if exo_models::is_embedding_model(&spec.path) {
            let embedder = exo_models::Embedder::load(&spec.path).map_err(load_error)?;
            Runner::Embedder(EmbeddingRunner::new(embedder, config.parallel, config.queue))
        } else {
            let (model, report) = exo_models::auto::load_with(&spec.path, &options, config.quantize.as_ref()).map_err(load_error)?;
            // At warn level, which the server shows by default: the analysis can take minutes,
            // and a cache that could not be used makes the next start as slow.
            for line in report.iter().flat_map(exo_models::auto::AutoReport::describe) {
                tracing::warn!("{}: {line}", spec.name);
            }
            let ctx = config.ctx_size.unwrap_or(model.transformer.config().train_ctx.min(4096));
            let engine_config = EngineConfig {
                parallel: config.parallel,
                queue: config.queue,
                batch: PROMPT_BATCH,
                kv_type: config.kv_type,
                kv_memory: config.kv_memory,
                policy: config.context_policy,
                speculation: speculation.clone(),
                ..EngineConfig::new(ctx)
            };
            let engine = EngineHandle::start(Arc::new(model), engine_config)
                .map_err(|source| ServerError::Engine { name: spec.name.clone(), source })?;
            Runner::Generator(engine)
        };
        out.push(Arc::new(ServedModel::new(spec.name.clone(), runner)));
    }
    Ok(out)
}

fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/models", get(openai::list_models))
        .route("/v1/models/{model}", get(openai::get_model))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/messages", post(anthropic::messages))
        .route("/api/version", get(ollama::version))
        .route("/api/tags", get(ollama::tags))
        .route("/api/show", post(ollama::show))
        .route("/api/ps", get(ollama::ps))
        .route("/api/generate", post(ollama::generate))
        .route("/api/chat", post(ollama::chat))
        .route("/api/embed", post(ollama::embed))
        .route("/api/embeddings", post(ollama::embeddings))
        .route("/metrics", get(metrics))
        .route_layer(from_fn_with_state(state.clone(), auth::require_key))
        .route("/health", get(health))
        .route_layer(from_fn_with_state(state.clone(), metrics::count_requests))
        .layer(from_fn(error::shape_errors))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

impl ServerState {
    /// All served models, or 503 while they load.
    pub(crate) fn models(&self) -> Result<&[Arc<ServedModel>], ApiError> {
        self.models.get().map(Vec::as_slice).ok_or_else(|| ApiError::new(ErrorKind::Unavailable, "models are still loading"))
    }

    /// The model clients call `name`; Ollama clients may add the default tag `:latest`.
    pub(crate) fn model(&self, name: &str) -> Result<Arc<ServedModel>, ApiError> {
        let models = self.models()?;
        let bare = name.strip_suffix(":latest").unwrap_or(name);
        models.iter().find(|m| m.name == name || m.name == bare).cloned().ok_or_else(|| {
            ApiError::model_not_found(name, &models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>())
        })
    }
}

/// `GET /health`: 200 once the models are loaded, 503 before.
async fn health(State(state): State<AppState>) -> impl IntoResponse {
    match state.models.get() {
        Some(_) => (StatusCode::OK, Json(serde_json::json!({ "status": "ok" }))),
        None => (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "status": "loading" }))),
    }
}

/// `GET /metrics`.
async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let engines: Vec<_> = state.models()?.iter().map(|m| (m.name.clone(), m.load())).collect();
    let text = state.metrics.render(&engines);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
