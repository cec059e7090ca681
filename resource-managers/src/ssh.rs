//! The `ssh` backend: EG's `DistributedProcessProxy` and gateway_provisioners'
//! `distributed-provisioner` (reference §7.3–7.4, §8, §20).
//!
//! A kernelspec of this backend starts a *launcher* (EG's or gateway_provisioners'
//! `launch_ipykernel.py`, or this workspace's `kernel-launcher` agent) on one of the remote
//! hosts. The launcher chooses the kernel's ports, starts the kernel and calls the gateway's
//! [`ResponseListener`] back with the encrypted connection info; the kernel is then signalled
//! and stopped through the launcher's communication port ([`CommPort`]).
//!
//! Host choice: the request env's `KERNEL_REMOTE_HOST` pins the host; otherwise the kernelspec's
//! `config.remote_hosts`, else [`SshConfig::remote_hosts`], round robin (one counter per backend,
//! shared by all kernelspecs, as EG's). A host that resolves to this machine (localhost, 127.x,
//! one of its interface addresses) is launched locally without SSH, as EG does: the templated
//! `argv` runs in its own process group with its output in `<log_dir>/kernel-<id>.log`. Launching
//! on other hosts over SSH is not available yet ([`Error::Unsupported`]).
//!
//! `argv` placeholders: `{kernel_id}`, `{response_address}`, `{public_key}`, `{port_range}`,
//! `{resource_dir}`, `{prefix}`, and `{transport_encryption}` (always empty: this gateway does not
//! provision CurveZMQ keys).
//!
//! The launch waits for the callback within `request.timeout` while watching the launcher
//! process: an exit during launch fails with its status and log tail, a timeout with EG's
//! reason (`KernelID: '<id>' launch timeout due to: Waited too long (<t>s) to get connection
//! file...`); either way the launcher's process group is killed and nothing is left.
//!
//! The returned [`SshKernelProcess`] sends interrupts and other signals through the
//! communication port (falling back to the local process group when the port gives no answer);
//! `terminate` sends `{"signum": 15}` then `{"shutdown": 1}`, waits, and kills the process groups
//! as a last resort. For a local launch, `poll` and `wait` follow the launcher process, as EG
//! does; a re-attached kernel (no local process) is polled through the communication port.
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use jupyter_protocol::ConnectionInfo;
use kernel_launcher::{CommOutcome, CommPort, LauncherResponse, ResponseListener, net, template};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::local::{
    create_private_dir, interrupt_signal_of, is_safe_id, parse_signal_name, read_tail,
    resolve_program, spawn_reaper,
};
use crate::{
    Error, KernelProcess, KernelRecord, LaunchRequest, LaunchedKernel, ProcessState,
    ResourceManager,
};

/// The name of this backend in a [`crate::Registry`].
pub const NAME: &str = "ssh";

/// How long `terminate` waits for the kernel to go after the forced kill.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// How often a kernel without a local process is polled through its communication port.
const REMOTE_POLL: Duration = Duration::from_millis(500);

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

/// The `ssh` resource manager; see the [module docs](self).
#[derive(Debug)]
pub struct SshResourceManager {
    config: SshConfig,
    next_host: AtomicUsize,
    local_ips: Vec<IpAddr>,
}

