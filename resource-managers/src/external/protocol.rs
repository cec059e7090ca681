//! The messages of the plugin protocol, version [`PROTOCOL_VERSION`] (`docs/plugin-protocol.md`).
//!
//! Requests are built from [`Request`] and written as one JSON object per line; answers are read
//! into [`Answer`] and checked here (the id, `ok`, the fields each operation promises), so the
//! session only moves lines and the backend only sees well-formed values.

use std::collections::BTreeMap;

use jupyter_protocol::ConnectionInfo;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The protocol version this gateway speaks. A plugin answers `hello` with the version it
/// speaks; any other version is refused (see the versioning rule in the protocol page).
pub const PROTOCOL_VERSION: u32 = 1;

/// One request: its operation and the operation's fields (the id is added when it is sent).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Request {
    /// `hello`, `launch`, `reattach`, `poll`, `signal`, `terminate` or `cleanup`.
    pub(crate) op: &'static str,
    /// The operation's fields.
    pub(crate) fields: Map<String, Value>,
}

impl Request {
    /// `op` with `fields` (a JSON object; anything else is sent without fields).
    pub(crate) fn new(op: &'static str, fields: Value) -> Request {
        let fields = match fields {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        Request { op, fields }
    }

    /// The request as one line (without the newline): `{"id": .., "op": .., fields...}`.
    pub(crate) fn to_line(&self, id: u64) -> String {
        let mut object = Map::new();
        object.insert("id".to_owned(), Value::from(id));
        object.insert("op".to_owned(), Value::from(self.op));
        for (key, value) in &self.fields {
            object.insert(key.clone(), value.clone());
        }
        Value::Object(object).to_string()
    }
}

/// What is wrong with a line the plugin wrote, for the error message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LineFault {
    /// Not a JSON object.
    NotJson(String),
    /// A JSON object whose `id` is missing or another request's.
    WrongId {
        /// The id of the request waiting for its answer.
        expected: u64,
        /// What the line had instead (`none` when it had no numeric id).
        got: String,
    },
    /// The right id, but not the shape of an answer (no boolean `ok`, an error without text).
    Malformed(String),
}

/// A checked answer: the fields of a successful one, or the error the plugin reported.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Answer {
    /// `"ok": true`, with every field of the answer.
    Ok(Map<String, Value>),
    /// `"ok": false`, with the plugin's error.
    Failed(PluginFailure),
}

/// An error a plugin reported (`"ok": false, "error": {"kind": .., "message": ..}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginFailure {
    /// What kind of failure it is (decides the gateway's answer to its client).
    pub kind: FailureKind,
    /// The plugin's text.
    pub message: String,
}

/// The kinds of failure a plugin may report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// `kernel`: the kernel could not start or died during its launch (the kernelspec's fault).
    Kernel,
    /// `capacity`: no room for the kernel now (the gateway answers 503).
    Capacity,
    /// `not_running`: the kernel is gone (re-attach, signal).
    NotRunning,
    /// `unsupported`: the plugin does not do this (e.g. re-attach).
    Unsupported,
    /// `config`: the plugin's or the kernelspec's settings are wrong.
    Config,
    /// `failed`, or a kind this gateway does not know: any other failure.
    Failed,
}

impl FailureKind {
    fn parse(text: &str) -> FailureKind {
        match text {
            "kernel" => FailureKind::Kernel,
            "capacity" => FailureKind::Capacity,
            "not_running" => FailureKind::NotRunning,
            "unsupported" => FailureKind::Unsupported,
            "config" => FailureKind::Config,
            _ => FailureKind::Failed,
        }
    }
}

/// Checks one line against the request `expected` is the id of.
pub(crate) fn parse_answer(line: &str, expected: u64) -> Result<Answer, LineFault> {
    let Ok(Value::Object(object)) = serde_json::from_str::<Value>(line) else {
        return Err(LineFault::NotJson(excerpt(line)));
    };
    match object.get("id") {
        Some(id) if id.as_u64() == Some(expected) => {}
        Some(id) => {
            return Err(LineFault::WrongId {
                expected,
                got: excerpt(&id.to_string()),
            });
        }
        None => {
            return Err(LineFault::WrongId {
                expected,
                got: "none".to_owned(),
            });
        }
    }
    match object.get("ok") {
        Some(Value::Bool(true)) => Ok(Answer::Ok(object)),
        Some(Value::Bool(false)) => {
            let error = object.get("error").and_then(Value::as_object);
            let message = error
                .and_then(|e| e.get("message"))
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .ok_or_else(|| {
                    LineFault::Malformed("a failed answer needs error.message".to_owned())
                })?;
            let kind = error
                .and_then(|e| e.get("kind"))
                .and_then(Value::as_str)
                .map_or(FailureKind::Failed, FailureKind::parse);
            Ok(Answer::Failed(PluginFailure {
                kind,
                message: message.to_owned(),
            }))
        }
        _ => Err(LineFault::Malformed(
            "an answer needs a boolean \"ok\"".to_owned(),
        )),
    }
}

/// At most 200 characters of `text`, for messages.
pub(crate) fn excerpt(text: &str) -> String {
    const MAX: usize = 200;
    let text = text.trim();
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Where a plugin's kernels run (`capabilities.host`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginHost {
    /// On the gateway's machine.
    Gateway,
    /// Anywhere else (the default).
    #[default]
    Elsewhere,
}

/// `capabilities` of a `hello` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(default)]
pub struct PluginCapabilities {
    /// Where the plugin's kernels run.
    pub host: PluginHost,
    /// The plugin starts kernels as `run_as` when the launch names an account.
    pub run_as: bool,
    /// The plugin can re-attach to a kernel from its record.
    pub reattach: bool,
}

