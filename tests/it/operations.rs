//! What operators run against the gateway: a real Prometheus (Debian's) scraping `/metrics`
//! while kernels start, fail, restart and run a cell; `/metrics` on its own port; `/readyz`
//! while Debian's PostgreSQL, the kernel store, goes away and comes back; the admin page
//! in real headless Chromium (Debian's chromium and chromedriver, driven by selenium from the
//! test venv). Screenshots of the admin page are kept under `target/test-artifacts/admin-page/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::support::{
    Gateway, GatewayConfig, Impl, Proc, clear_inherited_config, fixture, free_port, http_get,
    run_bounded, venv, workspace_root,
};

/// Kernelspecs beside the venv's python3: `broken` (its process exits at once, so its start
/// fails) and `k8s` (a backend this gateway does not run, listed as unavailable).
fn extra_kernelspecs(dir: &Path) -> Result<PathBuf> {
    let root = dir.join("share");
    let broken = root.join("kernels/broken");
    std::fs::create_dir_all(&broken)?;
    std::fs::write(
        broken.join("kernel.json"),
        r#"{"argv": ["/bin/false", "{connection_file}"], "display_name": "Broken", "language": "none"}"#,
    )?;
    let k8s = root.join("kernels/k8s");
    std::fs::create_dir_all(&k8s)?;
    std::fs::write(
        k8s.join("kernel.json"),
        r#"{"argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"], "display_name": "Python on Kubernetes", "language": "python",
            "metadata": {"process_proxy": {"class_name": "enterprise_gateway.services.processproxies.k8s.KubernetesProcessProxy"}}}"#,
    )?;
    Ok(root)
}

/// One request with `Connection: close`: the status and the body (the gateway's JSON answers
/// carry a `Content-Length`, so no chunked decoding is needed).
fn http(port: u16, method: &str, path: &str, body: &str) -> Result<(u16, Vec<u8>)> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    Ok((status, raw[split + 4..].to_vec()))
}

