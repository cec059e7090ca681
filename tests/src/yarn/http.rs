//! The RM web services: routes, simple auth, the standby filter, error bodies.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::StandbyStyle;
use super::nm;
use super::state::{AppRecord, RmAppState, Shared, Termination, now_ms};

/// Per-RM router state: the shared cluster plus which RM this listener is.
#[derive(Debug, Clone)]
pub(crate) struct Rm {
    pub(crate) shared: Arc<Shared>,
    pub(crate) index: usize,
}

/// The authenticated caller, if any (`None` = anonymous `dr.who`).
#[derive(Debug, Clone)]
struct Caller(Option<String>);

/// A `RemoteException` error response.
fn remote(
    status: StatusCode,
    exception: &str,
    java_class: &str,
    message: impl Into<String>,
) -> Response {
    let body = json!({"RemoteException": {
        "exception": exception,
        "message": message.into(),
        "javaClassName": java_class,
    }});
    (status, axum::Json(body)).into_response()
}

fn not_found(message: impl Into<String>) -> Response {
    remote(
        StatusCode::NOT_FOUND,
        "NotFoundException",
        "org.apache.hadoop.yarn.webapp.NotFoundException",
        message,
    )
}

fn bad_request(message: impl Into<String>) -> Response {
    remote(
        StatusCode::BAD_REQUEST,
        "BadRequestException",
        "org.apache.hadoop.yarn.webapp.BadRequestException",
        message,
    )
}

fn unauthenticated() -> Response {
    remote(
        StatusCode::UNAUTHORIZED,
        "AuthorizationException",
        "org.apache.hadoop.security.authorize.AuthorizationException",
        "Unable to obtain user name, user not authenticated",
    )
}

fn app_not_found(id: &str) -> Response {
    not_found(format!("java.lang.Exception: app with id: {id} not found"))
}

/// Builds the router of one RM.
pub(crate) fn router(rm: Rm) -> Router {
    Router::new()
        .route("/ws/v1/cluster", get(cluster_info))
        .route("/ws/v1/cluster/info", get(cluster_info))
        .route("/ws/v1/cluster/metrics", get(metrics))
        .route("/ws/v1/cluster/scheduler", get(scheduler))
        .route("/ws/v1/cluster/apps", get(list_apps).post(submit_app))
        .route("/ws/v1/cluster/apps/new-application", post(new_application))
        .route("/ws/v1/cluster/apps/{id}", get(one_app))
        .route(
            "/ws/v1/cluster/apps/{id}/state",
            get(app_state).put(put_app_state),
        )
        .route("/ws/v1/cluster/apps/{id}/appattempts", get(app_attempts))
        .route("/isActive", get(is_active))
        .fallback(fallback)
        .layer(middleware::from_fn_with_state(rm.clone(), standby_filter))
        .layer(middleware::from_fn_with_state(rm.clone(), authenticate))
        .with_state(rm)
}

/// Paths a standby RM serves itself instead of redirecting (`RMWebAppFilter`).
fn exempt_from_redirect(path: &str) -> bool {
    matches!(
        path,
        "/ws/v1/cluster/info"
            | "/cluster/cluster"
            | "/isActive"
            | "/conf"
            | "/stacks"
            | "/logLevel"
            | "/jmx"
            | "/prom"
    ) || path.starts_with("/proxy/")
        || path.starts_with("/logs")
}

/// Hadoop simple auth: `?user.name=` or a valid `hadoop.auth` cookie; else anonymous.
async fn authenticate(State(rm): State<Rm>, mut req: Request, next: Next) -> Response {
    let from_cookie = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().strip_prefix("hadoop.auth="))
        .find_map(|v| rm.shared.verify_cookie(v));
    let from_query = req.uri().query().and_then(|q| {
        url_pairs(q)
            .into_iter()
            .find(|(k, _)| k == "user.name")
            .map(|(_, v)| v)
            .filter(|v| !v.is_empty())
    });
    let (user, set_cookie) = match (from_cookie, from_query) {
        (Some(u), _) => (Some(u), None),
        (None, Some(u)) => {
            let cookie = format!(
                "hadoop.auth={}; Path=/; HttpOnly",
                rm.shared.auth_cookie(&u)
            );
            (Some(u), Some(cookie))
        }
        (None, None) => (None, None),
    };
    if user.is_none() && !rm.shared.config.anonymous_allowed {
        let mut resp = (StatusCode::UNAUTHORIZED, "Authentication required").into_response();
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("PseudoAuth"),
        );
        return resp;
    }
    req.extensions_mut().insert(Caller(user));
    let mut resp = next.run(req).await;
    if let Some(c) = set_cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

