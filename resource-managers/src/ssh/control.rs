//! Reaching a launched kernel: its communication port ([`Comm`], directly or through the SSH
//! connection) and, for a launch over SSH, its host ([`SshControl`]: `kill` of its process
//! groups, the remote log's tail, the tunnels).

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kernel_launcher::{CommOutcome, CommPort};
use parking_lot::Mutex;

use super::command;
use super::config::Remote;
use super::session::{Session, SessionError, Target};
use super::tunnel::{self, Tunnels};
use crate::launcher::CommChannel;
use crate::process::create_private_dir;

/// Lines of the remote log fetched on failure.
const FETCHED_LINES: usize = 100;

/// A launcher's communication port, reached directly or through the SSH connection.
#[derive(Debug, Clone)]
pub(super) enum Comm {
    Direct(CommPort),
    Tunneled {
        session: Arc<Session>,
        port: u16,
        /// Bounds each request through the tunnel.
        timeout: Duration,
    },
}

#[async_trait]
impl CommChannel for Comm {
    async fn send(&self, request: &serde_json::Value) -> CommOutcome {
        match self {
            Comm::Direct(port) => port.send(request).await,
            Comm::Tunneled {
                session,
                port,
                timeout,
            } => tunnel::send_comm(Arc::clone(session), *port, request, *timeout).await,
        }
    }
}

/// How to reach a remote kernel's host over SSH.
#[derive(Debug)]
pub(super) struct SshControl {
    remote: Arc<Remote>,
    pub(super) target: Target,
    /// The launcher's pid, which is also its process group and session (`setsid`).
    pub(super) group: i32,
    pub(super) remote_log: PathBuf,
    tunnels: Mutex<Option<Tunnels>>,
}

impl SshControl {
    pub(super) fn new(
        remote: Arc<Remote>,
        target: Target,
        group: i32,
        remote_log: PathBuf,
    ) -> SshControl {
        SshControl {
            remote,
            target,
            group,
            remote_log,
            tunnels: Mutex::new(None),
        }
    }

    /// Keeps the kernel's tunnels (and their connection) until [`Self::stop_tunnels`].
    pub(super) fn set_tunnels(&self, tunnels: Tunnels) {
        *self.tunnels.lock() = Some(tunnels);
    }

    /// The tunnels' connection, while it is open.
    pub(super) fn tunnel_session(&self) -> Option<Arc<Session>> {
        self.tunnels
            .lock()
            .as_ref()
            .map(|t| Arc::clone(t.session()))
            .filter(|s| !s.is_closed())
    }

    /// The given connection if it is open, else the tunnels', else a new one.
    async fn session<'a>(
        &'a self,
        given: Option<&'a Session>,
    ) -> Result<SessionRef<'a>, SessionError> {
        if let Some(session) = given.filter(|s| !s.is_closed()) {
            return Ok(SessionRef::Borrowed(session));
        }
        if let Some(session) = self.tunnel_session() {
            return Ok(SessionRef::Shared(session));
        }
        let timeout = self.remote.options.connect_timeout;
        let session = self.remote.connect(&self.target, timeout).await?;
        Ok(SessionRef::Owned(session))
    }

    /// Runs one command line on the host; its standard output.
    async fn run(&self, given: Option<&Session>, line: &str) -> Result<String, SessionError> {
        let session = self.session(given).await.inspect_err(|e| {
            tracing::warn!(host = %self.target.host, "cannot reach the kernel's host: {e}");
        })?;
        let result = session
            .get()
            .exec(line, self.remote.options.command_timeout)
            .await;
        session.done().await;
        match result {
            Ok(output) => Ok(output.stdout),
            Err(e) => {
                tracing::warn!(host = %self.target.host, "remote command failed: {e}");
                Err(e)
            }
        }
    }

    /// Signals the launcher's group and the reported kernel groups of its session: whether
    /// anything was signalled; an error when the host could not be asked.
    pub(super) async fn kill(
        &self,
        given: Option<&Session>,
        signum: i32,
        kernel_groups: &[i32],
    ) -> Result<bool, SessionError> {
        let line = command::kill_command(signum, self.group, kernel_groups);
        let out = self.run(given, &line).await?;
        Ok(out.lines().last().map(str::trim) == Some("0"))
    }

    /// Whether the launcher's process group is alive.
    pub(super) async fn group_alive(&self, given: Option<&Session>) -> Result<bool, SessionError> {
        self.kill(given, 0, &[]).await
    }

    /// Copies the tail of the remote log into the local kernel log (best effort: what fails is
    /// logged).
    pub(super) async fn fetch_log(&self, given: Option<&Session>, local: &Path) {
        let Ok(line) = command::tail_command(&self.remote_log, FETCHED_LINES) else {
            return;
        };
        let Ok(text) = self.run(given, &line).await else {
            return;
        };
        let header = format!(
            "--- {}:{} (last {FETCHED_LINES} lines) ---\n",
            self.target.host,
            self.remote_log.display()
        );
        let written = local
            .parent()
            .map(create_private_dir)
            .transpose()
            .map_err(std::io::Error::other)
            .and_then(|_| {
                let mut file = OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(local)?;
                file.write_all(header.as_bytes())?;
                file.write_all(text.as_bytes())
            });
        if let Err(e) = written {
            tracing::warn!(log = %local.display(), "cannot write the fetched kernel log: {e}");
        }
    }

    /// Stops the tunnels' listeners; their connection closes with the last user.
    pub(super) fn stop_tunnels(&self) {
        if let Some(mut tunnels) = self.tunnels.lock().take() {
            tunnels.stop();
        }
    }
}

/// A connection for one remote command.
enum SessionRef<'a> {
    Borrowed(&'a Session),
    Shared(Arc<Session>),
    Owned(Session),
}

impl SessionRef<'_> {
    fn get(&self) -> &Session {
        match self {
            SessionRef::Borrowed(s) => s,
            SessionRef::Shared(s) => s,
            SessionRef::Owned(s) => s,
        }
    }

    async fn done(self) {
        if let SessionRef::Owned(session) = self {
            session.close().await;
        }
    }
}
