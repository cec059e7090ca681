//! What every backend whose kernels start through an EG-style *launcher* shares (the `ssh` and
//! `yarn` backends here; container and out-of-tree backends alike): the launcher's argv
//! variables, and its communication port together with what the kernel's shutdown did to it.
//!
//! A launcher calls the gateway's [`ResponseListener`] back with the kernel's connection info and,
//! usually, the port of a small listener of its own (the *communication port*) through which the
//! gateway signals the kernel and finally tells the launcher to stop. EG's launchers keep their
//! process alive for that listener, so once the gateway has sent the kernel `shutdown_request`
//! and told the listener to stop, a refusing port means the kernel is gone.
//! [`LauncherComm`] holds that state, and [`LauncherComm::terminate`] is the stop every such
//! backend performs: SIGTERM and "stop listening" through the port, a grace period, then the
//! backend's own kill (YARN's kill call, a signal over SSH, a container's removal).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use kernel_launcher::{CommOutcome, CommPort, ResponseListener, template};
use nix::sys::signal::Signal;

use crate::{Error, LaunchRequest, ProcessState};

/// The `{…}` values a launcher's argv template gets: `kernel_id`, `response_address`,
/// `public_key`, `port_range`, `resource_dir`, `transport_encryption` (empty, as EG sends it),
/// and `prefix` when the kernelspec sits in a Python environment.
pub fn launcher_vars(
    request: &LaunchRequest,
    listener: &ResponseListener,
) -> BTreeMap<&'static str, String> {
    let spec = &request.spec;
    let mut vars: BTreeMap<&'static str, String> = BTreeMap::new();
    vars.insert("kernel_id", request.kernel_id.clone());
    vars.insert("response_address", listener.response_address());
    vars.insert("public_key", listener.public_key_b64().to_owned());
    vars.insert("port_range", request.port_range.to_template());
    vars.insert(
        "resource_dir",
        spec.resource_dir.to_string_lossy().into_owned(),
    );
    vars.insert("transport_encryption", String::new());
    if let Some(prefix) = spec.prefix() {
        vars.insert("prefix", prefix.to_string_lossy().into_owned());
    }
    vars
}

/// The kernelspec's argv with [`launcher_vars`] filled in, item by item.
pub fn launcher_argv(request: &LaunchRequest, listener: &ResponseListener) -> Vec<String> {
    template::substitute(&request.spec.argv, &launcher_vars(request, listener))
}

/// A way to a launcher's communication port: [`CommPort`] directly, or a backend's own path to
/// it (the `ssh` backend tunnels through its SSH connection).
#[async_trait]
pub trait CommChannel: Send + Sync + Debug {
    /// Sends one request (`{"signum": n}` or `{"shutdown": 1}`) and reports what happened.
    async fn send(&self, request: &serde_json::Value) -> CommOutcome;
}

#[async_trait]
impl CommChannel for CommPort {
    async fn send(&self, request: &serde_json::Value) -> CommOutcome {
        CommPort::send(self, request).await
    }
}

/// A launcher's communication port (if it reported one) and whether its listener was told to
/// stop after the kernel's `shutdown_request`.
#[derive(Debug)]
pub struct LauncherComm<C = CommPort> {
    port: Option<C>,
    listener_stopped: AtomicBool,
}

impl<C: CommChannel> LauncherComm<C> {
    /// The port as the launcher reported it (`None` when it has none).
    pub fn new(port: Option<C>) -> LauncherComm<C> {
        LauncherComm {
            port,
            listener_stopped: AtomicBool::new(false),
        }
    }

    /// The port, if the launcher has one.
    pub fn port(&self) -> Option<&C> {
        self.port.as_ref()
    }

    /// Sends `signum` (0 probes); without a port the outcome is `Unknown` with the reason.
    pub async fn signal(&self, signum: i32) -> CommOutcome {
        match &self.port {
            Some(port) => port.send(&serde_json::json!({ "signum": signum })).await,
            None => CommOutcome::Unknown("the launcher has no communication port".to_owned()),
        }
    }

    /// Tells the launcher's listener to stop; `None` without a port.
    pub async fn stop_listener(&self) -> Option<CommOutcome> {
        let port = self.port.as_ref()?;
        Some(port.send(&serde_json::json!({ "shutdown": 1 })).await)
    }

    /// For [`crate::KernelProcess::shutdown_requested`]: tells the listener to stop and
    /// remembers that it was told.
    pub async fn shutdown_requested(&self, kernel_id: &str) {
        if let Some(outcome) = self.stop_listener().await {
            tracing::debug!(
                kernel_id,
                ?outcome,
                "told the launcher's listener that the kernel is shutting down"
            );
            self.listener_stopped.store(true, Ordering::SeqCst);
        }
    }

    /// Whether the listener was told to stop (see [`Self::shutdown_requested`]).
    pub fn listener_stopped(&self) -> bool {
        self.port.is_some() && self.listener_stopped.load(Ordering::SeqCst)
    }

    /// Whether the listener, told to stop, now refuses connections: the kernel is gone.
    pub async fn listener_gone(&self) -> bool {
        self.listener_stopped() && self.signal(0).await == CommOutcome::Refused
    }

