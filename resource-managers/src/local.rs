//! The local backend: each kernel a child process in its own process group.
//!
//! [`LocalResourceManager::launch`] does what EG's `LocalProcessProxy` does (reference §7.2):
//! it chooses five ports (or reuses the previous ones on restart), writes the connection file
//! `<runtime_dir>/kernel-<id>.json` with mode 0600, fills the kernelspec's `argv` template and
//! starts the program directly (no shell) with exactly the composed environment plus
//! `JPY_PARENT_PID`. The kernel gets its own process group, so signals reach the kernel and
//! whatever it started; its stdout and stderr go to `<log_dir>/kernel-<id>.log`, which is
//! removed with the kernel (kept across restarts).
//!
//! Finding the program: when `argv[0]` is `python`, `python3` or `python3.X` and the kernelspec
//! lives in `<prefix>/share/jupyter/kernels/<name>` next to `<prefix>/bin/<argv[0]>`, that
//! interpreter is used, so a virtual environment's kernelspec runs the environment's Python even
//! when the kernel's environment has no `PATH`. Other bare names are looked up in the kernel
//! env's `PATH`, then in [`LocalConfig::search_path`].
//!
//! Each kernel has a reaper task that waits for the process and publishes its exit at once
//! ([`KernelProcess::wait`] and [`KernelProcess::poll`] read it). When the kernel process ends,
//! for whatever reason, the reaper also SIGKILLs what is left of its process group, so no
//! orphan outlives the kernel.
//!
//! **Dropping a handle**: a [`LocalKernelProcess`] dropped while its kernel still runs, without
//! [`KernelProcess::terminate`] or [`KernelProcess::detach`] having been called, SIGKILLs the
//! kernel's process group. A gateway that exits without shutting its kernels down therefore
//! leaves none behind; one that wants them to survive for a later [`ResourceManager::reattach`]
//! detaches them first.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use jupyter_protocol::{ConnectionInfo, Transport};
use kernel_launcher::{PortAllocator, PortLease, template};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::sync::watch;

// The toolbox moved to `crate::process`; these names stay reachable here for backends that still
// import them from `local`.
pub(crate) use crate::process::{
    create_private_dir, interrupt_signal_of, is_safe_id, parse_signal_name, read_tail,
    resolve_program, spawn_logged, spawn_reaper,
};
use crate::process::{is_alive, remove_quietly, start_time};
use crate::{
    Error, KernelProcess, KernelRecord, LaunchRequest, LaunchedKernel, ProcessState,
    ResourceManager,
};

/// The name of this backend in a [`crate::Registry`].
pub const NAME: &str = "local";

/// How long `terminate` waits for the process to go after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// How often a re-attached kernel (not our child) is polled for liveness.
const REATTACHED_POLL: Duration = Duration::from_millis(200);

/// Settings of the local backend.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Where connection files go (`kernel-<id>.json`, mode 0600).
    pub runtime_dir: PathBuf,
    /// Where per-kernel logs go (`kernel-<id>.log`).
    pub log_dir: PathBuf,
    /// IP the kernel binds (127.0.0.1).
    pub ip: String,
    /// The gateway's PATH, to resolve a relative `argv[0]` (kernels may get no PATH of their own).
    pub search_path: Vec<PathBuf>,
}

/// The local resource manager (`local`, EG's `LocalProcessProxy`).
#[derive(Debug)]
pub struct LocalResourceManager {
    config: LocalConfig,
    /// Ports stay reserved while a kernel holds them, so concurrent launches never share one.
    ports: PortAllocator,
    /// Kernels are started to outlive the gateway (no `JPY_PARENT_PID`).
    outlive: bool,
}

impl LocalResourceManager {
    /// A local backend.
    pub fn new(config: LocalConfig) -> LocalResourceManager {
        LocalResourceManager {
            config,
            ports: PortAllocator::for_this_host(),
            outlive: false,
        }
    }

