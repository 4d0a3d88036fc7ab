//! The optional API key (`--api-key` or `EXO_API_KEY`).
//!
//! Clients send it the way their API does: `Authorization: Bearer KEY` (OpenAI, and Ollama
//! clients given headers) or `x-api-key: KEY` (Anthropic). The bytes are compared in constant
//! time, so response timing does not reveal how much of a guess was right (only whether its
//! length was).

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::error::{ApiError, ErrorKind};
use crate::AppState;

/// Middleware: lets a request through only with the right key (or when none is configured).
pub(crate) async fn require_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(want) = &state.api_key else {
        return next.run(req).await;
    };
    match presented_key(req.headers()) {
        Some(got) if bool::from(got.as_bytes().ct_eq(want.as_bytes())) => next.run(req).await,
        Some(_) => ApiError::new(ErrorKind::Authentication, "invalid API key").into_response(),
        None => ApiError::new(
            ErrorKind::Authentication,
            "missing API key: send it as 'Authorization: Bearer KEY' or 'x-api-key: KEY'",
        )
        .into_response(),
    }
}

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim))
}
