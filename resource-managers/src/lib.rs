//! Where and how Jupyter kernels run: the [`ResourceManager`] trait, a [`Registry`] of backends by
//! name, and the backends (local processes, and remote launchers through the `ssh` backend).
//!
//! # Overview
//!
//! * A [`ResourceManager`] is a place kernels run. [`ResourceManager::launch`] takes a
//!   [`LaunchRequest`] (the kernelspec from `kernel-launcher`, the composed environment, the port
//!   range, ...) and returns a [`LaunchedKernel`]: the kernel's `ConnectionInfo` plus a
//!   [`KernelProcess`] handle.
//! * A [`KernelProcess`] is one running kernel as its backend sees it: [`KernelProcess::poll`] and
//!   [`KernelProcess::wait`] report its [`ProcessState`]; it can be signalled, interrupted,
//!   terminated (SIGTERM, grace period, SIGKILL) and cleaned up; [`KernelProcess::record`] gives a
//!   serialisable [`KernelRecord`] from which [`ResourceManager::reattach`] rebuilds a handle.
//! * A [`Registry`] holds the backends by name (`local`, `ssh`, `yarn`, ...) together with the
//!   names each answers to ([`ResourceManager::names`]: EG process-proxy class names,
//!   gateway_provisioners provisioner names). [`Registry::resolve`] turns the
//!   [`kernel_launcher::BackendRef`] a kernelspec's metadata holds into its backend, or into an
//!   [`Unavailable`] with the reason.
//! * [`ResourceManager::capabilities`] states what the gateway needs to know about a backend
//!   ([`Capabilities`]: where its kernels run, whether it honours [`LaunchRequest::run_as`],
//!   whether it needs the launcher callback listener); the gateway never decides by a name.
//! * [`local::LocalResourceManager`] runs kernels as child processes of the gateway, each in its
//!   own process group (EG's `LocalProcessProxy`).
//! * [`ssh::SshResourceManager`] starts kernels through a *launcher* that calls the gateway's
//!   [`kernel_launcher::ResponseListener`] back with the kernel's connection info (EG's
//!   `DistributedProcessProxy`, gateway_provisioners' `distributed-provisioner`); the kernel is
//!   then signalled through the launcher's communication port. Hosts that are this machine are
//!   launched on without SSH.
//!
//! Message-mode interrupts and `shutdown_request` are the gateway's business (over the kernel's
//! control channel); backends deal with processes only.
//!
//! # Example
//!
//! ```no_run
//! use std::collections::BTreeMap;
//! use std::path::{Path, PathBuf};
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use kernel_launcher::{KernelSpec, PortRange};
//! use resource_managers::local::{LocalConfig, LocalResourceManager};
//! use resource_managers::{LaunchRequest, Registry};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut registry = Registry::new();
//! registry.register(Arc::new(LocalResourceManager::new(LocalConfig {
//!     runtime_dir: PathBuf::from("/tmp/runtime"),
//!     log_dir: PathBuf::from("/tmp/logs"),
//!     ip: "127.0.0.1".into(),
//!     search_path: vec![PathBuf::from("/usr/bin")],
//! })));
//!
//! let spec = KernelSpec::load(Path::new("/usr/local/share/jupyter/kernels/python3"))?;
//! let backend = registry.resolve(&spec)?;
//! let kernel = backend
//!     .launch(LaunchRequest {
//!         kernel_id: uuid::Uuid::new_v4().to_string(),
//!         spec,
//!         env: BTreeMap::from([("KERNEL_USERNAME".into(), "alice".into())]),
//!         cwd: None,
//!         port_range: PortRange::ANY,
//!         timeout: Duration::from_secs(30),
//!         previous: None,
//!         username: "alice".into(),
//!         run_as: None,
//!         placement: Default::default(),
//!     })
//!     .await?;
//! println!("shell port {}", kernel.connection.shell_port);
//! kernel.process.terminate(Duration::from_secs(5)).await?;
//! kernel.process.cleanup(false).await;
//! # Ok(())
//! # }
//! ```
//!
//! # Writing your own backend
//!
//! A program embedding these crates adds a backend by implementing [`ResourceManager`] (and a
//! [`KernelProcess`] for its handles) and registering it with [`Registry::register`]. The
//! backend chooses the names kernelspecs use for it:
//!
//! * its [`ResourceManager::name`], a plain name (letters, digits, `_`, `-`), always works as
//!   `"class_name"` in `metadata.process_proxy`;
//! * [`ResourceManager::names`] adds any other class names (EG's dotted ones, e.g.
//!   `enterprise_gateway.services.processproxies.k8s.KubernetesProcessProxy`, or its own) and
//!   `metadata.kernel_provisioner.provisioner_name` values. A name claimed by two backends
//!   belongs to the one registered last, so an embedder can take over a built-in's names.
//!
//! A kernelspec whose name nobody claims stays listed, marked unavailable with the registry's
//! reason, and cannot be started. [`ResourceManager::capabilities`] defaults to
//! [`Capabilities::ELSEWHERE`] (kernels on another machine, no `run_as`, no callback listener).
//!
//! The contract:
//!
//! * `launch` returns once the kernel's connection info is known and must leave nothing behind
//!   when it fails (files, processes, remote jobs); it must finish within `request.timeout`.
//! * The kernel gets exactly `request.env`.
//! * `wait` resolves promptly when the kernel ends; `terminate` escalates to a forced stop after
//!   the grace period; `cleanup` is idempotent.
//! * `record` holds what `reattach` needs, as plain JSON in [`KernelRecord::process`].
//!
//! ```
//! use std::sync::Arc;
//! use async_trait::async_trait;
//! use kernel_launcher::BackendRef;
//! use resource_managers::{
//!     BackendNames, Error, KernelRecord, LaunchRequest, LaunchedKernel, Registry, ResourceManager,
//! };
//!
//! /// Runs nothing yet: every launch is refused.
//! #[derive(Debug)]
//! struct Batch;
//!
//! #[async_trait]
//! impl ResourceManager for Batch {
//!     fn name(&self) -> &str {
//!         "batch"
//!     }
//!     fn names(&self) -> BackendNames {
//!         BackendNames::new(&["acme.gateway.BatchProcessProxy"], &["batch-provisioner"])
//!     }
//!     async fn launch(&self, request: LaunchRequest) -> Result<LaunchedKernel, Error> {
//!         Err(Error::Unsupported(format!("no batch queue for kernel {}", request.kernel_id)))
//!     }
//!     async fn reattach(&self, _record: &KernelRecord) -> Result<LaunchedKernel, Error> {
//!         Err(Error::Unsupported("batch kernels cannot be re-attached".into()))
//!     }
//! }
//!
//! let mut registry = Registry::new();
//! registry.register(Arc::new(Batch));
//! for named in [
//!     BackendRef::ProcessProxy("batch".into()),
//!     BackendRef::ProcessProxy("acme.gateway.BatchProcessProxy".into()),
//!     BackendRef::Provisioner("batch-provisioner".into()),
//! ] {
//!     let backend = registry.resolve_ref("spec", &named).map_err(|e| e.to_string())?;
//!     assert_eq!(backend.name(), "batch");
//! }
//! let unknown = BackendRef::ProcessProxy("acme.gateway.Other".into());
//! assert!(registry.resolve_ref("spec", &unknown).err().and_then(|e| e.listed_reason().map(str::to_owned)).is_some());
//! # Ok::<(), String>(())
//! ```