impl SshResourceManager {
    /// An `ssh` backend; the machine's own addresses are read once here.
    pub fn new(config: SshConfig) -> SshResourceManager {
        SshResourceManager {
            config,
            next_host: AtomicUsize::new(0),
            local_ips: net::local_addresses(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &SshConfig {
        &self.config
    }

    /// The host of a launch: `KERNEL_REMOTE_HOST`, else round robin over the kernelspec's hosts
    /// or the configured ones (`localhost` when both are empty).
    pub fn choose_host(&self, request: &LaunchRequest) -> String {
        if let Some(pinned) = request
            .env
            .get("KERNEL_REMOTE_HOST")
            .map(|h| h.trim())
            .filter(|h| !h.is_empty())
        {
            return pinned.to_owned();
        }
        let hosts = if request.spec.config.remote_hosts.is_empty() {
            &self.config.remote_hosts
        } else {
            &request.spec.config.remote_hosts
        };
        if hosts.is_empty() {
            return "localhost".to_owned();
        }
        let turn = self.next_host.fetch_add(1, Ordering::Relaxed);
        hosts
            .get(turn % hosts.len())
            .cloned()
            .unwrap_or_else(|| "localhost".to_owned())
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
}

#[async_trait]
impl ResourceManager for SshResourceManager {
    fn name(&self) -> &str {
        NAME
    }

    async fn launch(&self, request: LaunchRequest) -> Result<LaunchedKernel, Error> {
        let spec = &request.spec;
        let kernel_id = request.kernel_id.clone();
        if !is_safe_id(&kernel_id) {
            return Err(Error::Config(format!("invalid kernel id '{kernel_id}'")));
        }
        let host = self.choose_host(&request);
        let ip = SshResourceManager::resolve(&host).await?;
        if !net::is_local_ip(ip, &self.local_ips) {
            return Err(Error::Unsupported(format!(
                "SSH launch to {host} is not available yet"
            )));
        }
        let Some(argv0) = spec.argv.first() else {
            return Err(Error::Spawn(format!(
                "kernelspec '{}' has an empty argv",
                spec.name
            )));
        };
        let program = resolve_program(spec, argv0, &request.env, &self.config.search_path)?;
        create_private_dir(&self.config.log_dir)?;
        let log_path = self.config.log_dir.join(format!("kernel-{kernel_id}.log"));

        let listener = &self.config.response;
        let mut pending = listener.register(&kernel_id)?;
        let mut vars: BTreeMap<&str, String> = BTreeMap::new();
        vars.insert("kernel_id", kernel_id.clone());
        vars.insert("response_address", listener.response_address());
        vars.insert("public_key", listener.public_key_b64().to_owned());
        vars.insert("port_range", request.port_range.to_template());
        vars.insert(
            "resource_dir",
            spec.resource_dir.to_string_lossy().into_owned(),
        );
        vars.insert("transport_encryption", String::new());
        if let Some(prefix) = spec.prefix() {
            vars.insert("prefix", prefix.to_string_lossy().into_owned());
        }
        let argv = template::substitute(&spec.argv, &vars);
        let child = spawn_launcher(&request, &program, &argv, &log_path)?;
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
                            status: describe(state),
                            log_tail: read_tail(&log_path, 20).unwrap_or_default(),
                        });
                    }
                }
                () = &mut deadline => {
                    break Err(Error::LaunchTimeout(format!(
                        "KernelID: '{kernel_id}' launch timeout due to: Waited too long ({}s) to get connection file.  Check Enterprise Gateway log and kernel log ({host}:{}) for more information.",
                        python_seconds(request.timeout),
                        log_path.display()
                    )));
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
        let comm = response
            .comm_port
            .map(|port| CommPort::new(SocketAddr::new(ip, port), self.config.comm_timeout));
        tracing::info!(%kernel_id, %host, kernel_pid = ?response.pid, comm_port = ?response.comm_port, "remote kernel connection info received");
        let process = SshKernelProcess {
            kernel_id,
            host,
            ip,
            connection: connection.clone(),
            comm,
            remote_pid: response.pid,
            remote_pgid: response.pgid,
            launcher: Some(Launcher { pid, exit }),
            kernel_group,
            log_path,
            interrupt_signal: interrupt_signal_of(spec) as i32,
            finished: AtomicBool::new(false),
            detached: AtomicBool::new(false),
        };
        Ok(LaunchedKernel {
            connection,
            process: Box::new(process),
        })
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
        let field = |key: &str| record.process.get(key);
        let ip: IpAddr = field("ip")
            .and_then(serde_json::Value::as_str)
            .and_then(|s| s.parse().ok())
            .ok_or_else(unreadable)?;
        let comm_port = field("comm_port")
            .and_then(serde_json::Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                Error::Unsupported(format!(
                    "kernel {} has no communication port to re-attach through",
                    record.kernel_id
                ))
            })?;
        let int = |key: &str| {
            field(key)
                .and_then(serde_json::Value::as_i64)
                .and_then(|v| i32::try_from(v).ok())
        };
        let comm = CommPort::new(SocketAddr::new(ip, comm_port), self.config.comm_timeout);
        if comm.probe().await == CommOutcome::Refused {
            return Err(Error::NotRunning(format!(
                "kernel {} (communication port {ip}:{comm_port}) is no longer running",
                record.kernel_id
            )));
        }
        let process = SshKernelProcess {
            kernel_id: record.kernel_id.clone(),
            host: field("host")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            ip,
            connection: record.connection.clone(),
            comm: Some(comm),
            remote_pid: int("pid"),
            remote_pgid: int("pgid"),
            launcher: None,
            kernel_group: None,
            log_path: field("log_path")
                .and_then(serde_json::Value::as_str)
                .map(PathBuf::from)
                .unwrap_or_default(),
            interrupt_signal: field("interrupt_signal")
                .and_then(serde_json::Value::as_str)
                .and_then(parse_signal_name)
                .unwrap_or(Signal::SIGINT) as i32,
            finished: AtomicBool::new(false),
            detached: AtomicBool::new(false),
        };
        Ok(LaunchedKernel {
            connection: record.connection.clone(),
            process: Box::new(process),
        })
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
    comm: Option<CommPort>,
    remote_pid: Option<i32>,
    remote_pgid: Option<i32>,
    /// The local launcher process (local launches only).
    launcher: Option<Launcher>,
    /// The kernel's own process group when the launcher started it in a separate one (our
    /// agent) and it was verified to be the launcher's child.
    kernel_group: Option<Pid>,
    log_path: PathBuf,
    interrupt_signal: i32,
    finished: AtomicBool,
    detached: AtomicBool,
}

impl SshKernelProcess {
    /// The host the kernel runs on.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The launcher's communication port, if it has one.
    pub fn comm_port(&self) -> Option<CommPort> {
        self.comm
    }

