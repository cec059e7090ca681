//! The `ssh` backend: EG's `DistributedProcessProxy` and gateway_provisioners'
//! `distributed-provisioner` (reference §7.3–7.4, §8, §12.2, §20).
//!
//! A kernelspec of this backend starts a *launcher* (EG's or gateway_provisioners'
//! `launch_ipykernel.py`, or this workspace's `kernel-launcher` agent) on one of the remote
//! hosts. The launcher chooses the kernel's ports, starts the kernel and calls the gateway's
//! [`ResponseListener`] back with the encrypted connection info; the kernel is then signalled
//! and stopped through the launcher's communication port ([`CommPort`]).
//!
//! # Hosts
//!
//! The request env's `KERNEL_REMOTE_HOST` pins the host; otherwise the kernelspec's
//! `config.remote_hosts`, else [`SshConfig::remote_hosts`], ordered by
//! [`SshOptions::load_balancing`]: `round-robin` (one counter per backend, shared by all
//! kernelspecs, as EG's) or `least-connection` (fewest running kernels of this backend). A host
//! that cannot be used (refused, timed out, host key or authentication refused) is skipped for
//! this launch and tried last by launches in the next [`SshOptions::host_retry_after`]; the error
//! names every host and why only when all of them fail. Once a launch command has run on a host,
//! its failure is final (a launch is never started twice).
//!
//! A host that resolves to this machine is launched locally without SSH, as EG does (unless
//! [`SshOptions::ssh_to_local_hosts`]): the templated `argv` runs in its own process group with
//! its output in `<log_dir>/kernel-<id>.log`.
//!
//! # Remote launch
//!
//! Over one russh connection ([`session`]): host key checked against a known_hosts file
//! ([`HostKeys`]), authentication by key file, agent or password ([`SshAuth`]), as
//! [`SshOptions::remote_user`] or, with [`SshOptions::impersonation`], as the request's
//! `KERNEL_USERNAME`. The launch is one shell line from [`command::launch_command`]: every env
//! value and argv item single-quoted, so nothing a client sends can change what runs. The
//! launcher runs detached under `nohup setsid` with its output in the remote
//! `<remote_log_dir>/kernel-<id>.log`. While waiting for the callback the backend checks every
//! second that the launcher's process group is alive; when it dies or the launch times out, the
//! remote log's tail is fetched into the local `<log_dir>/kernel-<id>.log`, so the error (and
//! [`KernelProcess::log_tail`]) shows the real reason, and the launcher's group is killed.
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
//! is in the launcher's session). `terminate` sends `{"signum": 15}` then `{"shutdown": 1}`,
//! waits, and kills the process groups as a last resort. For a local launch, `poll` and `wait`
//! follow the launcher process, as EG does; a remote kernel is polled through the communication
//! port (and `kill -0` over SSH when the port gives no answer).
pub mod balance;
pub mod command;
mod record;
pub mod session;
mod tunnel;

use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use jupyter_protocol::ConnectionInfo;
use kernel_launcher::{
    CommOutcome, CommPort, LauncherResponse, PendingLaunch, ResponseListener, net,
};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::sync::watch;
use tokio::time::Instant;

use record::SshRecord;

pub use balance::LoadBalancing;
pub use session::{HostKeys, Secret, SessionError, SshAuth};

use crate::launcher::{CommChannel, LauncherComm};
use crate::process::{
    create_private_dir, interrupt_signal_of, is_safe_id, parse_signal_name, read_tail,
    resolve_program, spawn_reaper,
};
use crate::{
    Error, KernelProcess, KernelRecord, LaunchRequest, LaunchedKernel, ProcessState,
    ResourceManager,
};
use balance::{Balancer, HostSlot};
use session::{Session, Target};
use tunnel::Tunnels;

/// The name of this backend in a [`crate::Registry`].
pub const NAME: &str = "ssh";

/// How long `terminate` waits for the kernel to go after the forced kill.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// How often a kernel without a local process is polled through its communication port.
const REMOTE_POLL: Duration = Duration::from_millis(500);

/// How often a remote launcher is checked while the launch waits for its callback.
const LAUNCH_LIVENESS: Duration = Duration::from_secs(1);

/// Lines of the remote log fetched on failure.
const FETCHED_LINES: usize = 100;

/// Settings of the `ssh` backend.
#[derive(Debug, Clone)]
pub struct SshConfig {
    /// Hosts kernels may run on (`EG_REMOTE_HOSTS`, default `localhost`); a kernelspec's
    /// `config.remote_hosts` replaces them.
    pub remote_hosts: Vec<String>,
    /// Where launcher logs go (`EG_KERNEL_LOG_DIR`): `kernel-<id>.log`.
    pub log_dir: PathBuf,
    /// The gateway's response listener.
    pub response: Arc<ResponseListener>,
    /// The gateway's PATH, to resolve a relative `argv[0]` for local launches.
    pub search_path: Vec<PathBuf>,
    /// Connect timeout of communication-port requests (`EG_SOCKET_TIMEOUT`; 1 s is sane, EG's
    /// 5 ms default is not).
    pub comm_timeout: Duration,
}

