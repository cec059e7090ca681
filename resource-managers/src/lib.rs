//! Where and how Jupyter kernels run: the [`ResourceManager`] trait, a [`Registry`] of backends by
//! name, and the backends (local processes now; SSH and YARN later).
//!
//! CONTRACT SKELETON: the public surface below is what the other crates build against.

pub mod error;
pub mod local;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jupyter_protocol::ConnectionInfo;
use kernel_launcher::{KernelSpec, PortRange};
use serde::{Deserialize, Serialize};

pub use error::Error;

/// Everything a backend needs to start one kernel.
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    /// The kernel id (lowercase hyphenated v4 UUID).
    pub kernel_id: String,
    /// The kernelspec.
    pub spec: KernelSpec,
    /// The composed launch environment (the kernel gets exactly this).
    pub env: BTreeMap<String, String>,
    /// Working directory, if any.
    pub cwd: Option<PathBuf>,
    /// Ports are chosen inside this range.
    pub port_range: PortRange,
    /// The launch must finish (or fail) within this.
    pub timeout: Duration,
    /// On restart: the previous connection info, so local kernels keep ports and key.
    pub previous: Option<ConnectionInfo>,
    /// The effective user name.
    pub username: String,
}

/// A started kernel: how to talk to it, and its process.
#[derive(Debug)]
pub struct LaunchedKernel {
    /// The kernel's connection info.
    pub connection: ConnectionInfo,
    /// The running process (or remote application).
    pub process: Box<dyn KernelProcess>,
}

/// What a backend knows about a kernel's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    /// Still running.
    Running,
    /// Exited with a code, or was killed by a signal.
    Exited {
        /// Exit code, if it exited normally.
        code: Option<i32>,
        /// Signal number, if a signal ended it.
        signal: Option<i32>,
    },
    /// The backend cannot tell right now (e.g. the remote host is unreachable).
    Unknown,
}

/// Where a kernel runs, serialisable so a later gateway can re-attach to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelRecord {
    /// Name of the backend that launched it.
    pub resource_manager: String,
    /// Kernel id.
    pub kernel_id: String,
    /// Connection info.
    pub connection: ConnectionInfo,
    /// Backend-specific data (pid, pgid, host, application id...).
    pub process: serde_json::Value,
}

/// One running kernel process as its backend sees it.
#[async_trait]
pub trait KernelProcess: Send + Sync + Debug {
    /// A serialisable record of where it runs.
    fn record(&self) -> KernelRecord;
    /// Current state, without waiting.
    async fn poll(&self) -> ProcessState;
    /// Resolves when the process has ended (supervisors select on it).
    async fn wait(&self) -> ProcessState;
    /// Sends a signal (to the process group for local kernels).
    async fn signal(&self, signum: i32) -> Result<(), Error>;
    /// Interrupts by signal: SIGINT, or the kernelspec env's `EG_ALTERNATE_SIGINT`.
    async fn interrupt(&self) -> Result<(), Error>;
    /// SIGTERM, wait up to `grace`, then SIGKILL; reaps the process. Returns the final state.
    async fn terminate(&self, grace: Duration) -> Result<ProcessState, Error>;
    /// Releases what the launch allocated (connection file, log handle, host slot). Idempotent.
    async fn cleanup(&self, keep_connection_file: bool);
    /// The last `max_lines` lines of the kernel's log, for error messages.
    fn log_tail(&self, max_lines: usize) -> String;
}

/// A place kernels run.
#[async_trait]
pub trait ResourceManager: Send + Sync + Debug {
    /// The backend's name (`local`, `ssh`, `yarn`, ...).
    fn name(&self) -> &str;
    /// Starts a kernel. Must leave nothing behind when it fails.
    async fn launch(&self, request: LaunchRequest) -> Result<LaunchedKernel, Error>;
    /// Re-attaches to a kernel from its record, if the backend can.
    async fn reattach(&self, record: &KernelRecord) -> Result<LaunchedKernel, Error>;
}

/// Backends by name. An embedding program registers its own next to the built-in ones.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    backends: BTreeMap<String, Arc<dyn ResourceManager>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }
    /// Adds (or replaces) a backend under its name.
    pub fn register(&mut self, backend: Arc<dyn ResourceManager>) {
        self.backends.insert(backend.name().to_owned(), backend);
    }
    /// Looks a backend up.
    pub fn get(&self, name: &str) -> Option<Arc<dyn ResourceManager>> {
        self.backends.get(name).cloned()
    }
    /// Names of all backends.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.backends.keys().map(String::as_str)
    }
}