    /// The kernel's pid and process group on its host, as the launcher reported them.
    pub fn remote_pid(&self) -> (Option<i32>, Option<i32>) {
        (self.remote_pid, self.remote_pgid)
    }

    /// The local launcher's pid (local launches only).
    pub fn launcher_pid(&self) -> Option<i32> {
        self.launcher.as_ref().map(|l| l.pid.as_raw())
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
        match &self.comm {
            Some(comm) => match comm.probe().await {
                CommOutcome::Delivered => ProcessState::Running,
                CommOutcome::Refused => ProcessState::Exited {
                    code: None,
                    signal: None,
                },
                CommOutcome::Unknown(why) => {
                    tracing::debug!(kernel_id = %self.kernel_id, "liveness unknown: {why}");
                    ProcessState::Unknown
                }
            },
            None => ProcessState::Unknown,
        }
    }

    fn not_running(&self) -> Error {
        Error::NotRunning(format!(
            "kernel {} on {} is not running",
            self.kernel_id, self.host
        ))
    }
}

#[async_trait]
impl KernelProcess for SshKernelProcess {
    fn record(&self) -> KernelRecord {
        KernelRecord {
            resource_manager: NAME.to_owned(),
            kernel_id: self.kernel_id.clone(),
            connection: self.connection.clone(),
            process: serde_json::json!({
                "host": self.host,
                "ip": self.ip.to_string(),
                "pid": self.remote_pid,
                "pgid": self.remote_pgid,
                "comm_port": self.comm.map(|c| c.addr().port()),
                "launcher_pid": self.launcher_pid(),
                "log_path": self.log_path,
                "interrupt_signal": Signal::try_from(self.interrupt_signal).map(|s| s.as_str()).unwrap_or("SIGINT"),
            }),
        }
    }

    async fn poll(&self) -> ProcessState {
        match self.local_state() {
            Some(state) => state,
            None => self.poll_remote().await,
        }
    }

    async fn wait(&self) -> ProcessState {
        self.wait_exit().await
    }

