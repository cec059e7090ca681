//! Shared helpers: the venv, a response listener, process guards and checks.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kernel_launcher::{ListenerOptions, ResponseListener};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
pub(crate) use test_support::{eventually, group_exists};

pub(crate) const SECOND: Duration = Duration::from_secs(1);

/// The workspace root.
pub(crate) fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The test venv's Python.
pub(crate) fn python() -> PathBuf {
    workspace().join(".venv/bin/python")
}

/// A listener on 127.0.0.1, any port, with short read timeouts.
pub(crate) async fn listener() -> anyhow::Result<Arc<ResponseListener>> {
    let options = ListenerOptions {
        read_timeout: Duration::from_millis(500),
        ..ListenerOptions::default()
    };
    Ok(ResponseListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)), options).await?)
}

/// A fresh kernel id.
pub(crate) fn kernel_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Kills a process group when dropped (tests never leave processes behind).
#[derive(Debug)]
pub(crate) struct GroupGuard(pub(crate) i32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.0 > 1 {
            let _ = killpg(Pid::from_raw(self.0), Signal::SIGKILL);
        }
    }
}
