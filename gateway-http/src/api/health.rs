//! `/healthz` and `/readyz`, the probes load balancers and Kubernetes ask, without a token.
//!
//! `/healthz` answers 200 while the process serves HTTP at all. `/readyz` answers 200 only when
//! every readiness check passes, 503 otherwise, with each check's verdict in the body. The
//! gateway's own checks are `listener` (trivially true once the answer is on its way: it came
//! through the bound listener), `shutdown` (not draining) and `backends` (at least one resource
//! manager registered); whatever the embedding program registers on
//! [`Readiness`](crate::config::Readiness) comes after them (the binary registers the launcher
//! callback listener's, [`CallbackListenerCheck`], and the kernel store's, [`StoreCheck`]). Each
//! check has
//! [`CHECK_TIMEOUT`] to answer; checks run concurrently.
use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use http::StatusCode;
use http::header::CACHE_CONTROL;
use kernel_launcher::response::ResponseListener;

use super::AppState;
use super::dto::{CheckModel, ReadyModel};
use crate::config::ReadinessCheck;

/// How long one readiness check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /healthz`.
pub(crate) async fn healthz() -> impl IntoResponse {
    (
        [(CACHE_CONTROL, "no-store")],
        Json(serde_json::json!({"status": "ok"})),
    )
}

/// `GET /readyz`.
pub(crate) async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let mut checks = vec![
        CheckModel::new("listener", Ok(())),
        CheckModel::new(
            "shutdown",
            if state.manager.cancelled().is_cancelled() {
                Err("the gateway is shutting down".to_owned())
            } else {
                Ok(())
            },
        ),
        CheckModel::new(
            "backends",
            if state.manager.backend_count() == 0 {
                Err("no resource manager is registered".to_owned())
            } else {
                Ok(())
            },
        ),
    ];
    let registered = state.config.readiness.checks();
    let verdicts = futures_util::future::join_all(registered.iter().map(|check| async move {
        match tokio::time::timeout(CHECK_TIMEOUT, check.check()).await {
            Ok(verdict) => verdict,
            Err(_) => Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())),
        }
    }))
    .await;
    for (check, verdict) in registered.iter().zip(verdicts) {
        if let Err(why) = &verdict {
            tracing::warn!(check = check.name(), reason = %why, "readiness check failed");
        }
        checks.push(CheckModel::new(check.name(), verdict));
    }
    let ready = checks.iter().all(|check| check.ok);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(CACHE_CONTROL, "no-store")],
        Json(ReadyModel { ready, checks }),
    )
}

/// Readiness of the launcher callback listener: its port accepts a TCP connection (which the
/// listener takes as a probe and closes without a word).
#[derive(Debug, Clone)]
pub struct CallbackListenerCheck {
    addr: SocketAddr,
}

impl CallbackListenerCheck {
    /// A check of `listener`'s bound port (on loopback when it listens on every interface).
    pub fn new(listener: &ResponseListener) -> CallbackListenerCheck {
        CallbackListenerCheck::at(listener.local_addr())
    }

    /// A check of whatever listens on `addr`.
    pub fn at(addr: SocketAddr) -> CallbackListenerCheck {
        let ip = match addr.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => std::net::Ipv4Addr::LOCALHOST.into(),
            ip if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
            ip => ip,
        };
        CallbackListenerCheck {
            addr: SocketAddr::new(ip, addr.port()),
        }
    }
}

#[async_trait::async_trait]
impl ReadinessCheck for CallbackListenerCheck {
    fn name(&self) -> &str {
        "callback_listener"
    }

    async fn check(&self) -> Result<(), String> {
        match tokio::net::TcpStream::connect(self.addr).await {
            Ok(stream) => {
                drop(stream);
                Ok(())
            }
            Err(error) => Err(format!(
                "the launcher callback listener on {} does not accept connections: {error}",
                self.addr
            )),
        }
    }
}

/// Readiness of the kernel store: it answers a lookup of an id no kernel has.
#[derive(Debug, Clone)]
pub struct StoreCheck {
    store: std::sync::Arc<dyn crate::store::KernelStore>,
}

impl StoreCheck {
    /// A check of `store`.
    pub fn new(store: std::sync::Arc<dyn crate::store::KernelStore>) -> StoreCheck {
        StoreCheck { store }
    }
}

/// The id the store check looks up (the route shape of a kernel id, never issued).
const PROBE_ID: &str = "00000000-0000-0000-0000-000000000000";

#[async_trait::async_trait]
impl ReadinessCheck for StoreCheck {
    fn name(&self) -> &str {
        "store"
    }

    async fn check(&self) -> Result<(), String> {
        match self.store.get(PROBE_ID).await {
            Ok(_) => Ok(()),
            Err(error) => {
                crate::metrics::store_error("readiness");
                Err(format!("the kernel store does not answer: {error}"))
            }
        }
    }
}
