//! Typed contents for the messages a client of a kernel needs. Everything else stays raw.
use serde::{Deserialize, Serialize};

/// `kernel_info_reply` (the fields the gateway reads; unknown ones are ignored).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KernelInfoReply {
    /// `ok` or `error`.
    #[serde(default)]
    pub status: String,
    /// Protocol version of the kernel, e.g. `5.3`.
    #[serde(default)]
    pub protocol_version: String,
    /// Implementation name.
    #[serde(default)]
    pub implementation: String,
    /// Language info, kept raw.
    #[serde(default)]
    pub language_info: serde_json::Value,
}

/// What [`crate::KernelClient::execute`] collected.
#[derive(Debug, Clone, Default)]
pub struct ExecuteOutcome {
    /// `ok`, `error` or `aborted` from execute_reply.
    pub status: String,
    /// Concatenated stdout stream text.
    pub stdout: String,
    /// Concatenated stderr stream text.
    pub stderr: String,
    /// `text/plain` of execute_result / display_data, in order.
    pub results: Vec<String>,
    /// Error (ename, evalue, traceback) if one was published.
    pub error: Option<ErrorContent>,
}

/// `error` iopub content and the error part of replies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorContent {
    /// Exception name.
    pub ename: String,
    /// Exception value.
    pub evalue: String,
    /// Traceback lines.
    #[serde(default)]
    pub traceback: Vec<String>,
}
