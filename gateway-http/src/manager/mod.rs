//! The kernel manager: lifecycle, limits and supervision of every kernel, whatever backend runs it.
//!
//! FACADE CONTRACT used by the HTTP layer. The manager side fills in the bodies.
use std::sync::Arc;

use kernel_launcher::{KernelSpec, KernelSpecs};
use resource_managers::Registry;

use crate::{Error, GatewayConfig};

/// A start request as the HTTP layer parsed it (EG reads only these fields).
#[derive(Debug, Clone, Default)]
pub struct StartRequest {
    /// Kernelspec name; `None` means the default. `python` is an alias of `python3`.
    pub name: Option<String>,
    /// The request's `env` object, unvalidated; `None` when the body had no `env`.
    pub env: Option<serde_json::Map<String, serde_json::Value>>,
    /// Working directory relative to the root dir.
    pub path: Option<String>,
}

/// A kernel's state as the manager sees it; the HTTP layer converts it to EG's kernel model.
#[derive(Debug, Clone)]
pub struct KernelSnapshot {
    /// Kernel id.
    pub id: String,
    /// Kernelspec name.
    pub name: String,
    /// Last iopub activity (UTC).
    pub last_activity: time::OffsetDateTime,
    /// Last execution_state seen (`starting`, `idle`, `busy`, `restarting`, `dead`...).
    pub execution_state: String,
    /// Open WebSocket connections.
    pub connections: usize,
    /// Why the kernel is not usable, if it is not.
    pub reason: Option<String>,
    /// The user that started it.
    pub username: String,
}

/// Owns every kernel. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct KernelManager {}

impl KernelManager {
    /// A manager over the given backends. Spawns nothing until kernels start.
    pub fn new(config: Arc<GatewayConfig>, registry: Registry) -> Arc<KernelManager> {
        todo!()
    }
    /// The configuration.
    pub fn config(&self) -> &Arc<GatewayConfig> {
        todo!()
    }
    /// Current kernelspecs (rescanned from disk), with the allow-list applied.
    pub fn kernelspecs(&self) -> KernelSpecs {
        todo!()
    }
    /// Whether `user` may use `spec` (EG §5.4: per-spec authorized list replaces the global one,
    /// unauthorized lists add up; lists are split on commas). `Err(Forbidden)` with EG's texts.
    pub fn authorize(&self, spec: &KernelSpec, user: &str) -> Result<(), Error> {
        todo!()
    }
    /// Starts a kernel: limits (counting starts in flight), env validation, authorization, launch.
    pub async fn start(&self, request: StartRequest) -> Result<KernelSnapshot, Error> {
        todo!()
    }
    /// One kernel.
    pub fn get(&self, kernel_id: &str) -> Result<KernelSnapshot, Error> {
        todo!()
    }
    /// Kernels that finished starting.
    pub fn list(&self) -> Vec<KernelSnapshot> {
        todo!()
    }
    /// Interrupts by signal or message as the kernelspec says.
    pub async fn interrupt(&self, kernel_id: &str) -> Result<(), Error> {
        todo!()
    }
    /// Restarts (same ports for local kernels); concurrent restarts wait for the one in progress.
    pub async fn restart(&self, kernel_id: &str) -> Result<KernelSnapshot, Error> {
        todo!()
    }
    /// Graceful shutdown: shutdown_request, wait, terminate, kill, cleanup.
    pub async fn shutdown(&self, kernel_id: &str) -> Result<(), Error> {
        todo!()
    }
    /// Shuts every kernel down (or leaves them, per config); bounded in time.
    pub async fn shutdown_all(&self) {
        todo!()
    }
}
