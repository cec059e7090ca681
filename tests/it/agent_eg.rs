//! Our `kernel-launcher` agent behind Enterprise Gateway 3.3.0 itself: an EG operator can put the
//! agent in a kernelspec in place of EG's per-language launcher scripts.
//!
//! EG (`.venv-eg`) runs a `DistributedProcessProxy` kernelspec for 127.0.0.1, which EG launches
//! on this machine without SSH; its argv is the agent in front of ipykernel. EG hands launchers
//! a 1,024-bit RSA public key, so this also checks that the agent encrypts with a key of that
//! size. Jupyter Server's real gateway client then drives the kernel's whole life cycle
//! (`tests/fixtures/jupyter_server_driver.py`: execute, interrupt, restart, shutdown), and no
//! agent or kernel process of the test is left afterwards.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::jupyter_server::{JupyterServer, drive_life_cycle};
use crate::support::{Gateway, GatewayConfig, Impl, built_binary, venv};

#[tokio::test]
async fn e2e_agent_behind_enterprise_gateway() -> Result<()> {
    let started = Instant::now();
    let dir = tempfile::Builder::new().prefix("agent-eg-").tempdir()?;
    let share = dir.path().join("share");
    let spec_dir = share.join("kernels/python3");
    std::fs::create_dir_all(&spec_dir)?;
    let tmp = dir.path().join("tmp");
    std::fs::create_dir_all(&tmp)?;
    let agent = built_binary("kernel-launcher")?;
    let python = venv()?.join("bin/python");
    // A marker in the kernel's environment, so the processes of this test can be found.
    let marker = format!("agent-eg-{}", uuid::Uuid::new_v4().simple());
    let spec = serde_json::json!({
        "argv": [
            agent.display().to_string(),
            "--RemoteProcessProxy.kernel-id", "{kernel_id}",
            "--RemoteProcessProxy.response-address", "{response_address}",
            "--RemoteProcessProxy.public-key", "{public_key}",
            "--RemoteProcessProxy.port-range", "{port_range}",
            "--",
            python.display().to_string(), "-m", "ipykernel_launcher", "-f", "{agent_connection_file}",
        ],
        "display_name": "Python (kernel-launcher agent)",
        "language": "python",
        "metadata": {"process_proxy": {
            "class_name": "enterprise_gateway.services.processproxies.distributed.DistributedProcessProxy",
            "config": {"remote_hosts": "127.0.0.1"},
        }},
        "env": {"TMPDIR": tmp.display().to_string(), "AGENT_EG_MARKER": marker},
    });
    std::fs::write(spec_dir.join("kernel.json"), spec.to_string())?;

    let token = uuid::Uuid::new_v4().simple().to_string();
    let config = GatewayConfig {
        jupyter_path: vec![share.clone()],
        env: vec![("EG_AUTH_TOKEN".to_owned(), token.clone())],
        ..GatewayConfig::default()
    };
    let mut gateway = Gateway::start(Impl::EnterpriseGateway, &config)?;
    let mut server = JupyterServer::start(
        &gateway.url(),
        &[format!("--GatewayClient.auth_token={token}")],
        &[("KERNEL_USERNAME", "bob")],
        dir.path(),
    )?;

    // EG leaves an open WebSocket on the old ports of a restarted remote kernel.
    drive_life_cycle(
        &server,
        &gateway,
        dir.path(),
        &["--reconnect-after-restart"],
    )?;
    println!("passed after {:?}", started.elapsed());
    // EG's DistributedProcessProxy launched it (on this host, without SSH), not a local kernel.
    let log = gateway.proc.log_text();
    assert!(
        log.contains("Kernel launched on '127.0.0.1'"),
        "EG did not launch the kernel through its DistributedProcessProxy:\n{}",
        gateway.proc.log_tail(60)
    );

    // The agent and its kernel end with the kernel: nothing carries the marker any more.
    let gone = test_support::eventually(Duration::from_secs(20), || {
        processes_with(&marker).is_empty()
    })
    .await;
    assert!(
        gone,
        "processes of the kernel left 20 s after shutdown: {:?}",
        processes_with(&marker)
    );
    server.proc.mark_passed();
    gateway.proc.mark_passed();
    Ok(())
}

/// Pids whose environment holds `marker` (at the end of one of its variables).
fn processes_with(marker: &str) -> Vec<i32> {
    test_support::procfs::processes()
        .into_iter()
        .filter(|p| {
            p.environ()
                .is_some_and(|vars| vars.iter().any(|var| var.ends_with(marker)))
        })
        .map(|p| p.pid())
        .collect()
}
