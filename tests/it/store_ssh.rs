//! An SSH kernel outlives its gateway: a real OpenSSH server on 127.0.0.2 (resource-managers'
//! fixture) runs gateway_provisioners' `launch_ipykernel.py` under `nohup setsid`; the gateway is
//! killed with SIGKILL and started again on the same SQLite store; it re-attaches through the
//! launcher's communication port and the variable set before the crash is still there.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::Signal;

use crate::persistence::{Place, driver, listed};
use crate::support::{free_port, site_packages, venv};

#[path = "../../resource-managers/tests/it/sshd.rs"]
#[allow(
    dead_code,
    reason = "shared with resource-managers' tests; one host and its keys are enough here"
)]
pub(crate) mod sshd;

/// A distributed kernelspec for 127.0.0.2 running the GP launcher copied into `dir/scripts`;
/// returns the launcher's path.
fn ssh_kernelspec(dir: &Path) -> Result<String> {
    let launchers = site_packages(&venv()?)?.join("gateway_provisioners/kernel-launchers");
    let scripts = dir.join("scripts");
    std::fs::create_dir_all(&scripts)?;
    std::fs::copy(
        launchers.join("python/scripts/launch_ipykernel.py"),
        scripts.join("launch_ipykernel.py"),
    )?;
    std::fs::copy(
        launchers.join("shared/scripts/server_listener.py"),
        scripts.join("server_listener.py"),
    )?;
    let launcher = scripts.join("launch_ipykernel.py").display().to_string();
    let argv = serde_json::json!([
        venv()?.join("bin/python").display().to_string(),
        launcher,
        "--kernel-id",
        "{kernel_id}",
        "--port-range",
        "{port_range}",
        "--response-address",
        "{response_address}",
        "--public-key",
        "{public_key}",
        "--kernel-class-name",
        "ipykernel.ipkernel.IPythonKernel",
    ]);
    let spec_dir = dir.join("kernels/ssh_python");
    std::fs::create_dir_all(&spec_dir)?;
    let spec = serde_json::json!({
        "argv": argv,
        "display_name": "Python over SSH",
        "language": "python",
        "metadata": {"process_proxy": {
            "class_name": "enterprise_gateway.services.processproxies.distributed.DistributedProcessProxy",
            "config": {"remote_hosts": "127.0.0.2"},
        }},
        "env": {"TMPDIR": dir.join("tmp")},
    });
    std::fs::create_dir_all(dir.join("tmp"))?;
    std::fs::write(spec_dir.join("kernel.json"), spec.to_string())?;
    Ok(launcher)
}

#[tokio::test]
async fn e2e_ssh_kernel_reattached_after_kill_9() -> Result<()> {
    reattached_after_kill_9(true).await
}

/// The same host reached without SSH (`--ssh_local_hosts=false`: a host that is this machine is
/// launched directly): the launcher is as independent of the gateway as over SSH.
#[tokio::test]
async fn e2e_distributed_kernel_on_this_host_reattached_after_kill_9() -> Result<()> {
    reattached_after_kill_9(false).await
}

async fn reattached_after_kill_9(over_ssh: bool) -> Result<()> {
    let hosts = sshd::SshHosts::start(1)
        .await
        .context("starting sshd on 127.0.0.2")?;
    let dir = tempfile::Builder::new().prefix("store-ssh-").tempdir()?;
    let d = dir.path();
    let launcher = ssh_kernelspec(d)?;
    let _reaper = test_support::procfs::Reaper::new([launcher]);
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())?
        .map(|u| u.name)
        .context("this user has no name")?;
    let place = Place {
        port: free_port()?,
        dir: d.join("gateway"),
        args: vec![
            format!("--store={}", d.join("kernels.sqlite").display()),
            format!("--kernelspec_dirs={}", d.join("kernels").display()),
            format!("--ssh_port={}", hosts.port),
            format!("--remote_user={user}"),
            format!("--ssh_key_file={}", hosts.user_key().display()),
            format!("--ssh_known_hosts={}", hosts.known_hosts().display()),
            format!("--ssh_local_hosts={over_ssh}"),
        ],
    };
    std::fs::create_dir_all(&place.dir)?;
    let mut first = place.start("gateway-1", &[])?;
    let url = format!("http://127.0.0.1:{}", place.port);
    let posted = driver(d, &url, "-", &["post", "ssh_python"], "post.log")?;
    let id = posted
        .lines()
        .find_map(|l| l.strip_prefix("STATUS 201 "))
        .with_context(|| format!("starting the SSH kernel: {posted}\n{}", first.log_tail(30)))?
        .trim()
        .to_owned();
    let set = "import os; survivor = os.environ.get('SSH_CONNECTION', 'no ssh'); print(survivor)";
    let expected = if over_ssh { "127.0.0.2" } else { "no ssh" };
    let printed = driver(d, &url, "-", &["exec", &id, set, expected], "set.log")?;

    first.signal(Signal::SIGKILL)?;
    first
        .wait_exit(Duration::from_secs(10))
        .context("the gateway did not die")?;
    first.mark_passed();
    let mut second = place.start("gateway-2", &[])?;
    assert_eq!(listed(place.port)?, vec![id.clone()]);
    assert!(
        second.log_text().contains("re-attached kernel"),
        "{}",
        second.log_tail(30)
    );
    // The same session's variable: the kernel started over SSH before the crash.
    let connection = printed
        .lines()
        .find_map(|l| l.strip_prefix("OK: "))
        .context("no SSH_CONNECTION printed")?
        .to_owned();
    let read = driver(
        d,
        &url,
        "-",
        &["exec", &id, "print(survivor)", &connection],
        "read.log",
    )?;
    assert!(read.contains("OK:"), "{read}");
    second.stop(Duration::from_secs(30));
    second.mark_passed();
    Ok(())
}