/// SSH settings of the `ssh` backend (all optional; [`SshOptions::default`] is EG's default
/// behaviour with key files from nowhere: set at least one of [`SshAuth`]'s methods to reach
/// remote hosts).
#[derive(Debug, Clone)]
pub struct SshOptions {
    /// SSH port of the hosts (`EG_SSH_PORT`, default 22).
    pub port: u16,
    /// The remote user (`EG_REMOTE_USER`); `None` = the gateway's own OS user.
    pub remote_user: Option<String>,
    /// With impersonation (`EG_IMPERSONATION_ENABLED`), a request's `KERNEL_USERNAME` is the
    /// remote user.
    pub impersonation: bool,
    /// Key file, agent, password (`EG_REMOTE_PWD`).
    pub auth: SshAuth,
    /// known_hosts file and whether unknown hosts are accepted.
    pub host_keys: HostKeys,
    /// `EG_LOAD_BALANCING_ALGORITHM`.
    pub load_balancing: LoadBalancing,
    /// Tunnel the kernel's ports through the SSH connection (`EG_ENABLE_TUNNELING`).
    pub tunneling: bool,
    /// TCP connect, handshake and authentication must finish within this.
    pub connect_timeout: Duration,
    /// A remote command (launch, kill, log fetch) must finish within this (EG: 30 s).
    pub command_timeout: Duration,
    /// A host that could not be reached is tried last for this long.
    pub host_retry_after: Duration,
    /// Where launchers log on the hosts; `None` = [`SshConfig::log_dir`] (EG uses
    /// `EG_KERNEL_LOG_DIR` for both).
    pub remote_log_dir: Option<PathBuf>,
    /// Use SSH even for hosts that are this machine (EG launches those directly).
    pub ssh_to_local_hosts: bool,
}

impl Default for SshOptions {
    fn default() -> SshOptions {
        SshOptions {
            port: 22,
            remote_user: None,
            impersonation: false,
            auth: SshAuth::default(),
            host_keys: HostKeys::default(),
            load_balancing: LoadBalancing::RoundRobin,
            tunneling: false,
            connect_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(30),
            host_retry_after: Duration::from_secs(30),
            remote_log_dir: None,
            ssh_to_local_hosts: false,
        }
    }
}

/// What the remote side of a backend needs, shared with its kernels.
#[derive(Debug)]
struct Remote {
    options: SshOptions,
    /// The gateway's OS user (default remote user).
    own_user: String,
}

impl Remote {
    async fn connect(&self, target: &Target, budget: Duration) -> Result<Session, SessionError> {
        Session::connect(
            target,
            &self.options.auth,
            &self.options.host_keys,
            self.options.connect_timeout.min(budget),
        )
        .await
    }
}

/// The `ssh` resource manager; see the [module docs](self).
#[derive(Debug)]
pub struct SshResourceManager {
    config: SshConfig,
    remote: Arc<Remote>,
    balancer: Balancer,
    local_ips: Vec<IpAddr>,
}

/// One host attempt that did not start a kernel.
#[derive(Debug)]
enum Attempt {
    /// The host could not be used; the next one may be tried. `auth` when it refused our
    /// credentials (as opposed to being unreachable).
    HostDown { why: String, auth: bool },
    /// The launch ran and failed: final.
    Failed(Error),
}

impl SshResourceManager {
    /// An `ssh` backend with default [`SshOptions`]; the machine's own addresses are read once
    /// here.
    pub fn new(config: SshConfig) -> SshResourceManager {
        SshResourceManager::with_options(config, SshOptions::default())
    }

    /// An `ssh` backend with SSH settings. Without a configured known_hosts file, the gateway
    /// user's `~/.ssh/known_hosts` is used.
    pub fn with_options(config: SshConfig, mut options: SshOptions) -> SshResourceManager {
        let me = nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten();
        if options.host_keys.known_hosts.is_none() {
            options.host_keys.known_hosts =
                me.as_ref().map(|u| u.dir.join(".ssh").join("known_hosts"));
        }
        let own_user = me.map(|u| u.name).unwrap_or_else(|| "root".to_owned());
        SshResourceManager {
            remote: Arc::new(Remote { options, own_user }),
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

    /// The hosts of a launch in the order they will be tried: `KERNEL_REMOTE_HOST` alone (when
    /// a profile's host group is set, only if it is one of the group), else the profile's host
    /// group, the kernelspec's hosts or the configured ones (`localhost` when all are empty),
    /// ordered by the load-balancing algorithm. Advances the round-robin counter.
    pub fn candidates(&self, request: &LaunchRequest) -> Vec<String> {
        let group = &request.placement.hosts;
        if let Some(pinned) = request
            .env
            .get("KERNEL_REMOTE_HOST")
            .map(|h| h.trim())
            .filter(|h| !h.is_empty())
            .filter(|h| group.is_empty() || group.iter().any(|g| g == h))
        {
            return vec![pinned.to_owned()];
        }
        let hosts = if !group.is_empty() {
            group
        } else if request.spec.config.remote_hosts.is_empty() {
            &self.config.remote_hosts
        } else {
            &request.spec.config.remote_hosts
        };
        if hosts.is_empty() {
            return vec!["localhost".to_owned()];
        }
        let options = &self.remote.options;
        self.balancer
            .order(hosts, options.load_balancing, options.host_retry_after)
    }

    /// The host a launch would try first (see [`SshResourceManager::candidates`]).
    pub fn choose_host(&self, request: &LaunchRequest) -> String {
        self.candidates(request)
            .into_iter()
            .next()
            .unwrap_or_else(|| "localhost".to_owned())
    }

    /// The remote user of a launch: `KERNEL_USERNAME` with impersonation, else the configured
    /// remote user, else the gateway's own user.
    pub fn remote_user(&self, request: &LaunchRequest) -> Result<String, Error> {
        let options = &self.remote.options;
        let user = request
            .env
            .get("KERNEL_USERNAME")
            .filter(|u| options.impersonation && !u.trim().is_empty())
            .or(options.remote_user.as_ref())
            .cloned()
            .unwrap_or_else(|| self.remote.own_user.clone());
        let valid = !user.is_empty()
            && user.len() <= 256
            && !user
                .chars()
                .any(|c| c.is_control() || c == '@' || c.is_whitespace());
        if valid {
            Ok(user)
        } else {
            Err(Error::Config(format!(
                "{user:?} is not a usable remote user name"
            )))
        }
    }

    /// Resolves a host name to one address, IPv4 preferred (EG uses `gethostbyname`).
    async fn resolve(host: &str) -> Result<IpAddr, Error> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(ip);
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
            .await
            .map_err(|e| Error::Config(format!("cannot resolve remote host '{host}': {e}")))?
            .collect();
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| addrs.first())
            .map(SocketAddr::ip)
            .ok_or_else(|| Error::Config(format!("remote host '{host}' has no address")))
    }

