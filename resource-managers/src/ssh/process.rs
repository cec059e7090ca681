//! The handle of an `ssh` kernel, [`SshKernelProcess`]: one shape per way its launcher was
//! started ([`Launched`]), built in one place ([`SshKernelProcess::launched`]).
//!
//! Signals go through the launcher's communication port; when it gives no answer, they go to
//! the process groups (locally, or with `kill` over SSH). `terminate` is the stop every launcher
//! backend performs ([`LauncherComm::terminate`]) with this backend's kill as its forced stop.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use jupyter_protocol::ConnectionInfo;
use kernel_launcher::CommOutcome;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use parking_lot::Mutex;

use super::NAME;
use super::balance::HostSlot;
use super::control::{Comm, SshControl};
use super::record::SshRecord;
use super::session::SessionError;
use crate::launcher::{LauncherComm, LauncherProcess};
use crate::process::read_tail;
use crate::{Error, KernelProcess, KernelRecord, LaunchedKernel, ProcessState};

/// How long `terminate` waits for the kernel to go after the forced kill.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// How often a kernel without a local process is polled through its communication port.
const REMOTE_POLL: Duration = Duration::from_millis(500);

/// Where the launcher of a kernel was started, and what that gives the gateway to act on.
#[derive(Debug)]
pub(super) enum Launched {
    /// On this machine, as the gateway's child process.
    Here(LocalLauncher),
    /// Over SSH on the kernel's host, which `kill` and the log fetch reach again.
    OverSsh {
        ssh: Box<SshControl>,
        /// With tunnelling: the connection info as the launcher reported it (the host's
        /// ports); the kernel's own connection info names the tunnels.
        remote_connection: Option<ConnectionInfo>,
    },
    /// On this machine by an earlier gateway, re-attached: only the communication port
    /// reaches it.
    PortOnly,
}

/// A launcher process started on this machine.
#[derive(Debug)]
pub(super) struct LocalLauncher {
    pub(super) process: LauncherProcess,
    /// The kernel's own process group when the launcher started it in a separate one (our
    /// agent) and it was verified to be the launcher's child.
    pub(super) kernel_group: Option<Pid>,
}

/// What a launch or a re-attach found out about a kernel, whatever its [`Launched`] shape.
#[derive(Debug)]
pub(super) struct Found {
    pub(super) kernel_id: String,
    pub(super) host: String,
    pub(super) ip: IpAddr,
    /// The connection info the gateway uses.
    pub(super) connection: ConnectionInfo,
    pub(super) comm: Option<Comm>,
    /// The communication port as the launcher reported it (the host's, also when tunnelled).
    pub(super) comm_port: Option<u16>,
    /// The kernel's pid and process group on its host, as the launcher reported them.
    pub(super) pid: Option<i32>,
    pub(super) pgid: Option<i32>,
    /// The kernel's log here.
    pub(super) log_path: PathBuf,
    pub(super) interrupt_signal: Signal,
}

/// What the gateway decided about a kernel's end: nothing yet, stopped by it (`terminate`: no
/// log fetch, no kill when the handle goes), or left running for a later re-attach (`detach`).
#[derive(Debug, Default)]
struct Ending(AtomicU8);

impl Ending {
    const OPEN: u8 = 0;
    const STOPPED: u8 = 1;
    const DETACHED: u8 = 2;

    fn stop(&self) {
        self.0.store(Ending::STOPPED, Ordering::SeqCst);
    }

