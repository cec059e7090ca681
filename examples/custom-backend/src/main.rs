//! A resource manager written outside the product crates, running a real ipykernel through the
//! embedded gateway.
//!
//! [`backend::SetsidBackend`] implements `ResourceManager` and `KernelProcess` with nothing but
//! the public API: each kernel runs through util-linux's `setsid` in a session of its own. The
//! demo registers it (its kernelspec names it by the class `examples.SetsidProcessProxy`),
//! serves `gateway_http::serve` on a bound loopback listener, and drives one kernel over HTTP
//! and the channels WebSocket: start, execute, interrupt, shut down; then checks that no kernel
//! process and no file is left and stops the server.
//!
//! ```text
//! cargo run -p custom-backend -- [path/to/python-with-ipykernel]
//! ```
//!
//! Without an argument the workspace's `.venv/bin/python` is used (`cargo xtask setup`).

mod backend;
mod client;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use gateway_http::{GatewayConfig, KernelManager};
use resource_managers::Registry;
use serde_json::json;

use crate::backend::SetsidBackend;
use crate::client::{Channels, http};

/// The example's kernelspec.
const SPEC: &str = "setsid-python";

#[tokio::main]
async fn main() -> Result<()> {
    let python = match std::env::args_os().nth(1) {
        Some(path) => PathBuf::from(path),
        None => default_python(),
    };
    let report = demo(&python).await?;
    println!("{report}");
    Ok(())
}

/// The workspace's venv Python.
fn default_python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python")
}

/// Runs the whole demo with `python` (which must have ipykernel); returns what happened.
async fn demo(python: &Path) -> Result<String> {
    ensure!(
        python.exists(),
        "{} not found: pass a Python with ipykernel, or run `cargo xtask setup`",
        python.display()
    );
    let dir = tempfile::Builder::new()
        .prefix("custom-backend-")
        .tempdir()?;
    let kernels = dir.path().join("kernels");
    let runtime = dir.path().join("runtime");
    write_kernelspec(&kernels, python)?;

    let backend = SetsidBackend::new(runtime.clone());
    let started = backend.started();
    let mut registry = Registry::new();
    registry.register(Arc::new(backend));
    let config = GatewayConfig {
        kernelspec_dirs: vec![kernels],
        root_dir: dir.path().to_path_buf(),
        default_kernel_name: SPEC.to_owned(),
        gateway_user: "example".to_owned(),
        ..GatewayConfig::default()
    };
    let manager = KernelManager::new(Arc::new(config), registry);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(gateway_http::serve(listener, manager, async {
        let _ = stopped.await;
    }));

    let steps = drive(&addr).await;
    let _ = stop.send(());
    server.await??;
    let steps = steps?;
    nothing_left(&started, &runtime).await?;
    Ok(format!(
        "{steps}\nno kernel process or file left; server stopped"
    ))
}

/// Start, execute, interrupt, shut down, through the gateway's REST API and WebSocket.
async fn drive(addr: &str) -> Result<String> {
    let mut out = Vec::new();
    let (status, model) = http(addr, "POST", "/api/kernels", Some(json!({"name": SPEC}))).await?;
    ensure!(status == 201, "start answered {status}: {model}");
    let id = model["id"].as_str().context("no kernel id")?.to_owned();
    out.push(format!("started kernel {id} through the setsid backend"));

    let mut channels = Channels::open(addr, &id).await?;
    let info = channels.kernel_info().await?;
    out.push(format!("kernel_info: {}", info["implementation"]));
    let outcome = channels.execute("print(6 * 7)").await?;
    ensure!(
        outcome.error.is_none() && outcome.text.trim() == "42",
        "print(6 * 7) gave {outcome:?}"
    );
    out.push("executed print(6 * 7) -> 42".to_owned());

    let since = Instant::now();
    let msg_id = channels
        .execute_start("import time; time.sleep(30)")
        .await?;
    channels.wait_busy(&msg_id).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = http(addr, "POST", &format!("/api/kernels/{id}/interrupt"), None).await?;
    ensure!(status == 204, "interrupt answered {status}: {body}");
    let outcome = channels.collect(&msg_id).await?;
    ensure!(
        outcome.error.as_deref() == Some("KeyboardInterrupt"),
        "the interrupted cell gave {outcome:?}"
    );
    out.push(format!(
        "interrupted a sleeping cell after {:.1?}: KeyboardInterrupt",
        since.elapsed()
    ));
    channels.close().await;

    let (status, body) = http(addr, "DELETE", &format!("/api/kernels/{id}"), None).await?;
    ensure!(status == 204, "shutdown answered {status}: {body}");
    let (_, list) = http(addr, "GET", "/api/kernels", None).await?;
    ensure!(list == json!([]), "kernels still listed: {list}");
    out.push("shut down".to_owned());
    Ok(out.join("\n"))
}

/// Every kernel process started is gone and the runtime directory is empty (waits up to 5 s).
async fn nothing_left(started: &parking_lot::Mutex<Vec<i32>>, runtime: &Path) -> Result<()> {
    let pids = started.lock().clone();
    ensure!(!pids.is_empty(), "no kernel was started");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let alive: Vec<i32> = pids
            .iter()
            .copied()
            .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
            .collect();
        let files: Vec<_> = std::fs::read_dir(runtime)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        if alive.is_empty() && files.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("left behind: processes {alive:?}, files {files:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn write_kernelspec(kernels: &Path, python: &Path) -> Result<()> {
    let spec = kernels.join(SPEC);
    std::fs::create_dir_all(&spec)?;
    let kernel = json!({
        "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python (setsid example)",
        "language": "python",
        "metadata": {"process_proxy": {"class_name": backend::CLASS_NAME}},
    });
    std::fs::write(
        spec.join("kernel.json"),
        serde_json::to_vec_pretty(&kernel)?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The demo end to end, as `cargo run` does it (an `e2e` test: it starts a real kernel).
    #[tokio::test]
    async fn e2e_custom_backend_serves_an_ipykernel() {
        let report = super::demo(&super::default_python())
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        println!("{report}");
        assert!(report.contains("KeyboardInterrupt"), "{report}");
    }
}
