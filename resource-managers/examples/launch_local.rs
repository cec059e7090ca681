//! Launches a kernelspec locally, prints its connection info, then terminates it.
//!
//! `cargo run -p resource-managers --example launch_local [KERNELSPEC_DIR]`
//!
//! Without an argument it uses this workspace's `.venv/share/jupyter/kernels/python3`. The kernel
//! gets a minimal environment (no PATH), as it would from a gateway whose start request carried
//! an `env` object; its log goes to a temporary directory.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use kernel_launcher::{KernelSpec, PortRange};
use resource_managers::local::{LocalConfig, LocalResourceManager};
use resource_managers::{LaunchRequest, ResourceManager};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let spec_dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/share/jupyter/kernels/python3")
        });
    let spec = KernelSpec::load(&spec_dir)?;
    let work = tempfile::tempdir()?;
    let search_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let backend = LocalResourceManager::new(LocalConfig {
        runtime_dir: work.path().join("runtime"),
        log_dir: work.path().join("logs"),
        ip: "127.0.0.1".to_owned(),
        search_path,
    });
    let kernel_id = uuid::Uuid::new_v4().to_string();
    let env = BTreeMap::from([
        ("KERNEL_ID".to_owned(), kernel_id.clone()),
        ("KERNEL_USERNAME".to_owned(), "example".to_owned()),
        ("KERNEL_GATEWAY".to_owned(), "1".to_owned()),
    ]);
    let kernel = backend
        .launch(LaunchRequest {
            kernel_id,
            spec,
            env,
            cwd: None,
            port_range: PortRange::ANY,
            timeout: Duration::from_secs(30),
            previous: None,
            username: "example".to_owned(),
            run_as: None,
            placement: Default::default(),
        })
        .await?;
    println!(
        "connection info:\n{}",
        serde_json::to_string_pretty(&kernel.connection)?
    );
    println!(
        "record:\n{}",
        serde_json::to_string_pretty(&kernel.process.record())?
    );

    // Give the kernel a moment to start, then stop it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("state before terminate: {:?}", kernel.process.poll().await);
    let state = kernel.process.terminate(Duration::from_secs(5)).await?;
    println!("final state: {state:?}");
    println!("log tail:\n{}", kernel.process.log_tail(10));
    kernel.process.cleanup(false).await;
    Ok(())
}
