//! Test fixtures: connection files with free ports, and a real ipykernel killed on drop.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use jupyter_protocol::{ConnectionInfo, SocketOptions, Transport};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Generous connect timeout: ipykernel takes a second or more to start on a busy 2-core host.
pub(crate) fn options() -> SocketOptions {
    SocketOptions {
        connect_timeout: Duration::from_secs(60),
        ..SocketOptions::default()
    }
}

/// Five ports that were free a moment ago.
pub(crate) fn free_ports() -> anyhow::Result<[u16; 5]> {
    let listeners = (0..5)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ports = [0u16; 5];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

/// Connection info on free loopback ports with a fresh key.
pub(crate) fn connection_info() -> anyhow::Result<ConnectionInfo> {
    let [shell, iopub, stdin, control, hb] = free_ports()?;
    Ok(ConnectionInfo {
        transport: Transport::Tcp,
        ip: "127.0.0.1".into(),
        shell_port: shell,
        iopub_port: iopub,
        stdin_port: stdin,
        control_port: control,
        hb_port: hb,
        key: uuid::Uuid::new_v4().to_string(),
        signature_scheme: "hmac-sha256".into(),
        kernel_name: "python3".into(),
    })
}

fn python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")
}

/// A real ipykernel in its own process group; the group is killed when this is dropped.
#[derive(Debug)]
pub(crate) struct IpyKernel {
    pub(crate) info: ConnectionInfo,
    pub(crate) connection_file: PathBuf,
    child: Child,
    dir: tempfile::TempDir,
}

impl IpyKernel {
    /// Writes a connection file and starts ipykernel on it.
    pub(crate) fn start() -> anyhow::Result<IpyKernel> {
        let dir = tempfile::tempdir()?;
        let info = connection_info()?;
        let connection_file = dir.path().join("kernel.json");
        info.write(&connection_file)?;
        let child = spawn(&connection_file, dir.path())?;
        Ok(IpyKernel {
            info,
            connection_file,
            child,
            dir,
        })
    }

    /// The kernel's process id (also its process group id).
    pub(crate) fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Kills the kernel and starts a new one on the same connection file (same ports and key).
    pub(crate) fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.child = spawn(&self.connection_file, self.dir.path())?;
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit; its exit status if it did.
    pub(crate) async fn wait_exit(
        &mut self,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    fn kill(&mut self) {
        let _ = killpg(self.pid(), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for IpyKernel {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(connection_file: &Path, dir: &Path) -> anyhow::Result<Child> {
    use std::os::unix::process::CommandExt;
    Command::new(python())
        .args(["-m", "ipykernel_launcher", "-f"])
        .arg(connection_file)
        // Own process group: ipykernel interrupts by signalling its group.
        .process_group(0)
        // Private IPython state, so parallel kernels do not share a history database.
        .env("IPYTHONDIR", dir.join("ipython"))
        .env("JUPYTER_RUNTIME_DIR", dir.join("runtime"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", python().display()))
}