    async fn signal(&self, signum: i32) -> Result<(), Error> {
        if let Some(ProcessState::Exited { .. }) = self.local_state() {
            return Err(self.not_running());
        }
        let outcome = match &self.comm {
            Some(comm) => comm.signal(signum).await,
            None => CommOutcome::Unknown("the launcher has no communication port".to_owned()),
        };
        let why = match outcome {
            CommOutcome::Delivered => return Ok(()),
            CommOutcome::Refused if self.launcher.is_none() => return Err(self.not_running()),
            CommOutcome::Refused => "communication port closed".to_owned(),
            CommOutcome::Unknown(why) => why,
        };
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
        if let Some(comm) = &self.comm {
            let term = comm.signal(Signal::SIGTERM as i32).await;
            let stop = comm.shutdown().await;
            tracing::debug!(kernel_id = %self.kernel_id, ?term, ?stop, "asked the launcher to stop the kernel");
        } else {
            self.kill_local(Signal::SIGTERM);
        }
        let state = match tokio::time::timeout(grace, self.wait_exit()).await {
            Ok(state) => state,
            Err(_) => {
                tracing::info!(kernel_id = %self.kernel_id, "kernel did not stop in time, killing it");
                if self.launcher.is_some() {
                    self.kill_local(Signal::SIGKILL);
                } else if let Some(comm) = &self.comm {
                    let _ = comm.signal(Signal::SIGKILL as i32).await;
                }
                tokio::time::timeout(KILL_WAIT, self.wait_exit())
                    .await
                    .unwrap_or(ProcessState::Unknown)
            }
        };
        self.finished.store(true, Ordering::SeqCst);
        Ok(state)
    }

    async fn cleanup(&self, _keep_connection_file: bool) {
        // The launcher owns the connection file; make sure its listener is gone (EG does the same).
        let exited = matches!(self.local_state(), Some(ProcessState::Exited { .. }));
        if !exited && let Some(comm) = &self.comm {
            let _ = comm.shutdown().await;
        }
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
        if self.finished.load(Ordering::SeqCst) || self.detached.load(Ordering::SeqCst) {
            return;
        }
        if self.local_state() == Some(ProcessState::Running) {
            tracing::warn!(kernel_id = %self.kernel_id, "kernel handle dropped while running: killing its process groups");
            self.kill_local(Signal::SIGKILL);
        }
    }
}

/// Starts the launcher locally, in its own process group, output to the log.
fn spawn_launcher(
    request: &LaunchRequest,
    program: &Path,
    argv: &[String],
    log_path: &Path,
) -> Result<tokio::process::Child, Error> {
    let name = &request.spec.name;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log_path)
        .map_err(|e| {
            Error::Spawn(format!(
                "kernel '{name}': cannot open log {}: {e}",
                log_path.display()
            ))
        })?;
    let log_err = log.try_clone()?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(argv.iter().skip(1))
        .env_clear()
        .envs(&request.env)
        .env("JPY_PARENT_PID", std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .process_group(0)
        .kill_on_drop(false);
    if let Some(cwd) = &request.cwd {
        command.current_dir(cwd);
    }
    command.spawn().map_err(|e| {
        Error::Spawn(format!(
            "cannot start kernel '{name}': {}: {e}",
            program.display()
        ))
    })
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

/// `exit code 3`, `signal 9`, ...
fn describe(state: ProcessState) -> String {
    match state {
        ProcessState::Exited {
            code: Some(code), ..
        } => format!("exit code {code}"),
        ProcessState::Exited {
            signal: Some(signal),
            ..
        } => format!("signal {signal}"),
        ProcessState::Exited { .. } => "exited".to_owned(),
        ProcessState::Running => "running".to_owned(),
        ProcessState::Unknown => "unknown state".to_owned(),
    }
}

/// Seconds as Python prints a float (`30.0`, `0.5`).
fn python_seconds(duration: Duration) -> String {
    let secs = duration.as_secs_f64();
    if secs.fract() == 0.0 {
        format!("{secs:.1}")
    } else {
        format!("{secs}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_like_python() {
        assert_eq!(python_seconds(Duration::from_secs(30)), "30.0");
        assert_eq!(python_seconds(Duration::from_millis(1500)), "1.5");
    }

    #[test]
    fn exit_descriptions() {
        assert_eq!(
            describe(ProcessState::Exited {
                code: Some(3),
                signal: None
            }),
            "exit code 3"
        );
        assert_eq!(
            describe(ProcessState::Exited {
                code: None,
                signal: Some(9)
            }),
            "signal 9"
        );
    }
}
