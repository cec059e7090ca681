//! Where an `ssh` kernel runs, as stored in [`crate::KernelRecord::process`] for a later
//! gateway to re-attach through.

use std::net::IpAddr;
use std::path::PathBuf;

use jupyter_protocol::ConnectionInfo;
use serde::{Deserialize, Serialize};

use super::process::{Found, Launched};

/// The `process` object of an `ssh` kernel's record. Its JSON shape is the one earlier gateways
/// stored (every key present, `null` for what a launch did not have), so their records still
/// re-attach; keys a record lacks take their defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SshRecord {
    /// The host name the kernel was launched on.
    #[serde(default)]
    pub(crate) host: String,
    /// The host's address (the communication port's and the kernel's).
    pub(crate) ip: IpAddr,
    /// The kernel's pid on its host, as the launcher reported it.
    #[serde(default)]
    pub(crate) pid: Option<i32>,
    /// The kernel's process group on its host.
    #[serde(default)]
    pub(crate) pgid: Option<i32>,
    /// The launcher's communication port; re-attaching needs it.
    #[serde(default)]
    pub(crate) comm_port: Option<u16>,
    /// The local launcher's pid (launches on this machine; informational).
    #[serde(default)]
    pub(crate) launcher_pid: Option<i32>,
    /// The remote launcher's process group (launches over SSH).
    #[serde(default)]
    pub(crate) launcher_group: Option<i32>,
    /// The SSH user (launches over SSH).
    #[serde(default)]
    pub(crate) user: Option<String>,
    /// The SSH port (launches over SSH).
    #[serde(default)]
    pub(crate) ssh_port: Option<u16>,
    /// The launcher's log on the remote host (launches over SSH).
    #[serde(default)]
    pub(crate) remote_log: Option<PathBuf>,
    /// Whether the kernel's ports are reached through SSH tunnels.
    #[serde(default)]
    pub(crate) tunneled: bool,
    /// With tunnels: the connection info as the launcher reported it (the host's ports).
    #[serde(default)]
    pub(crate) remote_connection: Option<ConnectionInfo>,
    /// The kernel's log here.
    #[serde(default)]
    pub(crate) log_path: PathBuf,
    /// The interrupt signal's name (`SIGINT`, `SIGUSR2`, ...).
    #[serde(default = "sigint")]
    pub(crate) interrupt_signal: String,
}

fn sigint() -> String {
    "SIGINT".to_owned()
}

impl SshRecord {
    /// The record of a kernel handle's parts.
    pub(super) fn of(found: &Found, launched: &Launched) -> SshRecord {
        let (ssh, remote_connection, launcher_pid) = match launched {
            Launched::Here(launcher) => (None, None, Some(launcher.process.pid().as_raw())),
            Launched::OverSsh {
                ssh,
                remote_connection,
            } => (Some(ssh), remote_connection.clone(), None),
            Launched::PortOnly => (None, None, None),
        };
        SshRecord {
            host: found.host.clone(),
            ip: found.ip,
            pid: found.pid,
            pgid: found.pgid,
            comm_port: found.comm_port,
            launcher_pid,
            launcher_group: ssh.map(|s| s.group),
            user: ssh.map(|s| s.target.user.clone()),
            ssh_port: ssh.map(|s| s.target.addr.port()),
            remote_log: ssh.map(|s| s.remote_log.clone()),
            tunneled: remote_connection.is_some(),
            remote_connection,
            log_path: found.log_path.clone(),
            interrupt_signal: found.interrupt_signal.as_str().to_owned(),
        }
    }

    /// The record as stored JSON.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        // A struct of plain fields always serialises.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// A stored record; `None` when it is not one (no address, a field of the wrong type).
    pub(crate) fn from_json(value: &serde_json::Value) -> Option<SshRecord> {
        serde_json::from_value(value.clone()).ok()
    }

