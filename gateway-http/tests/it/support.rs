//! Shared test fixtures: gateway configurations, kernelspec directories, a request helper for the
//! router and a gateway served on a real loopback socket ([`Served`]).
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use gateway_http::{GatewayConfig, KernelManager};
use http::{HeaderMap, Method, Request, StatusCode};
use kernel_launcher::env::EnvPolicy;
use resource_managers::Registry;
use resource_managers::local::{LocalConfig, LocalResourceManager};
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::ServiceExt;

/// The repository's virtualenv (ipykernel is installed there).
pub(crate) fn venv() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv")
}

/// A configuration with EG's defaults, kernelspecs from `kernelspec_dirs`, everything under `root`.
pub(crate) fn config(kernelspec_dirs: Vec<PathBuf>, root: &Path) -> GatewayConfig {
    let venv_bin = venv().join("bin");
    let path = format!("{}:/usr/bin:/bin", venv_bin.display());
    let gateway_env: BTreeMap<String, String> = [
        ("PATH".to_owned(), path),
        ("HOME".to_owned(), root.display().to_string()),
    ]
    .into_iter()
    .collect();
    // Only what differs from the library's defaults: listing off, the venv on PATH, shorter
    // bounds, no pings, small buffers.
    GatewayConfig {
        list_kernels: false,
        env_policy: EnvPolicy {
            client_envs: Vec::new(),
            inherited_envs: vec!["PATH".to_owned(), "HOME".to_owned()],
            ..EnvPolicy::default()
        },
        gateway_env,
        gateway_user: "tester".to_owned(),
        kernelspec_dirs,
        root_dir: root.to_owned(),
        max_launch_timeout: Duration::from_secs(60),
        kernel_info_timeout: Duration::from_secs(30),
        ws_ping_interval: Duration::ZERO,
        ws_max_message_size: 10 * 1024 * 1024,
        buffer_max_messages: 1000,
        buffer_max_bytes: 10 * 1024 * 1024,
        buffer_ttl: Duration::from_secs(60),
        ..GatewayConfig::default()
    }
}

/// A PNG file's first bytes (the signature and an IHDR header): enough for a content check.
pub(crate) const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

/// Writes test kernelspecs under `<dir>/kernels`: `echo` (with a logo and kernel.js, an extra
/// `codemirror_mode` key and a kernelspec env) and `restricted` (only alice may use it).
pub(crate) fn write_kernelspecs(dir: &Path) -> anyhow::Result<PathBuf> {
    let kernels = dir.join("kernels");
    let echo = kernels.join("echo");
    std::fs::create_dir_all(&echo)?;
    std::fs::write(
        echo.join("kernel.json"),
        r#"{"argv": ["python", "-c", "pass", "{connection_file}"], "display_name": "Echo", "language": "python",
            "env": {"ECHO_VAR": "1"}, "codemirror_mode": "python", "interrupt_mode": "message",
            "metadata": {"process_proxy": {"class_name": "enterprise_gateway.services.processproxies.processproxy.LocalProcessProxy"}}}"#,
    )?;
    std::fs::write(echo.join("logo-64x64.png"), PNG)?;
    std::fs::write(
        echo.join("kernel.js"),
        "define([], function() { return {}; });",
    )?;
    let restricted = kernels.join("restricted");
    std::fs::create_dir_all(&restricted)?;
    std::fs::write(
        restricted.join("kernel.json"),
        r#"{"argv": ["python", "{connection_file}"], "display_name": "Restricted", "language": "python",
            "metadata": {"process_proxy": {"class_name": "enterprise_gateway.services.processproxies.processproxy.LocalProcessProxy",
                                           "config": {"authorized_users": "alice"}}}}"#,
    )?;
    // A file beside the kernelspec directories that traversal must not reach.
    std::fs::write(kernels.join("secret.txt"), "top secret")?;
    Ok(kernels)
}

/// A gateway over temporary kernelspecs (no backends: nothing can start).
#[derive(Debug)]
pub(crate) struct Gateway {
    /// The router under test.
    pub(crate) router: Router,
    /// Holds kernelspecs and the root dir.
    pub(crate) dir: TempDir,
}

impl Gateway {
    /// A gateway over the test kernelspecs, after `tweak` adjusted the configuration.
    pub(crate) fn new(tweak: impl FnOnce(&mut GatewayConfig)) -> anyhow::Result<Gateway> {
        let dir = tempfile::tempdir()?;
        let kernels = write_kernelspecs(dir.path())?;
        let mut config = config(vec![kernels], dir.path());
        tweak(&mut config);
        let manager = KernelManager::new(Arc::new(config), Registry::new());
        Ok(Gateway {
            router: gateway_http::router(manager),
            dir,
        })
    }

    /// A gateway that runs real ipykernels from the repository's virtualenv.
    pub(crate) fn with_ipykernel(
        tweak: impl FnOnce(&mut GatewayConfig),
    ) -> anyhow::Result<Gateway> {
        let (manager, dir) = ipykernel_manager(tweak)?;
        Ok(Gateway {
            router: gateway_http::router(manager),
            dir,
        })
    }

    /// Sends a request; status and body as JSON (`Value::Null` for an empty body, a string for non-JSON).
    pub(crate) async fn check(&self, request: Req) -> (StatusCode, Value) {
        let reply = self.send(request).await;
        (reply.status, reply.json())
    }