    /// Starts kernels that survive the gateway's death (for a gateway that re-attaches to them
    /// later): they get no `JPY_PARENT_PID`, so ipykernel does not exit when its parent goes, as
    /// jupyter_client's `independent` kernels. They run in their own process group either way,
    /// so no signal aimed at the gateway reaches them.
    pub fn outliving_gateway(mut self, outlive: bool) -> LocalResourceManager {
        self.outlive = outlive;
        self
    }

    /// The settings.
    pub fn config(&self) -> &LocalConfig {
        &self.config
    }

    /// The connection info of a new launch: the previous one on restart (same ports and key),
    /// else fresh ports in the request's range and a fresh key.
    fn connection_for(
        &self,
        request: &LaunchRequest,
    ) -> Result<(ConnectionInfo, PortLease), Error> {
        if let Some(previous) = &request.previous {
            let lease = self.ports.reserve(&[
                previous.shell_port,
                previous.iopub_port,
                previous.stdin_port,
                previous.control_port,
                previous.hb_port,
            ]);
            let info = ConnectionInfo {
                kernel_name: request.spec.name.clone(),
                ..previous.clone()
            };
            return Ok((info, lease));
        }
        let lease = self
            .ports
            .allocate(request.port_range, &self.config.ip, 5)?;
        let [shell_port, iopub_port, stdin_port, control_port, hb_port] = lease.ports()[..] else {
            return Err(Error::Config(format!(
                "expected 5 ports, got {}",
                lease.ports().len()
            )));
        };
        let info = ConnectionInfo {
            transport: Transport::Tcp,
            ip: self.config.ip.clone(),
            shell_port,
            iopub_port,
            stdin_port,
            control_port,
            hb_port,
            key: uuid::Uuid::new_v4().simple().to_string(),
            signature_scheme: "hmac-sha256".to_owned(),
            kernel_name: request.spec.name.clone(),
        };
        Ok((info, lease))
    }
}

#[async_trait]
impl ResourceManager for LocalResourceManager {
    fn name(&self) -> &str {
        NAME
    }
    fn names(&self) -> crate::BackendNames {
        crate::BackendNames::built_in(NAME)
    }
    fn capabilities(&self) -> crate::Capabilities {
        crate::Capabilities {
            host: crate::KernelHost::Gateway,
            honours_run_as: true,
            uses_callback_listener: false,
        }
    }

    async fn launch(&self, request: LaunchRequest) -> Result<LaunchedKernel, Error> {
        let spec = &request.spec;
        if !is_safe_id(&request.kernel_id) {
            return Err(Error::Config(format!(
                "invalid kernel id '{}'",
                request.kernel_id
            )));
        }
        let Some(argv0) = spec.argv.first() else {
            return Err(Error::Spawn(format!(
                "kernelspec '{}' has an empty argv",
                spec.name
            )));
        };
        let program = resolve_program(spec, argv0, &request.env, &self.config.search_path)?;
        create_private_dir(&self.config.runtime_dir)?;
        create_private_dir(&self.config.log_dir)?;

        let (connection, ports) = self.connection_for(&request)?;
        let connection_file = self
            .config
            .runtime_dir
            .join(format!("kernel-{}.json", request.kernel_id));
        let log_path = self
            .config
            .log_dir
            .join(format!("kernel-{}.log", request.kernel_id));
        connection.write(&connection_file)?;

        let spawned = spawn(
            &request,
            &program,
            &connection_file,
            &log_path,
            !self.outlive,
            &self.config.search_path,
        );
        let child = match spawned {
            Ok(child) => child,
            Err(err) => {
                remove_quietly(&connection_file);
                return Err(err);
            }
        };
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw);
        let Some(pid) = pid else {
            remove_quietly(&connection_file);
            return Err(Error::Spawn(format!(
                "kernel '{}' started without a process id",
                spec.name
            )));
        };
        let interrupt_signal = interrupt_signal_of(spec);
        tracing::info!(
            kernel_id = %request.kernel_id,
            pid = pid.as_raw(),
            program = %program.display(),
            log = %log_path.display(),
            "local kernel started"
        );
        let exit = spawn_reaper(child, pid);
        let process = LocalKernelProcess {
            kernel_id: request.kernel_id.clone(),
            connection: connection.clone(),
            connection_file,
            log_path,
            start_time: start_time(pid),
            pid,
            pgid: pid,
            interrupt_signal,
            exit: Some(exit),
            finished: AtomicBool::new(false),
            detached: AtomicBool::new(false),
            _ports: Some(ports),
        };
        Ok(LaunchedKernel {
            connection,
            process: Box::new(process),
        })
    }

    async fn reattach(&self, record: &KernelRecord) -> Result<LaunchedKernel, Error> {
        let info = record.process_of(NAME, LocalRecord::from_json)?;
        let (pid, pgid) = (Pid::from_raw(info.pid), Pid::from_raw(info.pgid));
        if !is_alive(pid, pgid) {
            return Err(Error::NotRunning(format!(
                "kernel {} (pid {}) is no longer running",
                record.kernel_id, info.pid
            )));
        }
        // A pid the system gave to another process since is not the kernel.
        if info.start_time.is_some() && start_time(pid) != info.start_time {
            return Err(Error::NotRunning(format!(
                "kernel {} is no longer running (its pid {} belongs to a process started later)",
                record.kernel_id, info.pid
            )));
        }
        let process = LocalKernelProcess {
            kernel_id: record.kernel_id.clone(),
            connection: record.connection.clone(),
            connection_file: info.connection_file,
            log_path: info.log_path,
            start_time: info.start_time,
            pid,
            pgid,
            interrupt_signal: info.interrupt_signal,
            exit: None,
            finished: AtomicBool::new(false),
            detached: AtomicBool::new(false),
            _ports: None,
        };
        Ok(LaunchedKernel {
            connection: record.connection.clone(),
            process: Box::new(process),
        })
    }
}