    /// A stopped kernel stays stopped.
    fn detach(&self) {
        let _ = self.0.compare_exchange(
            Ending::OPEN,
            Ending::DETACHED,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    /// Whether the kernel ending now is news (the gateway did not stop it), worth its log.
    fn ended_on_its_own(&self) -> bool {
        self.0.load(Ordering::SeqCst) != Ending::STOPPED
    }

    /// Whether a handle dropped now leaves a kernel nobody owns (neither stopped nor detached).
    fn owned(&self) -> bool {
        self.0.load(Ordering::SeqCst) == Ending::OPEN
    }
}

/// A kernel started through a launcher; see the [backend's docs](super).
#[derive(Debug)]
pub struct SshKernelProcess {
    found: Found,
    launched: Launched,
    /// The launcher's communication port and whether its listener was told to stop after
    /// `shutdown_request`: from then on a refusing port means the kernel is gone, as EG treats
    /// it, even if a local launcher process lingers (it is killed by `terminate`).
    comm: LauncherComm<Comm>,
    slot: Mutex<Option<HostSlot>>,
    ending: Ending,
}

impl SshKernelProcess {
    /// The handle of every launch and re-attach; `slot` counts the kernel on its host.
    pub(super) fn launched(found: Found, launched: Launched, slot: HostSlot) -> LaunchedKernel {
        let connection = found.connection.clone();
        LaunchedKernel {
            connection,
            process: Box::new(SshKernelProcess::new(found, launched, slot)),
        }
    }

    fn new(mut found: Found, launched: Launched, slot: HostSlot) -> SshKernelProcess {
        SshKernelProcess {
            comm: LauncherComm::new(found.comm.take()),
            found,
            launched,
            slot: Mutex::new(Some(slot)),
            ending: Ending::default(),
        }
    }

    fn kernel_groups(&self) -> Vec<i32> {
        self.found.pgid.into_iter().chain(self.found.pid).collect()
    }

    /// The local launcher's state (launches here only).
    fn local_state(&self) -> Option<ProcessState> {
        match &self.launched {
            Launched::Here(launcher) => Some(launcher.process.state()),
            _ => None,
        }
    }

    /// Signals the local process groups (the launcher's while it runs, and the kernel's own if
    /// verified); whether anything was signalled. Nothing for a kernel not launched here.
    fn kill_local(&self, signal: Signal) -> bool {
        let Launched::Here(launcher) = &self.launched else {
            return false;
        };
        let mut sent = false;
        if launcher.process.state() == ProcessState::Running {
            sent |= killpg(launcher.process.pid(), signal).is_ok();
        }
        if let Some(group) = launcher.kernel_group {
            sent |= killpg(group, signal).is_ok();
        }
        sent
    }

    /// Until the kernel is gone: the local launcher's exit, or polls of a remote one.
    async fn wait_exit(&self) -> ProcessState {
        if let Launched::Here(launcher) = &self.launched {
            let state = launcher.process.wait().await;
            // The agent normally takes its kernel along; make sure.
            if let Some(group) = launcher.kernel_group {
                let _ = killpg(group, Signal::SIGKILL);
            }
            return state;
        }
        loop {
            match self.poll_remote().await {
                ProcessState::Running | ProcessState::Unknown => {
                    tokio::time::sleep(REMOTE_POLL).await;
                }
                state => return state,
            }
        }
    }

    /// Liveness through the communication port, and over SSH when the port gives no answer.
    async fn poll_remote(&self) -> ProcessState {
        let gone = ProcessState::Exited {
            code: None,
            signal: None,
        };
        match self.comm.signal(0).await {
            CommOutcome::Delivered => ProcessState::Running,
            CommOutcome::Refused => gone,
            CommOutcome::Unknown(why) => {
                tracing::debug!(kernel_id = %self.found.kernel_id, "liveness unknown: {why}");
                match &self.launched {
                    Launched::OverSsh { ssh, .. } => match ssh.group_alive(None).await {
                        Ok(true) => ProcessState::Running,
                        Ok(false) => gone,
                        Err(_) => ProcessState::Unknown,
                    },
                    _ => ProcessState::Unknown,
                }
            }
        }
    }

    /// This backend's forced stop, for [`LauncherComm::terminate`]: SIGKILL to the local
    /// groups, or over SSH (when the host cannot be reached, through the port; the error is
    /// that the kernel is still there), or through the port for a kernel nothing else reaches;
    /// then a short wait for the end.
    async fn force_kill(&self) -> Result<ProcessState, Error> {
        match &self.launched {
            Launched::Here(_) => {
                self.kill_local(Signal::SIGKILL);
            }
            Launched::OverSsh { ssh, .. } => {
                let groups = self.kernel_groups();
                if let Err(e) = ssh.kill(None, Signal::SIGKILL as i32, &groups).await {
                    // The port may still reach it; only a kernel still there is a failure.
                    let _ = self.comm.signal(Signal::SIGKILL as i32).await;
                    return match tokio::time::timeout(KILL_WAIT, self.wait_exit()).await {
                        Ok(state @ ProcessState::Exited { .. }) => Ok(state),
                        _ => Err(self.unreachable(&e)),
                    };
                }
            }
            Launched::PortOnly => {
                let _ = self.comm.signal(Signal::SIGKILL as i32).await;
            }
        }
        Ok(tokio::time::timeout(KILL_WAIT, self.wait_exit())
            .await
            .unwrap_or(ProcessState::Unknown))
    }

    fn not_running(&self) -> Error {
        Error::NotRunning(format!(
            "kernel {} on {} is not running",
            self.found.kernel_id, self.found.host
        ))
    }

    fn unreachable(&self, e: &SessionError) -> Error {
        Error::Io(std::io::Error::other(format!(
            "kernel {}: cannot reach its host {} over SSH: {e}",
            self.found.kernel_id, self.found.host
        )))
    }

    /// Signals the kernel without its communication port (`why` says what the port did).
    async fn signal_without_port(&self, signum: i32, why: &str) -> Result<(), Error> {
        let kernel_id = &self.found.kernel_id;
        let launcher = match &self.launched {
            Launched::OverSsh { ssh, .. } => {
                tracing::warn!(%kernel_id, "signal {signum} via the communication port failed ({why}); sending it over SSH");
                return match ssh.kill(None, signum, &self.kernel_groups()).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(self.not_running()),
                    Err(e) => Err(Error::Io(std::io::Error::other(format!(
                        "cannot signal kernel {kernel_id} on {}: {why}; SSH to the host failed too ({e})",
                        self.found.host
                    )))),
                };
            }
            Launched::PortOnly => {
                return Err(Error::Io(std::io::Error::other(format!(
                    "cannot signal kernel {kernel_id} on {}: {why}",
                    self.found.host
                ))));
            }
            Launched::Here(launcher) => launcher,
        };
        tracing::warn!(%kernel_id, "signal {signum} via the communication port failed ({why}); signalling the local process group");
        let delivered = if signum == 0 {
            kill(launcher.process.pid(), None).is_ok()
        } else {
            let signal = Signal::try_from(signum).map_err(|_| {
                Error::Unsupported(format!("{signum} is not a signal number on this system"))
            })?;
            self.kill_local(signal)
        };
        if delivered {
            Ok(())
        } else {
            Err(self.not_running())
        }
    }
}

#[async_trait]
impl KernelProcess for SshKernelProcess {
    fn record(&self) -> KernelRecord {
        KernelRecord {
            resource_manager: NAME.to_owned(),
            kernel_id: self.found.kernel_id.clone(),
            connection: self.found.connection.clone(),
            process: SshRecord::of(&self.found, &self.launched).to_json(),
        }
    }