/// Waits (bounded) until `port` answers `path` with 200.
async fn wait_for_http(port: u16, path: &str, within: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if http_get(port, path).is_ok_and(|r| r.status == 200) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("nothing answered 200 on port {port} {path} within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn e2e_prometheus_scrapes_kernel_counts_from_the_gateway() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("prometheus-").tempdir()?;
    let token = uuid::Uuid::new_v4().simple().to_string();
    let config = GatewayConfig {
        jupyter_path: vec![
            venv()?.join("share/jupyter"),
            extra_kernelspecs(dir.path())?,
        ],
        env: vec![("EG_AUTH_TOKEN".to_owned(), token.clone())],
        ..GatewayConfig::default()
    };
    let mut gateway = Gateway::start(Impl::Ours, &config)?;

    // Prometheus scrapes the API port with the shared token, whose identity has the admin role
    // (EG's default for the shared token); `authorization.type` is the scheme it sends.
    let prometheus_port = free_port()?;
    let scrape = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
         scrape_configs:\n  - job_name: gateway\n    metrics_path: /metrics\n\
         \x20   authorization:\n      type: token\n      credentials: {token}\n\
         \x20   static_configs:\n      - targets: ['127.0.0.1:{}']\n",
        gateway.port
    );
    let config_file = dir.path().join("prometheus.yml");
    std::fs::write(&config_file, scrape)?;
    let mut cmd = Command::new("/usr/bin/prometheus");
    cmd.arg(format!("--config.file={}", config_file.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
        .current_dir(dir.path());
    let mut prometheus = Proc::spawn(
        "prometheus",
        cmd,
        &dir.path().join("prometheus.log"),
        Some("Server is ready to receive web requests"),
        Duration::from_secs(60),
    )?;

    let text_file = dir.path().join("metrics.txt");
    let mut driver = Command::new(venv()?.join("bin/python"));
    driver
        .arg(fixture("prometheus_driver.py"))
        .arg(gateway.url())
        .arg(&token)
        .arg(format!("http://127.0.0.1:{prometheus_port}"))
        .arg(&text_file)
        .env("PYTHONUNBUFFERED", "1");
    let (status, output) = run_bounded(
        "prometheus_driver.py",
        driver,
        &dir.path().join("driver.log"),
        Duration::from_secs(240),
    )?;
    println!("{output}");
    assert!(
        status.success(),
        "driver failed ({status}):\n{output}\n--- gateway log tail ---\n{}\n--- prometheus log tail ---\n{}",
        gateway.proc.log_tail(40),
        prometheus.log_tail(20)
    );

    // The Prometheus project's own linter on the same text. Its one complaint is about
    // jupyter_server's name for the kernel gauge, kept for dashboards that already use it.
    let text = std::fs::File::open(&text_file)?;
    let lint = Command::new("/usr/bin/promtool")
        .args(["check", "metrics"])
        .stdin(text)
        .output()
        .context("running promtool")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    let problems: Vec<&str> = said
        .lines()
        .filter(|line| !line.trim().is_empty())
        .filter(|line| {
            *line
                != r#"kernel_currently_running_total non-counter metrics should not have "_total" suffix"#
        })
        .collect();
    assert!(
        problems.is_empty() && lint.status.code().is_some(),
        "promtool check metrics: {said}"
    );

    // Without the token the API port's /metrics is refused.
    assert_eq!(http_get(gateway.port, "/metrics")?.status, 401);
    gateway.proc.mark_passed();
    prometheus.mark_passed();
    Ok(())
}

#[tokio::test]
async fn e2e_metrics_port_serves_metrics_without_a_token() -> Result<()> {
    let token = uuid::Uuid::new_v4().simple().to_string();
    let metrics_port = free_port()?;
    let config = GatewayConfig {
        env: vec![("EG_AUTH_TOKEN".to_owned(), token)],
        args: vec![format!("--metrics_port={metrics_port}")],
        ..GatewayConfig::default()
    };
    let mut gateway = Gateway::start(Impl::Ours, &config)?;
    wait_for_http(metrics_port, "/metrics", Duration::from_secs(10)).await?;
    let reply = http_get(metrics_port, "/metrics")?;
    let text = String::from_utf8(reply.body)?;
    assert!(
        text.contains("# TYPE eg_kernel_starts_total counter")
            || text.contains("# TYPE eg_websocket_connections gauge"),
        "{text}"
    );
    assert_eq!(http_get(metrics_port, "/api/kernels")?.status, 404);
    // The API port has no /metrics then, even for a valid token (it is not even asked for).
    assert_eq!(http_get(gateway.port, "/metrics")?.status, 401);
    // Liveness and readiness need no token; the default store (SQLite) is checked too.
    assert_eq!(http_get(gateway.port, "/healthz")?.status, 200);
    let ready = http_get(gateway.port, "/readyz")?;
    let body: serde_json::Value = serde_json::from_slice(&ready.body)?;
    assert_eq!(ready.status, 200, "{body}");
    let names: Vec<&str> = body["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "listener",
            "shutdown",
            "backends",
            "callback_listener",
            "store"
        ]
    );
    gateway.proc.mark_passed();
    Ok(())
}

#[test]
fn e2e_json_logs_are_one_object_per_line_with_kernel_fields() -> Result<()> {
    let config = GatewayConfig {
        args: vec!["--log_format=json".to_owned()],
        ..GatewayConfig::default()
    };
    let mut gateway = Gateway::start(Impl::Ours, &config)?;
    let (status, body) = http(
        gateway.port,
        "POST",
        "/api/kernels",
        r#"{"name": "python3", "env": {"KERNEL_USERNAME": "alice"}}"#,
    )?;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let kernel: serde_json::Value = serde_json::from_slice(&body)?;
    let id = kernel["id"].as_str().context("no kernel id")?.to_owned();
    let (status, _) = http(gateway.port, "DELETE", &format!("/api/kernels/{id}"), "")?;
    assert_eq!(status, 204);
    let log = gateway.proc.log_text();
    let mut with_kernel = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let object: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("a log line that is not one JSON object: {line}"))?;
        for field in ["timestamp", "level", "target"] {
            assert!(object.get(field).is_some(), "no {field}: {line}");
        }
        if object["kernel_id"] == id.as_str() {
            with_kernel += 1;
            if object["message"] == "starting kernel" {
                assert_eq!(object["user"], "alice", "{line}");
            }
        }
    }
    assert!(
        with_kernel >= 2,
        "no lines with kernel_id {id} as a field:\n{log}"
    );
    gateway.proc.mark_passed();
    Ok(())
}

