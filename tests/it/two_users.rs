//! Two users, two Jupyter Servers, one gateway: identity comes from authentication.
//!
//! Alice authenticates with a per-user token from the token file (`enterprise-gateway token
//! add`, sent by her server as `--GatewayClient.auth_token`); bob with a JWT from an OIDC issuer
//! the test runs (`--GatewayClient.auth_scheme=Bearer`). Neither server sets `KERNEL_USERNAME`:
//! the gateway takes the user from the credential. The driver fixture
//! (`tests/fixtures/two_users_driver.py`) then runs a cell in each user's kernel through each
//! server, checks that neither lists the other's kernel, and that bob's credential gets 404 for
//! alice's kernel on every verb and on the channels WebSocket while alice keeps her state.

use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::jupyter_server::JupyterServer;
use crate::oidc::{AUDIENCE, Issuer};
use crate::support::{Gateway, GatewayConfig, Impl, fixture, run_bounded, venv};

#[test]
fn e2e_two_users_two_jupyter_servers_one_gateway() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("two-users-").tempdir()?;
    let tokens = dir.path().join("tokens.toml");
    let alice_token = crate::token_file::add(&tokens, "alice")?;
    let issuer = Issuer::start()?;
    let bob_jwt = issuer.mint("bob", &["analysts"])?;

    let config = GatewayConfig {
        args: vec![
            format!("--token_file={}", tokens.display()),
            format!("--oidc_issuer={}", issuer.url()),
            format!("--oidc_audience={AUDIENCE}"),
            "--list_kernels=true".to_owned(),
        ],
        ..GatewayConfig::default()
    };
    let mut gateway = Gateway::start(Impl::Ours, &config)?;

    let alice_dir = dir.path().join("alice");
    let bob_dir = dir.path().join("bob");
    let mut alice = JupyterServer::start(
        &gateway.url(),
        &[format!("--GatewayClient.auth_token={alice_token}")],
        &[],
        &alice_dir,
    )?;
    let mut bob = JupyterServer::start(
        &gateway.url(),
        &[
            format!("--GatewayClient.auth_token={bob_jwt}"),
            "--GatewayClient.auth_scheme=Bearer".to_owned(),
        ],
        &[],
        &bob_dir,
    )?;

    let plan = serde_json::json!({
        "gateway": gateway.url(),
        "a": {
            "server": format!("http://127.0.0.1:{}", alice.port),
            "server_token": alice.token,
            "user": "alice",
            "gateway_auth": format!("token {alice_token}"),
        },
        "b": {
            "server": format!("http://127.0.0.1:{}", bob.port),
            "server_token": bob.token,
            "user": "bob",
            "gateway_auth": format!("Bearer {bob_jwt}"),
        },
    });
    let plan_file = dir.path().join("plan.json");
    std::fs::write(&plan_file, serde_json::to_vec(&plan)?)?;

    let mut driver = Command::new(venv()?.join("bin/python"));
    driver
        .arg(fixture("two_users_driver.py"))
        .arg(&plan_file)
        .env("PYTHONUNBUFFERED", "1");
    let (status, output) = run_bounded(
        "two_users_driver.py",
        driver,
        &dir.path().join("driver.log"),
        Duration::from_secs(170),
    )?;
    println!("{output}");
    assert!(
        status.success() && output.contains("OK: all steps passed"),
        "driver failed ({status}):\n{output}\n--- alice's server ---\n{}\n--- bob's server ---\n{}\n--- gateway ---\n{}",
        alice.proc.log_tail(30),
        bob.proc.log_tail(30),
        gateway.proc.log_tail(40)
    );
    // The audit trail names both users and the refusals, and never a credential.
    let log = gateway.proc.log_text();
    assert!(log.contains("kernel started"), "no audit line for starts");
    assert!(
        log.contains("refused access to another user's kernel"),
        "no audit line for bob's attempts"
    );
    for secret in [alice_token.as_str(), bob_jwt.as_str()] {
        assert!(
            !log.contains(secret),
            "a credential reached the gateway log"
        );
    }
    alice.proc.mark_passed();
    bob.proc.mark_passed();
    gateway.proc.mark_passed();
    Ok(())
}
