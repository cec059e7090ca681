//! What runs before every API handler: route-id shape, authentication (the caller's
//! [`Identity`] is put into the request for the handlers), origin, and the CORS and
//! `nosniff` headers on whatever comes back (401s and errors included).
use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{Query, RawPathParams, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};

use std::sync::Arc;

use axum::extract::FromRequestParts;
use http::request::Parts;

use super::AppState;
use crate::Error;
use crate::auth::{ConnectionInfo, Credentials, Identity};
use crate::config::Cors;

/// The configured CORS headers, validated once.
#[derive(Debug, Default)]
pub(crate) struct CorsHeaders {
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl CorsHeaders {
    pub(crate) fn new(cors: &Cors) -> CorsHeaders {
        let settings = [
            (
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                &cors.allow_credentials,
            ),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, &cors.allow_headers),
            (header::ACCESS_CONTROL_ALLOW_METHODS, &cors.allow_methods),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, &cors.allow_origin),
            (header::ACCESS_CONTROL_EXPOSE_HEADERS, &cors.expose_headers),
            (header::ACCESS_CONTROL_MAX_AGE, &cors.max_age),
        ];
        let mut headers = Vec::new();
        for (name, value) in settings {
            let Some(value) = value.as_deref().filter(|v| !v.is_empty()) else {
                continue;
            };
            match HeaderValue::from_str(value) {
                Ok(value) => headers.push((name, value)),
                Err(_) => {
                    tracing::warn!(header = %name, "ignoring a CORS setting that is not a valid header value")
                }
            }
        }
        CorsHeaders { headers }
    }

    fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// Guard for REST routes: a failed origin check is a 404, as in jupyter_server's `APIHandler`.
pub(crate) async fn api_guard(
    State(state): State<AppState>,
    params: Result<RawPathParams, RawPathParamsRejection>,
    request: Request,
    next: Next,
) -> Response {
    guard(&state, params.ok(), request, next, true).await
}

/// Guard for the WebSocket route: the handler checks the origin after the kernel lookup (403).
pub(crate) async fn channels_guard(
    State(state): State<AppState>,
    params: Result<RawPathParams, RawPathParamsRejection>,
    request: Request,
    next: Next,
) -> Response {
    guard(&state, params.ok(), request, next, false).await
}

async fn guard(
    state: &AppState,
    params: Option<RawPathParams>,
    request: Request,
    next: Next,
    check_origin: bool,
) -> Response {
    // Ids without EG's route shape never matched a route there: answer as the catch-all does.
    if !params.as_ref().is_some_and(ids_have_route_shape) {
        return super::not_found().await.into_response();
    }
    let mut response = if request.method() == Method::OPTIONS {
        StatusCode::OK.into_response()
    } else {
        // The body is not `Sync`: authenticate on the head alone, so the future stays `Send`.
        let (mut parts, body) = request.into_parts();
        match authenticate(state, &parts).await {
            Err(error) => error.into_response(),
            Ok(_)
                if check_origin
                    && !origin_allowed(
                        state.config.cors.allow_origin.as_deref(),
                        &parts.headers,
                    ) =>
            {
                tracing::debug!(path = parts.uri.path(), "origin check failed");
                Error::NotFound(String::new()).into_response()
            }
            Ok(identity) => {
                let caller = Caller(Arc::new(identity));
                parts.extensions.insert(caller.clone());
                let mut response = next.run(Request::from_parts(parts, body)).await;
                // For the access log, which sees only the response.
                response.extensions_mut().insert(caller);
                response
            }
        }
    };
    state.cors.apply(response.headers_mut());
    response
        .headers_mut()
        .remove(header::CONTENT_SECURITY_POLICY);
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        response.headers_mut().insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
    }
    response
}

/// The authenticated caller of a request, put there by the guard.
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub(crate) Arc<Identity>);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            Error::Internal("a handler ran without the authentication guard".to_owned())
        })
    }
}

