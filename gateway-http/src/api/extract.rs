//! Extractors whose rejections come out as the gateway's JSON errors instead of axum's plain text.
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use bytes::Bytes;
use http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::Error;

/// An optional JSON body: empty (or whitespace-only) bodies are `None`, no `Content-Type` is
/// required (EG's clients send JSON as form-urlencoded or with no type at all).
#[derive(Debug)]
pub(crate) struct JsonBody(pub(crate) Option<Value>);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = Error;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(body_error)?;
        if bytes.trim_ascii().is_empty() {
            return Ok(JsonBody(None));
        }
        serde_json::from_slice(&bytes)
            .map(|value| JsonBody(Some(value)))
            .map_err(|_| Error::BadRequest {
                message: "Invalid JSON in body of request".to_owned(),
            })
    }
}

fn body_error(rejection: BytesRejection) -> Error {
    if rejection.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
        Error::PayloadTooLarge
    } else if timed_out(&rejection) {
        Error::RequestTimeout(super::edge::BodyTimedOut.to_string())
    } else {
        Error::BadRequest {
            message: rejection.body_text(),
        }
    }
}

/// Whether reading the body failed because the edge's body timeout passed.
fn timed_out(rejection: &BytesRejection) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(error) = cause {
        if error.is::<super::edge::BodyTimedOut>() {
            return true;
        }
        cause = error.source();
    }
    false
}

/// Path parameters; a value that cannot be decoded means no route matched (catch-all 404).
#[derive(Debug)]
pub(crate) struct PathParam<T>(pub(crate) T);

impl<T, S> FromRequestParts<S> for PathParam<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| PathParam(value))
            .map_err(|rejection: PathRejection| {
                tracing::debug!(error = %rejection.body_text(), "path parameters rejected");
                Error::NotFound(String::new())
            })
    }
}

/// Query parameters as name/value pairs (a repeated name keeps every value, in order).
#[derive(Debug, Default)]
pub(crate) struct QueryParams(pub(crate) Vec<(String, String)>);

impl QueryParams {
    /// The last value given for `name` (Tornado's `get_argument`).
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map(|Query(pairs)| QueryParams(pairs))
            .map_err(|rejection: QueryRejection| Error::BadRequest {
                message: rejection.body_text(),
            })
    }
}