    async fn poll(&self) -> ProcessState {
        match self.local_state() {
            Some(ProcessState::Running) if self.comm.listener_stopped() => self.poll_remote().await,
            Some(state) => state,
            None => self.poll_remote().await,
        }
    }

    async fn wait(&self) -> ProcessState {
        let state = self.wait_exit().await;
        if let Launched::OverSsh { ssh, .. } = &self.launched
            && self.ending.ended_on_its_own()
        {
            // The kernel ended on its own: bring its log here for the gateway's messages.
            ssh.fetch_log(None, &self.found.log_path).await;
        }
        state
    }

    async fn signal(&self, signum: i32) -> Result<(), Error> {
        if let Some(ProcessState::Exited { .. }) = self.local_state() {
            return Err(self.not_running());
        }
        let why = match self.comm.signal(signum).await {
            CommOutcome::Delivered => return Ok(()),
            CommOutcome::Refused if !matches!(self.launched, Launched::Here(_)) => {
                return Err(self.not_running());
            }
            CommOutcome::Refused => "communication port closed".to_owned(),
            CommOutcome::Unknown(why) => why,
        };
        self.signal_without_port(signum, &why).await
    }

    async fn interrupt(&self) -> Result<(), Error> {
        self.signal(self.found.interrupt_signal as i32).await
    }

