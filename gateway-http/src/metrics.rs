//! Prometheus metrics: what is recorded, under which names, and the `/metrics` rendering.
//!
//! Recording goes through the `metrics` facade, so it costs next to nothing until the embedding
//! program installs the Prometheus recorder with [`install`] (the binary does, unless
//! `--metrics_enabled=false`); without a recorder every handle is a no-op and `/metrics` is 404.
//! The recorder is process-wide, as the facade's recorders are; [`install`] is idempotent.
//!
//! Names follow jupyter_server where it has a metric with the same meaning
//! (`http_request_duration_seconds` with its `method`, `handler`, `status_code` labels, and
//! `kernel_currently_running_total` with the kernelspec name as `type`); everything else is
//! `eg_*`. No label ever holds a kernel id, a user or a raw URL path: HTTP requests are labelled
//! by their route template, so the number of series is bounded by the code, not by the clients.
//!
//! The families:
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `kernel_currently_running_total` | gauge, set at each scrape from this gateway's started kernels | `type` (kernelspec), `state`, `backend` |
//! | `eg_kernel_starts_in_flight` | gauge, set at each scrape | |
//! | `eg_kernel_starts_total` | counter | `type`, `outcome` (`started` or `failed`) |
//! | `eg_kernel_start_failures_total` | counter | `type`, `reason` (a class, see [`failure_class`]) |
//! | `eg_kernel_start_duration_seconds` | histogram (successful starts) | `type` |
//! | `eg_kernel_restarts_total` | counter | `type`, `reason` (`requested`, `automatic`) |
//! | `eg_kernel_culls_total` | counter | `type`, `reason` (`idle`, `busy`, `dead`) |
//! | `eg_websocket_connections` | gauge | |
//! | `eg_websocket_connections_total` | counter | |
//! | `eg_messages_forwarded_total` | counter | `direction` (`to_kernel`, `to_client`) |
//! | `eg_bytes_forwarded_total` | counter | `direction` |
//! | `http_request_duration_seconds` | histogram | `method`, `handler` (route template), `status_code` |
//! | `eg_launcher_callbacks_total` | counter (recorded by `kernel-launcher`) | `outcome` (`accepted`, `refused`) |
//! | `eg_backend_errors_total` | counter | `backend`, `operation` |
//! | `eg_store_errors_total` | counter | `operation` (`request`, `save`, `lease` when the store goes down, `readiness`) |
//! | `eg_pool_kernels` | gauge | `type`, `profile` (empty for none): ready kernels of a warm pool |
//! | `eg_pool_starts_total` | counter | `type`, `profile`, `outcome` (`hit`: served from the pool, `miss`: a pool exists but the start was cold) |
//!
//! The forwarding path pays one atomic add per message and one per byte count: a WebSocket
//! connection takes its [`Traffic`] handles once, when it opens.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use metrics::{
    Counter, Gauge, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use parking_lot::Mutex;

use crate::manager::ManagerError;
use crate::{Error, Fault, KernelManager};

/// Buckets of `eg_kernel_start_duration_seconds`: kernels take from a fraction of a second
/// (local) to minutes (a YARN queue).
const START_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];

/// Buckets of `http_request_duration_seconds` (prometheus_client's defaults, which
/// jupyter_server's histogram uses).
const HTTP_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The Prometheus text format's media type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often [`upkeep`] drains histogram samples that no scrape collected.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The installed recorder's handle.
static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The label sets `kernel_currently_running_total` had at the previous scrape, so that a
/// combination with no kernels left reads 0 instead of keeping its last value.
static KERNEL_SERIES: Mutex<BTreeSet<(String, String, String)>> = Mutex::new(BTreeSet::new());

/// Why the recorder could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The exporter refused the configuration (bucket lists).
    #[error("cannot build the Prometheus recorder: {0}")]
    Build(#[from] BuildError),
    /// Another recorder is already installed in this process.
    #[error("another metrics recorder is already installed")]
    OtherRecorder,
}

