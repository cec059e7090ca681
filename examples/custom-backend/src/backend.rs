//! The example's resource manager: each kernel is started through util-linux's `setsid`, so it
//! leads a session (and process group) of its own, detached from any terminal; it is signalled
//! through that group. Everything here uses the public API of `resource-managers`,
//! `kernel-launcher` and `jupyter-protocol` only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jupyter_protocol::{ConnectionInfo, Transport};
use kernel_launcher::{PortAllocator, PortLease, template};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use parking_lot::Mutex;
use resource_managers::{
    BackendNames, Capabilities, Error, KernelHost, KernelProcess, KernelRecord, LaunchRequest,
    LaunchedKernel, ProcessState, ResourceManager,
};
use tokio::sync::watch;

/// The backend's name in the registry.
pub(crate) const NAME: &str = "setsid";

/// The EG-style class name its kernelspecs use.
pub(crate) const CLASS_NAME: &str = "examples.SetsidProcessProxy";

/// Kernels run through `setsid`, connection files and logs in `runtime_dir`.
#[derive(Debug)]
pub(crate) struct SetsidBackend {
    runtime_dir: PathBuf,
    ports: PortAllocator,
    /// Process ids of every kernel started, so the example can check none is left.
    started: Arc<Mutex<Vec<i32>>>,
}

impl SetsidBackend {
    pub(crate) fn new(runtime_dir: PathBuf) -> SetsidBackend {
        SetsidBackend {
            runtime_dir,
            ports: PortAllocator::for_this_host(),
            started: Arc::default(),
        }
    }

    /// The process ids of the kernels started so far.
    pub(crate) fn started(&self) -> Arc<Mutex<Vec<i32>>> {
        Arc::clone(&self.started)
    }
}

#[async_trait]
impl ResourceManager for SetsidBackend {
    fn name(&self) -> &str {
        NAME
    }

    fn names(&self) -> BackendNames {
        BackendNames::new(&[CLASS_NAME], &[])
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            host: KernelHost::Gateway,
            honours_run_as: false,
            uses_callback_listener: false,
        }
    }

    async fn launch(&self, request: LaunchRequest) -> Result<LaunchedKernel, Error> {
        // A restart keeps the previous ports and key; a first start gets fresh ones.
        let (connection, lease) = match &request.previous {
            Some(previous) => {
                let lease = self.ports.reserve(&[
                    previous.shell_port,
                    previous.iopub_port,
                    previous.stdin_port,
                    previous.control_port,
                    previous.hb_port,
                ]);
                (previous.clone(), lease)
            }
            None => {
                let lease = self.ports.allocate(request.port_range, "127.0.0.1", 5)?;
                let [shell_port, iopub_port, stdin_port, control_port, hb_port] = lease.ports()[..]
                else {
                    return Err(Error::Config("expected five ports".into()));
                };
                let connection = ConnectionInfo {
                    transport: Transport::Tcp,
                    ip: "127.0.0.1".into(),
                    shell_port,
                    iopub_port,
                    stdin_port,
                    control_port,
                    hb_port,
                    key: uuid::Uuid::new_v4().simple().to_string(),
                    signature_scheme: "hmac-sha256".into(),
                    kernel_name: request.spec.name.clone(),
                };
                (connection, lease)
            }
        };
        std::fs::create_dir_all(&self.runtime_dir)?;
        let connection_file = self
            .runtime_dir
            .join(format!("kernel-{}.json", request.kernel_id));
        let log_path = self
            .runtime_dir
            .join(format!("kernel-{}.log", request.kernel_id));
        connection.write(&connection_file)?;

        let vars = BTreeMap::from([("connection_file", connection_file.display().to_string())]);
        let argv = template::substitute(&request.spec.argv, &vars);
        let log = std::fs::File::create(&log_path)?;
        let spawned = tokio::process::Command::new("setsid")
            .args(&argv)
            .env_clear()
            .envs(&request.env)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(false)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                remove(&[&connection_file, &log_path]);
                return Err(Error::Spawn(format!("cannot run setsid: {e}")));
            }
        };
        // Not a group leader when spawned, so setsid calls setsid(2) and execs the kernel in
        // the same process: the pid is the kernel's, and its own process group's id.
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .unwrap_or(0);
        self.started.lock().push(pid);
        let process = SetsidKernel {
            kernel_id: request.kernel_id,
            connection: connection.clone(),
            connection_file,
            log_path,
            pid: Pid::from_raw(pid),
            exit: reaper(child),
            _ports: lease,
        };
        Ok(LaunchedKernel {
            connection,
            process: Box::new(process),
        })
    }

    async fn reattach(&self, record: &KernelRecord) -> Result<LaunchedKernel, Error> {
        Err(Error::Unsupported(format!(
            "the setsid example cannot re-attach to kernel {}",
            record.kernel_id
        )))
    }
}

