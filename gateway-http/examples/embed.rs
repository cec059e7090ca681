//! Embeds the gateway in another program: a local backend, the EG API on 127.0.0.1:8888,
//! kernelspecs from a directory given on the command line, until Ctrl-C.
//!
//! ```sh
//! cargo run -p gateway-http --example embed -- .venv/share/jupyter/kernels
//! curl http://127.0.0.1:8888/api/kernelspecs
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use gateway_http::{GatewayConfig, KernelManager};
use resource_managers::Registry;
use resource_managers::local::{LocalConfig, LocalResourceManager};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let kernels = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".venv/share/jupyter/kernels"));
    let runtime = tempfile::tempdir()?;

    // Where kernels run: one local backend; another program could register its own here.
    let mut registry = Registry::new();
    registry.register(Arc::new(LocalResourceManager::new(LocalConfig {
        runtime_dir: runtime.path().to_path_buf(),
        log_dir: runtime.path().to_path_buf(),
        ip: "127.0.0.1".to_owned(),
        search_path: std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect(),
    })));

    // EG's defaults, with this program's choices on top.
    let config = GatewayConfig {
        kernelspec_dirs: vec![kernels],
        list_kernels: true,
        unauthorized_users: Vec::new(),
        gateway_user: "embedder".to_owned(),
        root_dir: std::env::current_dir()?,
        ..GatewayConfig::default()
    };
    let manager = KernelManager::new(Arc::new(config), registry);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:8888").await?;
    println!(
        "serving the Enterprise Gateway API on http://{}",
        listener.local_addr()?
    );
    gateway_http::serve(listener, manager, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