/// One kernel process started (or re-attached) by the local backend.
///
/// See the [module docs](self) for what dropping it does.
#[derive(Debug)]
pub struct LocalKernelProcess {
    kernel_id: String,
    connection: ConnectionInfo,
    connection_file: PathBuf,
    log_path: PathBuf,
    /// When the process started (clock ticks since boot), so a re-attach recognises its pid.
    start_time: Option<u64>,
    pid: Pid,
    pgid: Pid,
    interrupt_signal: Signal,
    /// The reaper's exit report; `None` for a re-attached kernel, which is not our child.
    exit: Option<watch::Receiver<ProcessState>>,
    /// `terminate` completed: nothing left to kill on drop.
    finished: AtomicBool,
    /// The kernel must survive this handle.
    detached: AtomicBool,
    /// The kernel's ports, reserved until this handle goes away.
    _ports: Option<PortLease>,
}

impl LocalKernelProcess {
    /// The kernel's process id (also its process group id).
    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }
    /// The kernel's log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
    /// The kernel's connection file.
    pub fn connection_file(&self) -> &Path {
        &self.connection_file
    }

    /// The state without waiting.
    fn current(&self) -> ProcessState {
        match &self.exit {
            Some(exit) => *exit.borrow(),
            None if is_alive(self.pid, self.pgid) => ProcessState::Running,
            None => ProcessState::GONE,
        }
    }

    /// Waits for the end of the process.
    async fn wait_exit(&self) -> ProcessState {
        match &self.exit {
            Some(exit) => {
                let mut exit = exit.clone();
                loop {
                    let state = *exit.borrow_and_update();
                    if state != ProcessState::Running {
                        return state;
                    }
                    if exit.changed().await.is_err() {
                        // The reaper is gone without a report (its runtime shut down).
                        let state = *exit.borrow();
                        return if state == ProcessState::Running {
                            ProcessState::Unknown
                        } else {
                            state
                        };
                    }
                }
            }
            None => loop {
                let state = self.current();
                if state != ProcessState::Running {
                    // Not our child: make sure nothing of its group outlives it.
                    let _ = killpg(self.pgid, Signal::SIGKILL);
                    return state;
                }
                tokio::time::sleep(REATTACHED_POLL).await;
            },
        }
    }

    /// Whether the kernel may still be signalled through its process group.
    fn may_signal(&self) -> bool {
        match self.current() {
            ProcessState::Running => true,
            ProcessState::Exited { .. } => false,
            ProcessState::Unknown => is_alive(self.pid, self.pgid),
        }
    }

    fn not_running(&self) -> Error {
        Error::NotRunning(format!(
            "kernel {} (pid {}) is not running",
            self.kernel_id, self.pid
        ))
    }
}