/// Waits for the kernel and publishes its end.
fn reaper(mut child: tokio::process::Child) -> watch::Receiver<ProcessState> {
    use std::os::unix::process::ExitStatusExt as _;
    let (tx, rx) = watch::channel(ProcessState::Running);
    tokio::spawn(async move {
        let state = match child.wait().await {
            Ok(status) => ProcessState::Exited {
                code: status.code(),
                signal: status.signal(),
            },
            Err(_) => ProcessState::Unknown,
        };
        let _ = tx.send(state);
    });
    rx
}

fn remove(paths: &[&Path]) {
    for path in paths {
        let _ = std::fs::remove_file(path);
    }
}

/// One kernel of the example backend.
#[derive(Debug)]
struct SetsidKernel {
    kernel_id: String,
    connection: ConnectionInfo,
    connection_file: PathBuf,
    log_path: PathBuf,
    pid: Pid,
    exit: watch::Receiver<ProcessState>,
    _ports: PortLease,
}

impl SetsidKernel {
    fn state(&self) -> ProcessState {
        *self.exit.borrow()
    }

    fn signal_group(&self, signal: Signal) -> Result<(), Error> {
        if self.state() != ProcessState::Running {
            return Err(Error::NotRunning(format!(
                "kernel {} is not running",
                self.kernel_id
            )));
        }
        killpg(self.pid, signal).map_err(|e| Error::Io(e.into()))
    }
}

#[async_trait]
impl KernelProcess for SetsidKernel {
    fn record(&self) -> KernelRecord {
        KernelRecord {
            resource_manager: NAME.into(),
            kernel_id: self.kernel_id.clone(),
            connection: self.connection.clone(),
            process: serde_json::json!({ "pid": self.pid.as_raw() }),
        }
    }

    async fn poll(&self) -> ProcessState {
        self.state()
    }

    async fn wait(&self) -> ProcessState {
        let mut exit = self.exit.clone();
        match exit.wait_for(|state| *state != ProcessState::Running).await {
            Ok(state) => *state,
            Err(_) => ProcessState::Unknown,
        }
    }

    async fn signal(&self, signum: i32) -> Result<(), Error> {
        let signal = Signal::try_from(signum)
            .map_err(|_| Error::Unsupported(format!("{signum} is not a signal")))?;
        self.signal_group(signal)
    }

    async fn interrupt(&self) -> Result<(), Error> {
        self.signal_group(Signal::SIGINT)
    }

    async fn terminate(&self, grace: Duration) -> Result<ProcessState, Error> {
        if self.state() == ProcessState::Running {
            let _ = killpg(self.pid, Signal::SIGTERM);
            if tokio::time::timeout(grace, self.wait()).await.is_err() {
                let _ = killpg(self.pid, Signal::SIGKILL);
                return Ok(tokio::time::timeout(Duration::from_secs(5), self.wait())
                    .await
                    .unwrap_or(ProcessState::Unknown));
            }
        }
        Ok(self.state())
    }

    async fn cleanup(&self, keep_connection_file: bool) {
        if !keep_connection_file {
            remove(&[&self.connection_file, &self.log_path]);
        }
    }

    fn log_tail(&self, max_lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(max_lines)..].join("\n")
    }
}

impl Drop for SetsidKernel {
    /// A kernel whose handle goes away unterminated goes with it.
    fn drop(&mut self) {
        if self.state() == ProcessState::Running {
            let _ = killpg(self.pid, Signal::SIGKILL);
        }
    }
}