/// Installs the Prometheus recorder for this process (once; later calls return the same
/// handle) and describes every family. Run [`upkeep`] beside it.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("eg_kernel_start_duration_seconds".to_owned()),
            START_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("http_request_duration_seconds".to_owned()),
            HTTP_BUCKETS,
        )?
        .build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        // Two callers raced: the winner's handle is the one that sees the metrics.
        return HANDLE.get().cloned().ok_or(MetricsError::OtherRecorder);
    }
    let handle = HANDLE.get_or_init(|| handle).clone();
    describe();
    Ok(handle)
}

/// The recorder's handle, when [`install`] ran.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE.get()
}

/// Drains histogram samples every [`UPKEEP_INTERVAL`] so that memory stays bounded when nobody
/// scrapes; runs until dropped.
pub async fn upkeep() {
    let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        tick.tick().await;
        if let Some(handle) = HANDLE.get() {
            handle.run_upkeep();
        }
    }
}

fn describe() {
    describe_gauge!(
        "kernel_currently_running_total",
        "Kernels the gateway manages, by kernelspec (type), state and backend"
    );
    describe_gauge!(
        "eg_kernel_starts_in_flight",
        "Kernel starts under way (launched, not yet answering kernel_info)"
    );
    describe_counter!(
        "eg_kernel_starts_total",
        "Kernel starts that reached the launch or were refused, by kernelspec and outcome"
    );
    describe_counter!(
        "eg_kernel_start_failures_total",
        "Failed kernel starts by kernelspec and reason class"
    );
    describe_histogram!(
        "eg_kernel_start_duration_seconds",
        Unit::Seconds,
        "Time from a start request to the kernel's kernel_info reply, successful starts only"
    );
    describe_counter!(
        "eg_kernel_restarts_total",
        "Kernel restarts by kernelspec and reason (requested through the API, automatic after an exit)"
    );
    describe_counter!(
        "eg_kernel_culls_total",
        "Kernels culled by kernelspec and reason"
    );
    describe_gauge!(
        "eg_websocket_connections",
        "Open kernel channel WebSocket connections"
    );
    describe_counter!(
        "eg_websocket_connections_total",
        "Kernel channel WebSocket connections opened"
    );
    describe_counter!(
        "eg_messages_forwarded_total",
        "Kernel messages forwarded between WebSocket clients and kernels, by direction"
    );
    describe_counter!(
        "eg_bytes_forwarded_total",
        Unit::Bytes,
        "WebSocket payload bytes forwarded between clients and kernels, by direction"
    );
    describe_histogram!(
        "http_request_duration_seconds",
        Unit::Seconds,
        "duration in seconds for all HTTP requests"
    );
    describe_counter!(
        "eg_launcher_callbacks_total",
        "Launcher callbacks on the response listener, accepted or refused"
    );
    describe_counter!(
        "eg_backend_errors_total",
        "Errors from a resource manager, by backend and operation"
    );
    describe_counter!(
        "eg_store_errors_total",
        "Errors from the kernel store, by operation"
    );
    describe_counter!(
        "eg_client_evictions_total",
        "Clients disconnected for the memory held for them: past their share, or the largest while the client memory budget was used up"
    );
    describe_counter!(
        "eg_connections_refused_total",
        "Connections answered 503 or closed at accept: the gateway-wide cap or one address's cap"
    );
    // Families that may stay at zero for a long time are shown from the start.
    for outcome in ["accepted", "refused"] {
        counter!("eg_launcher_callbacks_total", "outcome" => outcome).absolute(0);
    }
    gauge!("eg_websocket_connections").set(0.0);
    counter!("eg_websocket_connections_total").absolute(0);
    for direction in ["to_kernel", "to_client"] {
        counter!("eg_messages_forwarded_total", "direction" => direction).absolute(0);
        counter!("eg_bytes_forwarded_total", "direction" => direction).absolute(0);
    }
}

