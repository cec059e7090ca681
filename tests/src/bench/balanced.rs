//! The `--balanced` target: two of our gateways sharing one PostgreSQL kernel store behind
//! HAProxy (round robin, each request balanced on its own), measured through the balancer beside
//! one gateway reached directly. Debian's PostgreSQL runs from a fresh cluster in the run's temp
//! dir as the system account `eg-test-pg` (PostgreSQL refuses root), Debian's HAProxy with a
//! generated config; both are stopped with the target.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use super::proc;
use test_support::proc::Proc;

/// Debian's PostgreSQL binaries.
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The account PostgreSQL runs as.
const PG_ACCOUNT: &str = "eg-test-pg";

fn as_pg(program: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={PG_ACCOUNT}"),
        &format!("--regid={PG_ACCOUNT}"),
        "--init-groups",
        "--",
    ])
    .arg(Path::new(PG_BIN).join(program));
    cmd
}

/// A PostgreSQL server for the run: its guard and URL.
pub(crate) struct Postgres {
    pub(crate) guard: Proc,
    pub(crate) url: String,
}

impl Postgres {
    /// A fresh cluster in `dir`, started on a free loopback port.
    pub(crate) fn start(dir: &Path) -> Result<Postgres> {
        if !Command::new("id")
            .arg(PG_ACCOUNT)
            .output()?
            .status
            .success()
        {
            let out = Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    PG_ACCOUNT,
                ])
                .output()
                .context("running useradd")?;
            if !out.status.success() && out.status.code() != Some(9) {
                bail!(
                    "useradd {PG_ACCOUNT}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let data = dir.join("pg");
        std::fs::create_dir_all(&data)?;
        let chown = Command::new("chown")
            .arg(format!("{PG_ACCOUNT}:{PG_ACCOUNT}"))
            .arg(&data)
            .status()?;
        if !chown.success() {
            bail!("chown of {} failed", data.display());
        }
        let init = as_pg("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .output()
            .context("running initdb (Debian's postgresql; `cargo xtask setup` installs it)")?;
        if !init.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&init.stderr));
        }
        let port = proc::free_port()?;
        let mut cmd = as_pg("postgres");
        cmd.arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(&data)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]);
        let guard = proc::spawn(
            "postgres",
            cmd,
            Some(&dir.join("postgres.log")),
            Some("database system is ready to accept connections"),
            Duration::from_secs(60),
        )?;
        Ok(Postgres {
            guard,
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        })
    }
}

/// HAProxy on a free loopback port in front of `backends`, once it accepts connections.
pub(crate) async fn haproxy(dir: &Path, backends: &[u16]) -> Result<(Proc, u16)> {
    let port = proc::free_port()?;
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, p)| format!("  server g{i} 127.0.0.1:{p} check inter 500ms fall 2 rise 1\n"))
        .collect();
    let config = format!(
        "global\n  maxconn 4096\n\
         defaults\n  mode http\n  timeout connect 2s\n  timeout client 600s\n  timeout server 600s\n  \
         timeout tunnel 1h\n  option redispatch\n  retries 3\n\
         frontend gateways\n  bind 127.0.0.1:{port}\n  default_backend gateways\n\
         backend gateways\n  balance roundrobin\n  option httpchk GET /api\n{servers}"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config)?;
    let mut cmd = Command::new("/usr/sbin/haproxy");
    cmd.arg("-db").arg("-f").arg(&path);
    let log = dir.join("haproxy.log");
    let guard = tokio::task::spawn_blocking(move || {
        proc::spawn("haproxy", cmd, Some(&log), None, Duration::from_secs(10))
    })
    .await??;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok((guard, port));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("haproxy did not listen on {port}")
}

/// Kernels in the store at `url` whose lease is not `gateway`'s (psql).
pub(crate) fn rows_not_of(url: &str, gateway: &str) -> Result<usize> {
    let out = Command::new(Path::new(PG_BIN).join("psql"))
        .args(["-X", "-A", "-t", "-d"])
        .arg(url)
        .arg("-c")
        .arg(format!(
            "SELECT count(*) FROM kernels WHERE gateway <> '{gateway}'"
        ))
        .output()
        .context("running psql")?;
    if !out.status.success() {
        bail!("psql: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}