#[async_trait]
impl KernelProcess for LocalKernelProcess {
    fn record(&self) -> KernelRecord {
        KernelRecord {
            resource_manager: NAME.to_owned(),
            kernel_id: self.kernel_id.clone(),
            connection: self.connection.clone(),
            process: serde_json::json!({
                "pid": self.pid.as_raw(),
                "pgid": self.pgid.as_raw(),
                "log_path": self.log_path,
                "connection_file": self.connection_file,
                "interrupt_signal": self.interrupt_signal.as_str(),
                "start_time": self.start_time,
            }),
        }
    }

    async fn poll(&self) -> ProcessState {
        self.current()
    }

    async fn wait(&self) -> ProcessState {
        self.wait_exit().await
    }

    async fn signal(&self, signum: i32) -> Result<(), Error> {
        if !self.may_signal() {
            return Err(self.not_running());
        }
        if signum == 0 {
            // A liveness probe targets the process itself.
            return kill(self.pid, None).map_err(|e| Error::Io(e.into()));
        }
        let signal = Signal::try_from(signum).map_err(|_| {
            Error::Unsupported(format!("{signum} is not a signal number on this system"))
        })?;
        match killpg(self.pgid, signal) {
            Ok(()) => Ok(()),
            Err(Errno::ESRCH) => Err(self.not_running()),
            Err(e) => Err(Error::Io(e.into())),
        }
    }

    async fn interrupt(&self) -> Result<(), Error> {
        self.signal(self.interrupt_signal as i32).await
    }

    async fn terminate(&self, grace: Duration) -> Result<ProcessState, Error> {
        let state = self.current();
        if let ProcessState::Exited { .. } = state {
            self.finished.store(true, Ordering::SeqCst);
            return Ok(state);
        }
        let _ = killpg(self.pgid, Signal::SIGTERM);
        let state = match tokio::time::timeout(grace, self.wait_exit()).await {
            Ok(state) => state,
            Err(_) => {
                tracing::info!(kernel_id = %self.kernel_id, "kernel did not stop on SIGTERM, killing it");
                let _ = killpg(self.pgid, Signal::SIGKILL);
                tokio::time::timeout(KILL_WAIT, self.wait_exit())
                    .await
                    .unwrap_or(ProcessState::Unknown)
            }
        };
        self.finished.store(true, Ordering::SeqCst);
        Ok(state)
    }

    /// The kernel's log goes with its connection file: a restart keeps both (the new process
    /// appends), a kernel that is gone leaves neither behind. A failed start has already put the
    /// log's tail into its error.
    async fn cleanup(&self, keep_connection_file: bool) {
        if !keep_connection_file {
            remove_quietly(&self.connection_file);
            remove_quietly(&self.log_path);
        }
    }

    fn log_tail(&self, max_lines: usize) -> String {
        read_tail(&self.log_path, max_lines).unwrap_or_default()
    }

    fn detach(&self) {
        self.detached.store(true, Ordering::SeqCst);
    }
}

impl Drop for LocalKernelProcess {
    fn drop(&mut self) {
        if self.finished.load(Ordering::SeqCst) || self.detached.load(Ordering::SeqCst) {
            return;
        }
        if self.current() == ProcessState::Running {
            tracing::warn!(kernel_id = %self.kernel_id, pid = self.pid.as_raw(), "kernel handle dropped while running: killing its process group");
            let _ = killpg(self.pgid, Signal::SIGKILL);
        }
    }
}

/// The `process` part of a local [`KernelRecord`].
#[derive(Debug)]
struct LocalRecord {
    pid: i32,
    pgid: i32,
    log_path: PathBuf,
    connection_file: PathBuf,
    interrupt_signal: Signal,
    start_time: Option<u64>,
}