/// The text exposition, with the kernel gauges set from `manager`'s kernels first; `None` when
/// no recorder is installed.
pub(crate) fn render(manager: &KernelManager) -> Option<String> {
    let handle = HANDLE.get()?;
    let kernels = manager.list();
    // `list` has the started kernels; the table also holds the starts in flight.
    gauge!("eg_kernel_starts_in_flight").set(manager.count().saturating_sub(kernels.len()) as f64);
    let mut counts: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for kernel in &kernels {
        *counts
            .entry((
                kernel.name.clone(),
                kernel.execution_state.clone(),
                kernel.backend.clone(),
            ))
            .or_default() += 1;
    }
    {
        let mut seen = KERNEL_SERIES.lock();
        for series in seen.iter() {
            if !counts.contains_key(series) {
                kernel_gauge(series).set(0.0);
            }
        }
        for (series, count) in &counts {
            // Counts of kernels are far below 2^52; the conversion is exact.
            kernel_gauge(series).set(*count as f64);
            seen.insert(series.clone());
        }
    }
    Some(handle.render())
}

fn kernel_gauge((kind, state, backend): &(String, String, String)) -> Gauge {
    gauge!(
        "kernel_currently_running_total",
        "type" => kind.clone(),
        "state" => state.clone(),
        "backend" => backend.clone()
    )
}

/// The reason class of a failed start: bounded, so it can be a label.
pub fn failure_class(error: &ManagerError) -> &'static str {
    match error {
        ManagerError::BadRequest { .. } => "bad_request",
        ManagerError::Forbidden { .. } => "forbidden",
        ManagerError::NoSuchKernelSpec(_) => "unknown_kernelspec",
        ManagerError::KernelExists(_) => "conflict",
        ManagerError::Unsupported(_) => "unsupported",
        ManagerError::LaunchFailed { fault, .. } => match fault {
            Fault::Kernel => "launch",
            Fault::Capacity => "capacity",
            Fault::Client => "aborted",
            Fault::Internal => "internal",
        },
        _ => "internal",
    }
}

/// Records the outcome of one start of a `kind` kernel that took `elapsed`.
pub(crate) fn record_start(kind: &str, result: Result<(), &ManagerError>, elapsed: Duration) {
    let kind = kind.to_owned();
    match result {
        Ok(()) => {
            counter!("eg_kernel_starts_total", "type" => kind.clone(), "outcome" => "started")
                .increment(1);
            histogram!("eg_kernel_start_duration_seconds", "type" => kind)
                .record(elapsed.as_secs_f64());
        }
        Err(error) => {
            counter!("eg_kernel_starts_total", "type" => kind.clone(), "outcome" => "failed")
                .increment(1);
            counter!("eg_kernel_start_failures_total", "type" => kind, "reason" => failure_class(error))
                .increment(1);
        }
    }
}

/// Counts a restart of a `kind` kernel (`requested` or `automatic`).
pub(crate) fn restart(kind: &str, reason: &'static str) {
    counter!("eg_kernel_restarts_total", "type" => kind.to_owned(), "reason" => reason)
        .increment(1);
}

/// Counts a cull of a `kind` kernel.
pub(crate) fn cull(kind: &str, reason: &crate::manager::rules::CullReason) {
    use crate::manager::rules::CullReason;
    let reason = match reason {
        CullReason::Dead => "dead",
        CullReason::Idle(_) => "idle",
        CullReason::Busy(_) => "busy",
    };
    counter!("eg_kernel_culls_total", "type" => kind.to_owned(), "reason" => reason).increment(1);
}

/// Sets the number of ready kernels in the warm pool of `kind` under `profile` (profile names
/// come from the configuration, so they bound the series).
pub(crate) fn pool_size(kind: &str, profile: &str, ready: usize) {
    gauge!("eg_pool_kernels", "type" => kind.to_owned(), "profile" => profile.to_owned())
        .set(ready as f64);
}

/// Counts a start that had a warm pool: served from it (`hit`) or started cold (`miss`).
pub(crate) fn pool_start(kind: &str, profile: &str, hit: bool) {
    let outcome = if hit { "hit" } else { "miss" };
    counter!("eg_pool_starts_total", "type" => kind.to_owned(), "profile" => profile.to_owned(), "outcome" => outcome)
        .increment(1);
}

