//! Connection files.
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::Error;

/// ZeroMQ transport of a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// `tcp://ip:port`.
    Tcp,
    /// `ipc://ip-port`.
    Ipc,
}

/// The contents of a kernel connection file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// Transport, `tcp` by default.
    pub transport: Transport,
    /// IP address (or ipc path prefix).
    pub ip: String,
    /// Shell port.
    pub shell_port: u16,
    /// IOPub port.
    pub iopub_port: u16,
    /// Stdin port.
    pub stdin_port: u16,
    /// Control port.
    pub control_port: u16,
    /// Heartbeat port.
    pub hb_port: u16,
    /// HMAC key (empty = unsigned).
    pub key: String,
    /// Signature scheme, `hmac-sha256`.
    pub signature_scheme: String,
    /// Kernel name.
    #[serde(default)]
    pub kernel_name: String,
}

impl ConnectionInfo {
    /// Reads a connection file.
    pub fn read(path: &Path) -> Result<ConnectionInfo, Error> {
        todo!()
    }
    /// Writes a connection file with mode 0600.
    pub fn write(&self, path: &Path) -> Result<(), Error> {
        todo!()
    }
    /// ZeroMQ endpoint of a channel, e.g. `tcp://127.0.0.1:5555`.
    pub fn endpoint(&self, channel: crate::Channel) -> String {
        todo!()
    }
    /// A signer for this kernel's key and scheme.
    pub fn signer(&self) -> Result<crate::Signer, Error> {
        todo!()
    }
}
