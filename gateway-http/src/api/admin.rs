//! The operator's view: the admin page (`/admin` and its two assets), its data route
//! (`GET /api/admin/kernels`) and `/metrics` on the API port.
//!
//! The page is server-rendered: a request that authenticates as an admin (a `?token=`, a client
//! certificate, or no authentication configured) gets the kernel table filled in; any other
//! gets the shell with nothing in it. From then on its script fetches everything from the JSON
//! API with the signed-in user's credentials, so it sees exactly what that user's API calls may
//! see. `GET /api/admin/kernels` and `/metrics` answer admins only (403 to anybody
//! else); interrupt, restart and shutdown go through the ordinary kernel routes.
//!
//! How the browser authenticates: a TLS client certificate or a proxy needs nothing more; with
//! tokens the page shows a sign-in form, or takes `?token=` from its own URL once (the script
//! then removes it from the address bar). The token is kept in the tab's `sessionStorage` and
//! sent on every API call as `Authorization: Bearer <t>` when it is JWT-shaped (an OIDC
//! issuer's), as `Authorization: token <t>` otherwise; it is gone when the tab closes. A page
//! request that carries a non-admin's credential is answered 403 with nothing but a notice.
//!
//! Assets are compiled in (`include_str!`) and the page's Content-Security-Policy allows only
//! them: no inline script, no CDN, no build step.
use axum::Json;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::header::{CACHE_CONTROL, CONTENT_TYPE, REFERRER_POLICY};
use http::{HeaderValue, StatusCode};

use super::AppState;
use super::dto::AdminKernelModel;
use super::guard::{self, Caller};
use crate::Error;
use crate::auth::ConnectionInfo;
use crate::config::MetricsAccess;

const PAGE: &str = include_str!("admin/admin.html");
const FORBIDDEN_PAGE: &str = include_str!("admin/forbidden.html");
const SCRIPT: &str = include_str!("admin/admin.js");
const STYLE: &str = include_str!("admin/admin.css");

/// Only the page's own assets; nothing inline, nothing from elsewhere.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// `GET /admin`: the shell, or a bare 403 notice when the request's own credential belongs to a
/// user without the admin role.
pub(crate) async fn page(State(state): State<AppState>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let has_credential = parts.headers.contains_key(http::header::AUTHORIZATION)
        || parts
            .uri
            .query()
            .is_some_and(|q| q.split('&').any(|pair| pair.starts_with("token=")))
        || parts
            .extensions
            .get::<ConnectionInfo>()
            .is_some_and(|c| c.client_certificate.is_some());
    let mut admin = false;
    if has_credential || !state.config.auth.is_enabled() {
        // A refused credential still gets the page: its sign-in form says why.
        if let Ok(identity) = guard::authenticate(&state, &parts).await {
            if !identity.roles.admin {
                tracing::info!(target: "audit", user = %identity.user, "refused the admin page to a user without the admin role");
                return html(
                    StatusCode::FORBIDDEN,
                    FORBIDDEN_PAGE
                        .replace("{{base}}", &escape(&state.base))
                        .replace("{{user}}", &escape(&identity.user)),
                );
            }
            admin = true;
        }
    }
    let kernels = if admin {
        state.manager.list_all().await
    } else {
        Vec::new()
    };
    let count = |state: &str| {
        kernels
            .iter()
            .filter(|k| k.execution_state == state)
            .count()
            .to_string()
    };
    let users: std::collections::BTreeSet<&str> =
        kernels.iter().map(|k| k.username.as_str()).collect();
    let hidden = |hide: bool| if hide { " hidden" } else { "" };
    let body = PAGE
        .replace("{{base}}", &escape(&state.base))
        .replace("{{version}}", env!("CARGO_PKG_VERSION"))
        .replace("{{loading_hidden}}", hidden(admin))
        .replace("{{dashboard_hidden}}", hidden(!admin))
        .replace("{{empty_hidden}}", hidden(!kernels.is_empty()))
        .replace("{{stat_kernels}}", &kernels.len().to_string())
        .replace("{{stat_busy}}", &count("busy"))
        .replace("{{stat_idle}}", &count("idle"))
        .replace(
            "{{stat_connections}}",
            &kernels
                .iter()
                .map(|k| k.connections)
                .sum::<usize>()
                .to_string(),
        )
        .replace("{{stat_users}}", &users.len().to_string())
        .replace("{{kernel_rows}}", &kernel_rows(&kernels));
    html(StatusCode::OK, body)
}

