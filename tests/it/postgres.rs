//! A PostgreSQL server from Debian's `postgresql` package for the tests: a fresh cluster
//! (`initdb`) in a temporary directory, `postgres` on a loopback port with its unix socket in
//! that directory too, trust authentication for the `postgres` role, stopped (and removed) when
//! the guard goes. Tests run as root and PostgreSQL refuses to, so the server runs as a system
//! account created for it (`eg-test-pg`) through `setpriv`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::support::{Proc, free_port};

/// Debian's PostgreSQL binaries.
const BIN: &str = "/usr/lib/postgresql/15/bin";
/// The account the server runs as.
const ACCOUNT: &str = "eg-test-pg";
/// What the server prints once it accepts connections.
const READY: &str = "database system is ready to accept connections";

/// A running PostgreSQL server; stopped on drop.
pub(crate) struct Postgres {
    proc: Option<Proc>,
    /// The port on 127.0.0.1.
    pub(crate) port: u16,
    data: PathBuf,
    _dir: tempfile::TempDir,
    starts: u32,
    /// The CA that signed the server's certificate, when it serves TLS.
    pub(crate) certificate: Option<PathBuf>,
}

fn ensure_account() -> Result<()> {
    if Command::new("id").arg(ACCOUNT).output()?.status.success() {
        return Ok(());
    }
    let out = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            ACCOUNT,
        ])
        .output()
        .context("running useradd")?;
    // 9: created meanwhile by a test running in parallel.
    if !out.status.success() && out.status.code() != Some(9) {
        bail!(
            "useradd {ACCOUNT}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn as_account(program: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={ACCOUNT}"),
        &format!("--regid={ACCOUNT}"),
        "--init-groups",
        "--",
    ])
    .arg(Path::new(BIN).join(program));
    cmd
}

impl Postgres {
    /// A new cluster, started.
    pub(crate) fn start() -> Result<Postgres> {
        Postgres::start_with(false)
    }

    /// A new cluster serving TLS with a self-signed certificate for 127.0.0.1 (openssl).
    pub(crate) fn start_tls() -> Result<Postgres> {
        Postgres::start_with(true)
    }

    fn start_with(tls: bool) -> Result<Postgres> {
        ensure_account()?;
        let dir = tempfile::Builder::new().prefix("postgres-").tempdir()?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data)?;
        let chown = Command::new("chown")
            .arg("-R")
            .arg(format!("{ACCOUNT}:{ACCOUNT}"))
            .arg(dir.path())
            .status()?;
        if !chown.success() {
            bail!("chown of {} failed", dir.path().display());
        }
        let init = as_account("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .output()
            .context("running initdb")?;
        if !init.status.success() {
            bail!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&init.stdout),
                String::from_utf8_lossy(&init.stderr)
            );
        }
        let certificate = if tls {
            // A CA, and a server certificate for 127.0.0.1 it signed (webpki refuses a CA
            // certificate as the server's own).
            let file = |name: &str| data.join(name);
            let openssl = |args: &[&str]| -> Result<()> {
                let out = Command::new("openssl")
                    .args(args)
                    .current_dir(&data)
                    .output()
                    .context("running openssl")?;
                if !out.status.success() {
                    bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
                }
                Ok(())
            };
            std::fs::write(
                file("server.ext"),
                "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
            )?;
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=eg-test-ca",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
            ])?;
            openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ])?;
            openssl(&[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                "server.ext",
                "-out",
                "server.crt",
            ])?;
            for name in ["server.crt", "server.key"] {
                let status = Command::new("chown")
                    .arg(format!("{ACCOUNT}:{ACCOUNT}"))
                    .arg(file(name))
                    .status()?;
                if !status.success() {
                    bail!("chown of {name} failed");
                }
            }
            std::fs::set_permissions(
                file("server.key"),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )?;
            Some(file("ca.crt"))
        } else {
            None
        };
        let mut pg = Postgres {
            proc: None,
            port: free_port()?,
            data,
            _dir: dir,
            starts: 0,
            certificate,
        };
        pg.resume()?;
        Ok(pg)
    }

    /// Starts the server again on the same data and port (after [`Postgres::stop`]).
    pub(crate) fn resume(&mut self) -> Result<()> {
        self.starts += 1;
        let mut cmd = as_account("postgres");
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&self.data)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]);
        if self.certificate.is_some() {
            cmd.args(["-c", "ssl=on", "-c"])
                .arg(format!(
                    "ssl_cert_file={}",
                    self.data.join("server.crt").display()
                ))
                .arg("-c")
                .arg(format!(
                    "ssl_key_file={}",
                    self.data.join("server.key").display()
                ));
        }
        let log = self
            .data
            .with_file_name(format!("postgres-{}.log", self.starts));
        self.proc = Some(Proc::spawn(
            "postgres",
            cmd,
            &log,
            Some(READY),
            Duration::from_secs(60),
        )?);
        Ok(())
    }

    /// Stops the server (fast shutdown: open connections are cut).
    pub(crate) fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            // SIGINT is PostgreSQL's fast shutdown.
            let _ = proc.signal(nix::sys::signal::Signal::SIGINT);
            if proc.wait_exit(Duration::from_secs(20)).is_none() {
                proc.stop(Duration::from_secs(5));
            }
            proc.mark_passed();
        }
    }

    /// The URL gateways are given.
    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs one SQL statement through `psql` and returns its unaligned output.
    pub(crate) fn psql(&self, sql: &str) -> Result<String> {
        let out = Command::new(Path::new(BIN).join("psql"))
            .args(["-X", "-A", "-t", "-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(self.port.to_string())
            .args(["-d", "postgres", "-c", sql])
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!("psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Marks the server's log as not needed.
    pub(crate) fn mark_passed(&mut self) {
        if let Some(proc) = self.proc.as_mut() {
            proc.mark_passed();
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