    /// Sends a request; the whole reply.
    pub(crate) async fn send(&self, request: Req) -> Reply {
        send(&self.router, request).await
    }
}

/// Sends a request through the whole HTTP application `router`; the whole reply.
pub(crate) async fn send(router: &Router, request: Req) -> Reply {
    let mut builder = Request::builder().method(request.method).uri(&request.uri);
    for (name, value) in &request.headers {
        builder = builder.header(*name, value.as_str());
    }
    let request = builder
        .body(Body::from(request.body))
        .unwrap_or_else(|e| panic!("bad test request: {e}"));
    let response = router
        .clone()
        .oneshot(request)
        .await
        .unwrap_or_else(|e| match e {});
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// A manager that runs real ipykernels from the repository's virtualenv (listing enabled), and
/// the temporary directory holding its kernelspecs, runtime files and root.
pub(crate) fn ipykernel_manager(
    tweak: impl FnOnce(&mut GatewayConfig),
) -> anyhow::Result<(Arc<KernelManager>, TempDir)> {
    let dir = tempfile::tempdir()?;
    let kernels = write_kernelspecs(dir.path())?;
    let mut config = config(
        vec![venv().join("share/jupyter/kernels"), kernels],
        dir.path(),
    );
    config.list_kernels = true;
    tweak(&mut config);
    let runtime_dir = dir.path().join("runtime");
    std::fs::create_dir_all(&runtime_dir)?;
    let mut registry = Registry::new();
    registry.register(Arc::new(LocalResourceManager::new(LocalConfig {
        log_dir: runtime_dir.clone(),
        runtime_dir,
        ip: "127.0.0.1".to_owned(),
        search_path: vec![venv().join("bin")],
    })));
    let manager = KernelManager::new(Arc::new(config), registry);
    Ok((manager, dir))
}

/// A test request.
#[derive(Debug, Clone)]
pub(crate) struct Req {
    /// Method.
    pub(crate) method: Method,
    /// Path and query.
    pub(crate) uri: String,
    /// Extra headers.
    pub(crate) headers: Vec<(&'static str, String)>,
    /// Body.
    pub(crate) body: String,
}

impl Req {
    /// A request without body.
    pub(crate) fn new(method: Method, uri: &str) -> Req {
        Req {
            method,
            uri: uri.to_owned(),
            headers: Vec::new(),
            body: String::new(),
        }
    }
    /// `GET uri`.
    pub(crate) fn get(uri: &str) -> Req {
        Req::new(Method::GET, uri)
    }
    /// `POST uri` with a body.
    pub(crate) fn post(uri: &str, body: &str) -> Req {
        Req::new(Method::POST, uri).body(body)
    }
    /// Adds a header.
    pub(crate) fn header(mut self, name: &'static str, value: &str) -> Req {
        self.headers.push((name, value.to_owned()));
        self
    }
    /// Sets the body.
    pub(crate) fn body(mut self, body: &str) -> Req {
        body.clone_into(&mut self.body);
        self
    }
}

/// A reply.
#[derive(Debug)]
pub(crate) struct Reply {
    /// Status.
    pub(crate) status: StatusCode,
    /// Headers.
    pub(crate) headers: HeaderMap,
    /// Body bytes.
    pub(crate) body: Vec<u8>,
}

impl Reply {
    /// The body as JSON: `Null` when empty, a string when it is not JSON.
    pub(crate) fn json(&self) -> Value {
        if self.body.is_empty() {
            return Value::Null;
        }
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.body).into_owned()))
    }
    /// A header as text.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Whether `actual` contains `expected`: objects key by key (recursively), anything else equal.
pub(crate) fn contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(actual), Value::Object(expected)) => expected
            .iter()
            .all(|(key, value)| actual.get(key).is_some_and(|a| contains(a, value))),
        _ => actual == expected,
    }
}

/// `gateway_http::serve` on a loopback port until [`Served::shutdown`]; aborted when dropped
/// first (a failing test).
pub(crate) struct Served {
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// The manager it serves, for checks behind the HTTP surface.
    pub(crate) manager: Arc<KernelManager>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    _dir: Option<TempDir>,
}

impl Served {
    /// Serves the test kernelspecs with no backends (nothing can start), after `tweak`.
    pub(crate) async fn start(tweak: impl FnOnce(&mut GatewayConfig)) -> anyhow::Result<Served> {
        let dir = tempfile::tempdir()?;
        let kernels = write_kernelspecs(dir.path())?;
        let mut config = config(vec![kernels], dir.path());
        tweak(&mut config);
        let manager = KernelManager::new(Arc::new(config), Registry::new());
        Served::with_manager(manager, Some(dir)).await
    }

    /// Serves `manager`; `dir` (its kernelspecs and root) lives as long as the server.
    pub(crate) async fn with_manager(
        manager: Arc<KernelManager>,
        dir: Option<TempDir>,
    ) -> anyhow::Result<Served> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway_http::serve(
            listener,
            Arc::clone(&manager),
            async move {
                let _ = stopped.await;
            },
        ));
        Ok(Served {
            addr,
            manager,
            stop: Some(stop),
            task,
            _dir: dir,
        })
    }

    /// Asks the server to stop and waits (at most 20 s) until it has.
    pub(crate) async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(20), &mut self.task)
            .await
            .map_err(|_| anyhow::anyhow!("serve did not stop"))???;
        Ok(())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}