#[cfg(feature = "docker")]
pub mod docker;
pub mod error;
#[cfg(feature = "external")]
pub mod external;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod launcher;
pub mod local;
pub mod process;
pub mod registry;
#[cfg(feature = "ssh")]
pub mod ssh;
#[cfg(feature = "yarn")]
pub mod yarn;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use jupyter_protocol::ConnectionInfo;
use kernel_launcher::{KernelSpec, PortRange};
use serde::{Deserialize, Serialize};

pub use error::Error;
pub use registry::{BackendNames, DEFAULT_BACKEND, Registry, Unavailable};

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
    /// The OS account to run the kernel as (impersonation), when not the gateway's own. Only the
    /// local backend applies it; others leave impersonation to their launch scripts.
    pub run_as: Option<RunAs>,
    /// Where and how big the kernel should be (a kernel profile's backend settings); the default
    /// asks for nothing beyond the kernelspec.
    pub placement: Placement,
}

/// What a kernel profile asks of the backend; each backend applies the part that is its own and
/// ignores the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// Limits the local backend puts on the kernel process.
    pub limits: ProcessLimits,
    /// The `ssh` backend's host group: replaces the kernelspec's and the configured remote hosts.
    pub hosts: Vec<String>,
    /// Spark settings the `yarn` backend adds to a `spark-submit` command.
    pub spark: SparkSettings,
    /// What the `kubernetes` backend adds to the kernel's pod.
    pub kubernetes: PodPlacement,
}

/// A profile's part of a kernel pod: node selector and tolerations merged into the rendered pod's
/// `spec` (as data, never as template text), and a pod template that replaces the kernelspec's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodPlacement {
    /// `spec.nodeSelector` entries (label key to value).
    pub node_selector: BTreeMap<String, String>,
    /// `spec.tolerations` entries.
    pub tolerations: Vec<Toleration>,
    /// A Jinja2 pod template used instead of the kernelspec's `kernel-pod.yaml.j2`.
    pub pod_template: Option<PathBuf>,
}