impl LocalRecord {
    fn from_json(value: &serde_json::Value) -> Option<LocalRecord> {
        let int = |key: &str| {
            value
                .get(key)
                .and_then(serde_json::Value::as_i64)
                .and_then(|v| i32::try_from(v).ok())
                .filter(|v| *v > 0)
        };
        let path = |key: &str| {
            value
                .get(key)
                .and_then(serde_json::Value::as_str)
                .map(PathBuf::from)
        };
        let interrupt_signal = value
            .get("interrupt_signal")
            .and_then(serde_json::Value::as_str)
            .and_then(parse_signal_name)
            .unwrap_or(Signal::SIGINT);
        Some(LocalRecord {
            pid: int("pid")?,
            pgid: int("pgid")?,
            log_path: path("log_path")?,
            connection_file: path("connection_file")?,
            interrupt_signal,
            start_time: value.get("start_time").and_then(serde_json::Value::as_u64),
        })
    }
}

/// Starts the kernel process.
fn spawn(
    request: &LaunchRequest,
    program: &Path,
    connection_file: &Path,
    log_path: &Path,
    parent_pid: bool,
    search_path: &[PathBuf],
) -> Result<tokio::process::Child, Error> {
    let spec = &request.spec;
    let mut vars: BTreeMap<&str, String> = BTreeMap::new();
    let connection_path = connection_file
        .canonicalize()
        .unwrap_or_else(|_| connection_file.to_path_buf());
    vars.insert(
        "connection_file",
        connection_path.to_string_lossy().into_owned(),
    );
    vars.insert("kernel_id", request.kernel_id.clone());
    vars.insert(
        "resource_dir",
        spec.resource_dir.to_string_lossy().into_owned(),
    );
    vars.insert("port_range", request.port_range.to_template());
    if let Some(prefix) = spec.prefix() {
        vars.insert("prefix", prefix.to_string_lossy().into_owned());
    }
    let argv = template::substitute(&spec.argv, &vars);
    let (program, argv) = with_limits(&request.placement.limits, program, argv, search_path)?;

    if let Some(run_as) = &request.run_as {
        std::os::unix::fs::chown(connection_file, Some(run_as.uid), Some(run_as.gid))?;
    }
    spawn_logged(request, &program, &argv, log_path, "kernel", parent_pid)
}