    fn templated_argv(&self, request: &LaunchRequest) -> Vec<String> {
        crate::launcher::launcher_argv(request, &self.config.response)
    }

    fn log_path(&self, kernel_id: &str) -> PathBuf {
        self.config.log_dir.join(format!("kernel-{kernel_id}.log"))
    }

    /// Launches on this machine without SSH.
    async fn launch_local(
        &self,
        request: &LaunchRequest,
        host: String,
        ip: IpAddr,
        argv: &[String],
        pending: PendingLaunch,
    ) -> Result<LaunchedKernel, Error> {
        let spec = &request.spec;
        let kernel_id = request.kernel_id.clone();
        let Some(argv0) = spec.argv.first() else {
            return Err(Error::Spawn(format!(
                "kernelspec '{}' has an empty argv",
                spec.name
            )));
        };
        let program = resolve_program(spec, argv0, &request.env, &self.config.search_path)?;
        create_private_dir(&self.config.log_dir)?;
        let log_path = self.log_path(&kernel_id);
        // No JPY_PARENT_PID: a launcher started here is as independent of the gateway as one
        // started over SSH (under nohup setsid), so its kernel survives the gateway and is
        // re-attached through its communication port.
        let child =
            crate::process::spawn_logged(request, &program, argv, &log_path, "launcher", false)?;
        let Some(pid) = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw)
        else {
            return Err(Error::Spawn(format!(
                "kernel '{}' started without a process id",
                spec.name
            )));
        };
        let exit = spawn_reaper(child, pid);
        tracing::info!(%kernel_id, %host, pid = pid.as_raw(), log = %log_path.display(), "launcher started locally; waiting for its connection info");

