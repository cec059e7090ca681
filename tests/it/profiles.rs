//! Kernel profiles through Jupyter Server 2's gateway client: a server with `KERNEL_PROFILE` in
//! its environment passes it in every start's `env`, and the gateway starts the kernel under
//! that profile (allowed), answers 400 for an unknown one and 403 for one the user may not use;
//! a SIGHUP reloads the profiles file without touching the running kernel.
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::jupyter_server::JupyterServer;
use crate::support::{Gateway, GatewayConfig, Impl, http_request};

const PROFILES: &str = r#"
[[profiles]]
name = "bobs"
description = "bob's own"
users = ["bob"]
kernelspecs = ["python3"]
env = { KERNEL_FLAVOUR = "bob" }
resources = { memory = "2G" }

[[profiles]]
name = "alices"
users = ["alice"]
"#;

/// Starts a kernel through a Jupyter Server whose environment has `KERNEL_PROFILE=profile`;
/// the server's status, body and log tail, and the server (its kernels go when it stops).
async fn start_through_server(
    gateway: &Gateway,
    token: &str,
    profile: &str,
    dir: &std::path::Path,
) -> Result<(u16, Value, String, JupyterServer)> {
    let mut server = JupyterServer::start(
        &gateway.url(),
        &[format!("--GatewayClient.auth_token={token}")],
        &[("KERNEL_USERNAME", "bob"), ("KERNEL_PROFILE", profile)],
        &dir.join(profile),
    )?;
    let auth = format!("token {}", server.token);
    // The server prints its address a moment before it accepts connections.
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", server.port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reply = http_request(
        server.port,
        "POST",
        "/api/kernels",
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ],
        br#"{"name": "python3"}"#,
    )?;
    let log = server.proc.log_tail(30);
    server.proc.mark_passed();
    Ok((reply.status, reply.json(), log, server))
}

#[tokio::test]
async fn e2e_profiles_through_jupyter_servers_gateway_client() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("profiles-").tempdir()?;
    let file = dir.path().join("profiles.toml");
    std::fs::write(&file, PROFILES)?;
    let token = uuid::Uuid::new_v4().simple().to_string();
    let config = GatewayConfig {
        env: vec![("EG_AUTH_TOKEN".to_owned(), token.clone())],
        args: vec![format!("--profiles_file={}", file.display())],
        ..GatewayConfig::default()
    };
    let mut gateway = Gateway::start(Impl::Ours, &config)?;
    let auth = format!("token {token}");
    let gateway_get = |path: &str| -> Result<Value> {
        Ok(http_request(
            gateway.port,
            "GET",
            path,
            &[("Authorization", auth.as_str())],
            b"",
        )?
        .json())
    };

    // Allowed: the kernel runs under bob's profile.
    let (status, kernel, log, bobs) =
        start_through_server(&gateway, &token, "bobs", dir.path()).await?;
    assert_eq!(status, 201, "{kernel}\n{log}");
    let id = kernel["id"].as_str().context("kernel id")?.to_owned();
    let model = gateway_get(&format!("/api/kernels/{id}"))?;
    assert_eq!(model["profile"], "bobs", "{model}");
    assert_eq!(model["owner"], "bob", "{model}");

    // Unknown and forbidden: the gateway's status comes through the server.
    let (status, body, log, _) = start_through_server(&gateway, &token, "nope", dir.path()).await?;
    assert_eq!(status, 400, "{body}\n{log}");
    assert!(
        body.to_string().contains("nope") || log.contains("nope"),
        "the unknown profile is named: {body}\n{log}"
    );
    let (status, body, log, _) =
        start_through_server(&gateway, &token, "alices", dir.path()).await?;
    assert_eq!(status, 403, "{body}\n{log}");

    // A reload adds a profile; the running kernel stays as it was.
    std::fs::write(
        &file,
        format!("{PROFILES}\n[[profiles]]\nname = \"later\"\n"),
    )?;
    gateway.proc.signal(nix::sys::signal::Signal::SIGHUP)?;
    let mut names = Vec::new();
    for _ in 0..50 {
        let listed = gateway_get("/api/profiles")?;
        names = listed
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if names.iter().any(|n| n == "later") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(names.iter().any(|n| n == "later"), "reloaded: {names:?}");
    let model = gateway_get(&format!("/api/kernels/{id}"))?;
    assert_eq!(model["profile"], "bobs", "kept across the reload: {model}");
    assert_eq!(model["execution_state"], "idle", "{model}");
    drop(bobs);
    gateway.proc.mark_passed();
    Ok(())
}