/// The program and argv that start the kernel under `limits`: util-linux's `prlimit` (for the
/// memory and CPU-time rlimits) and `taskset` (for the CPU count) in front of the kernel's own
/// argv. Both set the limit on themselves and `exec` the rest, so the kernel's process (same pid)
/// carries the limits and nothing else does; the gateway needs no code between `fork` and `exec`.
/// Without limits, the kernel's program and argv unchanged.
fn with_limits(
    limits: &crate::ProcessLimits,
    program: &Path,
    argv: Vec<String>,
    search_path: &[PathBuf],
) -> Result<(PathBuf, Vec<String>), Error> {
    if limits.is_empty() {
        return Ok((program.to_path_buf(), argv));
    }
    let tool = |name: &str| -> Result<PathBuf, Error> {
        search_path
            .iter()
            .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")].iter())
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
            .ok_or_else(|| {
                Error::Spawn(format!(
                    "the kernel's profile sets resource limits, which need util-linux's {name}, \
                     not found in the gateway's search path"
                ))
            })
    };
    let mut prefix: Vec<String> = Vec::new();
    let mut first: Option<PathBuf> = None;
    if limits.memory_bytes.is_some() || limits.cpu_seconds.is_some() {
        let prlimit = tool("prlimit")?;
        prefix.push(prlimit.to_string_lossy().into_owned());
        if let Some(bytes) = limits.memory_bytes {
            prefix.push(format!("--as={bytes}"));
        }
        if let Some(secs) = limits.cpu_seconds {
            prefix.push(format!("--cpu={secs}"));
        }
        prefix.push("--".to_owned());
        first = Some(prlimit);
    }
    if let Some(cpus) = limits.cpus.filter(|n| *n > 0) {
        let taskset = tool("taskset")?;
        let last = cpus.saturating_sub(1);
        prefix.push(taskset.to_string_lossy().into_owned());
        prefix.push("--cpu-list".to_owned());
        prefix.push(format!("0-{last}"));
        first.get_or_insert(taskset);
    }
    let Some(first) = first else {
        return Ok((program.to_path_buf(), argv));
    };
    prefix.push(program.to_string_lossy().into_owned());
    prefix.extend(argv.into_iter().skip(1));
    Ok((first, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_put_prlimit_and_taskset_in_front_of_the_kernel() {
        let argv = vec!["python".to_owned(), "-f".to_owned(), "c.json".to_owned()];
        let program = Path::new("/venv/bin/python");
        let none = crate::ProcessLimits::default();
        let (p, a) = with_limits(&none, program, argv.clone(), &[]).expect("no limits");
        assert_eq!((p.as_path(), a.as_slice()), (program, argv.as_slice()));
        let limits = crate::ProcessLimits {
            memory_bytes: Some(1 << 30),
            cpu_seconds: Some(60),
            cpus: Some(2),
        };
        let (p, a) = with_limits(&limits, program, argv.clone(), &[]).expect("limits");
        assert!(p.ends_with("prlimit"), "{p:?}");
        let tail: Vec<&str> = a.iter().skip(1).map(String::as_str).collect();
        assert_eq!(tail[..3], ["--as=1073741824", "--cpu=60", "--"]);
        assert!(tail[3].ends_with("taskset"));
        assert_eq!(
            tail[4..],
            ["--cpu-list", "0-1", "/venv/bin/python", "-f", "c.json"]
        );
        let cpus_only = crate::ProcessLimits {
            cpus: Some(1),
            ..crate::ProcessLimits::default()
        };
        let (p, a) = with_limits(&cpus_only, program, argv, &[]).expect("cpus");
        assert!(p.ends_with("taskset"));
        assert_eq!(
            a[1..],
            ["--cpu-list", "0-0", "/venv/bin/python", "-f", "c.json"]
        );
    }

    #[test]
    fn record_round_trip() {
        let json = serde_json::json!({"pid": 42, "pgid": 42, "log_path": "/l", "connection_file": "/c", "interrupt_signal": "SIGUSR2"});
        let record = LocalRecord::from_json(&json);
        assert_eq!(
            record.as_ref().map(|r| (r.pid, r.interrupt_signal)),
            Some((42, Signal::SIGUSR2))
        );
        assert!(LocalRecord::from_json(&serde_json::json!({"pid": -1, "pgid": 1, "log_path": "/l", "connection_file": "/c"})).is_none());
        assert!(LocalRecord::from_json(&serde_json::json!({"pid": 1})).is_none());
    }

    #[tokio::test]
    async fn reattach_refuses_a_reused_pid() {
        let me = Pid::this();
        let group = nix::unistd::getpgrp();
        let started = start_time(me);
        assert!(started.is_some(), "/proc/self/stat has a start time");
        let backend = LocalResourceManager::new(LocalConfig {
            runtime_dir: PathBuf::from("/nonexistent"),
            log_dir: PathBuf::from("/nonexistent"),
            ip: "127.0.0.1".to_owned(),
            search_path: Vec::new(),
        });
        let record = |start: Option<u64>| KernelRecord {
            resource_manager: NAME.to_owned(),
            kernel_id: "k".to_owned(),
            connection: ConnectionInfo {
                transport: Transport::Tcp,
                ip: "127.0.0.1".to_owned(),
                shell_port: 1,
                iopub_port: 2,
                stdin_port: 3,
                control_port: 4,
                hb_port: 5,
                key: String::new(),
                signature_scheme: "hmac-sha256".to_owned(),
                kernel_name: String::new(),
            },
            process: serde_json::json!({"pid": me.as_raw(), "pgid": group.as_raw(),
                "log_path": "/l", "connection_file": "/c", "start_time": start}),
        };
        let reused = backend.reattach(&record(started.map(|t| t + 1))).await;
        assert!(
            matches!(&reused, Err(Error::NotRunning(why)) if why.contains("started later")),
            "{reused:?}"
        );
        let same = backend.reattach(&record(started)).await;
        assert!(same.is_ok(), "{same:?}");
        if let Ok(kernel) = same {
            // This test process must survive the handle.
            kernel.process.detach();
        }
    }
}
