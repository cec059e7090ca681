//! Jupyter Server's real gateway client in front of the gateway under test.
//!
//! Jupyter Server (`.venv`) runs with `--gateway-url` pointing at the gateway; the driver fixture
//! `tests/fixtures/jupyter_server_driver.py` then uses Jupyter Server's own REST API and kernel
//! WebSocket for a whole kernel life cycle, so every request crosses the gateway client.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::support::{
    Gateway, GatewayConfig, Impl, Proc, clear_inherited_config, fixture, free_port, run_bounded,
    venv,
};

#[test]
fn e2e_jupyter_server_gateway_client() -> Result<()> {
    let started = Instant::now();
    // Enterprise Gateway's shared token, as existing deployments use it: the server names its
    // user with KERNEL_USERNAME and the gateway trusts it.
    let gateway_token = uuid::Uuid::new_v4().simple().to_string();
    let config = GatewayConfig {
        env: vec![("EG_AUTH_TOKEN".to_owned(), gateway_token.clone())],
        ..GatewayConfig::default()
    };
    let mut gateway = Gateway::start(Impl::from_env()?, &config)?;
    let dir = tempfile::Builder::new()
        .prefix("jupyter-server-")
        .tempdir()?;
    let mut server = JupyterServer::start(
        &gateway.url(),
        &[format!("--GatewayClient.auth_token={gateway_token}")],
        &[("KERNEL_USERNAME", "bob")],
        dir.path(),
    )?;

    drive_life_cycle(&server, &gateway, dir.path(), &[])?;
    println!(
        "passed after {:?} (gateway: {:?})",
        started.elapsed(),
        gateway.implementation
    );
    server.proc.mark_passed();
    gateway.proc.mark_passed();
    Ok(())
}

/// Runs `tests/fixtures/jupyter_server_driver.py` (with `extra` arguments) against `server`: one
/// kernel's whole life cycle through Jupyter Server's gateway client. Fails with the driver's
/// output and both servers' log tails unless every step passed.
pub(crate) fn drive_life_cycle(
    server: &JupyterServer,
    gateway: &Gateway,
    dir: &std::path::Path,
    extra: &[&str],
) -> Result<()> {
    let mut driver = Command::new(venv()?.join("bin/python"));
    driver
        .arg(fixture("jupyter_server_driver.py"))
        .arg(format!("http://127.0.0.1:{}", server.port))
        .arg(&server.token)
        .args(extra)
        .env("PYTHONUNBUFFERED", "1");
    let (status, output) = run_bounded(
        "jupyter_server_driver.py",
        driver,
        &dir.join("driver.log"),
        Duration::from_secs(150),
    )?;
    println!("{output}");
    anyhow::ensure!(
        status.success() && output.contains("OK: all steps passed"),
        "driver failed ({status}):\n{output}\n--- jupyter-server log tail ---\n{}\n--- gateway log tail ---\n{}",
        server.proc.log_tail(40),
        gateway.proc.log_tail(60)
    );
    Ok(())
}

/// A Jupyter Server (`.venv`) that is a gateway client, on a free loopback port, with its own
/// config, data and runtime directories under `dir`; stopped when dropped.
#[derive(Debug)]
pub(crate) struct JupyterServer {
    /// The process guard.
    pub(crate) proc: Proc,
    /// Its port on 127.0.0.1.
    pub(crate) port: u16,
    /// Its own API token (`--ServerApp.token`).
    pub(crate) token: String,
}

impl JupyterServer {
    /// Starts `jupyter-server --gateway-url=<gateway>` with `args` (e.g. the `GatewayClient`
    /// credentials) and `env` added; `KERNEL_USERNAME` is only set when `env` sets it.
    pub(crate) fn start(
        gateway: &str,
        args: &[String],
        env: &[(&str, &str)],
        dir: &std::path::Path,
    ) -> Result<JupyterServer> {
        let root_dir = dir.join("notebooks");
        for sub in ["notebooks", "config", "data", "runtime"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let token = uuid::Uuid::new_v4().simple().to_string();
        let port = free_port()?;
        let mut cmd = Command::new(venv()?.join("bin/jupyter-server"));
        cmd.arg(format!("--gateway-url={gateway}"))
            .args(args)
            .arg(format!("--ServerApp.token={token}"))
            .arg("--ip=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg("--port-retries=0")
            .arg(format!("--ServerApp.root_dir={}", root_dir.display()))
            .arg("--no-browser")
            .arg("--allow-root")
            .current_dir(dir);
        clear_inherited_config(&mut cmd);
        cmd.env_remove("KERNEL_USERNAME")
            .env("JUPYTER_CONFIG_DIR", dir.join("config"))
            .env("JUPYTER_DATA_DIR", dir.join("data"))
            .env("JUPYTER_RUNTIME_DIR", dir.join("runtime"))
            .env("JUPYTER_GATEWAY_REQUEST_TIMEOUT", "60")
            .env("PYTHONUNBUFFERED", "1");
        for (name, value) in env {
            cmd.env(name, value);
        }
        let proc = Proc::spawn(
            "jupyter-server",
            cmd,
            &dir.join("jupyter-server.log"),
            Some("is running at"),
            Duration::from_secs(60),
        )?;
        Ok(JupyterServer { proc, port, token })
    }
}
