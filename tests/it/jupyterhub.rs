//! JupyterHub API tokens end to end: a real JupyterHub (from the test venv) on loopback, users
//! and tokens made through its REST API, and our gateway started with `--jupyterhub_api_url`.
//!
//! The Hub runs with `tests/fixtures/jupyterhub_config.py`: the null authenticator (nobody logs
//! in through a browser), no spawning, and an in-memory proxy instead of configurable-http-proxy,
//! since the gateway and the test talk to the Hub's own API port directly, as single-user
//! servers do through `JUPYTERHUB_API_URL`. The test's service `eg-test` holds the token that
//! creates the users, a group and the users' tokens, and revokes one of them.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::{Value, json};

use crate::support::{
    Gateway, GatewayConfig, Impl, Proc, clear_inherited_config, fixture, free_port, http_request,
    path_with, venv,
};

/// What the Hub prints once its API is listening.
const HUB_READY: &str = "JupyterHub is now running";

/// Bound on the Hub's start (database creation included); generous, only against hangs.
const HUB_START_TIMEOUT: Duration = Duration::from_secs(120);

/// The gateway's cache TTL in this test, in seconds (`--jupyterhub_cache_ttl`).
const CACHE_TTL_SECS: f64 = 1.0;

/// One HTTP answer: the status and the body parsed as JSON (`Null` when empty or not JSON).
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Value,
}

/// Sends one request with `Connection: close` and reads the whole answer.
fn request(
    port: u16,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: Option<&Value>,
) -> Result<Answer> {
    let payload = body.map(Value::to_string).unwrap_or_default();
    let mut headers = Vec::new();
    if body.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    if let Some(authorization) = authorization {
        headers.push(("Authorization", authorization));
    }
    let response = http_request(port, method, path, &headers, payload.as_bytes())?;
    Ok(Answer {
        status: response.status,
        body: response.json(),
    })
}

/// A random token (two v4 UUIDs, 64 hex digits).
fn random_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// A running JupyterHub and the token of its `eg-test` service.
struct Hub {
    proc: Proc,
    port: u16,
    service_token: String,
}

impl Hub {
    /// Starts the Hub in `dir`; a start whose just-picked port was taken meanwhile is retried.
    fn start(dir: &Path) -> Result<Hub> {
        let mut last = None;
        for attempt in 0..3 {
            let port = free_port()?;
            let service_token = random_token();
            let venv = venv()?;
            let mut cmd = Command::new(venv.join("bin/jupyterhub"));
            cmd.arg("-f")
                .arg(fixture("jupyterhub_config.py"))
                .current_dir(dir);
            clear_inherited_config(&mut cmd);
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("JUPYTERHUB_") {
                    cmd.env_remove(&key);
                }
            }
            cmd.env("PATH", path_with(&[&venv.join("bin")]))
                .env("EG_TEST_HUB_PORT", port.to_string())
                .env("EG_TEST_PROXY_PORT", free_port()?.to_string())
                .env("EG_TEST_HUB_DIR", dir)
                .env("EG_TEST_HUB_TOKEN", &service_token)
                .env("PYTHONUNBUFFERED", "1");
            let log = dir.join(format!("jupyterhub-{attempt}.log"));
            match Proc::spawn("JupyterHub", cmd, &log, Some(HUB_READY), HUB_START_TIMEOUT) {
                Ok(proc) => {
                    return Ok(Hub {
                        proc,
                        port,
                        service_token,
                    });
                }
                Err(err) if format!("{err:#}").contains("in use") => last = Some(err),
                Err(err) => return Err(err),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("JupyterHub did not start")))
    }

    /// The API URL single-user servers get as `JUPYTERHUB_API_URL`.
    fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}/hub/api", self.port)
    }

    /// A request to the Hub's API as the `eg-test` service; fails unless the status is `want`.
    fn api(&self, method: &str, path: &str, body: Option<Value>, want: u16) -> Result<Value> {
        let authorization = format!("token {}", self.service_token);
        let answer = request(
            self.port,
            method,
            &format!("/hub/api{path}"),
            Some(&authorization),
            body.as_ref(),
        )?;
        if answer.status != want {
            bail!(
                "Hub: {method} {path} answered {} (wanted {want}): {}; log tail:\n{}",
                answer.status,
                answer.body,
                self.proc.log_tail(20)
            );
        }
        Ok(answer.body)
    }

    /// A new API token for `user`: the token and its id (`a<n>`).
    fn new_token(&self, user: &str) -> Result<(String, String)> {
        let model = self.api(
            "POST",
            &format!("/users/{user}/tokens"),
            Some(json!({"note": "enterprise-gateway e2e"})),
            201,
        )?;
        let token = model["token"].as_str().context("no token in the answer")?;
        let id = model["id"].as_str().context("no token id in the answer")?;
        Ok((token.to_owned(), id.to_owned()))
    }

    /// What the Hub itself answers to `GET /user` with `token` (status and model).
    fn whoami(&self, token: &str) -> Result<Answer> {
        request(
            self.port,
            "GET",
            "/hub/api/user",
            Some(&format!("token {token}")),
            None,
        )
    }
}