/// A standby RM redirects everything but a few paths to the active RM.
async fn standby_filter(State(rm): State<Rm>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let (active, active_url) = {
        let st = rm.shared.lock();
        let url = st.active.and_then(|i| st.rm_urls.get(i).cloned());
        (st.active, url)
    };
    if active == Some(rm.index) || exempt_from_redirect(&path) {
        return next.run(req).await;
    }
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or(path.clone(), |pq| pq.as_str().to_owned());
    match (active_url, rm.shared.config.standby_style) {
        (Some(url), StandbyStyle::Redirect307) => {
            let target = format!("{url}{path_and_query}");
            let mut resp = (
                StatusCode::TEMPORARY_REDIRECT,
                format!(
                    "This is standby RM. The redirect url is: {}",
                    html_escape(&target)
                ),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&target) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            resp
        }
        (Some(url), StandbyStyle::Refresh200) => {
            let target = format!("{url}{path_and_query}");
            let mut resp = (
                StatusCode::OK,
                format!("This is standby RM. Redirecting to the current active RM: {target}"),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("3; url={target}")) {
                resp.headers_mut().insert(header::REFRESH, v);
            }
            resp
        }
        (None, _) => {
            let mut resp = (
                StatusCode::TEMPORARY_REDIRECT,
                "There is no active RM right now.\nHA Zookeeper Connection State: CONNECTED",
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("5;url={path}?next.fresh.interval=5")) {
                resp.headers_mut().insert(header::REFRESH, v);
            }
            resp
        }
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Decodes `a=b&c=d` (percent and `+` decoding).
fn url_pairs(query: &str) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    let hex = bytes
                        .get(i + 1..i + 3)
                        .and_then(|h| std::str::from_utf8(h).ok());
                    match hex.map(|h| u8::from_str_radix(h, 16)) {
                        Some(Ok(b)) => {
                            out.push(b);
                            i += 2;
                        }
                        _ => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

async fn cluster_info(State(rm): State<Rm>) -> Response {
    let st = rm.shared.lock();
    let ha = if st.active == Some(rm.index) {
        "ACTIVE"
    } else {
        "STANDBY"
    };
    axum::Json(json!({"clusterInfo": {
        "id": st.cluster_ts,
        "startedOn": st.cluster_ts,
        "state": "STARTED",
        "haState": ha,
        "rmStateStoreName": "org.apache.hadoop.yarn.server.resourcemanager.recovery.NullRMStateStore",
        "resourceManagerVersion": "3.4.1",
        "resourceManagerBuildVersion": "3.4.1 from emulator",
        "resourceManagerVersionBuiltOn": "2024-10-09T14:57Z",
        "hadoopVersion": "3.4.1",
        "hadoopBuildVersion": "3.4.1 from emulator",
        "hadoopVersionBuiltOn": "2024-10-09T14:57Z",
        "haZooKeeperConnectionState": "CONNECTED",
    }}))
    .into_response()
}

async fn metrics(State(rm): State<Rm>) -> Response {
    let st = rm.shared.lock();
    axum::Json(st.metrics_json(&rm.shared.config)).into_response()
}

async fn scheduler(State(rm): State<Rm>) -> Response {
    let st = rm.shared.lock();
    axum::Json(st.scheduler_json(&rm.shared.config)).into_response()
}

async fn is_active(State(rm): State<Rm>) -> Response {
    if rm.shared.lock().active == Some(rm.index) {
        (StatusCode::OK, "I am Active!").into_response()
    } else {
        (StatusCode::METHOD_NOT_ALLOWED, "I am not Active!").into_response()
    }
}

/// `/cluster`, `<base>/cluster` (the probes of yarn-api-client) and the About page.
async fn fallback(method: Method, uri: Uri) -> Response {
    let path = uri.path().trim_end_matches('/');
    if method == Method::GET && (path.ends_with("/cluster") || path == "/cluster/cluster") {
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            "<html><head><title>About the Cluster</title></head><body>ResourceManager emulator</body></html>",
        )
            .into_response();
    }
    not_found(format!(
        "java.lang.Exception: No resource for {}",
        uri.path()
    ))
}

/// A time filter; the error is a BadRequestException message.
fn parse_time(params: &HashMap<String, String>, key: &str, default: i64) -> Result<i64, String> {
    match params.get(key) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<i64>() {
            Ok(t) if t >= 0 => Ok(t),
            Ok(_) => Err(format!("{key} must be greater than 0")),
            Err(_) => Err(format!(
                "java.lang.NumberFormatException: For input string: \"{v}\""
            )),
        },
    }
}

fn csv_lower(params: &HashMap<String, String>, key: &str) -> Vec<String> {
    params
        .get(key)
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

async fn list_apps(State(rm): State<Rm>, uri: Uri) -> Response {
    let params: HashMap<String, String> = url_pairs(uri.query().unwrap_or_default())
        .into_iter()
        .collect();
    let filters = (|| -> Result<_, String> {
        let sb = parse_time(&params, "startedTimeBegin", 0)?;
        let se = parse_time(&params, "startedTimeEnd", i64::MAX)?;
        let fb = parse_time(&params, "finishedTimeBegin", 0)?;
        let fe = parse_time(&params, "finishedTimeEnd", i64::MAX)?;
        if sb > se {
            return Err("startedTimeEnd must be greater than startTimeBegin".into());
        }
        if fb > fe {
            return Err("finishedTimeEnd must be greater than finishedTimeBegin".into());
        }
        let mut states = Vec::new();
        let mut raw_states = csv_lower(&params, "states");
        raw_states.extend(csv_lower(&params, "state"));
        for s in raw_states {
            match RmAppState::parse_external(&s) {
                Some(st) => states.push(st),
                None => {
                    return Err(format!(
                        "Invalid application-state {} specified. It should be one of NEW, NEW_SAVING, \
                         SUBMITTED, ACCEPTED, RUNNING, FINISHED, FAILED, KILLED",
                        s.to_ascii_uppercase()
                    ));
                }
            }
        }
        let limit = match params.get("limit") {
            None => None,
            Some(l) => match l.trim().parse::<i64>() {
                Ok(n) if n > 0 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
                Ok(_) => return Err("limit value must be greater then 0".into()),
                Err(_) => {
                    return Err(format!(
                        "java.lang.NumberFormatException: For input string: \"{l}\""
                    ));
                }
            },
        };
        Ok((sb, se, fb, fe, states, limit))
    })();
    let (sb, se, fb, fe, states, limit) = match filters {
        Ok(f) => f,
        Err(message) => return bad_request(message),
    };
    let tags = csv_lower(&params, "applicationTags");
    let types = csv_lower(&params, "applicationTypes");
    let final_status = params
        .get("finalStatus")
        .map(|s| s.trim().to_ascii_uppercase());
    let user = params.get("user").filter(|u| !u.is_empty());
    let queue = params.get("queue").filter(|q| !q.is_empty());
    let name = params.get("name").filter(|n| !n.is_empty());
    let st = rm.shared.lock();
    let rm_url = st.rm_urls.get(rm.index).cloned().unwrap_or_default();
    let matches = |a: &AppRecord| {
        let ext = a.external_state();
        (states.is_empty() || states.contains(&ext))
            && a.started >= sb
            && a.started <= se
            && (fb == 0 && fe == i64::MAX
                || (a.finished > 0 && a.finished >= fb && a.finished <= fe))
            && (tags.is_empty() || a.tags.iter().any(|t| tags.contains(t)))
            && (types.is_empty() || types.contains(&a.app_type.to_ascii_lowercase()))
            && final_status.as_ref().is_none_or(|f| a.final_status == f)
            && user.is_none_or(|u| &a.user == u)
            && queue.is_none_or(|q| &a.queue == q && !a.state.is_final())
            && name.is_none_or(|n| &a.name == n)
    };
    let apps: Vec<Value> = st
        .apps
        .values()
        .filter(|a| matches(a))
        .take(limit.unwrap_or(usize::MAX))
        .map(|a| a.to_json(&st, &rm_url, &rm.shared.config))
        .collect();
    if apps.is_empty() {
        axum::Json(json!({"apps": null})).into_response()
    } else {
        axum::Json(json!({"apps": {"app": apps}})).into_response()
    }
}

async fn one_app(State(rm): State<Rm>, Path(id): Path<String>) -> Response {
    let st = rm.shared.lock();
    let rm_url = st.rm_urls.get(rm.index).cloned().unwrap_or_default();
    match st.apps.get(&id) {
        Some(app) => {
            axum::Json(json!({"app": app.to_json(&st, &rm_url, &rm.shared.config)})).into_response()
        }
        None => app_not_found(&id),
    }
}

async fn app_state(State(rm): State<Rm>, Path(id): Path<String>) -> Response {
    match rm.shared.lock().apps.get(&id) {
        Some(app) => axum::Json(json!({"state": app.state.as_str()})).into_response(),
        None => app_not_found(&id),
    }
}

async fn app_attempts(State(rm): State<Rm>, Path(id): Path<String>) -> Response {
    let st = rm.shared.lock();
    let Some(app) = st.apps.get(&id) else {
        return app_not_found(&id);
    };
    let node = &rm.shared.config.node_http_address;
    let attempts = if app.launched > 0 || app.state.is_final() {
        let state = match app.external_state() {
            RmAppState::Running => "RUNNING",
            RmAppState::Finished => "FINISHED",
            RmAppState::Failed => "FAILED",
            RmAppState::Killed => "KILLED",
            _ => "SCHEDULED",
        };
        json!({"appAttempts": {"appAttempt": [{
            "id": 1,
            "appAttemptId": app.attempt_id(st.cluster_ts),
            "startTime": app.started,
            "finishedTime": app.finished,
            "containerId": app.container_id(st.cluster_ts),
            "nodeHttpAddress": node,
            "nodeId": format!("{}:45454", node.rsplit_once(':').map_or(node.as_str(), |(h, _)| h)),
            "logsLink": format!("http://{node}/node/containerlogs/{}/{}", app.container_id(st.cluster_ts), app.user),
            "blacklistedNodes": "",
            "appAttemptState": state,
        }]}})
    } else {
        json!({"appAttempts": {"appAttempt": []}})
    };
    axum::Json(attempts).into_response()
}

async fn put_app_state(
    State(rm): State<Rm>,
    Path(id): Path<String>,
    axum::Extension(Caller(caller)): axum::Extension<Caller>,
    uri: Uri,
    body: Bytes,
) -> Response {
    let Some(user) = caller else {
        return unauthenticated();
    };
    let target: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(format!("Could not parse the target state: {e}")),
    };
    let target = target
        .get("state")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_ascii_uppercase();
    let mut st = rm.shared.lock();
    let rm_url = st.rm_urls.get(rm.index).cloned().unwrap_or_default();
    let Some(app) = st.apps.get_mut(&id) else {
        return app_not_found(&id);
    };
    if app.state.as_str() == target {
        return axum::Json(json!({"state": app.state.as_str()})).into_response();
    }
    if target != "KILLED" {
        return bad_request("Only 'KILLED' is allowed as a target state.");
    }
    if rm.shared.config.acl_enabled && app.user != user {
        return (
            StatusCode::FORBIDDEN,
            format!("Unauthorized attempt to kill appid {id} by remote user {user}"),
        )
            .into_response();
    }
    if app.state.is_final() {
        return axum::Json(json!({"state": app.state.as_str()})).into_response();
    }
    if app.state != RmAppState::Killing {
        app.before_kill = app.state;
        app.state = RmAppState::Killing;
        app.pending = Some(Termination::Kill(format!(
            "Application {id} was killed by user {user} at 127.0.0.1"
        )));
        app.wake.notify_one();
    }
    let location = format!(
        "{rm_url}{}",
        uri.path_and_query().map_or(uri.path(), |pq| pq.as_str())
    );
    let mut resp = (
        StatusCode::ACCEPTED,
        axum::Json(json!({"state": "KILLING"})),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

async fn new_application(
    State(rm): State<Rm>,
    axum::Extension(Caller(caller)): axum::Extension<Caller>,
) -> Response {
    if caller.is_none() {
        return unauthenticated();
    }
    if !rm.shared.config.rest_submission_enabled {
        return (
            StatusCode::FORBIDDEN,
            "App submission via REST is disabled.",
        )
            .into_response();
    }
    let id = rm.shared.lock().new_app_id();
    let c = &rm.shared.config;
    axum::Json(json!({
        "application-id": id,
        "maximum-resource-capability": {"memory": c.max_allocation_mb, "vCores": c.max_allocation_vcores},
    }))
    .into_response()
}

async fn submit_app(
    State(rm): State<Rm>,
    axum::Extension(Caller(caller)): axum::Extension<Caller>,
    Query(params): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let Some(caller) = caller else {
        return unauthenticated();
    };
    if !rm.shared.config.rest_submission_enabled {
        return (
            StatusCode::FORBIDDEN,
            "App submission via REST is disabled.",
        )
            .into_response();
    }
    let ctx: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return bad_request("The submission context must be a JSON object"),
        Err(e) => {
            return bad_request(format!(
                "Could not parse the application submission context: {e}"
            ));
        }
    };
    let str_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let Some(id) = str_of(&ctx, "application-id") else {
        return bad_request("Could not parse application id null");
    };
    let seq = id
        .strip_prefix("application_")
        .and_then(|r| r.split_once('_'))
        .and_then(|(ts, seq)| Some((ts.parse::<i64>().ok()?, seq.parse::<u64>().ok()?)));
    let Some((_cluster_ts, seq)) = seq else {
        return bad_request(format!("Could not parse application id {id}"));
    };
    let resource = ctx.get("resource");
    let memory_mb = resource
        .and_then(|r| r.get("memory"))
        .and_then(Value::as_u64)
        .unwrap_or(1024);
    let vcores = resource
        .and_then(|r| r.get("vCores"))
        .and_then(Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(1);
    let c = &rm.shared.config;
    if memory_mb > c.max_allocation_mb {
        return bad_request(format!(
            "Invalid resource request, requested memory {memory_mb} > max configured {}",
            c.max_allocation_mb
        ));
    }
    if vcores > c.max_allocation_vcores {
        return bad_request(format!(
            "Invalid resource request, requested virtual cores {vcores} > max configured {}",
            c.max_allocation_vcores
        ));
    }
    let spec = ctx.get("am-container-spec");
    let command = spec
        .and_then(|s| s.get("commands"))
        .and_then(|c| c.get("command"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let env: Vec<(String, String)> = spec
        .and_then(|s| s.get("environment"))
        .and_then(|e| e.get("entry"))
        .map(|e| match e {
            Value::Array(items) => items.clone(),
            other => vec![other.clone()],
        })
        .unwrap_or_default()
        .iter()
        .filter_map(|kv| Some((str_of(kv, "key")?, str_of(kv, "value").unwrap_or_default())))
        .collect();
    let tags: Vec<String> = match ctx.get("application-tags").and_then(|t| t.get("tag")) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    };
    let tags: Vec<String> = tags
        .iter()
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    let queue = str_of(&ctx, "queue")
        .filter(|q| !q.is_empty())
        .unwrap_or_else(|| "default".into());
    let user = params
        .get("doAs")
        .filter(|u| !u.is_empty())
        .cloned()
        .unwrap_or(caller);
    let location = {
        let mut st = rm.shared.lock();
        let rm_url = st.rm_urls.get(rm.index).cloned().unwrap_or_default();
        let location = format!("{rm_url}/ws/v1/cluster/apps/{id}");
        if st.apps.contains_key(&id) {
            return accepted(&location);
        }
        if st.stopped {
            return remote(
                StatusCode::SERVICE_UNAVAILABLE,
                "YarnException",
                "org.apache.hadoop.yarn.exceptions.YarnException",
                "ResourceManager is stopping",
            );
        }
        let held = st.hold_new_apps;
        let log_dir = rm.shared.log_root.join("userlogs").join(&id);
        let mut app = AppRecord {
            id: id.clone(),
            seq,
            user,
            name: str_of(&ctx, "application-name").unwrap_or_else(|| "N/A".into()),
            queue: queue.clone(),
            app_type: str_of(&ctx, "application-type")
                .unwrap_or_else(|| "YARN".into())
                .to_ascii_uppercase(),
            tags,
            state: RmAppState::New,
            before_kill: RmAppState::New,
            final_status: "UNDEFINED",
            diagnostics: String::new(),
            started: now_ms(),
            launched: 0,
            finished: 0,
            memory_mb,
            vcores,
            command,
            env,
            held,
            pending: None,
            pgid: None,
            exit_code: None,
            log_dir,
            wake: Arc::new(tokio::sync::Notify::new()),
        };
        if !c.queues.iter().any(|q| q.name == queue) {
            app.state = RmAppState::Failed;
            app.final_status = "FAILED";
            app.finished = app.started;
            app.diagnostics = format!(
                "Application {id} submitted by user {} to unknown queue: {queue}",
                app.user
            );
            st.apps.insert(id.clone(), app);
            return accepted(&location);
        }
        st.reserved.remove(&id);
        st.apps.insert(id.clone(), app);
        location
    };
    let shared = rm.shared.clone();
    let task_id = id.clone();
    let handle = tokio::spawn(async move { nm::drive(shared, task_id).await });
    rm.shared
        .tasks
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(handle);
    accepted(&location)
}

fn accepted(location: &str) -> Response {
    let mut resp = StatusCode::ACCEPTED.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::url_pairs;

    #[test]
    fn query_decoding() {
        assert_eq!(
            url_pairs("a=b%20c&user.name=al+ice&x&bad=%zz"),
            vec![
                ("a".into(), "b c".into()),
                ("user.name".into(), "al ice".into()),
                ("x".into(), String::new()),
                ("bad".into(), "%zz".into())
            ]
        );
    }
}
