//! The crate's error type. Each variant knows whose fault it is.

/// Errors of launching and controlling kernels.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The kernel process could not be started (e.g. `argv[0]` not found): the kernelspec's fault.
    #[error("{0}")]
    Spawn(String),
    /// The kernel exited during launch; `log_tail` has its last log lines.
    #[error("kernel process exited during launch ({status}): {log_tail}")]
    ExitedDuringLaunch {
        /// How it ended.
        status: String,
        /// The last lines of its log.
        log_tail: String,
    },
    /// The launch did not finish within its deadline.
    #[error("{0}")]
    LaunchTimeout(String),
    /// Configuration error (port range, missing settings).
    #[error("{0}")]
    Config(String),
    /// The kernel process is gone (signalling an exited kernel, re-attaching to a dead one).
    #[error("{0}")]
    NotRunning(String),
    /// The backend cannot do this (e.g. re-attach).
    #[error("{0}")]
    Unsupported(String),
    /// Errors from kernelspec/env/port helpers.
    #[error(transparent)]
    Launcher(#[from] kernel_launcher::Error),
    /// Protocol errors (connection file).
    #[error(transparent)]
    Protocol(#[from] jupyter_protocol::Error),
    /// I/O failure.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The cluster has no room for the kernel (a YARN queue over its threshold, an application
    /// still waiting for resources at the deadline): a capacity problem, not the kernel's fault.
    #[error("{0}")]
    Capacity(String),
    /// The backend's credentials were refused (SSH authentication failed on every host): the
    /// gateway answers 403, as EG intends for authentication failures.
    #[error("{0}")]
    Unauthorized(String),
    /// The YARN ResourceManager could not be reached or refused a call.
    #[cfg(feature = "yarn")]
    #[error(transparent)]
    Yarn(#[from] crate::yarn::YarnError),
    /// An external plugin broke the protocol, could not be run, or failed (its message names
    /// the plugin and what it did).
    #[cfg(feature = "external")]
    #[error(transparent)]
    Plugin(crate::external::PluginError),
    /// A value the client sent was refused before it reached a backend's API (an image
    /// reference, a name): the gateway answers 400; the message names the field.
    #[error("{0}")]
    InvalidRequest(String),
    /// The Docker engine could not be reached or refused a call.
    #[cfg(feature = "docker")]
    #[error(transparent)]
    Docker(#[from] crate::docker::DockerError),
    /// The Kubernetes API server could not be reached or refused a call.
    #[cfg(feature = "kubernetes")]
    #[error(transparent)]
    Kubernetes(#[from] crate::kubernetes::KubeError),
}
