//! Smoke check of the workspace's test kernel (`tests/src/bin/test-kernel.rs`) through
//! [`KernelClient`]: kernel_info, every command, interrupts (control and SIGINT), shutdown, and a
//! restart on the same ports.
//!
//! ```text
//! cargo build -p tests --bin test-kernel
//! cargo run -p jupyter-protocol --example test_kernel_smoke -- target/debug/test-kernel
//! ```
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context, ensure};
use jupyter_protocol::{ConnectionInfo, KernelClient, SocketOptions, Transport};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const TIMEOUT: Duration = Duration::from_secs(30);

struct Kernel {
    child: Child,
}

impl Kernel {
    fn start(binary: &Path, connection_file: &Path) -> anyhow::Result<Kernel> {
        let child = Command::new(binary)
            .arg("-f")
            .arg(connection_file)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Kernel { child })
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    async fn wait(&mut self) -> anyhow::Result<Option<i32>> {
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        anyhow::bail!("kernel did not exit")
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let binary = PathBuf::from(
        std::env::args()
            .nth(1)
            .context("usage: test_kernel_smoke <test-kernel>")?,
    );
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("kernel.json");
    // Ports 0: the kernel picks free ports and writes them back.
    let info = ConnectionInfo {
        transport: Transport::Tcp,
        ip: "127.0.0.1".into(),
        shell_port: 0,
        iopub_port: 0,
        stdin_port: 0,
        control_port: 0,
        hb_port: 0,
        key: "smoke-key".into(),
        signature_scheme: "hmac-sha256".into(),
        kernel_name: "test".into(),
    };
    info.write(&file)?;
    let mut kernel = Kernel::start(&binary, &file)?;
    let opts = SocketOptions::default();
    let mut info = ConnectionInfo::read(&file)?;
    for _ in 0..100 {
        if info.shell_port != 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        info = ConnectionInfo::read(&file)?;
    }
    let started = tokio::time::Instant::now();
    let mut client = KernelClient::connect(&info, &opts).await?;
    let reply = client.kernel_info(TIMEOUT).await?;
    ensure!(reply.implementation == "test-kernel" && reply.protocol_version == "5.3");
    println!("ok kernel_info ({:?} after start)", started.elapsed());
    ensure!(client.is_alive(TIMEOUT).await);
    println!("ok heartbeat");

    let out = client
        .execute("echo hello world\n\necho again", TIMEOUT)
        .await?;
    ensure!(
        out.status == "ok" && out.stdout == "hello world\nagain\n",
        "{out:?}"
    );
    println!("ok echo");

    let out = client
        .execute("echo before\nerror\necho never", TIMEOUT)
        .await?;
    ensure!(out.status == "error" && out.stdout == "before\n", "{out:?}");
    ensure!(out.error.as_ref().map(|e| e.ename.as_str()) == Some("TestError"));
    println!("ok error");

    let out = client.execute("frobnicate", TIMEOUT).await?;
    ensure!(out.error.as_ref().map(|e| e.ename.as_str()) == Some("UnknownCommand"));
    println!("ok unknown command");

    let t = tokio::time::Instant::now();
    let out = client.execute("emit 10000", TIMEOUT).await?;
    let expected: String = (0..10_000).map(|i| format!("line {i}\n")).collect();
    ensure!(out.stdout == expected, "emit lost output");
    println!("ok emit 10000 ({:?})", t.elapsed());

    let t = tokio::time::Instant::now();
    let out = client.execute("display 8388608", TIMEOUT).await?;
    ensure!(out.results.len() == 1 && out.results[0].len() == 8 << 20);
    println!("ok display 8 MiB ({:?})", t.elapsed());

    // Interrupt over control from a second client while the first waits.
    let mut other = KernelClient::connect(&info, &opts).await?;
    let t = tokio::time::Instant::now();
    let (out, interrupted) = tokio::join!(client.execute("sleep 30\necho never", TIMEOUT), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        other.interrupt(TIMEOUT).await
    });
    interrupted?;
    let out = out?;
    ensure!(
        t.elapsed() < Duration::from_secs(5),
        "control interrupt took {:?}",
        t.elapsed()
    );
    ensure!(
        out.error.as_ref().map(|e| e.ename.as_str()) == Some("KeyboardInterrupt"),
        "{out:?}"
    );
    println!("ok interrupt_request ({:?})", t.elapsed());

    let pid = kernel.pid();
    let t = tokio::time::Instant::now();
    let (out, ()) = tokio::join!(client.execute("sleep 30", TIMEOUT), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = kill(pid, Signal::SIGINT);
    });
    let out = out?;
    ensure!(
        out.error.as_ref().map(|e| e.ename.as_str()) == Some("KeyboardInterrupt"),
        "{out:?}"
    );
    println!("ok SIGINT ({:?})", t.elapsed());
    // SIGINT while idle is ignored.
    kill(pid, Signal::SIGINT)?;
    ensure!(
        client
            .execute("sleep 0.1\necho alive", TIMEOUT)
            .await?
            .stdout
            == "alive\n"
    );
    println!("ok SIGINT while idle ignored");

    client.shutdown(false, TIMEOUT).await?;
    ensure!(kernel.wait().await? == Some(0));
    println!("ok shutdown");

    // Restart on the same ports: a new process, a new socket unit.
    drop(kernel);
    let mut kernel = Kernel::start(&binary, &file)?;
    let mut client = KernelClient::connect(&info, &opts).await?;
    ensure!(client.execute("echo reborn", TIMEOUT).await?.stdout == "reborn\n");
    println!("ok restart on the same ports");

    // `exit` ends the process with the given code (the reply never comes).
    let exited = client.execute("exit 7", Duration::from_secs(1)).await;
    ensure!(exited.is_err());
    ensure!(kernel.wait().await? == Some(7));
    println!("ok exit 7");
    Ok(())
}