impl PodPlacement {
    /// Whether the profile asks for nothing of the pod.
    pub fn is_empty(&self) -> bool {
        self.node_selector.is_empty() && self.tolerations.is_empty() && self.pod_template.is_none()
    }
}

/// One pod toleration (`core/v1 Toleration`); `None` fields are left out of the pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Toleration {
    /// The taint key (a label key); `None` with `Exists` tolerates every taint.
    pub key: Option<String>,
    /// `Exists` or `Equal` (Kubernetes' default).
    pub operator: Option<String>,
    /// The taint value (a label value; only with `Equal`).
    pub value: Option<String>,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`; `None`: every effect.
    pub effect: Option<String>,
    /// With `NoExecute`: how long the pod stays bound after the taint appears.
    pub toleration_seconds: Option<i64>,
}

/// Resource limits of a local kernel process, applied by `prlimit` and `taskset` (util-linux)
/// in front of the kernel's argv, so the kernel's own process gets them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessLimits {
    /// Address-space limit in bytes (`RLIMIT_AS`): an allocation past it fails in the kernel.
    pub memory_bytes: Option<u64>,
    /// CPU-time limit in seconds (`RLIMIT_CPU`): the kernel is stopped by SIGXCPU past it.
    pub cpu_seconds: Option<u64>,
    /// How many CPUs the kernel may run on (its affinity is set to CPUs `0..cpus`).
    pub cpus: Option<u32>,
}

impl ProcessLimits {
    /// Whether any limit is set.
    pub fn is_empty(&self) -> bool {
        self.memory_bytes.is_none() && self.cpu_seconds.is_none() && self.cpus.is_none()
    }
}

/// `spark-submit` arguments of a profile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SparkSettings {
    /// `--queue`.
    pub queue: Option<String>,
    /// `--driver-memory` (Spark's size syntax, e.g. `4g`).
    pub driver_memory: Option<String>,
    /// `--executor-memory`.
    pub executor_memory: Option<String>,
    /// `--num-executors`.
    pub executor_count: Option<u32>,
    /// `--executor-cores`.
    pub executor_cores: Option<u32>,
}

impl SparkSettings {
    /// The settings as `spark-submit` arguments, in a fixed order.
    pub fn arguments(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut push = |flag: &str, value: Option<String>| {
            if let Some(value) = value {
                out.push(flag.to_owned());
                out.push(value);
            }
        };
        push("--queue", self.queue.clone());
        push("--driver-memory", self.driver_memory.clone());
        push("--executor-memory", self.executor_memory.clone());
        push(
            "--num-executors",
            self.executor_count.map(|n| n.to_string()),
        );
        push(
            "--executor-cores",
            self.executor_cores.map(|n| n.to_string()),
        );
        out
    }
}

/// An OS account a kernel process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory (the gateway also sets `HOME` in the kernel's environment).
    pub home: PathBuf,
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

impl ProcessState {
    /// Ended, with neither an exit code nor a signal known: a kernel the backend no longer finds
    /// (an application the RM has forgotten, a launcher whose listener is gone).
    pub const GONE: ProcessState = ProcessState::Exited {
        code: None,
        signal: None,
    };
}

impl std::fmt::Display for ProcessState {
    /// `exit code 3`, `signal 9`, `exited`, `running`, `unknown state`: for error messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProcessState::Exited {
                code: Some(code), ..
            } => write!(f, "exit code {code}"),
            ProcessState::Exited {
                signal: Some(signal),
                ..
            } => write!(f, "signal {signal}"),
            ProcessState::Exited { .. } => f.write_str("exited"),
            ProcessState::Running => f.write_str("running"),
            ProcessState::Unknown => f.write_str("unknown state"),
        }
    }
}

/// Seconds as Python prints a float (`30.0`, `1.5`), for messages worded as EG's are (e.g.
/// "KernelID: '…' launch timeout due to: Waited too long (30.0s) to get connection file").
pub fn python_seconds(duration: Duration) -> String {
    let secs = (duration.as_secs_f64() * 1000.0).round() / 1000.0;
    if secs.fract() == 0.0 {
        format!("{secs:.1}")
    } else {
        format!("{secs}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_like_eg() {
        assert_eq!(python_seconds(Duration::from_secs(30)), "30.0");
        assert_eq!(python_seconds(Duration::from_millis(1500)), "1.5");
        let exited = |code, signal| ProcessState::Exited { code, signal }.to_string();
        assert_eq!(exited(Some(3), None), "exit code 3");
        assert_eq!(exited(None, Some(9)), "signal 9");
        assert_eq!(exited(None, None), "exited");
    }
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

impl KernelRecord {
    /// The `process` object of a record that `backend` wrote, read by `parse` (a backend's
    /// record type's reader: `None` for a malformed object). A record of another backend, or
    /// one `parse` refuses, is an [`Error::Config`] naming the kernel.
    pub fn process_of<T>(
        &self,
        backend: &str,
        parse: impl FnOnce(&serde_json::Value) -> Option<T>,
    ) -> Result<T, Error> {
        if self.resource_manager != backend {
            return Err(Error::Config(format!(
                "kernel {} was launched by '{}', not by the {backend} backend",
                self.kernel_id, self.resource_manager
            )));
        }
        parse(&self.process).ok_or_else(|| {
            Error::Config(format!(
                "kernel {}: unreadable {backend} process record",
                self.kernel_id
            ))
        })
    }
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
    /// Interrupts by signal: the one [`process::interrupt_signal_of`] gives for the kernelspec
    /// (`EG_ALTERNATE_SIGINT`, Toree's `--alternate-sigint`, else SIGINT).
    async fn interrupt(&self) -> Result<(), Error>;
    /// SIGTERM, wait up to `grace`, then SIGKILL; reaps the process. Returns the final state.
    async fn terminate(&self, grace: Duration) -> Result<ProcessState, Error>;
    /// Releases what the launch allocated (connection file, log handle, host slot). Idempotent.
    async fn cleanup(&self, keep_connection_file: bool);
    /// Called right after the gateway sent the kernel `shutdown_request`. Backends whose
    /// launcher serves a communication port tell it to stop listening here, as EG does: EG's
    /// launchers keep their process alive for that listener, so without this the kernel would
    /// look alive until the shutdown wait ran out. The default does nothing.
    async fn shutdown_requested(&self) {}
    /// The last `max_lines` lines of the kernel's log, for error messages.
    fn log_tail(&self, max_lines: usize) -> String;
    /// Lets the kernel outlive this handle (for a later [`ResourceManager::reattach`]). Backends
    /// whose handles stop their kernel on drop (the local one does) skip that after this call.
    /// The default does nothing.
    fn detach(&self) {}
}

/// Where a backend's kernels run, as the gateway needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelHost {
    /// On the gateway's own machine, as its child processes (the local backend). The gateway
    /// may restart such a kernel on its own when it dies.
    Gateway,
    /// Somewhere else (another host, a cluster). The gateway does not restart such a kernel when
    /// no client is connected to it, as EG does for remote kernels.
    Elsewhere,
}

/// What a backend does, stated by [`ResourceManager::capabilities`]; the gateway decides by
/// these, never by a backend's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Where its kernels run.
    pub host: KernelHost,
    /// Whether it starts the kernel as [`LaunchRequest::run_as`]. The gateway looks the user's
    /// account up (and refuses an unknown one) only for backends that do; the others leave
    /// impersonation to their launch scripts (`KERNEL_USERNAME`).
    pub honours_run_as: bool,
    /// Whether its launches wait for a launcher's call to the gateway's
    /// [`kernel_launcher::ResponseListener`] (so it cannot work without one).
    pub uses_callback_listener: bool,
}

impl Capabilities {
    /// A backend whose kernels run elsewhere, with neither `run_as` nor the callback listener:
    /// the default of [`ResourceManager::capabilities`].
    pub const ELSEWHERE: Capabilities = Capabilities {
        host: KernelHost::Elsewhere,
        honours_run_as: false,
        uses_callback_listener: false,
    };

    /// A backend whose kernels run elsewhere and start through a launcher that calls the
    /// gateway's response listener back (ssh, yarn, the container backends).
    pub const CALLBACK_LAUNCHER: Capabilities = Capabilities {
        uses_callback_listener: true,
        ..Capabilities::ELSEWHERE
    };
}

/// A place kernels run.
#[async_trait]
pub trait ResourceManager: Send + Sync + Debug {
    /// The backend's name (`local`, `ssh`, `yarn`, ...): its key in the [`Registry`], in
    /// [`KernelRecord::resource_manager`] and in metrics, and a `class_name` kernelspecs may use.
    fn name(&self) -> &str;
    /// The other names kernelspecs may use for this backend: EG class names, gateway_provisioners
    /// provisioner names, or names of its own. The default is none beyond [`Self::name`].
    fn names(&self) -> BackendNames {
        BackendNames::default()
    }
    /// What the backend does. The default is [`Capabilities::ELSEWHERE`].
    fn capabilities(&self) -> Capabilities {
        Capabilities::ELSEWHERE
    }
    /// Starts a kernel. Must leave nothing behind when it fails.
    async fn launch(&self, request: LaunchRequest) -> Result<LaunchedKernel, Error>;
    /// Re-attaches to a kernel from its record, if the backend can.
    async fn reattach(&self, record: &KernelRecord) -> Result<LaunchedKernel, Error>;
}
