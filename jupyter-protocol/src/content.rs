//! Typed contents for the messages a client of a kernel needs. Everything else stays raw.
//!
//! These are wire types: they mirror the JSON of the messaging protocol field by field, and unknown
//! fields in incoming content are ignored.
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `kernel_info_request` (empty content).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KernelInfoRequest {}

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

/// `execute_request`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecuteRequest {
    /// Source code to run.
    pub code: String,
    /// Run without broadcasting output or counting the execution.
    #[serde(default)]
    pub silent: bool,
    /// Record the code in the kernel's history and count it.
    #[serde(default = "default_true")]
    pub store_history: bool,
    /// Expressions to evaluate after the code, by name.
    #[serde(default)]
    pub user_expressions: Map<String, Value>,
    /// Whether the kernel may send `input_request`s.
    #[serde(default)]
    pub allow_stdin: bool,
    /// Abort queued executions after an error.
    #[serde(default = "default_true")]
    pub stop_on_error: bool,
}

fn default_true() -> bool {
    true
}

impl ExecuteRequest {
    /// A request to run `code` with the usual defaults (stored in history, no stdin, stop on error).
    pub fn new(code: &str) -> ExecuteRequest {
        ExecuteRequest {
            code: code.to_owned(),
            silent: false,
            store_history: true,
            user_expressions: Map::new(),
            allow_stdin: false,
            stop_on_error: true,
        }
    }
}

/// `execute_reply`. On error the exception fields are present as well.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecuteReply {
    /// `ok`, `error` or `aborted`.
    pub status: String,
    /// The execution counter after this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_count: Option<u64>,
    /// Results of `user_expressions` (on `ok`).
    #[serde(default)]
    pub user_expressions: Map<String, Value>,
    /// Payloads (deprecated by the protocol, still sent as `[]`).
    #[serde(default)]
    pub payload: Vec<Value>,
    /// Exception name (on `error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ename: Option<String>,
    /// Exception value (on `error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evalue: Option<String>,
    /// Traceback (on `error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceback: Option<Vec<String>>,
}

/// `execute_input` on iopub: the code being run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecuteInput {
    /// The code.
    pub code: String,
    /// Its execution counter.
    #[serde(default)]
    pub execution_count: u64,
}

/// `status` on iopub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// `starting`, `busy`, `idle`, `restarting` or `dead`.
    pub execution_state: String,
}

impl Status {
    /// The kernel started working on a request.
    pub fn busy() -> Status {
        Status {
            execution_state: "busy".to_owned(),
        }
    }
    /// The kernel finished a request.
    pub fn idle() -> Status {
        Status {
            execution_state: "idle".to_owned(),
        }
    }
    /// The kernel process is starting.
    pub fn starting() -> Status {
        Status {
            execution_state: "starting".to_owned(),
        }
    }
}

/// `stream` on iopub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stream {
    /// `stdout` or `stderr`.
    pub name: String,
    /// The text written.
    pub text: String,
}

/// `display_data` on iopub (also the shape of `update_display_data`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DisplayData {
    /// Representations by MIME type.
    pub data: Map<String, Value>,
    /// Metadata by MIME type.
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// Transient data such as `display_id`.
    #[serde(default)]
    pub transient: Map<String, Value>,
}

/// `execute_result` on iopub.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecuteResult {
    /// The execution counter of the request.
    #[serde(default)]
    pub execution_count: u64,
    /// Representations by MIME type.
    pub data: Map<String, Value>,
    /// Metadata by MIME type.
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

/// Extracts the `text/plain` representation from a MIME bundle.
pub fn text_plain(data: &Map<String, Value>) -> Option<String> {
    match data.get("text/plain")? {
        Value::String(s) => Some(s.clone()),
        // Some kernels split long text into a list of lines.
        Value::Array(lines) => Some(lines.iter().filter_map(Value::as_str).collect()),
        _ => None,
    }
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

/// `interrupt_request` (empty content; sent on control).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InterruptRequest {}

/// `interrupt_reply`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InterruptReply {
    /// `ok` or `error`.
    #[serde(default)]
    pub status: String,
}

/// `shutdown_request` (sent on control).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShutdownRequest {
    /// Whether the client will restart the kernel afterwards.
    #[serde(default)]
    pub restart: bool,
}

/// `shutdown_reply`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShutdownReply {
    /// `ok` or `error`.
    #[serde(default)]
    pub status: String,
    /// Echo of the request's `restart`.
    #[serde(default)]
    pub restart: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execute_request_defaults() {
        let req: ExecuteRequest = serde_json::from_str(r#"{"code":"x"}"#).expect("parse");
        assert!(req.store_history && req.stop_on_error && !req.silent);
        let json = serde_json::to_value(ExecuteRequest::new("y")).expect("json");
        assert_eq!(json["code"], "y");
        assert_eq!(json["user_expressions"], serde_json::json!({}));
    }

    #[test]
    fn text_plain_forms() {
        let data: Map<String, Value> =
            serde_json::from_str(r#"{"text/plain":["a","b"]}"#).expect("parse");
        assert_eq!(text_plain(&data).as_deref(), Some("ab"));
        let data: Map<String, Value> =
            serde_json::from_str(r#"{"text/html":"<b>"}"#).expect("parse");
        assert_eq!(text_plain(&data), None);
    }
}