/// Counts a failed call into a resource manager.
pub(crate) fn backend_error(backend: &str, operation: &'static str) {
    counter!("eg_backend_errors_total", "backend" => backend.to_owned(), "operation" => operation)
        .increment(1);
}

/// Counts a client (or reconnect buffer) evicted from the client memory budget; `reason` is
/// `share` or `budget`.
pub(crate) fn client_evicted(reason: &'static str) {
    counter!("eg_client_evictions_total", "reason" => reason).increment(1);
}

/// Counts a refused connection; `reason` is `gateway` (the cap on all connections) or
/// `client` (one address's cap).
pub(crate) fn connection_refused(reason: &'static str) {
    counter!("eg_connections_refused_total", "reason" => reason).increment(1);
}

/// Counts a failed kernel-store operation (for the store to call).
pub fn store_error(operation: &'static str) {
    counter!("eg_store_errors_total", "operation" => operation).increment(1);
}

/// A WebSocket connection's counters, taken once when it opens; dropping it counts the
/// connection as closed.
#[derive(Debug)]
pub(crate) struct Traffic {
    to_kernel_messages: Counter,
    to_kernel_bytes: Counter,
    to_client_messages: Counter,
    to_client_bytes: Counter,
    open: Gauge,
}

impl Traffic {
    /// Counts a new connection and takes its handles.
    pub(crate) fn open() -> Traffic {
        counter!("eg_websocket_connections_total").increment(1);
        let open = gauge!("eg_websocket_connections");
        open.increment(1.0);
        Traffic {
            to_kernel_messages: counter!("eg_messages_forwarded_total", "direction" => "to_kernel"),
            to_kernel_bytes: counter!("eg_bytes_forwarded_total", "direction" => "to_kernel"),
            to_client_messages: counter!("eg_messages_forwarded_total", "direction" => "to_client"),
            to_client_bytes: counter!("eg_bytes_forwarded_total", "direction" => "to_client"),
            open,
        }
    }

    /// A client message of `bytes` went to the kernel.
    pub(crate) fn to_kernel(&self, bytes: usize) {
        self.to_kernel_messages.increment(1);
        self.to_kernel_bytes.increment(bytes as u64);
    }

    /// A kernel message of `bytes` went to the client.
    pub(crate) fn to_client(&self, bytes: usize) {
        self.to_client_messages.increment(1);
        self.to_client_bytes.increment(bytes as u64);
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}

/// The method as a label: the standard ones by name, anything a client invents as `other`.
fn method_label(method: &http::Method) -> &'static str {
    use http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The router of a separate metrics port: `GET /metrics`, without authentication (the port is
/// the access control), and 404 for anything else.
pub fn router(manager: Arc<KernelManager>) -> axum::Router {
    axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let manager = Arc::clone(&manager);
                async move {
                    match render(&manager) {
                        Some(text) => {
                            ([(http::header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
                        }
                        None => Error::NotFound(String::new()).into_response(),
                    }
                }
            }),
        )
        .fallback(|| async { Error::NotFound(String::new()) })
}

/// Serves [`router`] on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, manager: Arc<KernelManager>) {
    if let Err(error) = axum::serve(listener, router(manager)).await {
        tracing::warn!(%error, "the metrics port stopped serving");
    }
}

/// Middleware: one `http_request_duration_seconds` observation per request, labelled by the
/// matched route template (`unmatched` for the catch-all) and the status.
pub(crate) async fn http(request: Request, next: Next) -> Response {
    if HANDLE.get().is_none() {
        return next.run(request).await;
    }
    let handler = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = method_label(request.method());
    let started = tokio::time::Instant::now();
    let response = next.run(request).await;
    histogram!(
        "http_request_duration_seconds",
        "method" => method,
        "handler" => handler,
        "status_code" => response.status().as_str().to_owned()
    )
    .record(started.elapsed().as_secs_f64());
    response
}