    async fn terminate(&self, grace: Duration) -> Result<ProcessState, Error> {
        // No log fetch for a stop the gateway asked for.
        self.ending.stop();
        if let Some(state @ ProcessState::Exited { .. }) = self.local_state() {
            return Ok(state);
        }
        let groups = self.kernel_groups();
        // What the port does not reach: a launcher here gets SIGTERM directly too (its listener
        // may be gone, told to stop at shutdown_request, while the process lingers); without a
        // port, SSH carries it.
        match &self.launched {
            Launched::Here(_) => {
                self.kill_local(Signal::SIGTERM);
            }
            Launched::OverSsh { ssh, .. } if self.comm.port().is_none() => {
                let _ = ssh.kill(None, Signal::SIGTERM as i32, &groups).await;
            }
            _ => {}
        }
        let state = self
            .comm
            .terminate(
                &self.found.kernel_id,
                grace,
                || self.wait_exit(),
                || self.force_kill(),
            )
            .await?;
        if let Launched::OverSsh { ssh, .. } = &self.launched {
            // The launcher may be gone while something of its session is not (e.g. our agent
            // killed before its kernel): make sure, over SSH, that nothing is left.
            let _ = ssh.kill(None, Signal::SIGKILL as i32, &groups).await;
        }
        Ok(state)
    }

    async fn shutdown_requested(&self) {
        self.comm.shutdown_requested(&self.found.kernel_id).await;
    }

    async fn cleanup(&self, _keep_connection_file: bool) {
        // The launcher owns the connection file; make sure its listener is gone (EG does the same).
        if !matches!(self.local_state(), Some(ProcessState::Exited { .. })) {
            let _ = self.comm.stop_listener().await;
        }
        if let Launched::OverSsh { ssh, .. } = &self.launched {
            let session = ssh.tunnel_session();
            ssh.stop_tunnels();
            if let Some(session) = session {
                session.close().await;
            }
        }
        self.slot.lock().take();
    }

    fn log_tail(&self, max_lines: usize) -> String {
        read_tail(&self.found.log_path, max_lines).unwrap_or_default()
    }

    fn detach(&self) {
        self.ending.detach();
    }
}

impl Drop for SshKernelProcess {
    fn drop(&mut self) {
        if let Launched::OverSsh { ssh, .. } = &self.launched {
            ssh.stop_tunnels();
        }
        if !self.ending.owned() {
            return;
        }
        let kernel_id = &self.found.kernel_id;
        if self.local_state() == Some(ProcessState::Running) {
            tracing::warn!(%kernel_id, "kernel handle dropped while running: killing its process groups");
            self.kill_local(Signal::SIGKILL);
        }
        if matches!(self.launched, Launched::OverSsh { .. })
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
            && let Launched::OverSsh { ssh, .. } =
                std::mem::replace(&mut self.launched, Launched::PortOnly)
        {
            tracing::warn!(%kernel_id, host = %self.found.host, "kernel handle dropped while running: killing it over SSH");
            let groups = self.kernel_groups();
            runtime.spawn(async move {
                let _ = ssh.kill(None, Signal::SIGKILL as i32, &groups).await;
            });
        }
    }
}

#[cfg(test)]
mod tests;