    /// Asks the launcher to stop the kernel: SIGTERM, then "stop listening". Returns whether
    /// nothing is left to wait for (the signal was refused after the listener had been told to
    /// stop: the kernel answered its `shutdown_request`). Without a port, `false`.
    pub async fn ask_to_stop(&self, kernel_id: &str) -> bool {
        if self.port.is_none() {
            return false;
        }
        let term = self.signal(Signal::SIGTERM as i32).await;
        let stop = self.stop_listener().await;
        tracing::debug!(
            kernel_id,
            ?term,
            ?stop,
            "asked the launcher to stop the kernel"
        );
        term == CommOutcome::Refused && self.listener_stopped()
    }

    /// The stop of a launcher-started kernel: [`Self::ask_to_stop`], then up to `grace` for
    /// `exited` (no grace when nothing is left to wait for), then `kill`, the backend's own
    /// forced stop, which reports the final state. When `kill` fails, SIGKILL goes through the
    /// port as a last resort and the error is returned.
    pub async fn terminate<E, K>(
        &self,
        kernel_id: &str,
        grace: Duration,
        exited: impl Fn() -> E,
        kill: impl FnOnce() -> K,
    ) -> Result<ProcessState, Error>
    where
        E: Future<Output = ProcessState>,
        K: Future<Output = Result<ProcessState, Error>>,
    {
        let grace = if self.ask_to_stop(kernel_id).await {
            Duration::ZERO
        } else {
            grace
        };
        if let Ok(state) = tokio::time::timeout(grace, exited()).await {
            return Ok(state);
        }
        tracing::info!(kernel_id, "kernel did not stop in time; killing it");
        match kill().await {
            Ok(state) => Ok(state),
            Err(err) => {
                tracing::warn!(
                    kernel_id,
                    "kill failed ({err}); killing through the launcher"
                );
                let _ = self.signal(Signal::SIGKILL as i32).await;
                Err(err)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A port that answers from a script and records what it was sent.
    #[derive(Debug, Default)]
    struct Scripted {
        /// Answers to signals (after the first `shutdown`, `after_stop` is used).
        signal: Option<CommOutcome>,
        after_stop: Option<CommOutcome>,
        sent: Mutex<Vec<serde_json::Value>>,
    }

    #[async_trait]
    impl CommChannel for Scripted {
        async fn send(&self, request: &serde_json::Value) -> CommOutcome {
            let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
            let stopped = sent.iter().any(|r| r.get("shutdown").is_some());
            sent.push(request.clone());
            if request.get("shutdown").is_some() {
                return CommOutcome::Delivered;
            }
            let answer = if stopped {
                &self.after_stop
            } else {
                &self.signal
            };
            answer.clone().unwrap_or(CommOutcome::Delivered)
        }
    }

    fn sent(comm: &LauncherComm<Scripted>) -> Vec<serde_json::Value> {
        comm.port()
            .map(|p| p.sent.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn without_a_port_nothing_is_sent_and_signals_are_unknown() {
        let comm: LauncherComm<Scripted> = LauncherComm::new(None);
        assert!(matches!(comm.signal(2).await, CommOutcome::Unknown(_)));
        assert_eq!(comm.stop_listener().await, None);
        comm.shutdown_requested("k").await;
        assert!(!comm.listener_stopped());
        assert!(!comm.listener_gone().await);
        assert!(!comm.ask_to_stop("k").await);
    }

    #[tokio::test]
    async fn a_refusing_listener_after_shutdown_means_the_kernel_is_gone() {
        let comm = LauncherComm::new(Some(Scripted {
            after_stop: Some(CommOutcome::Refused),
            ..Scripted::default()
        }));
        assert!(!comm.listener_gone().await, "not told to stop yet");
        comm.shutdown_requested("k").await;
        assert!(comm.listener_stopped());
        assert!(comm.listener_gone().await);
        // Terminating now needs no grace period and no kill.
        let state = comm
            .terminate(
                "k",
                Duration::from_secs(3600),
                || async {
                    ProcessState::Exited {
                        code: Some(0),
                        signal: None,
                    }
                },
                || async { Err(Error::Unsupported("no kill expected".into())) },
            )
            .await;
        assert!(matches!(
            state,
            Ok(ProcessState::Exited { code: Some(0), .. })
        ));
        let sent = sent(&comm);
        // Nothing is sent before the shutdown; then a probe, SIGTERM and the stop.
        assert_eq!(sent.first(), Some(&serde_json::json!({"shutdown": 1})));
        assert!(sent.contains(&serde_json::json!({"signum": 0})));
        assert!(sent.contains(&serde_json::json!({"signum": Signal::SIGTERM as i32})));
    }

    #[tokio::test]
    async fn a_kernel_that_does_not_stop_gets_the_backends_kill_then_sigkill_by_port() {
        let comm = LauncherComm::new(Some(Scripted::default()));
        let killed = comm
            .terminate(
                "k",
                Duration::from_millis(20),
                std::future::pending::<ProcessState>,
                || async {
                    Ok(ProcessState::Exited {
                        code: None,
                        signal: Some(9),
                    })
                },
            )
            .await;
        assert!(matches!(
            killed,
            Ok(ProcessState::Exited {
                signal: Some(9),
                ..
            })
        ));
        assert!(!sent(&comm).contains(&serde_json::json!({"signum": 9})));
        let failed = comm
            .terminate(
                "k",
                Duration::from_millis(20),
                std::future::pending::<ProcessState>,
                || async { Err(Error::Unsupported("the RM is away".into())) },
            )
            .await;
        assert!(matches!(failed, Err(Error::Unsupported(_))));
        assert!(sent(&comm).contains(&serde_json::json!({"signum": 9})));
    }
}
