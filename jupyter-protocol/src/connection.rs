//! Connection files.
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Channel, Error, SignatureScheme, Signer};

/// ZeroMQ transport of a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// `tcp://ip:port`.
    #[default]
    Tcp,
    /// `ipc://ip-port`.
    Ipc,
}

fn default_scheme() -> String {
    SignatureScheme::HmacSha256.as_str().to_owned()
}

/// The contents of a kernel connection file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// Transport, `tcp` by default.
    #[serde(default)]
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
    #[serde(default)]
    pub key: String,
    /// Signature scheme, `hmac-sha256`.
    #[serde(default = "default_scheme")]
    pub signature_scheme: String,
    /// Kernel name.
    #[serde(default)]
    pub kernel_name: String,
}

impl ConnectionInfo {
    /// Reads a connection file.
    pub fn read(path: &Path) -> Result<ConnectionInfo, Error> {
        let fail = |reason: String| Error::ConnectionFile {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read(path).map_err(|err| fail(err.to_string()))?;
        ConnectionInfo::from_json(&text).map_err(|err| fail(err.to_string()))
    }

    /// Parses the JSON of a connection file.
    pub fn from_json(json: &[u8]) -> Result<ConnectionInfo, serde_json::Error> {
        serde_json::from_slice(json)
    }

    /// Writes a connection file with mode 0600.
    ///
    /// The file is written under a temporary name in the same directory and then renamed into
    /// place, so a reader (a kernel starting, or a kernel writing back the ports it chose) never
    /// sees it half written.
    pub fn write(&self, path: &Path) -> Result<(), Error> {
        let fail = |reason: String| Error::ConnectionFile {
            path: path.to_owned(),
            reason,
        };
        let json = serde_json::to_vec_pretty(self).map_err(|err| fail(err.to_string()))?;
        let name = path
            .file_name()
            .ok_or_else(|| fail("not a file path".to_owned()))?
            .to_string_lossy();
        let temp = path.with_file_name(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
        let written = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)?;
            // The umask cannot widen 0600, but be explicit about the final bits.
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            file.write_all(&json)?;
            file.sync_all()?;
            std::fs::rename(&temp, path)
        })();
        if let Err(err) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(fail(err.to_string()));
        }
        Ok(())
    }

    /// The port of a channel.
    pub fn port(&self, channel: Channel) -> u16 {
        match channel {
            Channel::Shell => self.shell_port,
            Channel::Control => self.control_port,
            Channel::Stdin => self.stdin_port,
            Channel::Iopub => self.iopub_port,
            Channel::Heartbeat => self.hb_port,
        }
    }

    /// ZeroMQ endpoint of a channel, e.g. `tcp://127.0.0.1:5555`.
    pub fn endpoint(&self, channel: crate::Channel) -> String {
        let port = self.port(channel);
        match self.transport {
            Transport::Tcp if self.ip.contains(':') && !self.ip.starts_with('[') => {
                format!("tcp://[{}]:{port}", self.ip)
            }
            Transport::Tcp => format!("tcp://{}:{port}", self.ip),
            Transport::Ipc => format!("ipc://{}-{port}", self.ip),
        }
    }

    /// A signer for this kernel's key and scheme.
    pub fn signer(&self) -> Result<crate::Signer, Error> {
        let scheme = SignatureScheme::parse(&self.signature_scheme)?;
        Ok(Signer::new(scheme, self.key.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ConnectionInfo {
        ConnectionInfo {
            transport: Transport::Tcp,
            ip: "127.0.0.1".into(),
            shell_port: 1,
            iopub_port: 2,
            stdin_port: 3,
            control_port: 4,
            hb_port: 5,
            key: "k".into(),
            signature_scheme: "hmac-sha256".into(),
            kernel_name: "python3".into(),
        }
    }

    #[test]
    fn write_then_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kernel.json");
        std::fs::write(
            &path,
            "old contents that are longer than the new ones ".repeat(20),
        )
        .expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        info().write(&path).expect("write");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(ConnectionInfo::read(&path).expect("read"), info());
    }

    #[test]
    fn reads_jupyter_client_file() {
        let json = br#"{"shell_port": 5, "iopub_port": 6, "stdin_port": 7, "control_port": 8,
            "hb_port": 9, "ip": "127.0.0.1", "key": "abc", "transport": "tcp",
            "signature_scheme": "hmac-sha256", "kernel_name": "", "jupyter_session": "x"}"#;
        let info = ConnectionInfo::from_json(json).expect("parse");
        assert_eq!(info.endpoint(Channel::Heartbeat), "tcp://127.0.0.1:9");
        let minimal = br#"{"shell_port": 5, "iopub_port": 6, "stdin_port": 7, "control_port": 8,
            "hb_port": 9, "ip": "127.0.0.1"}"#;
        let info = ConnectionInfo::from_json(minimal).expect("parse");
        assert_eq!(info.transport, Transport::Tcp);
        assert_eq!(info.signature_scheme, "hmac-sha256");
        assert!(!info.signer().expect("signer").is_signed());
    }

    #[test]
    fn endpoints() {
        let mut info = info();
        assert_eq!(info.endpoint(Channel::Shell), "tcp://127.0.0.1:1");
        assert_eq!(info.endpoint(Channel::Control), "tcp://127.0.0.1:4");
        info.ip = "::1".into();
        assert_eq!(info.endpoint(Channel::Iopub), "tcp://[::1]:2");
        info.transport = Transport::Ipc;
        info.ip = "/tmp/kernel".into();
        assert_eq!(info.endpoint(Channel::Stdin), "ipc:///tmp/kernel-3");
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing.json");
        let err = ConnectionInfo::read(&path).expect_err("missing");
        assert!(err.to_string().contains("missing.json"), "{err}");
        std::fs::write(&path, b"{").expect("write");
        assert!(matches!(
            ConnectionInfo::read(&path),
            Err(Error::ConnectionFile { .. })
        ));
        let mut bad = info();
        bad.signature_scheme = "hmac-sha1".into();
        assert!(matches!(bad.signer(), Err(Error::UnsupportedScheme(_))));
    }
}
