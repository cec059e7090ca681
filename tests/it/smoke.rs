//! The gateway binary on its own: it serves `GET /api` and stops cleanly on SIGTERM.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::Signal;

use crate::support::{Gateway, GatewayConfig, Impl, http_get};

#[test]
fn e2e_gateway_binary_smoke() -> Result<()> {
    let mut gateway = Gateway::start(Impl::from_env()?, &GatewayConfig::default())?;

    let resp = http_get(gateway.port, "/api")?;
    let body = String::from_utf8_lossy(&resp.body).into_owned();
    if resp.status != 200 {
        bail!("GET /api answered {}: {body}", resp.status);
    }
    let json: serde_json::Value = serde_json::from_str(&body)
        .with_context(|| format!("GET /api body is not JSON: {body}"))?;
    for key in ["version", "gateway_version"] {
        let value = json.get(key).and_then(serde_json::Value::as_str);
        if value.is_none_or(str::is_empty) {
            bail!("GET /api lacks a `{key}` string: {body}");
        }
    }

    let unknown = http_get(gateway.port, "/api/no-such-route")?;
    assert_eq!(unknown.status, 404, "unknown route must be 404");

    let sent = Instant::now();
    gateway.proc.signal(Signal::SIGTERM)?;
    let status = gateway
        .proc
        .wait_exit(Duration::from_secs(10))
        .with_context(|| {
            format!(
                "gateway still running 10 s after SIGTERM; log tail:\n{}",
                gateway.proc.log_tail(30)
            )
        })?;
    println!("exited with {status} {:?} after SIGTERM", sent.elapsed());
    assert!(
        status.success(),
        "gateway exit status after SIGTERM: {status}; log tail:\n{}",
        gateway.proc.log_tail(30)
    );
    gateway.proc.mark_passed();
    Ok(())
}
