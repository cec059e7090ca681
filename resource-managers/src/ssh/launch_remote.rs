//! A launch over SSH: one connection ([`super::session`]), one quoted shell line
//! ([`super::command::launch_command`]) that starts the launcher detached under `nohup setsid`
//! with its output in the remote `<remote_log_dir>/kernel-<id>.log`, then the wait for the
//! callback with the launcher's process group checked every second. A launch that fails brings
//! the remote log's tail into the local log and kills the launcher's group.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kernel_launcher::{LauncherResponse, PendingLaunch};
use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::control::{Comm, SshControl};
use super::process::{Found, Launched, SshKernelProcess};
use super::session::{Session, SessionError, Target};
use super::tunnel::Tunnels;
use super::{SshResourceManager, command, host, timeout_error};
use crate::process::{interrupt_signal_of, read_tail};
use crate::{Error, LaunchRequest, LaunchedKernel};

/// How often a remote launcher is checked while the launch waits for its callback.
const LAUNCH_LIVENESS: Duration = Duration::from_secs(1);

/// One host attempt that did not start a kernel.
#[derive(Debug)]
pub(super) enum Attempt {
    /// The host could not be used (unreachable, its key or our credentials refused); the next
    /// one may be tried.
    HostDown(SessionError),
    /// The launch ran and failed: final (a launch is never started twice).
    Failed(Error),
}

impl SshResourceManager {
    /// Launches on `host` (at `ip`) over SSH, within `deadline`.
    pub(super) async fn launch_over_ssh(
        &self,
        request: &LaunchRequest,
        host: &str,
        ip: IpAddr,
        argv: &[String],
        pending: &mut PendingLaunch,
        deadline: Instant,
    ) -> Result<LaunchedKernel, Attempt> {
        let kernel_id = &request.kernel_id;
        let options = &self.remote.options;
        let user =
            host::remote_user(request, options, &self.remote.own_user).map_err(Attempt::Failed)?;
        let target = Target {
            host: host.to_owned(),
            addr: SocketAddr::new(ip, options.port),
            user,
        };
        let budget = deadline.saturating_duration_since(Instant::now());
        let session = self
            .remote
            .connect(&target, budget)
            .await
            .map_err(Attempt::HostDown)?;
        let session = Arc::new(session);
        let log_path = self.config.launcher.log_path(kernel_id);
        let remote_log = options
            .remote_log_dir
            .as_deref()
            .unwrap_or(&self.config.launcher.log_dir)
            .join(format!("kernel-{kernel_id}.log"));
        let line = command::launch_command(&request.env, argv, request.cwd.as_deref(), &remote_log)
            .map_err(Attempt::Failed)?;
        let budget = deadline.saturating_duration_since(Instant::now());
        let failure = |detail: String| {
            Attempt::Failed(Error::Spawn(format!(
                "Failure occurred starting kernel on '{ip}'.  Returned result: {detail}"
            )))
        };
        let output = match session
            .exec(&line, options.command_timeout.min(budget))
            .await
        {
            Ok(output) => output,
            Err(e) => {
                session.close().await;
                return Err(failure(e.to_string()));
            }
        };
        let Some(group) = command::parse_launch_pid(&output.stdout) else {
            session.close().await;
            return Err(failure(format!(
                "{}{}",
                output.stderr.trim(),
                output.stdout.trim()
            )));
        };
        tracing::info!(%kernel_id, %host, user = %target.user, pid = group, log = %remote_log.display(), "launcher started over SSH; waiting for its connection info");
        let ssh = SshControl::new(Arc::clone(&self.remote), target, group, remote_log);

        let response = match self
            .await_callback(request, &ssh, &session, pending, deadline, &log_path)
            .await
        {
            Ok(response) => response,
            Err(err) => {
                ssh.kill(Some(&session), Signal::SIGKILL as i32, &[])
                    .await
                    .ok();
                if !matches!(err, Error::ExitedDuringLaunch { .. }) {
                    ssh.fetch_log(Some(&session), &log_path).await;
                }
                session.close().await;
                tracing::warn!(%kernel_id, %host, "launch failed: {err}");
                return Err(Attempt::Failed(with_fetched_log(err, &log_path)));
            }
        };

        let mut connection = response.connection.clone();
        connection.kernel_name = request.spec.name.clone();
        connection.ip = ip.to_string();
        let timeout = self.config.launcher.comm_timeout;
        let (comm, remote_connection) = if options.tunneling {
            match Tunnels::for_kernel(Arc::clone(&session), &connection, request.port_range) {
                Ok((tunnels, local)) => {
                    ssh.set_tunnels(tunnels);
                    let comm = response.comm_port.map(|port| Comm::Tunneled {
                        session: Arc::clone(&session),
                        port,
                        timeout,
                    });
                    (comm, Some(std::mem::replace(&mut connection, local)))
                }
                Err(e) => {
                    let groups: Vec<i32> = response.pgid.into_iter().chain(response.pid).collect();
                    ssh.kill(Some(&session), Signal::SIGKILL as i32, &groups)
                        .await
                        .ok();
                    session.close().await;
                    return Err(Attempt::Failed(Error::Spawn(format!(
                        "Could not open SSH tunnel for kernel {kernel_id}. Exception: '{e}'"
                    ))));
                }
            }
        } else {
            session.close().await;
            let comm = response
                .comm_port
                .map(|port| Comm::Direct(self.config.launcher.comm_port(ip, port)));
            (comm, None)
        };
        tracing::info!(%kernel_id, %host, kernel_pid = ?response.pid, comm_port = ?response.comm_port, tunneled = options.tunneling, "kernel connection info received");
        let found = Found {
            kernel_id: kernel_id.clone(),
            host: host.to_owned(),
            ip,
            connection,
            comm,
            comm_port: response.comm_port,
            pid: response.pid,
            pgid: response.pgid,
            log_path,
            interrupt_signal: interrupt_signal_of(&request.spec),
        };
        let launched = Launched::OverSsh {
            ssh: Box::new(ssh),
            remote_connection,
        };
        Ok(SshKernelProcess::launched(
            found,
            launched,
            self.balancer.acquire(host),
        ))
    }

