//! Shared machinery for the end-to-end tests: where things are (workspace, venvs, built
//! binaries), free ports, and process guards that start a gateway or any helper process in its
//! own process group, capture its output to a log file, wait for its "ready" line, and stop the
//! whole group when dropped.
//!
//! The gateway under test is ours by default; set `GATEWAY_UNDER_TEST=eg` to run the same tests
//! against Enterprise Gateway 3.3.0 from `.venv-eg` (used to validate the harness itself).

use std::ffi::OsString;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

/// The line both gateways print once they are listening.
pub(crate) const GATEWAY_READY: &str = "is available at http";

/// How long a gateway may take to print its ready line.
const GATEWAY_START_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Locations
// ---------------------------------------------------------------------------------------------

/// The workspace root (the parent of this crate's manifest directory).
pub(crate) fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The cargo profile directory holding the built binaries, derived from this test executable's
/// own path (`<target>/<profile>/deps/integration-<hash>` → `<target>/<profile>`), so a custom
/// `CARGO_TARGET_DIR` works.
pub(crate) fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    let deps = exe
        .parent()
        .context("test executable has no parent directory")?;
    let profile = deps
        .parent()
        .context("test executable's directory has no parent")?;
    Ok(profile.to_path_buf())
}

/// A binary built by `cargo build --workspace --bins`, with a hint when it is missing.
pub(crate) fn built_binary(name: &str) -> Result<PathBuf> {
    let path = profile_dir()?.join(name);
    if !path.exists() {
        bail!(
            "{} is missing; build the binaries first with `cargo build --workspace --bins` \
             (`cargo xtask ci` does)",
            path.display()
        );
    }
    Ok(path)
}

/// The test venv (`.venv`: ipykernel, Jupyter Server, websocket-client, requests).
pub(crate) fn venv() -> Result<PathBuf> {
    venv_named(".venv")
}

/// The Enterprise Gateway venv (`.venv-eg`: EG 3.3.0 and pytest).
pub(crate) fn venv_eg() -> Result<PathBuf> {
    venv_named(".venv-eg")
}

fn venv_named(name: &str) -> Result<PathBuf> {
    let dir = workspace_root().join(name);
    if !dir.join("bin/python").exists() {
        bail!(
            "{} has no bin/python; create it with `cargo xtask setup`",
            dir.display()
        );
    }
    Ok(dir)
}

/// `site-packages` of a venv (`lib/python3.X/site-packages`).
pub(crate) fn site_packages(venv: &Path) -> Result<PathBuf> {
    let lib = venv.join("lib");
    let entries = std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("python") {
            let candidate = entry.path().join("site-packages");
            if candidate.is_dir() {
                return Ok(candidate);
            }
        }
    }
    bail!("no lib/python*/site-packages under {}", venv.display())
}

/// A test fixture file under `tests/fixtures/`.
pub(crate) fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// `dirs` joined with `:` in front of the test process's own `PATH`.
pub(crate) fn path_with(dirs: &[&Path]) -> OsString {
    let mut joined = OsString::new();
    for dir in dirs {
        joined.push(dir.as_os_str());
        joined.push(":");
    }
    joined.push(std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin")));
    joined
}

/// A port that was free a moment ago: bind `127.0.0.1:0`, read the port, release it.
pub(crate) fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The machine's host name (what a local kernel's `hostname` prints).
pub(crate) fn hostname() -> Result<String> {
    let out = Command::new("hostname")
        .output()
        .context("running hostname")?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if name.is_empty() {
        bail!("hostname printed nothing");
    }
    Ok(name)
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

pub(crate) use test_support::proc::{Proc, run_bounded};

// ---------------------------------------------------------------------------------------------
// Gateways
// ---------------------------------------------------------------------------------------------

/// Which gateway implementation a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Impl {
    /// Our binary, `target/<profile>/enterprise-gateway`.
    Ours,
    /// Enterprise Gateway 3.3.0 from `.venv-eg` (to validate the harness and compare).
    EnterpriseGateway,
}

impl Impl {
    /// From `GATEWAY_UNDER_TEST` (`eg` or `ours`, default ours).
    pub(crate) fn from_env() -> Result<Impl> {
        match std::env::var("GATEWAY_UNDER_TEST").as_deref() {
            Err(_) | Ok("" | "ours" | "rust") => Ok(Impl::Ours),
            Ok("eg" | "enterprise-gateway" | "python") => Ok(Impl::EnterpriseGateway),
            Ok(other) => bail!("GATEWAY_UNDER_TEST must be `ours` or `eg`, got `{other}`"),
        }
    }
}

/// How to start a gateway: extra environment and arguments on top of the defaults.
#[derive(Debug, Default, Clone)]
pub(crate) struct GatewayConfig {
    /// `JUPYTER_PATH` entries (default: `<repo>/.venv/share/jupyter`).
    pub(crate) jupyter_path: Vec<PathBuf>,
    /// Extra environment variables (override the defaults).
    pub(crate) env: Vec<(String, String)>,
    /// Extra command-line arguments.
    pub(crate) args: Vec<String>,
}

