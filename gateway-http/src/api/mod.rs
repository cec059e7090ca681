//! The Enterprise Gateway REST API: routes, the request guard (token, origin, CORS), handlers and
//! the JSON shapes clients see.
//!
//! Every route is rooted at the configured `base_url`. API routes pass through the guard (token,
//! origin check, CORS headers); the swagger documents and the catch-all 404 do not, as in EG.
//! Handlers return `Result<_, Error>` and never choose an error status themselves: the one mapping
//! lives in `impl IntoResponse for Error`, and the manager's own [`ManagerError`] becomes an
//! `Error` here, in one `From`.
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};

use crate::manager::ManagerError;
use crate::{Error, GatewayConfig, KernelManager};

mod admin;
pub mod dto;
pub(crate) mod edge;
mod extract;
mod guard;
pub mod health;
mod kernels;
mod kernelspecs;
mod sessions;
mod swagger;

/// The default largest request body (EG/Tornado allow 100 MB; start requests are tiny); the
/// limit in force is [`crate::config::HttpLimits::max_body_bytes`].
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// The jupyter_server version reported by `GET /api` (clients only check the key exists).
pub const JUPYTER_SERVER_VERSION: &str = "2.21.1";

/// The Enterprise Gateway version this gateway is compatible with, reported by `GET /api`.
pub const GATEWAY_VERSION: &str = "3.3.0";

/// State shared by every handler.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub(crate) manager: Arc<KernelManager>,
    pub(crate) config: Arc<GatewayConfig>,
    /// Normalised base URL (leading and trailing `/`).
    pub(crate) base: Arc<str>,
    pub(crate) sessions: Arc<sessions::Sessions>,
    pub(crate) cors: Arc<guard::CorsHeaders>,
}

/// The whole HTTP application for `manager`: every EG route under the configured `base_url`.
pub fn router(manager: Arc<KernelManager>) -> Router {
    let config = Arc::clone(manager.config());
    let base: Arc<str> = normalize_base_url(&config.base_url).into();
    let state = AppState {
        cors: Arc::new(guard::CorsHeaders::new(&config.cors)),
        sessions: Arc::new(sessions::Sessions::default()),
        manager,
        config,
        base: Arc::clone(&base),
    };
    let at = |path: &str| format!("{}{path}", escape_route(&base));

    // Routes behind the token / origin / CORS guard.
    let api = Router::new()
        .route(&at("api"), api_route(get(version)))
        .route(&at("api/me"), api_route(get(me)))
        .route(&at("api/profiles"), api_route(get(profiles)))
        .route(
            &at("api/kernels"),
            api_route(get(kernels::list).post(kernels::start)),
        )
        .route(
            &at("api/kernels/{kernel_id}"),
            api_route(get(kernels::get).delete(kernels::shutdown)),
        )
        .route(
            &at("api/kernels/{kernel_id}/interrupt"),
            api_route(post(kernels::interrupt)),
        )
        .route(
            &at("api/kernels/{kernel_id}/restart"),
            api_route(post(kernels::restart)),
        )
        .route(&at("api/kernelspecs"), api_route(get(kernelspecs::list)))
        .route(
            &at("api/kernelspecs/{kernel_name}"),
            api_route(get(kernelspecs::get)),
        )
        .route(
            &at("kernelspecs/{kernel_name}/{*path}"),
            api_route(get(kernelspecs::resource)),
        )
        .route(
            &at("api/sessions"),
            api_route(get(sessions::list).post(sessions::create)),
        )
        .route(
            &at("api/sessions/{session_id}"),
            api_route(
                get(sessions::get)
                    .patch(sessions::update)
                    .delete(sessions::delete),
            ),
        )
        .route(&at("api/admin/kernels"), api_route(get(admin::kernels)))
        .route(&at("metrics"), api_route(get(admin::metrics)))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            guard::api_guard,
        ));
    // The WebSocket route checks the origin itself (a failure is 403 there, not 404).
    let channels = Router::new()
        .route(
            &at("api/kernels/{kernel_id}/channels"),
            api_route(get(kernels::channels)),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            guard::channels_guard,
        ));
    // Open routes: no token, no CORS.
    let open = Router::new()
        .route(
            &at("api/swagger.json"),
            get(swagger::json).fallback(method_not_allowed),
        )
        .route(
            &at("api/swagger.yaml"),
            get(swagger::yaml).fallback(method_not_allowed),
        )
        .route(&at("healthz"), api_route(get(health::healthz)))
        .route(&at("readyz"), api_route(get(health::readyz)))
        .route(&at("admin"), api_route(get(admin::page)))
        .route(&at("admin/{asset}"), api_route(get(admin::asset)));

    api.merge(channels)
        .merge(open)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.config.limits.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            state.config.limits.clone(),
            edge::edge,
        ))
        .layer(middleware::from_fn(crate::metrics::http))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// `base_url` with exactly one leading and one trailing `/` (a relative `fake/path` becomes `/fake/path/`).