        let mut pending = pending;
        let mut exit_rx = exit.clone();
        let deadline = tokio::time::sleep(request.timeout);
        tokio::pin!(deadline);
        let outcome = loop {
            tokio::select! {
                biased;
                response = &mut pending => break response.map_err(|e| Error::Spawn(e.to_string())),
                changed = exit_rx.changed() => {
                    let state = *exit_rx.borrow_and_update();
                    if changed.is_err() || state != ProcessState::Running {
                        break Err(Error::ExitedDuringLaunch {
                            status: state.to_string(),
                            log_tail: read_tail(&log_path, 20).unwrap_or_default(),
                        });
                    }
                }
                () = &mut deadline => {
                    break Err(timeout_error(&kernel_id, request.timeout, &host, &log_path));
                }
            }
        };
        drop(pending);
        let response = match outcome {
            Ok(response) => response,
            Err(err) => {
                let _ = killpg(pid, Signal::SIGKILL);
                let mut exit = exit;
                let _ =
                    tokio::time::timeout(KILL_WAIT, exit.wait_for(|s| *s != ProcessState::Running))
                        .await;
                tracing::warn!(%kernel_id, %host, "launch failed: {err}");
                return Err(err);
            }
        };
        let mut connection = response.connection.clone();
        connection.ip = ip.to_string();
        connection.kernel_name = spec.name.clone();
        let kernel_group = verified_kernel_group(&response, pid);
        let comm = response.comm_port.map(|port| {
            Comm::Direct(CommPort::new(
                SocketAddr::new(ip, port),
                self.config.comm_timeout,
            ))
        });
        tracing::info!(%kernel_id, %host, kernel_pid = ?response.pid, comm_port = ?response.comm_port, "kernel connection info received");
        let slot = self.balancer.acquire(&host);
        let process = SshKernelProcess {
            kernel_id,
            host,
            ip,
            connection: connection.clone(),
            remote_connection: None,
            comm: LauncherComm::new(comm),
            comm_port: response.comm_port,
            remote_pid: response.pid,
            remote_pgid: response.pgid,
            launcher: Some(Launcher { pid, exit }),
            kernel_group,
            ssh: None,
            log_path,
            interrupt_signal: interrupt_signal_of(spec) as i32,
            slot: Mutex::new(Some(slot)),
            finished: AtomicBool::new(false),
            detached: AtomicBool::new(false),
        };
        Ok(LaunchedKernel {
            connection,
            process: Box::new(process),
        })
    }

    /// Launches on `host` over SSH.
    async fn launch_remote(
        &self,
        request: &LaunchRequest,
        host: &str,
        ip: IpAddr,
        argv: &[String],
        pending: &mut PendingLaunch,
        deadline: Instant,
    ) -> Result<LaunchedKernel, Attempt> {
        let kernel_id = &request.kernel_id;
        let remote = &self.remote;
        let options = &remote.options;
        let user = self.remote_user(request).map_err(Attempt::Failed)?;
        let target = Target {
            host: host.to_owned(),
            addr: SocketAddr::new(ip, options.port),
            user,
        };
        let budget = deadline.saturating_duration_since(Instant::now());
        let session = remote
            .connect(&target, budget)
            .await
            .map_err(|e| Attempt::HostDown {
                auth: matches!(e, SessionError::Auth(_)),
                why: e.to_string(),
            })?;
        let session = Arc::new(session);
        let log_path = self.log_path(kernel_id);
        let remote_log = options
            .remote_log_dir
            .as_deref()
            .unwrap_or(&self.config.log_dir)
            .join(format!("kernel-{kernel_id}.log"));
        let line = command::launch_command(&request.env, argv, request.cwd.as_deref(), &remote_log)
            .map_err(Attempt::Failed)?;
        let budget = deadline.saturating_duration_since(Instant::now());
        let failure = |detail: String| {
            Error::Spawn(format!(
                "Failure occurred starting kernel on '{ip}'.  Returned result: {detail}"
            ))
        };
        let output = match session
            .exec(&line, options.command_timeout.min(budget))
            .await
        {
            Ok(output) => output,
            Err(e) => {
                session.close().await;
                return Err(Attempt::Failed(failure(e.to_string())));
            }
        };
        let Some(group) = command::parse_launch_pid(&output.stdout) else {
            session.close().await;
            let detail = format!("{}{}", output.stderr.trim(), output.stdout.trim());
            return Err(Attempt::Failed(failure(detail)));
        };
        tracing::info!(%kernel_id, %host, user = %target.user, pid = group, log = %remote_log.display(), "launcher started over SSH; waiting for its connection info");
        let ssh = SshControl {
            remote: Arc::clone(&self.remote),
            target: target.clone(),
            group,
            remote_log: remote_log.clone(),
            tunnels: Mutex::new(None),
        };

        let mut liveness = tokio::time::interval(LAUNCH_LIVENESS);
        liveness.tick().await;
        let outcome = loop {
            tokio::select! {
                biased;
                response = &mut *pending => break response.map_err(|e| Error::Spawn(e.to_string())),
                () = tokio::time::sleep_until(deadline) => {
                    break Err(timeout_error(kernel_id, request.timeout, host, &remote_log));
                }
                _ = liveness.tick() => {
                    if ssh.group_alive(Some(&session)).await == Some(false) {
                        ssh.fetch_log(Some(&session), &log_path).await;
                        break Err(Error::ExitedDuringLaunch {
                            status: "exited".to_owned(),
                            log_tail: read_tail(&log_path, 20).unwrap_or_default(),
                        });
                    }
                }
            }
        };
        let response = match outcome {
            Ok(response) => response,
            Err(err) => {
                ssh.kill(Some(&session), Signal::SIGKILL as i32, &[]).await;
                if !matches!(err, Error::ExitedDuringLaunch { .. }) {
                    ssh.fetch_log(Some(&session), &log_path).await;
                }
                session.close().await;
                tracing::warn!(%kernel_id, %host, "launch failed: {err}");
                return Err(Attempt::Failed(with_fetched_log(err, &log_path)));
            }
        };

        let spec = &request.spec;
        let mut connection = response.connection.clone();
        connection.kernel_name = spec.name.clone();
        connection.ip = ip.to_string();
        let remote_connection = connection.clone();
        let comm = if options.tunneling {
            let ports = [
                connection.shell_port,
                connection.iopub_port,
                connection.stdin_port,
                connection.control_port,
                connection.hb_port,
            ];
            match Tunnels::open(Arc::clone(&session), &ports, request.port_range) {
                Ok((tunnels, local)) => {
                    if let [shell, iopub, stdin, control, hb] = local[..] {
                        connection.ip = "127.0.0.1".to_owned();
                        connection.shell_port = shell;
                        connection.iopub_port = iopub;
                        connection.stdin_port = stdin;
                        connection.control_port = control;
                        connection.hb_port = hb;
                    }
                    *lock(&ssh.tunnels) = Some(tunnels);
                    response.comm_port.map(|port| Comm::Tunneled {
                        session: Arc::clone(&session),
                        port,
                        timeout: self.config.comm_timeout,
                    })
                }
                Err(e) => {
                    ssh.kill(
                        Some(&session),
                        Signal::SIGKILL as i32,
                        &kernel_groups(&response),
                    )
                    .await;
                    session.close().await;
                    return Err(Attempt::Failed(Error::Spawn(format!(
                        "Could not open SSH tunnel for kernel {kernel_id}. Exception: '{e}'"
                    ))));
                }
            }
        } else {
            session.close().await;
            response.comm_port.map(|port| {
                Comm::Direct(CommPort::new(
                    SocketAddr::new(ip, port),
                    self.config.comm_timeout,
                ))
            })
        };
        tracing::info!(%kernel_id, %host, kernel_pid = ?response.pid, comm_port = ?response.comm_port, tunneled = options.tunneling, "kernel connection info received");
        let slot = self.balancer.acquire(host);
        let process = SshKernelProcess {
            kernel_id: kernel_id.clone(),
            host: host.to_owned(),
            ip,
            connection: connection.clone(),
            remote_connection: options.tunneling.then_some(remote_connection),
            comm: LauncherComm::new(comm),
            comm_port: response.comm_port,
            remote_pid: response.pid,
            remote_pgid: response.pgid,
            launcher: None,
            kernel_group: None,
            ssh: Some(ssh),
            log_path,
            interrupt_signal: interrupt_signal_of(spec) as i32,
            slot: Mutex::new(Some(slot)),
            finished: AtomicBool::new(false),
            detached: AtomicBool::new(false),
        };
        Ok(LaunchedKernel {
            connection,
            process: Box::new(process),
        })
    }
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
        let argv = self.templated_argv(&request);
        let mut pending = self.config.response.register(&kernel_id)?;
        let mut failures = Vec::new();
        let mut all_refused_auth = true;
        for host in hosts {
            if Instant::now() >= deadline {
                failures.push(format!("{host}: not tried, the launch deadline passed"));
                all_refused_auth = false;
                continue;
            }
            let ip = match SshResourceManager::resolve(&host).await {
                Ok(ip) => ip,
                Err(e) => {
                    tracing::warn!(%kernel_id, %host, "skipping host: {e}");
                    self.balancer.mark_failed(&host);
                    failures.push(format!("{host}: {e}"));
                    all_refused_auth = false;
                    continue;
                }
            };
            if net::is_local_ip(ip, &self.local_ips) && !self.remote.options.ssh_to_local_hosts {
                return self.launch_local(&request, host, ip, &argv, pending).await;
            }
            match self
                .launch_remote(&request, &host, ip, &argv, &mut pending, deadline)
                .await
            {
                Ok(kernel) => return Ok(kernel),
                Err(Attempt::Failed(err)) => return Err(err),
                Err(Attempt::HostDown { why, auth }) => {
                    tracing::warn!(%kernel_id, %host, "skipping host: {why}");
                    self.balancer.mark_failed(&host);
                    failures.push(format!("{host}: {why}"));
                    all_refused_auth &= auth;
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
        if record.resource_manager != NAME {
            return Err(Error::Config(format!(
                "kernel {} was launched by '{}', not by the ssh backend",
                record.kernel_id, record.resource_manager
            )));
        }
        let unreadable = || {
            Error::Config(format!(
                "kernel {}: unreadable ssh process record",
                record.kernel_id
            ))
        };
        let stored = SshRecord::from_json(&record.process).ok_or_else(unreadable)?;
        let ip = stored.ip;
        let host = stored.host.clone();
        let comm_port = stored.comm_port().ok_or_else(|| {
            Error::Unsupported(format!(
                "kernel {} has no communication port to re-attach through",
                record.kernel_id
            ))
        })?;
        let ssh = match (stored.launcher_group, &stored.user) {
            (Some(group), Some(user)) => Some(SshControl {
                remote: Arc::clone(&self.remote),
                target: Target {
                    host: host.clone(),
                    addr: SocketAddr::new(ip, stored.ssh_port.unwrap_or(self.remote.options.port)),
                    user: user.clone(),
                },
                group,
                remote_log: stored.remote_log.clone().unwrap_or_default(),
                tunnels: Mutex::new(None),
            }),
            _ => None,
        };
        let remote_connection = stored.remote_connection.clone();
        let mut connection = record.connection.clone();
        let comm = match (&remote_connection, &ssh) {
            (Some(remote_info), Some(control)) => {
                let session = self
                    .remote
                    .connect(&control.target, self.remote.options.connect_timeout)
                    .await
                    .map_err(|e| {
                        Error::NotRunning(format!(
                            "kernel {}: cannot reconnect its tunnels: {e}",
                            record.kernel_id
                        ))
                    })?;
                let session = Arc::new(session);
                let ports = [
                    remote_info.shell_port,
                    remote_info.iopub_port,
                    remote_info.stdin_port,
                    remote_info.control_port,
                    remote_info.hb_port,
                ];
                let (tunnels, local) = Tunnels::open(
                    Arc::clone(&session),
                    &ports,
                    kernel_launcher::PortRange::ANY,
                )?;
                if let [shell, iopub, stdin, control_port, hb] = local[..] {
                    connection.ip = "127.0.0.1".to_owned();
                    connection.shell_port = shell;
                    connection.iopub_port = iopub;
                    connection.stdin_port = stdin;
                    connection.control_port = control_port;
                    connection.hb_port = hb;
                }
                *lock(&control.tunnels) = Some(tunnels);
                Comm::Tunneled {
                    session,
                    port: comm_port,
                    timeout: self.config.comm_timeout,
                }
            }
            (Some(_), None) => return Err(unreadable()),
            _ => Comm::Direct(CommPort::new(
                SocketAddr::new(ip, comm_port),
                self.config.comm_timeout,
            )),
        };
        if comm.send(&serde_json::json!({ "signum": 0 })).await == CommOutcome::Refused {
            return Err(Error::NotRunning(format!(
                "kernel {} (communication port {ip}:{comm_port}) is no longer running",
                record.kernel_id
            )));
        }
        let slot = self.balancer.acquire(&host);
        let process = SshKernelProcess {
            kernel_id: record.kernel_id.clone(),
            host,
            ip,
            connection: connection.clone(),
            remote_connection,
            comm: LauncherComm::new(Some(comm)),
            comm_port: Some(comm_port),
            remote_pid: stored.pid,
            remote_pgid: stored.pgid,
            launcher: None,
            kernel_group: None,
            ssh,
            log_path: stored.log_path,
            interrupt_signal: parse_signal_name(&stored.interrupt_signal).unwrap_or(Signal::SIGINT)
                as i32,
            slot: Mutex::new(Some(slot)),
            finished: AtomicBool::new(false),
            detached: AtomicBool::new(false),
        };
        Ok(LaunchedKernel {
            connection,
            process: Box::new(process),
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// EG's launch-timeout reason.
fn timeout_error(kernel_id: &str, timeout: Duration, host: &str, log: &Path) -> Error {
    Error::LaunchTimeout(format!(
        "KernelID: '{kernel_id}' launch timeout due to: Waited too long ({}s) to get connection file.  Check Enterprise Gateway log and kernel log ({host}:{}) for more information.",
        crate::python_seconds(timeout),
        log.display()
    ))
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

/// The kernel process groups a launcher reported.
fn kernel_groups(response: &LauncherResponse) -> Vec<i32> {
    response.pgid.into_iter().chain(response.pid).collect()
}

/// A launcher's communication port, reached directly or through the SSH connection.
#[derive(Debug, Clone)]
enum Comm {
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
            } => tunnel::send_comm(session, *port, request, *timeout).await,
        }
    }
}

/// How to reach a remote kernel's host over SSH.
#[derive(Debug)]
struct SshControl {
    remote: Arc<Remote>,
    target: Target,
    /// The launcher's pid, which is also its process group and session (`setsid`).
    group: i32,
    remote_log: PathBuf,
    tunnels: Mutex<Option<Tunnels>>,
}

impl SshControl {
    /// The tunnels' connection if it is still open, else a new one.
    async fn session<'a>(&'a self, given: Option<&'a Session>) -> Option<SessionRef<'a>> {
        if let Some(session) = given.filter(|s| !s.is_closed()) {
            return Some(SessionRef::Borrowed(session));
        }
        let tunnel_session = lock(&self.tunnels)
            .as_ref()
            .map(|t| Arc::clone(t.session()))
            .filter(|s| !s.is_closed());
        if let Some(session) = tunnel_session {
            return Some(SessionRef::Shared(session));
        }
        let timeout = self.remote.options.connect_timeout;
        match self.remote.connect(&self.target, timeout).await {
            Ok(session) => Some(SessionRef::Owned(session)),
            Err(e) => {
                tracing::warn!(host = %self.target.host, "cannot reach the kernel's host: {e}");
                None
            }
        }
    }

    async fn run(&self, given: Option<&Session>, line: &str) -> Option<String> {
        let session = self.session(given).await?;
        let result = session
            .get()
            .exec(line, self.remote.options.command_timeout)
            .await;
        session.done().await;
        match result {
            Ok(output) => Some(output.stdout),
            Err(e) => {
                tracing::warn!(host = %self.target.host, "remote command failed: {e}");
                None
            }
        }
    }

    /// Signals the launcher's group and the reported kernel groups of its session; `Some(true)`
    /// if anything was signalled, `None` if the host could not be asked.
    async fn kill(
        &self,
        given: Option<&Session>,
        signum: i32,
        kernel_groups: &[i32],
    ) -> Option<bool> {
        let line = command::kill_command(signum, self.group, kernel_groups);
        let out = self.run(given, &line).await?;
        Some(out.lines().last().map(str::trim) == Some("0"))
    }

    async fn group_alive(&self, given: Option<&Session>) -> Option<bool> {
        self.kill(given, 0, &[]).await
    }

    /// Copies the tail of the remote log into the local kernel log.
    async fn fetch_log(&self, given: Option<&Session>, local: &Path) {
        let Ok(line) = command::tail_command(&self.remote_log, FETCHED_LINES) else {
            return;
        };
        let Some(text) = self.run(given, &line).await else {
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

    fn stop_tunnels(&self) {
        if let Some(mut tunnels) = lock(&self.tunnels).take() {
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

/// The launcher process started on this machine.
#[derive(Debug)]
struct Launcher {
    pid: Pid,
    exit: watch::Receiver<ProcessState>,
}

/// A kernel started through a launcher; see the [module docs](self).
#[derive(Debug)]
pub struct SshKernelProcess {
    kernel_id: String,
    host: String,
    ip: IpAddr,
    connection: ConnectionInfo,
    /// With tunnelling: the connection info as the launcher reported it (remote ports).
    remote_connection: Option<ConnectionInfo>,
    /// The launcher's communication port and whether its listener was told to stop after
    /// `shutdown_request`: from then on a refusing port means the kernel is gone, as EG treats
    /// it, even if a local launcher process lingers (it is killed by `terminate`).
    comm: LauncherComm<Comm>,
    comm_port: Option<u16>,
    remote_pid: Option<i32>,
    remote_pgid: Option<i32>,
    /// The local launcher process (local launches only).
    launcher: Option<Launcher>,
    /// The kernel's own process group when the launcher started it in a separate one (our
    /// agent) and it was verified to be the launcher's child.
    kernel_group: Option<Pid>,
    /// SSH access to the kernel's host (remote launches).
    ssh: Option<SshControl>,
    log_path: PathBuf,
    interrupt_signal: i32,
    slot: Mutex<Option<HostSlot>>,
    finished: AtomicBool,
    detached: AtomicBool,
}

impl SshKernelProcess {
    /// The host the kernel runs on.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The launcher's communication port, if the gateway reaches it directly (not tunnelled).
    pub fn comm_port(&self) -> Option<CommPort> {
        match self.comm.port() {
            Some(Comm::Direct(port)) => Some(*port),
            _ => None,
        }
    }

    /// The kernel's pid and process group on its host, as the launcher reported them.
    pub fn remote_pid(&self) -> (Option<i32>, Option<i32>) {
        (self.remote_pid, self.remote_pgid)
    }

    /// The local launcher's pid (local launches only).
    pub fn launcher_pid(&self) -> Option<i32> {
        self.launcher.as_ref().map(|l| l.pid.as_raw())
    }

    /// With tunnelling, the connection info as the launcher reported it (the host's ports).
    pub fn remote_connection(&self) -> Option<&ConnectionInfo> {
        self.remote_connection.as_ref()
    }

    fn kernel_groups(&self) -> Vec<i32> {
        self.remote_pgid
            .into_iter()
            .chain(self.remote_pid)
            .collect()
    }

    fn local_state(&self) -> Option<ProcessState> {
        self.launcher.as_ref().map(|l| *l.exit.borrow())
    }

    /// Kills the local process groups (launcher, and the kernel's own if verified).
    fn kill_local(&self, signal: Signal) -> bool {
        let mut sent = false;
        if let Some(launcher) = &self.launcher
            && *launcher.exit.borrow() == ProcessState::Running
        {
            sent |= killpg(launcher.pid, signal).is_ok();
        }
        if let Some(group) = self.kernel_group {
            sent |= killpg(group, signal).is_ok();
        }
        sent
    }

    async fn wait_exit(&self) -> ProcessState {
        match &self.launcher {
            Some(launcher) => {
                let mut exit = launcher.exit.clone();
                let state = match exit.wait_for(|s| *s != ProcessState::Running).await {
                    Ok(state) => *state,
                    Err(_) => ProcessState::Unknown,
                };
                // The agent normally takes its kernel along; make sure.
                if let Some(group) = self.kernel_group {
                    let _ = killpg(group, Signal::SIGKILL);
                }
                state
            }
            None => loop {
                match self.poll_remote().await {
                    ProcessState::Running | ProcessState::Unknown => {
                        tokio::time::sleep(REMOTE_POLL).await;
                    }
                    state => return state,
                }
            },
        }
    }

    async fn poll_remote(&self) -> ProcessState {
        let outcome = self.comm.signal(0).await;
        match outcome {
            CommOutcome::Delivered => ProcessState::Running,
            CommOutcome::Refused => ProcessState::Exited {
                code: None,
                signal: None,
            },
            CommOutcome::Unknown(why) => {
                tracing::debug!(kernel_id = %self.kernel_id, "liveness unknown: {why}");
                match &self.ssh {
                    Some(ssh) => match ssh.group_alive(None).await {
                        Some(true) => ProcessState::Running,
                        Some(false) => ProcessState::Exited {
                            code: None,
                            signal: None,
                        },
                        None => ProcessState::Unknown,
                    },
                    None => ProcessState::Unknown,
                }
            }
        }
    }

    fn not_running(&self) -> Error {
        Error::NotRunning(format!(
            "kernel {} on {} is not running",
            self.kernel_id, self.host
        ))
    }

    fn release_slot(&self) {
        lock(&self.slot).take();
    }
}

#[async_trait]
impl KernelProcess for SshKernelProcess {
    fn record(&self) -> KernelRecord {
        let ssh = self.ssh.as_ref();
        KernelRecord {
            resource_manager: NAME.to_owned(),
            kernel_id: self.kernel_id.clone(),
            connection: self.connection.clone(),
            process: SshRecord {
                host: self.host.clone(),
                ip: self.ip,
                pid: self.remote_pid,
                pgid: self.remote_pgid,
                comm_port: self.comm_port,
                launcher_pid: self.launcher_pid(),
                launcher_group: ssh.map(|s| s.group),
                user: ssh.map(|s| s.target.user.clone()),
                ssh_port: ssh.map(|s| s.target.addr.port()),
                remote_log: ssh.map(|s| s.remote_log.clone()),
                tunneled: self.remote_connection.is_some(),
                remote_connection: self.remote_connection.clone(),
                log_path: self.log_path.clone(),
                interrupt_signal: Signal::try_from(self.interrupt_signal)
                    .map(|s| s.as_str())
                    .unwrap_or("SIGINT")
                    .to_owned(),
            }
            .to_json(),
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
        if let Some(ssh) = &self.ssh
            && !self.finished.load(Ordering::SeqCst)
        {
            // The kernel ended on its own: bring its log here for the gateway's messages.
            ssh.fetch_log(None, &self.log_path).await;
        }
        state
    }

    async fn signal(&self, signum: i32) -> Result<(), Error> {
        if let Some(ProcessState::Exited { .. }) = self.local_state() {
            return Err(self.not_running());
        }
        let outcome = self.comm.signal(signum).await;
        let why = match outcome {
            CommOutcome::Delivered => return Ok(()),
            CommOutcome::Refused if self.launcher.is_none() => return Err(self.not_running()),
            CommOutcome::Refused => "communication port closed".to_owned(),
            CommOutcome::Unknown(why) => why,
        };
        if let Some(ssh) = &self.ssh {
            tracing::warn!(kernel_id = %self.kernel_id, "signal {signum} via the communication port failed ({why}); sending it over SSH");
            return match ssh.kill(None, signum, &self.kernel_groups()).await {
                Some(true) => Ok(()),
                Some(false) => Err(self.not_running()),
                None => Err(Error::Io(std::io::Error::other(format!(
                    "cannot signal kernel {} on {}: {why}; SSH to the host failed too",
                    self.kernel_id, self.host
                )))),
            };
        }
        // Fall back to the local process groups.
        if self.launcher.is_none() {
            return Err(Error::Io(std::io::Error::other(format!(
                "cannot signal kernel {} on {}: {why}",
                self.kernel_id, self.host
            ))));
        }
        tracing::warn!(kernel_id = %self.kernel_id, "signal {signum} via the communication port failed ({why}); signalling the local process group");
        if signum == 0 {
            let alive = self
                .launcher
                .as_ref()
                .is_some_and(|l| kill(l.pid, None).is_ok());
            return if alive {
                Ok(())
            } else {
                Err(self.not_running())
            };
        }
        let signal = Signal::try_from(signum).map_err(|_| {
            Error::Unsupported(format!("{signum} is not a signal number on this system"))
        })?;
        if self.kill_local(signal) {
            Ok(())
        } else {
            Err(self.not_running())
        }
    }

    async fn interrupt(&self) -> Result<(), Error> {
        self.signal(self.interrupt_signal).await
    }

    async fn terminate(&self, grace: Duration) -> Result<ProcessState, Error> {
        if let Some(state @ ProcessState::Exited { .. }) = self.local_state() {
            self.finished.store(true, Ordering::SeqCst);
            return Ok(state);
        }
        // No log fetch for a stop the gateway asked for.
        self.finished.store(true, Ordering::SeqCst);
        if self.comm.port().is_some() {
            self.comm.ask_to_stop(&self.kernel_id).await;
            // A launcher started here gets the signal directly too: its listener may already be
            // gone (told to stop at shutdown_request) while the process lingers.
            if self.launcher.is_some() {
                self.kill_local(Signal::SIGTERM);
            }
        } else if let Some(ssh) = &self.ssh {
            ssh.kill(None, Signal::SIGTERM as i32, &self.kernel_groups())
                .await;
        } else {
            self.kill_local(Signal::SIGTERM);
        }
        let state = match tokio::time::timeout(grace, self.wait_exit()).await {
            Ok(state) => state,
            Err(_) => {
                tracing::info!(kernel_id = %self.kernel_id, "kernel did not stop in time, killing it");
                if self.launcher.is_some() {
                    self.kill_local(Signal::SIGKILL);
                } else {
                    let _ = self.comm.signal(Signal::SIGKILL as i32).await;
                    if let Some(ssh) = &self.ssh {
                        ssh.kill(None, Signal::SIGKILL as i32, &self.kernel_groups())
                            .await;
                    }
                }
                tokio::time::timeout(KILL_WAIT, self.wait_exit())
                    .await
                    .unwrap_or(ProcessState::Unknown)
            }
        };
        if let Some(ssh) = &self.ssh {
            // The launcher may be gone while something of its session is not (e.g. our agent
            // killed before its kernel): make sure, over SSH, that nothing is left.
            ssh.kill(None, Signal::SIGKILL as i32, &self.kernel_groups())
                .await;
        }
        Ok(state)
    }

    async fn shutdown_requested(&self) {
        self.comm.shutdown_requested(&self.kernel_id).await;
    }

    async fn cleanup(&self, _keep_connection_file: bool) {
        // The launcher owns the connection file; make sure its listener is gone (EG does the same).
        let exited = matches!(self.local_state(), Some(ProcessState::Exited { .. }));
        if !exited {
            let _ = self.comm.stop_listener().await;
        }
        if let Some(ssh) = &self.ssh {
            let session = lock(&ssh.tunnels).as_ref().map(|t| Arc::clone(t.session()));
            ssh.stop_tunnels();
            if let Some(session) = session {
                session.close().await;
            }
        }
        self.release_slot();
    }

    fn log_tail(&self, max_lines: usize) -> String {
        read_tail(&self.log_path, max_lines).unwrap_or_default()
    }

    fn detach(&self) {
        self.detached.store(true, Ordering::SeqCst);
    }
}

impl Drop for SshKernelProcess {
    fn drop(&mut self) {
        if let Some(ssh) = &self.ssh {
            ssh.stop_tunnels();
        }
        if self.finished.load(Ordering::SeqCst) || self.detached.load(Ordering::SeqCst) {
            return;
        }
        if self.local_state() == Some(ProcessState::Running) {
            tracing::warn!(kernel_id = %self.kernel_id, "kernel handle dropped while running: killing its process groups");
            self.kill_local(Signal::SIGKILL);
        }
        if let Some(ssh) = self.ssh.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            tracing::warn!(kernel_id = %self.kernel_id, host = %self.host, "kernel handle dropped while running: killing it over SSH");
            let groups = self.kernel_groups();
            runtime.spawn(async move {
                ssh.kill(None, Signal::SIGKILL as i32, &groups).await;
            });
        }
    }
}

/// The kernel's own process group, when it differs from the launcher's and the reported
/// process really is the launcher's child. A payload is not trusted to name a group to kill.
fn verified_kernel_group(response: &LauncherResponse, launcher: Pid) -> Option<Pid> {
    let pgid = response
        .pgid
        .filter(|g| *g > 1 && *g != launcher.as_raw())?;
    let stat = std::fs::read_to_string(format!("/proc/{pgid}/stat")).ok()?;
    let parent: i32 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    (parent == launcher.as_raw()).then(|| Pid::from_raw(pgid))
}
