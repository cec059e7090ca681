//! Kernels outlive the gateway: a gateway with a SQLite kernel store is killed with SIGKILL and
//! started again on the same store and port; its kernels are re-attached, a Jupyter Server 2
//! client reads back a variable set before the crash, no kernel process was orphaned or
//! duplicated, and culling still works after the restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::jupyter_server::JupyterServer;
use crate::support::{
    GATEWAY_READY, Proc, built_binary, clear_inherited_config, fixture, free_port, http_get,
    path_with, run_bounded, venv,
};

/// A gateway of ours on a fixed port and data directory, so that a second one can be started
/// in the first one's place.
pub(crate) struct Place {
    /// The HTTP port.
    pub(crate) port: u16,
    /// Config, data and runtime directories live here.
    pub(crate) dir: PathBuf,
    /// Extra arguments of every start.
    pub(crate) args: Vec<String>,
}

impl Place {
    /// Starts a gateway here (`args` added to the place's own); `name` names its log file.
    pub(crate) fn start(&self, name: &str, args: &[&str]) -> Result<Proc> {
        let mut cmd = Command::new(built_binary("enterprise-gateway")?);
        cmd.args(["--ip", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--port_retries=0")
            .args(&self.args)
            .args(args)
            .current_dir(&self.dir);
        clear_inherited_config(&mut cmd);
        // Cargo's and nextest's test variables (`CARGO_BIN_EXE_<name-with-dashes>`) are no names
        // a remote kernel's environment may carry.
        for (key, _) in std::env::vars_os() {
            let name = key.to_string_lossy();
            if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                cmd.env_remove(&key);
            }
        }
        for sub in ["config", "data", "runtime"] {
            std::fs::create_dir_all(self.dir.join(sub))?;
        }
        let venv_bin = venv()?.join("bin");
        cmd.env("JUPYTER_PATH", venv()?.join("share/jupyter"))
            .env("PATH", path_with(&[&venv_bin]))
            .env("JUPYTER_CONFIG_DIR", self.dir.join("config"))
            .env("JUPYTER_DATA_DIR", self.dir.join("data"))
            .env("JUPYTER_RUNTIME_DIR", self.dir.join("runtime"))
            .env("EG_LIST_KERNELS", "True")
            .env("EG_UNAUTHORIZED_USERS", "nobody")
            .env("EG_RESPONSE_IP", "127.0.0.1")
            .env("EG_RESPONSE_PORT", free_port()?.to_string())
            .env("EG_RESPONSE_PORT_RETRIES", "0")
            .env("PYTHONUNBUFFERED", "1");
        Proc::spawn(
            name,
            cmd,
            &self.dir.join(format!("{name}.log")),
            Some(GATEWAY_READY),
            Duration::from_secs(60),
        )
    }
}

/// Kernel processes by kernel id: every process whose command line names the kernel's
/// connection file (`kernel-<id>.json`), found in /proc.
pub(crate) fn kernel_pids(ids: &[String]) -> BTreeMap<String, Vec<i32>> {
    let mut found: BTreeMap<String, Vec<i32>> =
        ids.iter().map(|id| (id.clone(), Vec::new())).collect();
    for p in test_support::procfs::processes() {
        let Some(cmdline) = p.command_line() else {
            continue;
        };
        if !p.is_running() {
            continue;
        }
        for id in ids {
            if cmdline.contains(&format!("kernel-{id}.json")) {
                found.entry(id.clone()).or_default().push(p.pid());
            }
        }
    }
    found
}

/// Kills what is left of the kernels when a test ends early (they are meant to outlive
/// gateways, so the gateway guards do not stop them).
pub(crate) struct KernelReaper(pub(crate) Vec<String>);

impl Drop for KernelReaper {
    fn drop(&mut self) {
        for pids in kernel_pids(&self.0).values() {
            for pid in pids {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
        }
    }
}

/// The ids in `GET /api/kernels`.
pub(crate) fn listed(port: u16) -> Result<Vec<String>> {
    let resp = http_get(port, "/api/kernels")?;
    if resp.status != 200 {
        bail!("GET /api/kernels answered {}", resp.status);
    }
    let kernels: Vec<serde_json::Value> = serde_json::from_slice(&resp.body)?;
    let mut ids: Vec<String> = kernels
        .iter()
        .filter_map(|k| k.get("id").and_then(|v| v.as_str()).map(str::to_owned))
        .collect();
    ids.sort();
    Ok(ids)
}

/// Runs `persistence_driver.py <command> <url> <token> <args>`; fails unless it exits 0.
pub(crate) fn driver(
    dir: &Path,
    url: &str,
    token: &str,
    args: &[&str],
    log: &str,
) -> Result<String> {
    let (command, rest) = args.split_first().context("no driver command")?;
    let mut cmd = Command::new(venv()?.join("bin/python"));
    cmd.arg(fixture("persistence_driver.py"))
        .arg(command)
        .arg(url)
        .arg(token)
        .args(rest)
        .env("PYTHONUNBUFFERED", "1");
    let (status, output) = run_bounded(log, cmd, &dir.join(log), Duration::from_secs(150))?;
    println!("{output}");
    if !status.success() {
        bail!("{log} failed ({status}):\n{output}");
    }
    Ok(output)
}

/// The ids a driver `start` printed.
pub(crate) fn started_ids(output: &str) -> Result<Vec<String>> {
    Ok(output
        .lines()
        .find_map(|l| l.strip_prefix("KERNELS "))
        .context("the driver printed no kernel ids")?
        .split_whitespace()
        .map(str::to_owned)
        .collect())
}

#[tokio::test]
async fn e2e_kernels_survive_kill_9_of_the_gateway_sqlite() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("persistence-").tempdir()?;
    let store = dir.path().join("data/kernels.sqlite");
    let place = Place {
        port: free_port()?,
        dir: dir.path().to_path_buf(),
        args: vec![format!("--store={}", store.display())],
    };
    let mut first = place.start("gateway-1", &[])?;
    let gateway_url = format!("http://127.0.0.1:{}", place.port);
    let server_dir = dir.path().join("jupyter-server");
    let mut server = JupyterServer::start(
        &gateway_url,
        &[],
        &[("KERNEL_USERNAME", "bob")],
        &server_dir,
    )?;

