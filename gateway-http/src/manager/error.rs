//! What the kernel manager refuses or fails with. The manager knows nothing of HTTP: `api`
//! turns each of these into the gateway's [`crate::Error`] (and so into a status and EG's
//! `{"reason","message"}` body) in one place.

use crate::Fault;

/// A refusal or failure of the kernel manager. Messages are lowercase where they are ours,
/// EG's own texts where clients match on them, and never echo secrets.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// The request itself is wrong (bad env values, a malformed kernel id, an unknown profile).
    #[error("{message}")]
    BadRequest {
        /// What is wrong, for the client.
        message: String,
    },
    /// Refused by policy: limits, user authorization, a forbidden profile.
    #[error("{reason}")]
    Forbidden {
        /// EG's reason text.
        reason: String,
        /// More detail (EG often leaves it empty).
        message: String,
    },
    /// No kernel with this id (or not one the caller may see).
    #[error("Kernel does not exist: {0}")]
    NoSuchKernel(String),
    /// No kernelspec with this name.
    #[error("No such kernel named {0}")]
    NoSuchKernelSpec(String),
    /// A kernel with this id already exists.
    #[error("Kernel already exists: {0}")]
    KernelExists(String),
    /// A start, restart or re-attach failed, with the real reason and whose fault it was.
    #[error("{reason}")]
    LaunchFailed {
        /// What went wrong (EG puts process-proxy errors there).
        reason: String,
        /// Whose fault: the kernel's, capacity's, the client's (it went away), or ours.
        fault: Fault,
    },
    /// The kernelspec names a backend this gateway cannot run.
    #[error("{0}")]
    Unsupported(String),
    /// Something that should not happen.
    #[error("{0}")]
    Internal(String),
}

impl ManagerError {
    /// Whose fault this is.
    pub fn fault(&self) -> Fault {
        match self {
            ManagerError::BadRequest { .. }
            | ManagerError::Forbidden { .. }
            | ManagerError::NoSuchKernel(_)
            | ManagerError::NoSuchKernelSpec(_)
            | ManagerError::KernelExists(_) => Fault::Client,
            ManagerError::LaunchFailed { fault, .. } => *fault,
            ManagerError::Unsupported(_) => Fault::Kernel,
            ManagerError::Internal(_) => Fault::Internal,
        }
    }
}