/// The kernel table's rows as the script renders them, newest first (actions come with the
/// script).
fn kernel_rows(kernels: &[crate::manager::KernelSnapshot]) -> String {
    let now = time::OffsetDateTime::now_utc();
    let mut sorted: Vec<&crate::manager::KernelSnapshot> = kernels.iter().collect();
    sorted.sort_by_key(|k| std::cmp::Reverse(k.created));
    let mut rows = String::new();
    for k in sorted {
        let host = if k.host.is_empty() { "—" } else { &k.host };
        rows.push_str(&format!(
            "<tr data-kernel-id=\"{id}\"><td class=\"mono\" title=\"{id}\">{short}</td><td>{owner}</td>\
             <td>{name}</td><td>{backend}</td><td class=\"mono\">{host}</td>\
             <td><span class=\"badge state-{state}\">{state}</span></td>\
             <td class=\"num\">{age}</td><td class=\"num\">{idle} ago</td>\
             <td class=\"num\">{connections}</td><td class=\"num\">{restarts}</td><td class=\"actions\"></td></tr>",
            id = escape(&k.id),
            short = escape(k.id.get(..8).unwrap_or(&k.id)),
            owner = escape(&k.username),
            name = escape(&k.name),
            backend = escape(&k.backend),
            host = escape(host),
            state = escape(&k.execution_state),
            age = duration(now - k.created),
            idle = duration(now - k.last_activity),
            connections = k.connections,
            restarts = k.restarts,
        ));
    }
    rows
}

/// `3s`, `4m 10s`, `2h 5m`, `1d 3h`, as the script writes durations.
fn duration(elapsed: time::Duration) -> String {
    let s = elapsed.whole_seconds().max(0);
    let (m, h) = (s / 60, s / 3600);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{m}m {}s", s % 60),
        3600..86400 => format!("{h}h {}m", m % 60),
        _ => format!("{}d {}h", h / 24, h % 24),
    }
}

fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, [(CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// `GET /admin/{asset}`: the script and the style sheet.
pub(crate) async fn asset(Path(asset): Path<String>) -> Result<Response, Error> {
    let (body, kind) = match asset.as_str() {
        "admin.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "admin.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return Err(Error::NotFound(String::new())),
    };
    Ok((
        [
            (CONTENT_TYPE, kind),
            (CACHE_CONTROL, "no-cache"),
            (http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response())
}

/// `GET /api/admin/kernels`: every kernel (with a shared store, those of every gateway, as
/// `GET /api/kernels` lists them), with backend, host, restarts and start time; admins only,
/// whatever `list_kernels` says (it governs EG's own listing).
pub(crate) async fn kernels(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<Vec<AdminKernelModel>>, Error> {
    require_admin(&caller, "the kernel overview")?;
    Ok(Json(
        state
            .manager
            .list_all()
            .await
            .into_iter()
            .map(AdminKernelModel::from)
            .collect(),
    ))
}

/// `GET /metrics` on the API port: the Prometheus text format, to admins (404 when metrics are
/// off or served on their own port).
pub(crate) async fn metrics(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Response, Error> {
    if state.config.metrics_access == MetricsAccess::Elsewhere {
        return Err(Error::NotFound(String::new()));
    }
    require_admin(&caller, "metrics")?;
    crate::metrics::render(&state.manager)
        .map(|text| ([(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
        .ok_or_else(|| Error::NotFound(String::new()))
}

fn require_admin(caller: &crate::Identity, what: &str) -> Result<(), Error> {
    if caller.roles.admin {
        return Ok(());
    }
    tracing::info!(target: "audit", user = %caller.user, what, "refused to a user without the admin role");
    Err(Error::Forbidden {
        reason: "Forbidden".to_owned(),
        message: format!("{what} needs the admin role"),
    })
}

/// Text for HTML element content and double-quoted attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn durations_read_like_the_script_writes_them() {
        let d = time::Duration::seconds;
        assert_eq!(duration(d(-3)), "0s");
        assert_eq!(duration(d(59)), "59s");
        assert_eq!(duration(d(250)), "4m 10s");
        assert_eq!(duration(d(7500)), "2h 5m");
        assert_eq!(duration(d(97_200)), "1d 3h");
    }

    #[test]
    fn the_page_loads_only_its_own_assets() {
        assert!(PAGE.contains("admin/admin.js") && PAGE.contains("admin/admin.css"));
        assert!(!PAGE.contains("<script>") && !PAGE.contains("style="));
        assert!(!PAGE.contains("http://") && !PAGE.contains("https://"));
    }
}
