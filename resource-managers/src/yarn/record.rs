//! Where a `yarn` kernel runs, as stored in [`crate::KernelRecord::process`] for a later gateway
//! to re-attach through.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The `process` object of a `yarn` kernel's record, in the JSON shape earlier gateways stored.
/// Every key may be missing (it then takes its default); the re-attach says which one it needed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct YarnRecord {
    /// The YARN application id.
    pub(crate) application_id: String,
    /// The user the application runs as (for the RM's simple auth).
    pub(crate) user: String,
    /// The RM endpoints the launch used (HA pairs included).
    pub(crate) endpoints: Vec<String>,
    /// The host of the application master (the kernel).
    pub(crate) host: String,
    /// That host's address, as text (a record with a bad one is refused with that reason).
    pub(crate) ip: String,
    /// The kernel's pid on its host, as the launcher reported it.
    pub(crate) pid: Option<i32>,
    /// The kernel's process group on its host.
    pub(crate) pgid: Option<i32>,
    /// The launcher's communication port (0 or missing: none).
    pub(crate) comm_port: Option<u16>,
    /// The launch's log here.
    pub(crate) log_path: PathBuf,
    /// The interrupt signal's name; empty means SIGINT.
    pub(crate) interrupt_signal: String,
}

impl YarnRecord {
    /// The record as stored JSON.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        // A struct of plain fields always serialises.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// A stored record; `None` when a field has the wrong type.
    pub(crate) fn from_json(value: &serde_json::Value) -> Option<YarnRecord> {
        serde_json::from_value(value.clone()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_shape_is_kept_and_sparse_records_read() {
        let stored = serde_json::json!({
            "application_id": "application_1_0001", "user": "alice",
            "endpoints": ["http://rm1:8088/ws/v1/cluster"], "host": "node1", "ip": "10.0.0.7",
            "pid": 812, "pgid": 812, "comm_port": 40123, "log_path": "/logs/kernel-k.log",
            "interrupt_signal": "SIGINT",
        });
        let record = YarnRecord::from_json(&stored);
        assert_eq!(
            record
                .as_ref()
                .map(|r| (r.application_id.as_str(), r.comm_port)),
            Some(("application_1_0001", Some(40123)))
        );
        assert_eq!(record.map(|r| r.to_json()), Some(stored));
        let sparse = YarnRecord::from_json(&serde_json::json!({"application_id": "a"}));
        assert_eq!(sparse.map(|r| (r.ip, r.pid)), Some((String::new(), None)));
        assert_eq!(
            YarnRecord::from_json(&serde_json::json!({"pid": "x"})),
            None
        );
    }
}