    let server_url = format!("http://127.0.0.1:{}", server.port);
    let output = driver(
        dir.path(),
        &server_url,
        &server.token,
        &["start", "2"],
        "driver-start.log",
    )?;
    let mut ids = started_ids(&output)?;
    // The variable was set in the first kernel the driver started.
    let first_id = ids.first().context("no kernel started")?.clone();
    let _reaper = KernelReaper(ids.clone());
    let before = kernel_pids(&ids);
    assert!(
        before.values().all(|p| p.len() == 1),
        "one process per kernel: {before:?}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&store)?.permissions());
    assert_eq!(mode & 0o777, 0o600, "the store holds the kernels' keys");

    first.signal(Signal::SIGKILL)?;
    first
        .wait_exit(Duration::from_secs(10))
        .context("the gateway did not die")?;
    first.mark_passed();
    assert_eq!(
        kernel_pids(&ids),
        before,
        "the kernels outlive a SIGKILLed gateway"
    );

    let mut second = place.start("gateway-2", &[])?;
    ids.sort();
    assert_eq!(
        listed(place.port)?,
        ids,
        "the restarted gateway lists the same kernels"
    );
    let mut check = vec!["check", first_id.as_str()];
    check.extend(ids.iter().filter(|id| **id != first_id).map(String::as_str));
    let checked = driver(
        dir.path(),
        &server_url,
        &server.token,
        &check,
        "driver-check.log",
    )?;
    assert!(checked.contains("OK: state survived"), "{checked}");
    assert_eq!(
        kernel_pids(&ids),
        before,
        "re-attached, not relaunched: the same processes, none duplicated"
    );
    let log = second.log_text();
    assert!(log.contains("re-attached kernel"), "{log}");

    // Culling after a restart: the next gateway culls from the stored last activity.
    second.signal(Signal::SIGKILL)?;
    second
        .wait_exit(Duration::from_secs(10))
        .context("the gateway did not die")?;
    second.mark_passed();
    let mut third = place.start("gateway-3", &["--cull_idle_timeout=3", "--cull_interval=1"])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !listed(place.port)?.is_empty() || kernel_pids(&ids).values().any(|p| !p.is_empty()) {
        if Instant::now() > deadline {
            bail!(
                "the re-attached kernels were not culled: listed {:?}, processes {:?}\n{}",
                listed(place.port)?,
                kernel_pids(&ids),
                third.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(third.log_text().contains("culling kernel"));
    third.stop(Duration::from_secs(10));
    third.mark_passed();
    // Culled kernels are forgotten: a fourth gateway finds nothing to re-attach.
    let mut fourth = place.start("gateway-4", &[])?;
    assert!(listed(place.port)?.is_empty());
    fourth.mark_passed();
    server.proc.mark_passed();
    Ok(())
}