    /// The communication port, unless missing or 0.
    pub(crate) fn comm_port(&self) -> Option<u16> {
        self.comm_port.filter(|port| *port != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_shape_is_kept_and_old_records_still_read() {
        let over_ssh = serde_json::json!({
            "host": "node1", "ip": "10.0.0.5", "pid": 4711, "pgid": 4711, "comm_port": 41000,
            "launcher_pid": null, "launcher_group": 4700, "user": "alice", "ssh_port": 22,
            "remote_log": "/tmp/kernel-k.log", "tunneled": false, "remote_connection": null,
            "log_path": "/var/log/eg/kernel-k.log", "interrupt_signal": "SIGUSR2",
        });
        let record = SshRecord::from_json(&over_ssh);
        assert_eq!(
            record
                .as_ref()
                .map(|r| (r.launcher_group, r.comm_port(), r.user.as_deref())),
            Some((Some(4700), Some(41000), Some("alice")))
        );
        // Written back, it is the same JSON, key for key.
        assert_eq!(record.map(|r| r.to_json()), Some(over_ssh));

        // Keys an older record lacks take defaults; a port of 0 is none.
        let sparse = SshRecord::from_json(&serde_json::json!({"ip": "127.0.0.1", "comm_port": 0}));
        assert_eq!(
            sparse.map(|r| (r.comm_port(), r.interrupt_signal, r.tunneled, r.host)),
            Some((None, "SIGINT".to_owned(), false, String::new()))
        );
        // No address, or an address that is not one: not an ssh record.
        assert_eq!(
            SshRecord::from_json(&serde_json::json!({"host": "h"})),
            None
        );
        assert_eq!(
            SshRecord::from_json(&serde_json::json!({"ip": "nowhere"})),
            None
        );
    }

    #[test]
    fn a_kernel_over_ssh_is_recorded_with_its_way_back() {
        use std::net::SocketAddr;
        use std::sync::Arc;

        use nix::sys::signal::Signal;

        use crate::ssh::config::{Remote, SshOptions};
        use crate::ssh::control::SshControl;
        use crate::ssh::session::Target;

        let ip: IpAddr = "10.0.0.5".parse().expect("ip");
        let remote = ConnectionInfo::from_json(
            br#"{"ip": "10.0.0.5", "shell_port": 50001, "iopub_port": 50002, "stdin_port": 50003,
                 "control_port": 50004, "hb_port": 50005, "key": "k"}"#,
        )
        .expect("connection info");
        let mut local = remote.clone();
        local.ip = "127.0.0.1".to_owned();
        let target = Target {
            host: "node1".to_owned(),
            addr: SocketAddr::new(ip, 2222),
            user: "alice".to_owned(),
        };
        let ssh = SshControl::new(
            Arc::new(Remote::new(SshOptions::default())),
            target,
            4700,
            PathBuf::from("/remote/kernel-k.log"),
        );
        let found = Found {
            kernel_id: "k".to_owned(),
            host: "node1".to_owned(),
            ip,
            connection: local,
            comm: None,
            comm_port: Some(41000),
            pid: Some(4711),
            pgid: Some(4711),
            log_path: PathBuf::from("/var/log/eg/kernel-k.log"),
            interrupt_signal: Signal::SIGUSR2,
        };
        let launched = Launched::OverSsh {
            ssh: Box::new(ssh),
            remote_connection: Some(remote.clone()),
        };
        let record = SshRecord::of(&found, &launched);
        assert_eq!(
            (
                record.launcher_group,
                record.user.as_deref(),
                record.ssh_port
            ),
            (Some(4700), Some("alice"), Some(2222))
        );
        assert_eq!(record.launcher_pid, None);
        assert!(record.tunneled);
        assert_eq!(record.remote_connection.as_ref(), Some(&remote));
        assert_eq!(record.interrupt_signal, "SIGUSR2");
        let stored = record.to_json();
        assert_eq!(SshRecord::from_json(&stored), Some(record));
        assert_eq!(stored["remote_log"], "/remote/kernel-k.log");

        let port_only = SshRecord::of(&found, &Launched::PortOnly);
        assert_eq!(
            (port_only.user, port_only.launcher_pid, port_only.tunneled),
            (None, None, false)
        );
    }
}
