//! What goes wrong with a plugin. Every message names the plugin and the operation, so a
//! failed launch says whose fault it is.

use std::time::Duration;

use super::protocol::{FailureKind, PluginFailure};

/// A plugin broke the protocol, could not be run, or reported a failure.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The plugin program could not be started (not found, not executable, no argv).
    #[error("plugin {plugin} could not be started: {reason}")]
    Start {
        /// The plugin, as messages name it.
        plugin: String,
        /// Why.
        reason: String,
    },
    /// No answer within the operation's deadline.
    #[error("plugin {plugin} did not answer {op} within {}", crate::python_seconds(*after) + " s")]
    Timeout {
        /// The plugin.
        plugin: String,
        /// The operation waiting for its answer.
        op: String,
        /// How long the gateway waited.
        after: Duration,
    },
    /// The plugin exited (or closed its stdout) before answering.
    #[error("plugin {plugin} exited during {op} ({status}){stderr}")]
    Exited {
        /// The plugin.
        plugin: String,
        /// The operation waiting for its answer.
        op: String,
        /// How it ended (`exit code 3`, `signal 9`, `stdout closed`).
        status: String,
        /// `; stderr: <last lines>` when it wrote any.
        stderr: String,
    },
    /// A line on stdout that is not a JSON object (or not a line: too long, not readable).
    #[error("plugin {plugin} answered {op} with something that is not a JSON object: {line}")]
    NotJson {
        /// The plugin.
        plugin: String,
        /// The operation waiting for its answer.
        op: String,
        /// The start of what it wrote.
        line: String,
    },
    /// An answer carrying another request's id (or none).
    #[error("plugin {plugin} answered {op} (request id {expected}) with id {got}")]
    WrongId {
        /// The plugin.
        plugin: String,
        /// The operation waiting for its answer.
        op: String,
        /// The id of that request.
        expected: u64,
        /// The id the answer had.
        got: String,
    },
    /// An answer with the right id but not the shape its operation promises.
    #[error("plugin {plugin} answered {op} with a malformed answer: {reason}")]
    Malformed {
        /// The plugin.
        plugin: String,
        /// The operation.
        op: String,
        /// What is wrong.
        reason: String,
    },
    /// The plugin speaks another protocol version.
    #[error(
        "plugin {plugin} speaks protocol version {got}; this gateway speaks version {}",
        super::protocol::PROTOCOL_VERSION
    )]
    Version {
        /// The plugin.
        plugin: String,
        /// The version it answered `hello` with.
        got: u32,
    },
    /// The plugin answered with an error of its own.
    #[error("plugin {plugin} could not {op}: {}", failure.message)]
    Refused {
        /// The plugin.
        plugin: String,
        /// The operation.
        op: String,
        /// What it reported.
        failure: PluginFailure,
    },
    /// An earlier violation ended the plugin; nothing more can be asked of it.
    #[error("plugin {plugin} was stopped after an earlier failure: {reason}")]
    Broken {
        /// The plugin.
        plugin: String,
        /// The earlier failure.
        reason: String,
    },
}

impl PluginError {
    /// The plugin's own failure report, when that is what this is.
    pub fn failure(&self) -> Option<&PluginFailure> {
        match self {
            PluginError::Refused { failure, .. } => Some(failure),
            _ => None,
        }
    }
}

impl From<PluginError> for crate::Error {
    /// A failure the plugin reported keeps its kind (capacity is a 503, a kernel that did not
    /// start is the kernelspec's fault, ...); everything else is the plugin's fault.
    fn from(err: PluginError) -> crate::Error {
        let text = err.to_string();
        match err.failure().map(|f| f.kind) {
            Some(FailureKind::Kernel) => crate::Error::Spawn(text),
            Some(FailureKind::Capacity) => crate::Error::Capacity(text),
            Some(FailureKind::NotRunning) => crate::Error::NotRunning(text),
            Some(FailureKind::Unsupported) => crate::Error::Unsupported(text),
            Some(FailureKind::Config) => crate::Error::Config(text),
            _ => crate::Error::Plugin(err),
        }
    }
}
