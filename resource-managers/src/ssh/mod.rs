//! The `ssh` backend: EG's `DistributedProcessProxy` and gateway_provisioners'
//! `distributed-provisioner` (reference §7.3–7.4, §8, §12.2, §20).
//!
//! A kernelspec of this backend starts a *launcher* (EG's or gateway_provisioners'
//! `launch_ipykernel.py`, or this workspace's `kernel-launcher` agent) on one of the remote
//! hosts. The launcher chooses the kernel's ports, starts the kernel and calls the gateway's
//! [`kernel_launcher::ResponseListener`] back with the encrypted connection info; the kernel is
//! then signalled and stopped through the launcher's communication port.
//!
//! # Hosts
//!
//! The request env's `KERNEL_REMOTE_HOST` pins the host; otherwise a kernel profile's host
//! group, the kernelspec's `config.remote_hosts`, else [`SshConfig::remote_hosts`], ordered by
//! [`SshOptions::load_balancing`]: `round-robin` (one counter per backend, shared by all
//! kernelspecs, as EG's) or `least-connection` (fewest running kernels of this backend). A host
//! that cannot be used (unresolvable, refused, timed out, host key or authentication refused:
//! a [`SessionError`]) is skipped for this launch and tried last by launches in the next
//! [`SshOptions::host_retry_after`]; the error names every host and why only when all of them
//! fail, and is `Unauthorized` when every host refused our credentials. Once a launch command
//! has run on a host, its failure is final (a launch is never started twice).
//!
//! A host that resolves to this machine is launched locally without SSH, as EG does (unless
//! [`SshOptions::ssh_to_local_hosts`]): the templated `argv` runs in its own process group with
//! its output in `<log_dir>/kernel-<id>.log`.
//!
//! # Remote launch
//!
//! Over one russh connection: host key checked against a known_hosts file ([`HostKeys`]),
//! authentication by key file, agent or password ([`SshAuth`]), as
//! [`SshOptions::remote_user`] or, with [`SshOptions::impersonation`], as the request's
//! `KERNEL_USERNAME`. The launch is one shell line with every env value and argv item
//! single-quoted, so nothing a client sends can change what runs. The launcher runs detached
//! under `nohup setsid` with its output in the remote `<remote_log_dir>/kernel-<id>.log`. While
//! waiting for the callback the backend checks every second that the launcher's process group
//! is alive; when it dies or the launch times out, the remote log's tail is fetched into the
//! local `<log_dir>/kernel-<id>.log`, so the error (and the handle's `log_tail`) shows the real
//! reason, and the launcher's group is killed.
//!
//! With [`SshOptions::tunneling`] the connection stays open: the five kernel ports get local
//! listeners on `127.0.0.1` piped through `direct-tcpip` channels to `127.0.0.1:<port>` on the
//! host, the connection info is rewritten to them, and communication-port requests travel
//! through the same connection.
//!
//! `argv` placeholders: `{kernel_id}`, `{response_address}`, `{public_key}`, `{port_range}`,
//! `{resource_dir}`, `{prefix}`, and `{transport_encryption}` (always empty: this gateway does not
//! provision CurveZMQ keys).
//!
//! # Control
//!
//! The returned [`SshKernelProcess`] sends interrupts and other signals through the
//! communication port; when the port gives no answer it falls back to signalling the process
//! groups (locally, or with `kill` over SSH: the launcher's group, and the kernel's group if it
//! is in the launcher's session). `terminate` is [`crate::launcher::LauncherComm::terminate`]:
//! `{"signum": 15}` then `{"shutdown": 1}`, the grace period, and this backend's kill of the
//! process groups as the forced stop. For a local launch, `poll` and `wait` follow the launcher
//! process, as EG does; a remote kernel is polled through the communication port (and `kill -0`
//! over SSH when the port gives no answer).
//!
//! # Layout
//!
//! `mod.rs` the backend and its launch loop; `host` the host order and remote user;
//! `launch_local` and `launch_remote` the two ways to start a launcher; `process` the handle
//! (one `Launched` shape per way) and `record` what it stores; `control` the ways back to a
//! kernel (communication port, SSH); `config`, `balance`, `command` (the quoted shell lines),
//! `session` (russh) and `tunnel`.
mod balance;
mod command;
mod config;
mod control;
mod host;
mod launch_local;
mod launch_remote;
mod process;
mod record;
mod session;
mod tunnel;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kernel_launcher::{CommOutcome, net};
use nix::sys::signal::Signal;
use tokio::time::Instant;

