//! Request extractors whose refusals use the API's error shape. axum's own extractors answer
//! plain text (and 415/422); the API promises `{"error":{…}}` and 400 for anything malformed.

use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;
use sluice_common::model::Epoch;

/// A JSON body. The content type is not checked (so `curl -d` works as is); the bytes must be
/// JSON of the expected shape.
pub struct JsonBody<T>(pub T);

/// A JSON body that may be left out (empty or only whitespace): then `T::default()`.
pub struct OptionalJsonBody<T>(pub T);

fn bytes_rejection(e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::payload_too_large(format!("the body is too large: {}", e.body_text()))
    } else {
        ApiError::invalid(format!("could not read the body: {}", e.body_text()))
    }
}

/// Parses a body that must be a JSON object. (serde would also build a struct from an array
/// of its fields in order, which no client means and which lets garbage pass as a request.)
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid("invalid JSON body: it must be a JSON object ({…})"));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let mut why = e.to_string();
        if why.contains("untagged enum ProxySelection") {
            why = "proxies must be a number of free proxies to take, or a list of proxy addresses".into();
        }
        ApiError::invalid(format!("invalid JSON body: {why}"))
    })
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(bytes_rejection)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::invalid("the body is empty; this call takes a JSON object"));
        }
        parse(&bytes).map(JsonBody)
    }
}

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(bytes_rejection)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJsonBody(T::default()));
        }
        parse(&bytes).map(OptionalJsonBody)
    }
}

/// Path parameters.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|e| ApiError::invalid(format!("bad path: {}", e.body_text())))
    }
}

/// Query parameters.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e| ApiError::invalid(format!("bad query string: {}", e.body_text())))
    }
}

/// `If-Match: "<epoch>"` (quotes optional, `W/` tolerated, `*` matches any epoch).
pub struct IfMatch(pub Option<Epoch>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(header::IF_MATCH) else {
            return Ok(IfMatch(None));
        };
        parse_if_match(value.as_bytes()).map(IfMatch)
    }
}

pub fn parse_if_match(raw: &[u8]) -> Result<Option<Epoch>, ApiError> {
    let bad = || ApiError::invalid("If-Match must name one epoch, like If-Match: \"17\" (or *)");
    let text = std::str::from_utf8(raw).map_err(|_| bad())?.trim();
    if text == "*" {
        return Ok(None);
    }
    let text = text.strip_prefix("W/").unwrap_or(text);
    let text = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(text);
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    text.parse().map(Some).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::parse_if_match;

    #[test]
    fn if_match_forms() {
        assert_eq!(parse_if_match(b"\"17\"").unwrap(), Some(17));
        assert_eq!(parse_if_match(b"17").unwrap(), Some(17));
        assert_eq!(parse_if_match(b" W/\"3\" ").unwrap(), Some(3));
        assert_eq!(parse_if_match(b"*").unwrap(), None);
        for bad in [&b""[..], b"\"\"", b"abc", b"-1", b"\"1", b"1,2", b"99999999999999999999999"] {
            assert!(parse_if_match(bad).is_err(), "{bad:?}");
        }
    }
}
