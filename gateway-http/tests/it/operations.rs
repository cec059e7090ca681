//! The operator's routes through the router: `/metrics` behind the admin role (or elsewhere),
//! `/healthz`, `/readyz` with a real launcher callback listener going away and coming back, the
//! admin page and its data route, and the OpenAPI document: every documented method exists,
//! every other one is 405, and the document passes a real OpenAPI validator.
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use gateway_http::api::health::CallbackListenerCheck;
use gateway_http::auth::{Authenticator, Credentials, Identity, Outcome, Rejection, Roles};
use gateway_http::config::MetricsAccess;
use gateway_http::{Authenticators, GatewayConfig};
use http::{Method, StatusCode};
use kernel_launcher::response::{ListenerOptions, ResponseListener};
use serde_json::Value;

use crate::support::{Gateway, Req};

/// `Authorization: token <user>` names the user; `ops` is an admin by the chain's grant.
#[derive(Debug)]
struct Users;

#[async_trait::async_trait]
impl Authenticator for Users {
    fn name(&self) -> &'static str {
        "users"
    }

    async fn authenticate(&self, credentials: &Credentials<'_>) -> Outcome {
        match credentials.token() {
            None => Outcome::Skip,
            Some(user @ ("alice" | "ops")) => Outcome::Accept(Identity {
                user: user.to_owned(),
                groups: Vec::new(),
                roles: Roles::default(),
                method: "users",
            }),
            Some(_) => Outcome::Reject(Rejection::new("unknown user")),
        }
    }
}

fn users(config: &mut GatewayConfig) {
    let mut auth = Authenticators::new(vec![Arc::new(Users)]);
    auth.admin_users = vec!["ops".to_owned()];
    config.auth = auth;
}

fn as_user(user: &str, request: Req) -> Req {
    request.header("authorization", &format!("token {user}"))
}

