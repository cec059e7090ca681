//! [`YarnError`]: what can go wrong talking to a YARN ResourceManager or reading its
//! configuration. It sits apart from the client so that `site` (which reads `yarn-site.xml`)
//! and the client both use it without depending on each other.

use super::types::AppState;

/// Errors of the YARN client. Each says which RM (or which file) it concerns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum YarnError {
    /// Invalid client configuration (endpoint URL, CA bundle, ...).
    #[error("YARN client configuration: {0}")]
    Config(String),
    /// `yarn-site.xml` could not be read or understood.
    #[error("{path}: {message}")]
    Site {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Kerberos/SPNEGO was asked for; this client does not speak it yet.
    #[error(
        "Kerberos (SPNEGO) authentication to the YARN ResourceManager is not supported yet; \
         use simple authentication or a gateway-side proxy"
    )]
    KerberosUnsupported,
    /// The request did not get an HTTP response (connection refused, timeout, TLS, ...).
    #[error("request to YARN ResourceManager {endpoint} failed: {source}")]
    Transport {
        /// The RM base URL.
        endpoint: String,
        /// The underlying error.
        #[source]
        source: reqwest::Error,
    },
    /// None of the configured RMs says it is active.
    #[error("No active YARN ResourceManager found (tried: {})", tried.join("; "))]
    NoActiveRm {
        /// One line per endpoint: what it answered.
        tried: Vec<String>,
    },
    /// The RM answered as a standby even after a fresh active-RM probe.
    #[error("YARN ResourceManager {endpoint} is a standby: {detail}")]
    Standby {
        /// The RM base URL.
        endpoint: String,
        /// Location or body of its answer.
        detail: String,
    },
    /// The RM answered with an error in its `RemoteException` JSON shape.
    #[error("YARN ResourceManager answered {status}: {exception}: {message}")]
    Remote {
        /// HTTP status.
        status: u16,
        /// Exception simple name, e.g. `NotFoundException`.
        exception: String,
        /// The message.
        message: String,
    },
    /// The RM answered with an unexpected status and a non-JSON body.
    #[error("YARN ResourceManager answered {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// A response body did not have the expected shape.
    #[error("unexpected {what} response from the YARN ResourceManager: {message}")]
    Decode {
        /// Which call.
        what: &'static str,
        /// The parse error.
        message: String,
    },
    /// An application id that is not `application_<ts>_<seq>`.
    #[error("invalid YARN application id {0:?}")]
    InvalidAppId(String),
    /// A kill was accepted but the application did not reach a final state in time.
    #[error("YARN application {app_id} still in state {last_state} after the kill request")]
    KillTimeout {
        /// The application.
        app_id: String,
        /// Its last observed state.
        last_state: AppState,
    },
}

impl YarnError {
    /// Whether the RM said the thing asked for does not exist (HTTP 404).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            YarnError::Remote { status: 404, .. } | YarnError::Status { status: 404, .. }
        )
    }
}