/// `/readyz`'s status and the named check's verdict, polled until the status is `want`.
async fn readyz_becomes(port: u16, want: u16, check: &str) -> Result<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let reply = http_get(port, "/readyz")?;
        let body: serde_json::Value = serde_json::from_slice(&reply.body)?;
        if reply.status == want {
            let verdict = body["checks"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["name"] == check).cloned())
                .unwrap_or_default();
            return Ok(verdict);
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("/readyz stayed {}: {body}", reply.status);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn e2e_readyz_follows_the_postgres_store_down_and_back() -> Result<()> {
    let mut pg = crate::postgres::Postgres::start()?;
    let config = GatewayConfig {
        args: vec![format!("--store={}", pg.url())],
        ..GatewayConfig::default()
    };
    let mut gateway = Gateway::start(Impl::Ours, &config)?;
    let verdict = readyz_becomes(gateway.port, 200, "store").await?;
    assert_eq!(verdict["ok"], true, "{verdict}");
    pg.stop();
    let verdict = readyz_becomes(gateway.port, 503, "store").await?;
    assert_eq!(verdict["ok"], false, "{verdict}");
    assert!(
        verdict["reason"]
            .as_str()
            .is_some_and(|r| r.contains("kernel store")),
        "{verdict}"
    );
    // Liveness does not depend on the store.
    assert_eq!(http_get(gateway.port, "/healthz")?.status, 200);
    pg.resume()?;
    let verdict = readyz_becomes(gateway.port, 200, "store").await?;
    assert_eq!(verdict["ok"], true, "{verdict}");
    gateway.proc.mark_passed();
    pg.mark_passed();
    Ok(())
}

#[test]
fn e2e_admin_page_in_headless_chromium() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("admin-page-").tempdir()?;
    let tokens_file = dir.path().join("tokens.toml");
    let mut tokens = serde_json::Map::new();
    for user in ["ops", "alice", "bob"] {
        let token = crate::token_file::add(&tokens_file, user)?;
        tokens.insert(user.to_owned(), token.into());
    }
    let issuer = crate::oidc::Issuer::start()?;
    tokens.insert("carol".to_owned(), issuer.mint("carol", &[])?.into());
    let tokens_json = dir.path().join("tokens.json");
    std::fs::write(&tokens_json, serde_json::Value::Object(tokens).to_string())?;
    let config = GatewayConfig {
        jupyter_path: vec![
            venv()?.join("share/jupyter"),
            extra_kernelspecs(dir.path())?,
        ],
        args: vec![
            format!("--token_file={}", tokens_file.display()),
            format!("--oidc_issuer={}", issuer.url()),
            format!("--oidc_audience={}", crate::oidc::AUDIENCE),
            "--admin_users=ops,carol".to_owned(),
        ],
        ..GatewayConfig::default()
    };
    let mut gateway = Gateway::start(Impl::Ours, &config)?;
    let shots = workspace_root().join("target/test-artifacts/admin-page");
    let _ = std::fs::remove_dir_all(&shots);

    let mut driver = Command::new(venv()?.join("bin/python"));
    driver
        .arg(fixture("admin_page_driver.py"))
        .arg(gateway.url())
        .arg(&tokens_json)
        .arg(&shots)
        .env("PYTHONUNBUFFERED", "1")
        .env("HOME", dir.path());
    clear_inherited_config(&mut driver);
    let (status, output) = run_bounded(
        "admin_page_driver.py",
        driver,
        &dir.path().join("driver.log"),
        Duration::from_secs(240),
    )?;
    println!("{output}");
    assert!(
        status.success(),
        "driver failed ({status}):\n{output}\n--- gateway log tail ---\n{}",
        gateway.proc.log_tail(40)
    );
    for shot in [
        "01-admin-kernels",
        "04-admin-after-shutdown",
        "05-non-admin-403",
    ] {
        let file = shots.join(format!("{shot}.png"));
        let size = std::fs::metadata(&file)
            .with_context(|| format!("no screenshot {}", file.display()))?
            .len();
        assert!(size > 10_000, "{} is only {size} bytes", file.display());
    }
    gateway.proc.mark_passed();
    Ok(())
}