/// A `hello` answer: who the plugin is and what it does.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Hello {
    /// The protocol version the plugin speaks.
    pub protocol: u32,
    /// The backend's name (letters, digits, `_`, `-`): its key in the gateway's registry and
    /// in kernel records, and a `class_name` kernelspecs may use.
    pub name: String,
    /// More `metadata.process_proxy.class_name` values the plugin answers to.
    #[serde(default)]
    pub class_names: Vec<String>,
    /// `metadata.kernel_provisioner.provisioner_name` values the plugin answers to.
    #[serde(default)]
    pub provisioner_names: Vec<String>,
    /// What the plugin does.
    #[serde(default)]
    pub capabilities: PluginCapabilities,
}

/// A `launch` answer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct Launched {
    /// How to reach the kernel.
    pub(crate) connection: ConnectionInfo,
    /// What the plugin needs to find the kernel again (`reattach`); any JSON value.
    #[serde(default)]
    pub(crate) record: Value,
}

/// A `poll` or `terminate` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub(crate) struct StateAnswer {
    /// `running`, `exited` or `unknown`.
    pub(crate) state: StateName,
    /// The exit code, when the kernel exited normally.
    #[serde(default)]
    pub(crate) exit_code: Option<i32>,
    /// The signal that ended it.
    #[serde(default)]
    pub(crate) signal: Option<i32>,
}

/// The `state` of a [`StateAnswer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StateName {
    /// Still running.
    Running,
    /// Ended.
    Exited,
    /// The plugin cannot tell.
    Unknown,
}

impl StateAnswer {
    /// As the crate's [`crate::ProcessState`].
    pub(crate) fn state(&self) -> crate::ProcessState {
        match self.state {
            StateName::Running => crate::ProcessState::Running,
            StateName::Exited => crate::ProcessState::Exited {
                code: self.exit_code,
                signal: self.signal,
            },
            StateName::Unknown => crate::ProcessState::Unknown,
        }
    }
}

/// Reads an answer's fields as `T`; the error says which field is wrong.
pub(crate) fn fields_as<T: for<'de> Deserialize<'de>>(
    fields: Map<String, Value>,
) -> Result<T, String> {
    serde_json::from_value(Value::Object(fields)).map_err(|e| e.to_string())
}

/// The kernelspec as a `launch` request carries it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SpecFields<'a> {
    pub(crate) name: &'a str,
    pub(crate) argv: &'a [String],
    pub(crate) resource_dir: &'a std::path::Path,
    pub(crate) display_name: &'a str,
    pub(crate) language: &'a str,
    pub(crate) env: &'a BTreeMap<String, String>,
    pub(crate) interrupt_mode: &'static str,
    pub(crate) metadata: &'a Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(line: &str, expected: Result<Answer, LineFault>) {
        assert_eq!(parse_answer(line, 7), expected, "{line}");
    }

    #[test]
    fn answers_are_checked_for_id_and_shape() {
        let ok: Map<String, Value> = serde_json::from_str(r#"{"id":7,"ok":true,"x":1}"#).unwrap();
        check(r#"{"id":7,"ok":true,"x":1}"#, Ok(Answer::Ok(ok)));
        check(
            r#"{"id":7,"ok":false,"error":{"kind":"capacity","message":"queue full"}}"#,
            Ok(Answer::Failed(PluginFailure {
                kind: FailureKind::Capacity,
                message: "queue full".into(),
            })),
        );
        check(
            r#"{"id":7,"ok":false,"error":{"kind":"odd","message":"m"}}"#,
            Ok(Answer::Failed(PluginFailure {
                kind: FailureKind::Failed,
                message: "m".into(),
            })),
        );
        check("hello", Err(LineFault::NotJson("hello".into())));
        check("[1,2]", Err(LineFault::NotJson("[1,2]".into())));
        check(
            r#"{"id":6,"ok":true}"#,
            Err(LineFault::WrongId {
                expected: 7,
                got: "6".into(),
            }),
        );
        check(
            r#"{"ok":true}"#,
            Err(LineFault::WrongId {
                expected: 7,
                got: "none".into(),
            }),
        );
        check(
            r#"{"id":7,"ok":"yes"}"#,
            Err(LineFault::Malformed(
                "an answer needs a boolean \"ok\"".into(),
            )),
        );
        check(
            r#"{"id":7,"ok":false}"#,
            Err(LineFault::Malformed(
                "a failed answer needs error.message".into(),
            )),
        );
    }

    #[test]
    fn requests_are_one_object_with_id_and_op() {
        let line = Request::new("signal", serde_json::json!({"signum": 2})).to_line(3);
        let value: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"id": 3, "op": "signal", "signum": 2})
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn long_lines_are_cut_in_messages() {
        let long = "x".repeat(500);
        assert_eq!(excerpt(&long).len(), 203);
        assert_eq!(excerpt(" short "), "short");
    }

    #[test]
    fn states_and_hello_read_with_defaults() {
        let state: StateAnswer =
            fields_as(serde_json::from_str(r#"{"state":"exited","exit_code":3}"#).unwrap())
                .unwrap();
        assert_eq!(
            state.state(),
            crate::ProcessState::Exited {
                code: Some(3),
                signal: None
            }
        );
        assert!(
            fields_as::<StateAnswer>(serde_json::from_str(r#"{"state":"gone"}"#).unwrap()).is_err()
        );
        let hello: Hello =
            fields_as(serde_json::from_str(r#"{"protocol":1,"name":"p"}"#).unwrap()).unwrap();
        assert_eq!(hello.capabilities, PluginCapabilities::default());
        assert!(hello.class_names.is_empty());
    }
}
