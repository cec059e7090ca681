//! Measures kernel start latency: launch → connection info → first `kernel_info` reply, for the
//! local backend and for the `ssh` backend on localhost (gateway_provisioners' launcher, and the
//! `kernel-launcher` agent when its binary is given).
//!
//! `cargo run -p resource-managers --release --example launch_latency [RUNS] [KERNEL_LAUNCHER_BIN]`
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jupyter_protocol::{KernelClient, SocketOptions};
use kernel_launcher::{KernelSpec, ListenerOptions, PortRange, ResponseListener};
use resource_managers::local::{LocalConfig, LocalResourceManager};
use resource_managers::ssh::{SshConfig, SshResourceManager};
use resource_managers::{LaunchRequest, ResourceManager};

fn venv() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv")
}

fn request(spec: &KernelSpec) -> LaunchRequest {
    let kernel_id = uuid::Uuid::new_v4().to_string();
    LaunchRequest {
        env: BTreeMap::from([
            ("KERNEL_ID".to_owned(), kernel_id.clone()),
            ("KERNEL_USERNAME".to_owned(), "bench".to_owned()),
            (
                "PATH".to_owned(),
                format!("{}:/usr/bin:/bin", venv().join("bin").display()),
            ),
        ]),
        kernel_id,
        spec: spec.clone(),
        cwd: None,
        port_range: PortRange::ANY,
        timeout: Duration::from_secs(60),
        previous: None,
        username: "bench".to_owned(),
        run_as: None,
        placement: Default::default(),
    }
}

async fn measure(
    label: &str,
    backend: &dyn ResourceManager,
    spec: &KernelSpec,
    runs: usize,
) -> anyhow::Result<()> {
    let mut callback = Vec::new();
    let mut ready = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let kernel = backend.launch(request(spec)).await?;
        let launched = start.elapsed();
        let mut client =
            KernelClient::connect(&kernel.connection, &SocketOptions::default()).await?;
        client.kernel_info(Duration::from_secs(60)).await?;
        let answered = start.elapsed();
        callback.push(launched.as_secs_f64() * 1000.0);
        ready.push(answered.as_secs_f64() * 1000.0);
        let _ = client.shutdown(false, Duration::from_secs(5)).await;
        drop(client);
        kernel.process.terminate(Duration::from_secs(5)).await?;
        kernel.process.cleanup(false).await;
    }
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
        let median = v.get(v.len() / 2).copied().unwrap_or(0.0);
        format!("mean {mean:7.0} ms, median {median:7.0} ms")
    };
    println!(
        "{label:<34} launch returned: {} | kernel_info: {}",
        stats(&mut callback),
        stats(&mut ready)
    );
    Ok(())
}

fn write_spec(dir: &Path, name: &str, json: serde_json::Value) -> anyhow::Result<KernelSpec> {
    let spec_dir = dir.join(name);
    std::fs::create_dir_all(&spec_dir)?;
    std::fs::write(spec_dir.join("kernel.json"), json.to_string())?;
    Ok(KernelSpec::load(&spec_dir)?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(10);
    let agent = args.next().map(PathBuf::from);
    let work = tempfile::tempdir()?;

    let local = LocalResourceManager::new(LocalConfig {
        runtime_dir: work.path().join("runtime"),
        log_dir: work.path().join("logs"),
        ip: "127.0.0.1".to_owned(),
        search_path: vec![PathBuf::from("/usr/bin")],
    });
    let python3 = KernelSpec::load(&venv().join("share/jupyter/kernels/python3"))?;
    measure("local (ipykernel)", &local, &python3, runs).await?;

    let listener: Arc<ResponseListener> = ResponseListener::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        ListenerOptions::default(),
    )
    .await?;
    let mut config = SshConfig::new(listener, work.path().join("logs"));
    config.remote_hosts = vec!["localhost".to_owned()];
    config.launcher.search_path = vec![PathBuf::from("/usr/bin")];
    config.launcher.comm_timeout = Duration::from_secs(1);
    let ssh = SshResourceManager::new(config);
    let prefix = work.path().join("prefix");
    let status = std::process::Command::new(venv().join("bin/jupyter-ssh-spec"))
        .args(["install", "--prefix"])
        .arg(&prefix)
        .args(["--kernel-name", "ssh_python"])
        .output()?;
    anyhow::ensure!(status.status.success(), "jupyter-ssh-spec failed");
    let gp = KernelSpec::load(&prefix.join("share/jupyter/kernels/ssh_python"))?;
    measure("ssh/localhost (GP launcher)", &ssh, &gp, runs).await?;

    if let Some(agent) = agent {
        let python = venv().join("bin/python");
        let spec = write_spec(
            &work.path().join("kernels"),
            "agent_python",
            serde_json::json!({
                "argv": [agent, "--RemoteProcessProxy.kernel-id", "{kernel_id}",
                    "--RemoteProcessProxy.response-address", "{response_address}",
                    "--RemoteProcessProxy.public-key", "{public_key}",
                    "--RemoteProcessProxy.port-range", "{port_range}",
                    "--", python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "language": "python",
                "metadata": {"process_proxy": {"class_name":
                    "enterprise_gateway.services.processproxies.distributed.DistributedProcessProxy"}}
            }),
        )?;
        measure("ssh/localhost (kernel-launcher)", &ssh, &spec, runs).await?;
    }
    Ok(())
}