/// Runs the authenticator chain on a request. A failure is logged for the audit trail (the
/// client address and path, never the credential) and answered 401: with EG's empty message for
/// the legacy shared token alone, with the reason otherwise.
pub(crate) async fn authenticate(state: &AppState, request: &Parts) -> Result<Identity, Error> {
    let auth = &state.config.auth;
    if !auth.is_enabled() {
        return Ok(Identity::anonymous());
    }
    let query_token = query_token(request);
    let connection = request.extensions.get::<ConnectionInfo>();
    let credentials = Credentials {
        headers: &request.headers,
        query_token: query_token.as_deref(),
        client_certificate: connection.and_then(|c| c.client_certificate.as_deref()),
    };
    auth.authenticate(&credentials).await.map_err(|rejection| {
        tracing::warn!(
            target: "audit",
            client = %connection.map(|c| c.peer.to_string()).unwrap_or_default(),
            method = %request.method,
            path = request.uri.path(),
            reason = %rejection,
            "authentication failed"
        );
        if auth.chain().len() == 1 && auth.chain().iter().all(|a| a.name() == "token") {
            Error::Unauthorized(String::new())
        } else {
            Error::Unauthorized(rejection.message)
        }
    })
}

/// The `token` query argument (EG accepts `?token=` besides the header); the last one wins.
fn query_token(request: &Parts) -> Option<String> {
    Query::<Vec<(String, String)>>::try_from_uri(&request.uri)
        .ok()
        .and_then(|Query(pairs)| {
            pairs
                .into_iter()
                .rev()
                .find(|(key, _)| key == "token")
                .map(|(_, value)| value)
        })
}

/// Kernel and session ids must look like `\w+-\w+-\w+-\w+-\w+` (EG's route pattern).
fn ids_have_route_shape(params: &RawPathParams) -> bool {
    params
        .iter()
        .filter(|(name, _)| *name == "kernel_id" || *name == "session_id")
        .all(|(_, value)| is_route_id(value))
}

/// Five runs of word characters joined by `-` (Python's Unicode `\w`: letters, digits, `_`).
pub(crate) fn is_route_id(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_alphanumeric() || c == '_'))
}

/// jupyter_server's origin check: pass when `allow_origin` is `*`, when `Origin` or `Host` is
/// absent, when the origin's host:port equals `Host`, or when the origin equals `allow_origin`.
pub(crate) fn origin_allowed(allow_origin: Option<&str>, headers: &HeaderMap) -> bool {
    if allow_origin == Some("*") {
        return true;
    }
    let origin = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get("sec-websocket-origin"));
    let (Some(origin), Some(host)) = (origin, headers.get(header::HOST)) else {
        return true;
    };
    let origin = String::from_utf8_lossy(origin.as_bytes()).to_lowercase();
    if netloc(&origin).as_bytes() == host.as_bytes() {
        return true;
    }
    allow_origin.is_some_and(|allowed| !allowed.is_empty() && allowed == origin)
}

/// The `host[:port]` part of a URL, as Python's `urlparse(url).netloc` finds it (empty when the
/// text has no `scheme://` or `//` prefix, so `fake.com:8888` has no netloc).
fn netloc(url: &str) -> &str {
    let rest = match url.find("//") {
        Some(at)
            if url[..at].is_empty() || (url[..at].ends_with(':') && is_scheme(&url[..at - 1])) =>
        {
            &url[at + 2..]
        }
        _ => return "",
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    &rest[..end]
}

fn is_scheme(text: &str) -> bool {
    let mut chars = text.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netloc_follows_urlparse() {
        for (url, expected) in [
            ("http://localhost:8888", "localhost:8888"),
            ("https://example.com/path?q#f", "example.com"),
            ("//host:1", "host:1"),
            ("fake.com:8888", ""),
            ("null", ""),
            ("1http://x", ""),
        ] {
            assert_eq!(netloc(url), expected, "{url}");
        }
    }

    #[test]
    fn route_ids_have_five_word_groups() {
        assert!(is_route_id("1-2-3-4-5"));
        assert!(is_route_id("0d3c5e8f-2b1a-4c6d-9e7f-123456789abc"));
        for bad in [
            "1-2-3-4",
            "1-2-3-4-5-6",
            "1--3-4-5",
            "a.b-2-3-4-5",
            "1-2-3-4-5 ",
            "",
        ] {
            assert!(!is_route_id(bad), "{bad}");
        }
    }
}
