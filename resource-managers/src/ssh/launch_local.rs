//! A launch on a host that is this machine, without SSH (as EG does, unless
//! [`super::SshOptions::ssh_to_local_hosts`]): the templated `argv` runs in its own process group
//! with its output in `<log_dir>/kernel-<id>.log`; `poll` and `wait` follow the launcher process.

use std::net::IpAddr;

use kernel_launcher::{LauncherResponse, PendingLaunch};
use nix::unistd::Pid;

use super::control::Comm;
use super::process::{Found, Launched, LocalLauncher, SshKernelProcess};
use super::{SshResourceManager, timeout_error};
use crate::launcher::LauncherProcess;
use crate::process::{create_private_dir, interrupt_signal_of, read_tail, resolve_program};
use crate::{Error, LaunchRequest, LaunchedKernel};

impl SshResourceManager {
    /// Launches on this machine without SSH; `host` is the name the launch chose, `ip` its
    /// address.
    pub(super) async fn launch_here(
        &self,
        request: &LaunchRequest,
        host: String,
        ip: IpAddr,
        argv: &[String],
        mut pending: PendingLaunch,
    ) -> Result<LaunchedKernel, Error> {
        let spec = &request.spec;
        let kernel_id = &request.kernel_id;
        let Some(argv0) = spec.argv.first() else {
            return Err(Error::Spawn(format!(
                "kernelspec '{}' has an empty argv",
                spec.name
            )));
        };
        let program =
            resolve_program(spec, argv0, &request.env, &self.config.launcher.search_path)?;
        create_private_dir(&self.config.launcher.log_dir)?;
        let log_path = self.config.launcher.log_path(kernel_id);
        // No JPY_PARENT_PID: a launcher started here is as independent of the gateway as one
        // started over SSH (under nohup setsid), so its kernel survives the gateway and is
        // re-attached through its communication port.
        let process =
            LauncherProcess::spawn_independent(request, &program, argv, &log_path, "launcher")?;
        let pid = process.pid();
        tracing::info!(%kernel_id, %host, pid = pid.as_raw(), log = %log_path.display(), "launcher started locally; waiting for its connection info");

        let outcome = tokio::select! {
            biased;
            response = &mut pending => response.map_err(|e| Error::Spawn(e.to_string())),
            state = process.wait() => Err(Error::ExitedDuringLaunch {
                status: state.to_string(),
                log_tail: read_tail(&log_path, 20).unwrap_or_default(),
            }),
            () = tokio::time::sleep(request.timeout) => {
                Err(timeout_error(kernel_id, request.timeout, &host, &log_path))
            }
        };
        drop(pending);
        let response = match outcome {
            Ok(response) => response,
            Err(err) => {
                process.kill().await;
                tracing::warn!(%kernel_id, %host, "launch failed: {err}");
                return Err(err);
            }
        };
        let mut connection = response.connection.clone();
        connection.ip = ip.to_string();
        connection.kernel_name = spec.name.clone();
        tracing::info!(%kernel_id, %host, kernel_pid = ?response.pid, comm_port = ?response.comm_port, "kernel connection info received");
        let launcher = LocalLauncher {
            kernel_group: verified_kernel_group(&response, pid),
            process,
        };
        let found = Found {
            kernel_id: kernel_id.clone(),
            ip,
            connection,
            comm: response
                .comm_port
                .map(|port| Comm::Direct(self.config.launcher.comm_port(ip, port))),
            comm_port: response.comm_port,
            pid: response.pid,
            pgid: response.pgid,
            log_path,
            interrupt_signal: interrupt_signal_of(spec),
            host,
        };
        let slot = self.balancer.acquire(&found.host);
        Ok(SshKernelProcess::launched(
            found,
            Launched::Here(launcher),
            slot,
        ))
    }
}

/// The kernel's own process group, when it differs from the launcher's and the reported
/// process really is the launcher's child. A payload is not trusted to name a group to kill.
fn verified_kernel_group(response: &LauncherResponse, launcher: Pid) -> Option<Pid> {
    let pgid = response
        .pgid
        .filter(|g| *g > 1 && *g != launcher.as_raw())?;
    (parent_of(pgid)? == launcher.as_raw()).then(|| Pid::from_raw(pgid))
}

/// The parent pid of process `pid`, from `/proc/<pid>/stat`.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold anything, ')' too; the fields after its last ')' are fixed.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parent_is_read_from_proc() {
        let me = std::process::id() as i32;
        let parent = std::os::unix::process::parent_id() as i32;
        assert_eq!(parent_of(me), Some(parent));
        assert_eq!(parent_of(i32::MAX), None);
    }
}