    /// Waits for the launcher's callback until `deadline`, while its process group lives.
    async fn await_callback(
        &self,
        request: &LaunchRequest,
        ssh: &SshControl,
        session: &Session,
        pending: &mut PendingLaunch,
        deadline: Instant,
        log_path: &Path,
    ) -> Result<LauncherResponse, Error> {
        let mut liveness = tokio::time::interval(LAUNCH_LIVENESS);
        liveness.tick().await;
        loop {
            tokio::select! {
                biased;
                response = &mut *pending => return response.map_err(|e| Error::Spawn(e.to_string())),
                () = tokio::time::sleep_until(deadline) => {
                    return Err(timeout_error(
                        &request.kernel_id,
                        request.timeout,
                        &ssh.target.host,
                        &ssh.remote_log,
                    ));
                }
                _ = liveness.tick() => {
                    if let Ok(false) = ssh.group_alive(Some(session)).await {
                        ssh.fetch_log(Some(session), log_path).await;
                        return Err(Error::ExitedDuringLaunch {
                            status: "exited".to_owned(),
                            log_tail: read_tail(log_path, 20).unwrap_or_default(),
                        });
                    }
                }
            }
        }
    }
}

/// Appends the fetched remote log to a timeout error, so the client sees the reason.
fn with_fetched_log(err: Error, log_path: &Path) -> Error {
    match err {
        Error::LaunchTimeout(reason) => {
            let tail = read_tail(log_path, 20).unwrap_or_default();
            let tail = tail.trim();
            if tail.is_empty() {
                Error::LaunchTimeout(reason)
            } else {
                Error::LaunchTimeout(format!("{reason} Kernel log: {tail}"))
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_carries_the_fetched_log_and_other_errors_stay_as_they_are() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("kernel-k.log");
        let timeout = || Error::LaunchTimeout("Waited too long.".to_owned());
        let plain = with_fetched_log(timeout(), &log);
        assert_eq!(plain.to_string(), "Waited too long.");
        std::fs::write(
            &log,
            "--- host:/tmp/kernel-k.log ---\nNo module named ipykernel\n",
        )
        .expect("log");
        let told = with_fetched_log(timeout(), &log);
        assert!(
            matches!(&told, Error::LaunchTimeout(m) if m.ends_with("No module named ipykernel")),
            "{told}"
        );
        let other = with_fetched_log(Error::Spawn("refused".to_owned()), &log);
        assert!(matches!(other, Error::Spawn(m) if m == "refused"));
    }
}