pub use balance::LoadBalancing;
pub use config::{SshConfig, SshOptions};
pub use process::SshKernelProcess;
pub use session::{HostKeys, Secret, SessionError, SshAuth};

use crate::launcher::{CommChannel, launcher_argv};
use crate::process::{is_safe_id, parse_signal_name};
use crate::{Error, KernelRecord, LaunchRequest, LaunchedKernel, ResourceManager};
use balance::Balancer;
use config::Remote;
use control::{Comm, SshControl};
use launch_remote::Attempt;
use process::{Found, Launched};
use record::SshRecord;
use session::Target;
use tunnel::Tunnels;

/// The name of this backend in a [`crate::Registry`].
pub const NAME: &str = "ssh";

/// The `ssh` resource manager; see the [module docs](self).
#[derive(Debug)]
pub struct SshResourceManager {
    config: SshConfig,
    remote: Arc<Remote>,
    balancer: Balancer,
    local_ips: Vec<std::net::IpAddr>,
}

impl SshResourceManager {
    /// An `ssh` backend with default [`SshOptions`]; the machine's own addresses are read once
    /// here.
    pub fn new(config: SshConfig) -> SshResourceManager {
        SshResourceManager::with_options(config, SshOptions::default())
    }

    /// An `ssh` backend with SSH settings. Without a configured known_hosts file, the gateway
    /// user's `~/.ssh/known_hosts` is used.
    pub fn with_options(config: SshConfig, options: SshOptions) -> SshResourceManager {
        SshResourceManager {
            remote: Arc::new(Remote::new(options)),
            config,
            balancer: Balancer::default(),
            local_ips: net::local_addresses(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &SshConfig {
        &self.config
    }

    /// The SSH settings.
    pub fn options(&self) -> &SshOptions {
        &self.remote.options
    }

    /// Kernels of this backend currently counted on `host` (for `least-connection`).
    pub fn active_kernels(&self, host: &str) -> usize {
        self.balancer.active(host)
    }

    /// The host a launch would try first: `KERNEL_REMOTE_HOST`, else the first of the profile's
    /// host group, the kernelspec's or the configured hosts in load-balancing order. Advances
    /// the round-robin counter.
    pub fn choose_host(&self, request: &LaunchRequest) -> String {
        self.candidates(request)
            .into_iter()
            .next()
            .unwrap_or_else(|| "localhost".to_owned())
    }

    /// The remote user of a launch: `KERNEL_USERNAME` with impersonation, else the configured
    /// remote user, else the gateway's own user.
    pub fn remote_user(&self, request: &LaunchRequest) -> Result<String, Error> {
        host::remote_user(request, &self.remote.options, &self.remote.own_user)
    }

    fn candidates(&self, request: &LaunchRequest) -> Vec<String> {
        host::candidates(
            request,
            &self.config.remote_hosts,
            &self.balancer,
            &self.remote.options,
        )
    }
}

/// EG's launch-timeout reason.
fn timeout_error(kernel_id: &str, timeout: Duration, host: &str, log: &Path) -> Error {
    Error::LaunchTimeout(format!(
        "KernelID: '{kernel_id}' launch timeout due to: Waited too long ({}s) to get connection file.  Check Enterprise Gateway log and kernel log ({host}:{}) for more information.",
        crate::python_seconds(timeout),
        log.display()
    ))
}

#[async_trait]
impl ResourceManager for SshResourceManager {
    fn name(&self) -> &str {
        NAME
    }
    fn names(&self) -> crate::BackendNames {
        crate::BackendNames::built_in(NAME)
    }
    fn capabilities(&self) -> crate::Capabilities {
        crate::Capabilities {
            uses_callback_listener: true,
            ..crate::Capabilities::ELSEWHERE
        }
    }

    async fn launch(&self, request: LaunchRequest) -> Result<LaunchedKernel, Error> {
        let kernel_id = request.kernel_id.clone();
        if !is_safe_id(&kernel_id) {
            return Err(Error::Config(format!("invalid kernel id '{kernel_id}'")));
        }
        if request.spec.argv.is_empty() {
            return Err(Error::Spawn(format!(
                "kernelspec '{}' has an empty argv",
                request.spec.name
            )));
        }
        let deadline = Instant::now() + request.timeout;
        let hosts = self.candidates(&request);
        let argv = launcher_argv(&request, &self.config.launcher.response);
        let mut pending = self.config.launcher.response.register(&kernel_id)?;
        let mut failures = Vec::new();
        // Authentication refused everywhere is the caller's credentials' fault, not the hosts'.
        let mut all_refused_auth = true;
        for host in hosts {
            if Instant::now() >= deadline {
                failures.push(format!("{host}: not tried, the launch deadline passed"));
                all_refused_auth = false;
                continue;
            }
            let attempt = match host::resolve(&host).await {
                Ok(ip)
                    if net::is_local_ip(ip, &self.local_ips)
                        && !self.remote.options.ssh_to_local_hosts =>
                {
                    return self.launch_here(&request, host, ip, &argv, pending).await;
                }
                Ok(ip) => {
                    self.launch_over_ssh(&request, &host, ip, &argv, &mut pending, deadline)
                        .await
                }
                Err(unresolved) => Err(Attempt::HostDown(unresolved)),
            };
            match attempt {
                Ok(kernel) => return Ok(kernel),
                Err(Attempt::Failed(err)) => return Err(err),
                Err(Attempt::HostDown(why)) => {
                    tracing::warn!(%kernel_id, %host, "skipping host: {why}");
                    self.balancer.mark_failed(&host);
                    failures.push(format!("{host}: {why}"));
                    all_refused_auth &= matches!(why, SessionError::Auth(_));
                }
            }
        }
        let message = format!(
            "Could not start kernel {kernel_id} on any remote host: {}",
            failures.join("; ")
        );
        if all_refused_auth && !failures.is_empty() {
            Err(Error::Unauthorized(message))
        } else {
            Err(Error::Spawn(message))
        }
    }

    async fn reattach(&self, record: &KernelRecord) -> Result<LaunchedKernel, Error> {
        let kernel_id = &record.kernel_id;
        let stored = record.process_of(NAME, SshRecord::from_json)?;
        let unreadable =
            || Error::Config(format!("kernel {kernel_id}: unreadable ssh process record"));
        let ip = stored.ip;
        let comm_port = stored.comm_port().ok_or_else(|| {
            Error::Unsupported(format!(
                "kernel {kernel_id} has no communication port to re-attach through"
            ))
        })?;
        let timeout = self.config.launcher.comm_timeout;
        let mut connection = record.connection.clone();
        let (launched, comm) = match (stored.launcher_group, &stored.user) {
            (Some(group), Some(user)) => {
                let target = Target {
                    host: stored.host.clone(),
                    addr: SocketAddr::new(ip, stored.ssh_port.unwrap_or(self.remote.options.port)),
                    user: user.clone(),
                };
                let remote_log = stored.remote_log.clone().unwrap_or_default();
                let ssh = SshControl::new(Arc::clone(&self.remote), target, group, remote_log);
                let comm = match &stored.remote_connection {
                    Some(remote_info) => {
                        let session = self
                            .remote
                            .connect(&ssh.target, self.remote.options.connect_timeout)
                            .await
                            .map_err(|e| {
                                Error::NotRunning(format!(
                                    "kernel {kernel_id}: cannot reconnect its tunnels: {e}"
                                ))
                            })?;
                        let session = Arc::new(session);
                        let (tunnels, local) = Tunnels::for_kernel(
                            Arc::clone(&session),
                            remote_info,
                            kernel_launcher::PortRange::ANY,
                        )?;
                        ssh.set_tunnels(tunnels);
                        connection = local;
                        Comm::Tunneled {
                            session,
                            port: comm_port,
                            timeout,
                        }
                    }
                    None => Comm::Direct(self.config.launcher.comm_port(ip, comm_port)),
                };
                let remote_connection = stored.remote_connection.clone();
                (
                    Launched::OverSsh {
                        ssh: Box::new(ssh),
                        remote_connection,
                    },
                    comm,
                )
            }
            // Tunnels without a way to reopen them over SSH.
            _ if stored.remote_connection.is_some() => return Err(unreadable()),
            _ => (
                Launched::PortOnly,
                Comm::Direct(self.config.launcher.comm_port(ip, comm_port)),
            ),
        };
        if comm.send(&serde_json::json!({ "signum": 0 })).await == CommOutcome::Refused {
            return Err(Error::NotRunning(format!(
                "kernel {kernel_id} (communication port {ip}:{comm_port}) is no longer running"
            )));
        }
        let found = Found {
            kernel_id: kernel_id.clone(),
            host: stored.host.clone(),
            ip,
            connection,
            comm: Some(comm),
            comm_port: Some(comm_port),
            pid: stored.pid,
            pgid: stored.pgid,
            log_path: stored.log_path,
            interrupt_signal: parse_signal_name(&stored.interrupt_signal).unwrap_or(Signal::SIGINT),
        };
        let slot = self.balancer.acquire(&found.host);
        Ok(SshKernelProcess::launched(found, launched, slot))
    }
}