/// `GET path` on the gateway with an `Authorization` header value.
fn get(gateway: &Gateway, path: &str, authorization: &str) -> Result<Answer> {
    request(gateway.port, "GET", path, Some(authorization), None)
}

fn ids(list: &Value) -> Vec<&str> {
    list.as_array()
        .map(|kernels| kernels.iter().filter_map(|k| k["id"].as_str()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn e2e_jupyterhub_tokens_are_hub_users_and_revocation_is_seen() -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("jupyterhub-")
        .tempdir()
        .context("creating the Hub's directory")?;
    let mut hub = Hub::start(dir.path())?;

    // Two Hub users, alice in a group, and an API token for each, made the way an admin would.
    hub.api(
        "POST",
        "/users",
        Some(json!({"usernames": ["alice", "bob"]})),
        201,
    )?;
    hub.api(
        "POST",
        "/groups/staff",
        Some(json!({"users": ["alice", "bob"]})),
        201,
    )?;
    let (alice, alice_token_id) = hub.new_token("alice")?;
    let (bob, _) = hub.new_token("bob")?;
    // A token as narrow as a single-user server's still identifies bob, with his groups
    // (JupyterHub 6 counts read:users:groups among the scopes every token has on /user).
    let narrow = hub.api(
        "POST",
        "/users/bob/tokens",
        Some(json!({"note": "narrow", "scopes": ["users:activity!user=bob"]})),
        201,
    )?;
    let bob_narrow = narrow["token"].as_str().context("no token")?.to_owned();
    let hub_alice = hub.whoami(&alice)?;
    ensure!(
        hub_alice.status == 200
            && hub_alice.body["name"] == "alice"
            && hub_alice.body["groups"] == json!(["staff"]),
        "the Hub's model of alice's new token: {hub_alice:?}"
    );
    let hub_narrow = hub.whoami(&bob_narrow)?;
    ensure!(
        hub_narrow.status == 200
            && hub_narrow.body["name"] == "bob"
            && hub_narrow.body["groups"] == json!(["staff"]),
        "the Hub's model of bob's narrow token: {hub_narrow:?}"
    );

    let mut gateway = Gateway::start(
        Impl::Ours,
        &GatewayConfig {
            args: vec![
                format!("--jupyterhub_api_url={}", hub.api_url()),
                format!("--jupyterhub_cache_ttl={CACHE_TTL_SECS}"),
                "--list_kernels=true".to_owned(),
            ],
            ..GatewayConfig::default()
        },
    )?;
    let as_alice = format!("token {alice}");
    let as_bob = format!("Bearer {bob}");

    // The Hub's users are the gateway's users, with every way of sending the token.
    let list = get(&gateway, "/api/kernels", &as_alice)?;
    ensure!(list.status == 200, "alice's list: {list:?}");
    let me = get(&gateway, "/api/me", &as_alice)?;
    ensure!(me.status == 200, "alice's /api/me: {me:?}");
    ensure!(
        me.body["identity"]["username"] == "alice" && me.body["authenticator"] == "jupyterhub",
        "alice is not alice: {}",
        me.body
    );
    ensure!(
        me.body["groups"] == json!(["staff"]),
        "alice's groups: {}",
        me.body
    );
    ensure!(
        me.body["roles"] == json!([]),
        "a Hub user gets no roles: {}",
        me.body
    );
    let me = get(&gateway, "/api/me", &as_bob)?;
    ensure!(
        me.status == 200 && me.body["identity"]["username"] == "bob",
        "bob by Bearer: {me:?}"
    );
    let narrow = get(&gateway, "/api/me", &format!("token {bob_narrow}"))?;
    ensure!(
        narrow.status == 200
            && narrow.body["identity"]["username"] == "bob"
            && narrow.body["groups"] == json!(["staff"]),
        "bob by his narrow token: {narrow:?}"
    );
    let query = request(
        gateway.port,
        "GET",
        &format!("/api/me?token={bob}"),
        None,
        None,
    )?;
    ensure!(
        query.status == 200 && query.body["identity"]["username"] == "bob",
        "bob by ?token=: {query:?}"
    );

    // Anything the Hub does not know is refused.
    for authorization in ["token not-a-hub-token", "Bearer 0123456789abcdef"] {
        let refused = get(&gateway, "/api/kernels", authorization)?;
        ensure!(refused.status == 401, "{authorization}: {refused:?}");
        ensure!(
            refused.body["message"]
                .as_str()
                .is_some_and(|m| m.contains("invalid or revoked JupyterHub token")),
            "{authorization}: {}",
            refused.body
        );
    }
    let anonymous = request(gateway.port, "GET", "/api/kernels", None, None)?;
    ensure!(anonymous.status == 401, "no token: {anonymous:?}");

    // alice's kernel is hers: bob neither sees nor reaches it.
    let started = request(
        gateway.port,
        "POST",
        "/api/kernels",
        Some(&as_alice),
        Some(&json!({"name": "python3"})),
    )?;
    ensure!(started.status == 201, "alice's start: {started:?}");
    let kernel_id = started.body["id"]
        .as_str()
        .context("the start answer has no id")?
        .to_owned();
    let result = (|| -> Result<()> {
        ensure!(
            started.body["owner"] == "alice",
            "the kernel's owner: {}",
            started.body
        );
        let path = format!("/api/kernels/{kernel_id}");
        let mine = get(&gateway, &path, &as_alice)?;
        ensure!(
            mine.status == 200 && mine.body["owner"] == "alice",
            "alice's GET: {mine:?}"
        );
        let theirs = get(&gateway, &path, &as_bob)?;
        ensure!(
            theirs.status == 404,
            "bob's GET of alice's kernel: {theirs:?}"
        );
        let bobs_list = get(&gateway, "/api/kernels", &as_bob)?;
        ensure!(
            bobs_list.status == 200 && !ids(&bobs_list.body).contains(&kernel_id.as_str()),
            "bob's list: {bobs_list:?}"
        );
        let alices_list = get(&gateway, "/api/kernels", &as_alice)?;
        ensure!(
            ids(&alices_list.body) == [kernel_id.as_str()],
            "alice's list: {alices_list:?}"
        );
        Ok(())
    })();
    let deleted = request(
        gateway.port,
        "DELETE",
        &format!("/api/kernels/{kernel_id}"),
        Some(&as_alice),
        None,
    )?;
    result?;
    ensure!(deleted.status == 204, "alice's DELETE: {deleted:?}");

    // Revoked at the Hub: refused once the cached answer is older than the TTL. Every answer
    // the gateway cached was fetched before the last response above, so after sleeping longer
    // than the TTL none of them can still be fresh.
    hub.api(
        "DELETE",
        &format!("/users/alice/tokens/{alice_token_id}"),
        None,
        204,
    )?;
    let hub_says = hub.whoami(&alice)?;
    ensure!(
        hub_says.status == 403,
        "the Hub still knows alice's token: {hub_says:?}"
    );
    tokio::time::sleep(Duration::from_secs_f64(CACHE_TTL_SECS + 0.5)).await;
    let revoked = get(&gateway, "/api/kernels", &as_alice)?;
    ensure!(revoked.status == 401, "alice's revoked token: {revoked:?}");
    ensure!(
        revoked.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("invalid or revoked JupyterHub token")),
        "{}",
        revoked.body
    );
    let still = get(&gateway, "/api/kernels", &as_bob)?;
    ensure!(
        still.status == 200,
        "bob after alice's revocation: {still:?}"
    );

    // A Hub that is gone is a clear 401, not a hang (the gateway gives it 5 s at most).
    hub.proc.stop(Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs_f64(CACHE_TTL_SECS + 0.5)).await;
    let gone = get(&gateway, "/api/kernels", &as_bob)?;
    ensure!(gone.status == 401, "bob with the Hub down: {gone:?}");
    let message = gone.body["message"].as_str().unwrap_or_default();
    ensure!(
        message.contains(&format!(
            "JupyterHub at {} cannot be reached",
            hub.api_url()
        )) && !message.contains(&bob),
        "{message}"
    );
    ensure!(
        [&alice, &bob, &bob_narrow]
            .iter()
            .all(|token| !gateway.proc.log_text().contains(token.as_str())),
        "a token reached the gateway's log"
    );

    gateway.proc.stop(Duration::from_secs(10));
    gateway.proc.mark_passed();
    hub.proc.mark_passed();
    Ok(())
}
