//! JSON request bodies, with errors that name the field.
//!
//! axum's `Json` extractor answers malformed input in its own plain-text shape and insists on a
//! `Content-Type` header (which `curl -d` does not send as JSON); this one accepts any content
//! type, reports the JSON path of a missing or mistyped field (`messages[0].content`) and maps
//! an over-limit body to 413, all as [`ApiError`]s.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ErrorKind};

/// A JSON body deserialized into `T`.
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(ErrorKind::TooLarge, "the request body is larger than the server's limit (--max-body)")
            } else {
                ApiError::new(ErrorKind::InvalidRequest, format!("cannot read the request body: {}", e.body_text()))
            }
        })?;
        parse(&bytes).map(JsonBody)
    }
}

/// Parses `bytes` as a JSON object into `T`; the error names the field at fault.
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(ErrorKind::InvalidRequest, "the request body is empty; a JSON object is expected"));
    }
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(ErrorKind::InvalidRequest, format!("malformed JSON in the request body: {e}"))
    })?;
    if !value.is_object() {
        return Err(ApiError::new(ErrorKind::InvalidRequest, "the request body must be a JSON object"));
    }
    from_value(&value)
}

/// Deserializes a part of an already parsed body; the error names the field.
pub(crate) fn from_value<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            ApiError::new(ErrorKind::InvalidRequest, format!("invalid request: {}", e.into_inner()))
        } else {
            ApiError::invalid(&path, e.into_inner())
        }
    })
}

/// Checks that an optional number lies in `lo..=hi`.
pub(crate) fn check_range<T: PartialOrd + std::fmt::Display + Copy>(
    param: &str,
    value: Option<T>,
    lo: T,
    hi: T,
) -> Result<(), ApiError> {
    match value {
        Some(v) if !(lo <= v && v <= hi) => Err(ApiError::invalid(param, format!("{v} is out of range: it must be between {lo} and {hi}"))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Req {
        model: String,
        messages: Vec<Msg>,
    }
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Msg {
        role: String,
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse::<Req>(br#"{"model": "m", "messages": [{"role": 3}]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        assert!(e.message.starts_with("messages[0].role: invalid type: integer `3`"), "{}", e.message);
        assert!(parse::<Req>(b"[1]").unwrap_err().message.contains("must be a JSON object"));
        let e = parse::<Req>(br#"{"messages": []}"#).unwrap_err();
        assert!(e.message.contains("missing field `model`"), "{}", e.message);
        let e = parse::<Req>(br#"{"model": "m", "messages": [}"#).unwrap_err();
        assert!(e.message.starts_with("malformed JSON"), "{}", e.message);
        let e = parse::<Req>(br#"{"model": "m", "messages": []} x"#).unwrap_err();
        assert!(e.message.starts_with("malformed JSON"), "{}", e.message);
        assert!(parse::<Req>(b" ").unwrap_err().message.contains("empty"));
    }
}