#[tokio::test]
async fn metrics_health_and_the_admin_routes_answer_admins_only() -> anyhow::Result<()> {
    gateway_http::metrics::install()?;
    let gateway = Gateway::new(users)?;

    let (status, body) = gateway.check(Req::get("/healthz")).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    // No resource manager is registered in this gateway: not ready, and the body says why.
    let (status, body) = gateway.check(Req::get("/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["ready"], false);
    let failed: Vec<&str> = body["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["ok"] == false)
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(failed, ["backends"], "{body}");

    assert_eq!(
        gateway.check(Req::get("/metrics")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        gateway
            .check(as_user("alice", Req::get("/metrics")))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let reply = gateway.send(as_user("ops", Req::get("/metrics"))).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.headers["content-type"],
        gateway_http::metrics::CONTENT_TYPE
    );
    let text = String::from_utf8(reply.body)?;
    // Requests are labelled by route template, and nothing names a user.
    assert!(
        text.contains(r#"http_request_duration_seconds_count{method="GET",handler="/healthz",status_code="200"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"handler="/metrics",status_code="403""#),
        "{text}"
    );
    assert!(
        !text.contains("alice") && !text.contains("\"ops\""),
        "{text}"
    );
    assert!(
        text.contains("# TYPE eg_websocket_connections gauge"),
        "{text}"
    );

    assert_eq!(
        gateway
            .check(as_user("alice", Req::get("/api/admin/kernels")))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let (status, body) = gateway
        .check(as_user("ops", Req::get("/api/admin/kernels")))
        .await;
    assert_eq!((status, body), (StatusCode::OK, serde_json::json!([])));

    // The page: a data-free shell for anyone (it signs in by itself), a bare 403 notice for a
    // request carrying a non-admin's credential.
    let page = gateway.send(Req::get("/admin")).await;
    assert_eq!(page.status, StatusCode::OK);
    let csp = page.headers["content-security-policy"].to_str()?;
    assert!(csp.contains("script-src 'self'") && csp.contains("default-src 'none'"));
    assert!(String::from_utf8(page.body)?.contains("/admin/admin.js"));
    let refused = gateway.send(Req::get("/admin?token=alice")).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let refused = String::from_utf8(refused.body)?;
    assert!(
        refused.contains("alice") && !refused.contains("admin.js"),
        "{refused}"
    );
    let admin = gateway.send(as_user("ops", Req::get("/admin"))).await;
    assert_eq!(admin.status, StatusCode::OK);
    let script = gateway.send(Req::get("/admin/admin.js")).await;
    assert_eq!(script.status, StatusCode::OK);
    assert!(
        script.headers["content-type"]
            .to_str()?
            .starts_with("text/javascript")
    );
    assert_eq!(
        gateway.check(Req::get("/admin/passwd")).await.0,
        StatusCode::NOT_FOUND
    );

    // With metrics on their own port the API port has no /metrics at all.
    let elsewhere = Gateway::new(|config| {
        users(config);
        config.metrics_access = MetricsAccess::Elsewhere;
    })?;
    assert_eq!(
        elsewhere
            .check(as_user("ops", Req::get("/metrics")))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    Ok(())
}

#[tokio::test]
async fn e2e_culls_and_restarts_are_counted_by_kind_and_reason() -> anyhow::Result<()> {
    gateway_http::metrics::install()?;
    let gateway = Gateway::with_ipykernel(|config| {
        config.culling.idle_timeout = Duration::from_secs(2);
        config.culling.interval = Duration::from_secs(1);
    })?;
    let metric = |text: &str, series: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let before = String::from_utf8(gateway.send(Req::get("/metrics")).await.body)?;
    let (status, kernel) = gateway
        .check(Req::post("/api/kernels", r#"{"name": "python3"}"#))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{kernel}");
    let id = kernel["id"].as_str().unwrap_or_default().to_owned();
    let (status, _) = gateway
        .check(Req::post(&format!("/api/kernels/{id}/restart"), ""))
        .await;
    assert_eq!(status, StatusCode::OK);
    let restarted = String::from_utf8(gateway.send(Req::get("/admin")).await.body)?;
    assert!(restarted.contains(&id), "the admin page lists the kernel");
    let (_, admin) = gateway.check(Req::get("/api/admin/kernels")).await;
    assert_eq!(admin[0]["restarts"], 1, "{admin}");
    assert_eq!(admin[0]["backend"], "local", "{admin}");
    assert_eq!(admin[0]["host"], "127.0.0.1", "{admin}");
    // Idle for longer than the timeout: the culler takes it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while gateway
        .check(Req::get(&format!("/api/kernels/{id}")))
        .await
        .0
        != StatusCode::NOT_FOUND
    {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the kernel was not culled"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = String::from_utf8(gateway.send(Req::get("/metrics")).await.body)?;
    for series in [
        r#"eg_kernel_culls_total{type="python3",reason="idle"}"#,
        r#"eg_kernel_restarts_total{type="python3",reason="requested"}"#,
        r#"eg_kernel_starts_total{type="python3",outcome="started"}"#,
    ] {
        assert!(
            metric(&after, series) >= metric(&before, series) + 1.0,
            "{series} did not grow:\n{after}"
        );
    }
    Ok(())
}

/// Polls `/readyz` until its status is `want` (bounded); the last body.
async fn ready_becomes(gateway: &Gateway, want: StatusCode) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = gateway.check(Req::get("/readyz")).await;
        if status == want {
            return Ok(body);
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("/readyz stayed {status}: {body}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn readyz_follows_the_callback_listener_away_and_back() -> anyhow::Result<()> {
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let options = ListenerOptions {
        port_retries: 0,
        ..ListenerOptions::default()
    };
    let listener = ResponseListener::bind(loopback, options.clone()).await?;
    let addr = listener.local_addr();
    let readiness = gateway_http::config::Readiness::default();
    readiness.register(Arc::new(CallbackListenerCheck::new(&listener)));
    let gateway = Gateway::with_ipykernel(|config| config.readiness = readiness)?;

    let body = ready_becomes(&gateway, StatusCode::OK).await?;
    assert!(
        body["checks"].as_array().is_some_and(|c| c
            .iter()
            .any(|c| c["name"] == "callback_listener" && c["ok"] == true)),
        "{body}"
    );
    drop(listener);
    let body = ready_becomes(&gateway, StatusCode::SERVICE_UNAVAILABLE).await?;
    let check = body["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "callback_listener").cloned())
        .unwrap_or_default();
    assert_eq!(check["ok"], false, "{body}");
    assert!(
        check["reason"]
            .as_str()
            .is_some_and(|r| r.contains("does not accept connections")),
        "{body}"
    );
    // A listener on the same port again: ready again.
    let again = ResponseListener::bind(addr, options).await?;
    ready_becomes(&gateway, StatusCode::OK).await?;
    drop(again);
    Ok(())
}

/// The document's paths and their methods.
fn documented(doc: &Value) -> Vec<(String, Vec<Method>)> {
    doc["paths"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(path, item)| {
            let methods = item
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(name, _)| Method::from_bytes(name.to_uppercase().as_bytes()).ok())
                .collect();
            (path.clone(), methods)
        })
        .collect()
}

/// A concrete URL for a documented path.
fn concrete(path: &str) -> String {
    path.replace("{kernel_id}", "00000000-0000-0000-0000-000000000000")
        .replace("{session_id}", "00000000-0000-0000-0000-000000000000")
        .replace("{kernel_name}", "echo")
        .replace("{path}", "logo-64x64.png")
        .replace("{asset}", "admin.js")
}

#[tokio::test]
async fn the_openapi_document_matches_the_router_methods() -> anyhow::Result<()> {
    let gateway = Gateway::new(|_| {})?;
    let (status, doc) = gateway.check(Req::get("/api/swagger.json")).await;
    assert_eq!(status, StatusCode::OK);
    let all = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ];
    for (path, methods) in documented(&doc) {
        assert!(!methods.is_empty(), "{path} documents no method");
        for method in &all {
            let (status, body) = gateway
                .check(Req::new(method.clone(), &concrete(&path)).body("{}"))
                .await;
            if methods.contains(method) {
                assert_ne!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is documented but the router has no such route: {body}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} answers but is not documented: {body}"
                );
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn e2e_the_openapi_document_passes_openapi_spec_validator() -> anyhow::Result<()> {
    let gateway = Gateway::new(|_| {})?;
    for format in ["json", "yaml"] {
        let reply = gateway
            .send(Req::get(&format!("/api/swagger.{format}")))
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        let file = gateway.dir.path().join(format!("swagger.{format}"));
        std::fs::write(&file, &reply.body)?;
        // The validator's own command line: it reads JSON and YAML and exits non-zero on any
        // schema violation.
        let output = Command::new(crate::support::venv().join("bin/openapi-spec-validator"))
            .arg(&file)
            .stdin(Stdio::null())
            .output()?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "swagger.{format}: {said}");
        assert!(said.contains("OK"), "swagger.{format}: {said}");
    }
    Ok(())
}
