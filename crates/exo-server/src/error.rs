//! Errors: one [`ApiError`] type for every handler, its HTTP status decided here once, and its
//! body written in the shape of the API the request was made to.
//!
//! Handlers and extractors return [`ApiError`]; its response carries the error in an extension,
//! and [`shape_errors`] (a middleware that knows the request path) writes the body as OpenAI
//! (`{"error":{"message","type","param","code"}}`), Ollama (`{"error":"..."}`) or Anthropic
//! (`{"type":"error","error":{"type","message"}}`) clients expect. axum's own 404 and 405
//! responses pass through the same place, so no client ever sees a body it cannot parse.

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use exo_engine::{EngineError, SubmitError};
use serde_json::json;

/// What went wrong, independent of the API's wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// Malformed JSON, a missing or mistyped field, a value out of range (400).
    InvalidRequest,
    /// The prompt and `max_tokens` do not fit the context (400).
    ContextLength,
    /// No or a wrong API key (401).
    Authentication,
    /// An unknown model (404).
    ModelNotFound,
    /// An unknown path (404).
    NotFound,
    /// A method the path does not serve (405).
    MethodNotAllowed,
    /// The body is over the size limit (413).
    TooLarge,
    /// Every slot busy and the queue full, or models still loading (503, with Retry-After).
    Unavailable,
    /// A failure inside the server (500); never caused by what the client sent.
    Internal,
}

/// An error answer: kind, message and the request field it is about.
#[derive(Clone, Debug)]
pub(crate) struct ApiError {
    pub(crate) kind: ErrorKind,
    pub(crate) message: String,
    /// The request field at fault, as a path (`messages[0].content`), when there is one.
    pub(crate) param: Option<String>,
}

/// Seconds a client is asked to wait before retrying a 503.
const RETRY_AFTER_SECS: u32 = 1;

impl ApiError {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), param: None }
    }

    /// A 400 about `param`; the message is prefixed with the field's name.
    pub(crate) fn invalid(param: &str, message: impl std::fmt::Display) -> Self {
        Self { kind: ErrorKind::InvalidRequest, message: format!("{param}: {message}"), param: Some(param.to_string()) }
    }

    /// A 400 for a feature exo does not provide, naming the field that asked for it.
    pub(crate) fn unsupported(param: &str, what: impl std::fmt::Display) -> Self {
        Self::invalid(param, format!("{what} is not supported"))
    }

    pub(crate) fn model_not_found(name: &str, available: &[&str]) -> Self {
        let mut e = Self::new(
            ErrorKind::ModelNotFound,
            format!("model '{name}' not found; this server serves: {}", available.join(", ")),
        );
        e.param = Some("model".into());
        e
    }

    /// Maps a refused submission; every variant but `Closed` is the client's to fix or retry.
    pub(crate) fn from_submit(e: SubmitError) -> Self {
        let kind = match &e {
            SubmitError::QueueFull { .. } | SubmitError::Closed => ErrorKind::Unavailable,
            SubmitError::TooLong { .. } | SubmitError::PromptFillsContext { .. } => ErrorKind::ContextLength,
            SubmitError::EmptyPrompt | SubmitError::Prompt(_) | SubmitError::Sampler(_) => ErrorKind::InvalidRequest,
        };
        Self::new(kind, e.to_string())
    }

    /// An engine failure during generation.
    pub(crate) fn from_engine(e: EngineError) -> Self {
        tracing::error!("generation failed: {e}");
        Self::new(ErrorKind::Internal, e.to_string())
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self.kind {
            ErrorKind::InvalidRequest | ErrorKind::ContextLength => StatusCode::BAD_REQUEST,
            ErrorKind::Authentication => StatusCode::UNAUTHORIZED,
            ErrorKind::ModelNotFound | ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The body in `api`'s shape.
    pub(crate) fn body(&self, api: Api) -> serde_json::Value {
        match api {
            Api::OpenAi => {
                let (ty, code) = match self.kind {
                    ErrorKind::InvalidRequest => ("invalid_request_error", None),
                    ErrorKind::ContextLength => ("invalid_request_error", Some("context_length_exceeded")),
                    ErrorKind::Authentication => ("invalid_request_error", Some("invalid_api_key")),
                    ErrorKind::ModelNotFound => ("invalid_request_error", Some("model_not_found")),
                    ErrorKind::NotFound => ("invalid_request_error", Some("not_found")),
                    ErrorKind::MethodNotAllowed => ("invalid_request_error", Some("method_not_allowed")),
                    ErrorKind::TooLarge => ("invalid_request_error", Some("request_too_large")),
                    ErrorKind::Unavailable => ("server_error", Some("server_busy")),
                    ErrorKind::Internal => ("server_error", None),
                };
                json!({ "error": { "message": self.message, "type": ty, "param": self.param, "code": code } })
            }
            Api::Ollama => json!({ "error": self.message }),
            Api::Anthropic => {
                let ty = match self.kind {
                    ErrorKind::InvalidRequest | ErrorKind::ContextLength | ErrorKind::MethodNotAllowed => {
                        "invalid_request_error"
                    }
                    ErrorKind::Authentication => "authentication_error",
                    ErrorKind::ModelNotFound | ErrorKind::NotFound => "not_found_error",
                    ErrorKind::TooLarge => "request_too_large",
                    ErrorKind::Unavailable => "overloaded_error",
                    ErrorKind::Internal => "api_error",
                };
                json!({ "type": "error", "error": { "type": ty, "message": self.message } })
            }
        }
    }
}

impl IntoResponse for ApiError {
    /// An OpenAI-shaped body; [`shape_errors`] rewrites it for the other APIs.
    fn into_response(self) -> Response {
        let mut res = (self.status(), axum::Json(self.body(Api::OpenAi))).into_response();
        if self.kind == ErrorKind::Unavailable {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        res.extensions_mut().insert(self);
        res
    }
}

/// The API family a path belongs to, which decides the error shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Api {
    OpenAi,
    Ollama,
    Anthropic,
}

impl Api {
    pub(crate) fn of_path(path: &str) -> Self {
        if path.starts_with("/api/") {
            Api::Ollama
        } else if path.starts_with("/v1/messages") {
            Api::Anthropic
        } else {
            Api::OpenAi
        }
    }
}

/// Middleware: writes every error response in the shape of the API its path belongs to,
/// including axum's bodiless 404 (unknown path) and 405 (wrong method).
pub(crate) async fn shape_errors(req: Request, next: Next) -> Response {
    let api = Api::of_path(req.uri().path());
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let res = next.run(req).await;
    let error = match res.extensions().get::<ApiError>() {
        Some(e) => e.clone(),
        None if res.status() == StatusCode::NOT_FOUND => {
            ApiError::new(ErrorKind::NotFound, format!("no endpoint at {path}"))
        }
        None if res.status() == StatusCode::METHOD_NOT_ALLOWED => {
            ApiError::new(ErrorKind::MethodNotAllowed, format!("{method} is not allowed on {path}"))
        }
        None => return res,
    };
    if api == Api::OpenAi && res.status() == error.status() && res.extensions().get::<ApiError>().is_some() {
        return res;
    }
    let (mut parts, _) = res.into_parts();
    parts.status = error.status();
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = serde_json::to_vec(&error.body(api)).unwrap_or_default();
    Response::from_parts(parts, axum::body::Body::from(body))
}