pub fn normalize_base_url(base_url: &str) -> String {
    let trimmed = base_url.trim().trim_matches('/');
    if trimmed.is_empty() {
        "/".to_owned()
    } else {
        format!("/{trimmed}/")
    }
}

/// Braces are route syntax for the router; a literal brace in the base URL must be doubled.
fn escape_route(base: &str) -> String {
    base.replace('{', "{{").replace('}', "}}")
}

/// Every API route answers unsupported methods with EG's JSON 405.
fn api_route(route: MethodRouter<AppState>) -> MethodRouter<AppState> {
    route.fallback(method_not_allowed)
}

async fn method_not_allowed() -> Error {
    Error::MethodNotAllowed
}

/// The catch-all: JSON 404 for any unknown path, without token or CORS (EG's NotFoundHandler).
pub(crate) async fn not_found() -> Error {
    Error::NotFound(String::new())
}

/// `GET /api`.
async fn version() -> axum::Json<dto::VersionModel> {
    axum::Json(dto::VersionModel {
        version: JUPYTER_SERVER_VERSION,
        gateway_version: GATEWAY_VERSION,
        enterprise_gateway_rs: env!("CARGO_PKG_VERSION"),
    })
}

/// `GET /api/profiles`: the kernel profiles the caller may use, in file order.
async fn profiles(
    axum::extract::State(state): axum::extract::State<AppState>,
    guard::Caller(caller): guard::Caller,
) -> axum::Json<Vec<dto::ProfileModel>> {
    let set = state.manager.profile_set();
    let models = set
        .usable_by(&caller.user, &caller.groups)
        .map(|profile| dto::ProfileModel::new(profile, &caller.groups))
        .collect();
    axum::Json(models)
}

/// `GET /api/me`: who the gateway thinks the caller is, in jupyter_server's shape (`identity`,
/// `permissions`), plus the groups, roles and authenticator behind it.
async fn me(guard::Caller(caller): guard::Caller) -> axum::Json<dto::MeModel> {
    axum::Json(dto::MeModel::from(caller.as_ref()))
}

/// The access log: one info line per request (target `access`, so `--log_level` can quiet it
/// with `info,access=warn`): method, path, status, time to the response head, the client's
/// address and, once the guard authenticated it, the user. The query string is left out because
/// it may carry a token.
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let client = request
        .extensions()
        .get::<crate::auth::ConnectionInfo>()
        .map(|c| c.peer.to_string())
        .unwrap_or_else(|| "-".to_owned());
    let started = tokio::time::Instant::now();
    let response = next.run(request).await;
    let elapsed = Millis(started.elapsed());
    let user = response
        .extensions()
        .get::<guard::Caller>()
        .map(|caller| caller.0.user.as_str())
        .unwrap_or("-");
    let status = response.status().as_u16();
    tracing::info!(target: "access", %client, user = %user, "{method} {path} {status} {elapsed}");
    response.into_response()
}

/// A duration in milliseconds with about three significant digits (`0.42ms`, `3.1ms`, `250ms`).
struct Millis(Duration);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0.as_secs_f64() * 1000.0;
        match ms {
            ms if ms < 10.0 => write!(f, "{ms:.2}ms"),
            ms if ms < 100.0 => write!(f, "{ms:.1}ms"),
            ms => write!(f, "{ms:.0}ms"),
        }
    }
}

/// The manager's refusals and failures as the API answers them: each keeps its text, and its
/// status follows from the kind (400, 403, 404, 409, 500/503 by whose fault a launch failure is).
impl From<ManagerError> for Error {
    fn from(error: ManagerError) -> Error {
        match error {
            ManagerError::BadRequest { message } => Error::BadRequest { message },
            ManagerError::Forbidden { reason, message } => Error::Forbidden { reason, message },
            ManagerError::NoSuchKernel(id) => Error::NoSuchKernel(id),
            ManagerError::NoSuchKernelSpec(name) => Error::NoSuchKernelSpec(name),
            ManagerError::KernelExists(id) => Error::KernelExists(id),
            ManagerError::LaunchFailed { reason, fault } => Error::LaunchFailed { reason, fault },
            ManagerError::Unsupported(why) => Error::Unsupported(why),
            ManagerError::Internal(why) => Error::Internal(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_keep_about_three_digits() {
        let shown = |micros| Millis(Duration::from_micros(micros)).to_string();
        assert_eq!(shown(420), "0.42ms");
        assert_eq!(shown(3_140), "3.14ms");
        assert_eq!(shown(31_400), "31.4ms");
        assert_eq!(shown(250_400), "250ms");
        assert_eq!(shown(12_345_678), "12346ms");
    }
}
