//! Per-user tokens end to end: `enterprise-gateway token add|list|revoke` writes the file, the
//! built gateway started with `--token_file` authenticates by it, notices a revocation by
//! itself, and takes a new token on SIGHUP.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::{
    Gateway, GatewayConfig, Impl, built_binary, clear_inherited_config, http_get, http_request,
};

/// Bound on one run of the `token` sub-command (it does not wait for anything but a file lock).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Bound on the gateway noticing a change (it looks every 2 s); generous, only against hangs.
const NOTICE_DEADLINE: Duration = Duration::from_secs(30);

/// Runs `enterprise-gateway token <args>` with a clean environment.
fn token(args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new(built_binary("enterprise-gateway")?);
    cmd.arg("token")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    clear_inherited_config(&mut cmd);
    let child = cmd.spawn().context("starting enterprise-gateway token")?;
    let pid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match finished.recv_timeout(COMMAND_TIMEOUT) {
        Ok(output) => Ok(output?),
        Err(_) => {
            let _ = kill(pid, Signal::SIGKILL);
            bail!("`token {args:?}` did not finish within {COMMAND_TIMEOUT:?}")
        }
    }
}

/// `token add` for `user`: returns the token printed on stdout (its only output).
pub(crate) fn add(file: &Path, user: &str) -> Result<String> {
    let file = file.to_string_lossy();
    let out = token(&["add", "--file", &file, "--user", user, "--note", "e2e"])?;
    if !out.status.success() {
        bail!(
            "token add {user} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8(out.stdout).context("token add printed non-UTF-8")?;
    let lines: Vec<&str> = stdout.lines().collect();
    let [token] = lines.as_slice() else {
        bail!("token add should print exactly the token on stdout, printed {stdout:?}");
    };
    if token.len() < 32 {
        bail!("the token {token:?} is too short");
    }
    Ok((*token).to_owned())
}

/// The id `token list` shows for `user`'s (only) token.
fn id_of(file: &Path, user: &str) -> Result<String> {
    let out = token(&["list", "--file", &file.to_string_lossy()])?;
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "token list failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    listing
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.get(1) == Some(&user))
        .and_then(|cells| cells.first().map(|id| (*id).to_owned()))
        .with_context(|| format!("{user} is not in the listing:\n{listing}"))
}

/// `GET path` with an `Authorization` header; the status code.
fn status_with(port: u16, path: &str, authorization: &str) -> Result<u16> {
    Ok(http_request(port, "GET", path, &[("Authorization", authorization)], b"")?.status)
}

fn kernels_status(gateway: &Gateway, token: &str) -> Result<u16> {
    status_with(gateway.port, "/api/kernels", &format!("token {token}"))
}

/// Polls until `token` gets `want` on `GET /api/kernels`, within [`NOTICE_DEADLINE`].
async fn wait_for_status(gateway: &Gateway, token: &str, want: u16, what: &str) -> Result<()> {
    let deadline = Instant::now() + NOTICE_DEADLINE;
    loop {
        let got = kernels_status(gateway, token)?;
        if got == want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{what}: still {got} instead of {want} after {NOTICE_DEADLINE:?}; log tail:\n{}",
                gateway.proc.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn e2e_token_file_add_revoke_and_reload() -> Result<()> {
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let file = dir.path().join("tokens.toml");

    // Hostile input is a usage error and creates nothing.
    let hostile = token(&["add", "--file", &file.to_string_lossy(), "--user", "$(id)"])?;
    assert_eq!(hostile.status.code(), Some(64), "{hostile:?}");
    assert!(!file.exists());
    let missing = token(&["list", "--file", &file.to_string_lossy()])?;
    assert_eq!(missing.status.code(), Some(64), "{missing:?}");
    let help = token(&["--help"])?;
    assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).contains("revoke"));

    let alice = add(&file, "alice")?;
    let bob = add(&file, "bob")?;
    assert_ne!(alice, bob);
    let mode = std::fs::metadata(&file)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the token file's mode is {mode:o}");

    let mut gateway = Gateway::start(
        Impl::Ours,
        &GatewayConfig {
            args: vec![
                format!("--token_file={}", file.display()),
                "--list_kernels=true".to_owned(),
                "--log_level=debug".to_owned(),
            ],
            ..GatewayConfig::default()
        },
    )?;

    assert_eq!(kernels_status(&gateway, &alice)?, 200, "alice's token");
    assert_eq!(
        status_with(gateway.port, "/api/kernels", &format!("Bearer {bob}"))?,
        200,
        "bob's token as a bearer token"
    );
    assert_eq!(kernels_status(&gateway, "garbage")?, 401);
    let garbage = http_get(gateway.port, "/api/kernels?token=garbage")?;
    assert_eq!(garbage.status, 401);
    let body: serde_json::Value = serde_json::from_slice(&garbage.body).with_context(|| {
        format!(
            "401 body is not JSON: {:?}",
            String::from_utf8_lossy(&garbage.body)
        )
    })?;
    let message = body
        .get("message")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    assert!(message.contains("unknown token"), "401 body: {body}");
    assert_eq!(
        http_get(gateway.port, "/api/kernels")?.status,
        401,
        "no token at all"
    );

    // Revoked in the file: the gateway notices by itself, no signal, no restart.
    let alice_id = id_of(&file, "alice")?;
    let revoked = token(&["revoke", "--file", &file.to_string_lossy(), &alice_id])?;
    assert!(revoked.status.success(), "{revoked:?}");
    wait_for_status(&gateway, &alice, 401, "alice after revocation").await?;
    assert_eq!(
        kernels_status(&gateway, &bob)?,
        200,
        "bob after alice's revocation"
    );

    // A new token and SIGHUP: the explicit reload takes it.
    let carol = add(&file, "carol")?;
    gateway.proc.signal(Signal::SIGHUP)?;
    wait_for_status(&gateway, &carol, 200, "carol after SIGHUP").await?;
    let deadline = Instant::now() + NOTICE_DEADLINE;
    while !gateway.proc.log_text().contains("token file reloaded") {
        if Instant::now() >= deadline {
            bail!(
                "no reload logged after SIGHUP; log tail:\n{}",
                gateway.proc.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(kernels_status(&gateway, &bob)?, 200, "bob after the reload");
    assert_eq!(
        kernels_status(&gateway, &alice)?,
        401,
        "alice after the reload"
    );
    assert!(
        gateway.proc.wait_exit(Duration::ZERO).is_none(),
        "SIGHUP stopped the gateway"
    );

    // Secrets appear nowhere: the file holds hashes, the log holds neither.
    let text = std::fs::read_to_string(&file)?;
    let log = gateway.proc.log_text();
    for (user, secret) in [("alice", &alice), ("bob", &bob), ("carol", &carol)] {
        assert!(
            !text.contains(secret.as_str()),
            "{user}'s token is in the file"
        );
        assert!(
            !log.contains(secret.as_str()),
            "{user}'s token is in the gateway log"
        );
    }
    assert_eq!(
        std::fs::metadata(&file)?.permissions().mode() & 0o777,
        0o600
    );

    gateway.proc.stop(Duration::from_secs(10));
    gateway.proc.mark_passed();
    Ok(())
}