/// A running gateway, stopped (its whole process group) on drop.
#[derive(Debug)]
pub(crate) struct Gateway {
    /// Which implementation this is.
    pub(crate) implementation: Impl,
    /// The HTTP port it listens on (127.0.0.1).
    pub(crate) port: u16,
    /// The process guard.
    pub(crate) proc: Proc,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts a gateway and waits (bounded) until it prints its ready line. A start that fails
    /// because a just-picked free port was taken in the meantime is retried with new ports.
    pub(crate) fn start(implementation: Impl, config: &GatewayConfig) -> Result<Gateway> {
        let mut last_err = None;
        for _ in 0..3 {
            match Gateway::start_once(implementation, config) {
                Ok(gw) => return Ok(gw),
                Err(err) => {
                    let text = format!("{err:#}");
                    let port_clash = text.contains("in use")
                        || text.contains("no available port")
                        || text.contains("EADDRINUSE");
                    if !port_clash {
                        return Err(err);
                    }
                    last_err = Some(err);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("gateway did not start")))
    }

    fn start_once(implementation: Impl, config: &GatewayConfig) -> Result<Gateway> {
        let dir = tempfile::Builder::new()
            .prefix("gateway-")
            .tempdir()
            .context("creating the gateway's temp dir")?;
        let port = free_port()?;
        let response_port = free_port()?;

        let mut cmd = match implementation {
            Impl::Ours => {
                let mut cmd = Command::new(built_binary("enterprise-gateway")?);
                cmd.args(["--ip", "127.0.0.1", "--port"])
                    .arg(port.to_string())
                    .arg("--port_retries=0");
                cmd
            }
            Impl::EnterpriseGateway => {
                let mut cmd = Command::new(venv_eg()?.join("bin/jupyter-enterprisegateway"));
                cmd.arg("--ip=127.0.0.1")
                    .arg(format!("--port={port}"))
                    .arg("--port_retries=0");
                cmd
            }
        };
        cmd.args(&config.args).current_dir(dir.path());
        clear_inherited_config(&mut cmd);

        let jupyter_path = if config.jupyter_path.is_empty() {
            vec![venv()?.join("share/jupyter")]
        } else {
            config.jupyter_path.clone()
        };
        let jupyter_path = std::env::join_paths(&jupyter_path).context("joining JUPYTER_PATH")?;
        // Kernelspec argv say `python`: resolve it to the test venv (ipykernel) first.
        let venv_bin = venv()?.join("bin");
        for sub in ["config", "data", "runtime"] {
            std::fs::create_dir_all(dir.path().join(sub))?;
        }
        cmd.env("JUPYTER_PATH", jupyter_path)
            .env("PATH", path_with(&[&venv_bin]))
            .env("JUPYTER_CONFIG_DIR", dir.path().join("config"))
            .env("JUPYTER_DATA_DIR", dir.path().join("data"))
            .env("JUPYTER_RUNTIME_DIR", dir.path().join("runtime"))
            .env("EG_LIST_KERNELS", "True")
            .env("EG_UNAUTHORIZED_USERS", "nobody")
            .env("EG_RESPONSE_IP", "127.0.0.1")
            .env("EG_RESPONSE_PORT", response_port.to_string())
            .env("EG_RESPONSE_PORT_RETRIES", "0")
            .env("PYTHONUNBUFFERED", "1");
        for (key, value) in &config.env {
            cmd.env(key, value);
        }

        let name = match implementation {
            Impl::Ours => "enterprise-gateway (ours)",
            Impl::EnterpriseGateway => "Enterprise Gateway 3.3.0",
        };
        let proc = Proc::spawn(
            name,
            cmd,
            &dir.path().join("gateway.log"),
            Some(GATEWAY_READY),
            GATEWAY_START_TIMEOUT,
        )?;
        Ok(Gateway {
            implementation,
            port,
            proc,
            _dir: dir,
        })
    }

    /// `host:port` (what EG's itests call `GATEWAY_HOST`).
    pub(crate) fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://host:port`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.host())
    }
}

/// Removes inherited variables that would reconfigure a gateway or Jupyter process behind the
/// test's back (`EG_*`, `KG_*`, `JUPYTER_*`), so every setting a test relies on is explicit.
pub(crate) fn clear_inherited_config(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("EG_") || k.starts_with("KG_") || k.starts_with("JUPYTER_") {
            cmd.env_remove(&key);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Minimal HTTP/1.1 client (the parsing is test-support's)
// ---------------------------------------------------------------------------------------------

/// A parsed HTTP response (status, lowercased headers, de-chunked body).
pub(crate) use test_support::http::Response as HttpResponse;

/// Sends one `GET path` with `Connection: close` and reads the whole response.
pub(crate) fn http_get(port: u16, path: &str) -> Result<HttpResponse> {
    http_request(port, "GET", path, &[], b"")
}

/// Sends one request to 127.0.0.1:`port` with `Connection: close`, the given extra headers and
/// body (with its `Content-Length`), and reads the whole response (bounded by 30 s of silence).
pub(crate) fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).context("connecting")?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\n\
         Connection: close\r\n"
    );
    if !body.is_empty() || !matches!(method, "GET" | "HEAD") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the response to {method} {path}"))?;
    test_support::http::parse_response(&raw).with_context(|| format!("{method} {path}"))
}
