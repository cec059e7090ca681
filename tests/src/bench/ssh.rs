//! The host the `*_ssh` workloads launch kernels on: one real OpenSSH server on 127.0.0.2 (the
//! fixture of resource-managers' SSH tests, included from its file), reached by both gateways
//! over SSH although it is this machine.
//!
//! Our gateway gets the key, known_hosts, port and user as options, plus `EG_SSH_LOCAL_HOSTS`
//! (it would otherwise launch a loopback host directly). Enterprise Gateway has no key or
//! known_hosts option: paramiko reads `~/.ssh/known_hosts` and tries `~/.ssh/id_*`, so both
//! gateways run with `HOME` set to a private directory in the benchmark's temp dir whose `.ssh`
//! holds copies of the fixture's files. EG treats 127.0.0.2 as remote (it is not one of
//! `jupyter_client.localinterfaces`), so it really opens SSH sessions to it.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use super::proc;

#[path = "../../../resource-managers/tests/it/sshd.rs"]
#[allow(
    dead_code,
    reason = "shared with resource-managers' tests; the benchmark needs one host and keys only"
)]
mod sshd;

/// The address the SSH host listens on (the fixture's first host).
pub(crate) const HOST: &str = "127.0.0.2";

/// What a gateway needs to reach the SSH host.
#[derive(Debug, Clone)]
pub(crate) struct SshAccess {
    /// sshd's port on [`HOST`].
    pub(crate) port: u16,
    /// The login user (the benchmark's own).
    pub(crate) user: String,
    /// Private key (the copy in `home/.ssh/id_ed25519`).
    pub(crate) key: PathBuf,
    /// known_hosts naming `[HOST]:port` (the copy in `home/.ssh/known_hosts`).
    pub(crate) known_hosts: PathBuf,
    /// The `HOME` both gateways run with while the SSH host is up.
    pub(crate) home: PathBuf,
}

impl SshAccess {
    /// Environment for a gateway: our options and EG's (each ignores the other's).
    pub(crate) fn gateway_env(&self) -> Vec<(&'static str, OsString)> {
        vec![
            ("HOME", self.home.clone().into_os_string()),
            ("EG_SSH_PORT", self.port.to_string().into()),
            ("EG_REMOTE_USER", self.user.clone().into()),
            ("EG_SSH_KEY_FILE", self.key.clone().into_os_string()),
            (
                "EG_SSH_KNOWN_HOSTS",
                self.known_hosts.clone().into_os_string(),
            ),
            ("EG_SSH_LOCAL_HOSTS", "true".into()),
        ]
    }
}

/// The running SSH host; stopped when dropped, after killing any kernel still running the
/// benchmark's launcher script (a kernel started over SSH is no descendant of a gateway, so the
/// gateways' guards cannot reach it).
pub(crate) struct SshHost {
    /// The fixture; its servers are killed when it drops (after [`SshHost`]'s own `drop`).
    _hosts: sshd::SshHosts,
    access: SshAccess,
    launcher_script: String,
}

impl std::fmt::Debug for SshHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshHost")
            .field("access", &self.access)
            .finish_non_exhaustive()
    }
}

impl SshHost {
    /// Starts sshd on [`HOST`] and writes `<bench_dir>/home/.ssh`.
    pub(crate) async fn start(bench_dir: &Path, launcher_script: &str) -> Result<SshHost> {
        if !Path::new("/usr/sbin/sshd").exists() {
            bail!("/usr/sbin/sshd is missing (openssh-server; `cargo xtask setup` installs it)");
        }
        let hosts = sshd::SshHosts::start(1)
            .await
            .context("starting sshd on 127.0.0.2 (needs root)")?;
        let home = bench_dir.join("home");
        let dot_ssh = home.join(".ssh");
        std::fs::create_dir_all(&dot_ssh)?;
        std::fs::set_permissions(&dot_ssh, std::fs::Permissions::from_mode(0o700))?;
        let key = dot_ssh.join("id_ed25519");
        std::fs::copy(hosts.user_key(), &key)?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        let known_hosts = dot_ssh.join("known_hosts");
        std::fs::copy(hosts.known_hosts(), &known_hosts)?;
        let user = nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.name)
            .context("the benchmark's user has no name")?;
        let access = SshAccess {
            port: hosts.port,
            user,
            key,
            known_hosts,
            home,
        };
        Ok(SshHost {
            _hosts: hosts,
            access,
            launcher_script: launcher_script.to_owned(),
        })
    }

    /// How gateways reach the host.
    pub(crate) fn access(&self) -> SshAccess {
        self.access.clone()
    }
}

impl Drop for SshHost {
    fn drop(&mut self) {
        let left = proc::with_argument(&self.launcher_script);
        if !left.is_empty() {
            eprintln!(
                "gateway-bench: killing {} kernel process(es) left over SSH: {left:?}",
                left.len()
            );
            proc::kill_all(&left);
        }
    }
}

/// Checks, from inside a started kernel, that it runs in an SSH session to the benchmark's host:
/// sshd sets `SSH_CONNECTION` to `client_ip client_port server_ip server_port`, and the gateways
/// run without one of their own.
pub(crate) fn check_ssh_connection(printed: &str, access: &SshAccess) -> Result<()> {
    let fields: Vec<&str> = printed.split_whitespace().collect();
    let port = access.port.to_string();
    match fields.as_slice() {
        [_, _, server, server_port] if *server == HOST && *server_port == port => Ok(()),
        _ => bail!(
            "the kernel did not run over SSH to {HOST}:{port} (its SSH_CONNECTION is `{}`)",
            printed.trim()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_connection_must_name_the_host_and_port() {
        let access = SshAccess {
            port: 2222,
            user: "root".into(),
            key: PathBuf::new(),
            known_hosts: PathBuf::new(),
            home: PathBuf::new(),
        };
        assert!(check_ssh_connection("127.0.0.2 51234 127.0.0.2 2222\n", &access).is_ok());
        for bad in [
            "",
            "None",
            "10.0.0.1 5 10.0.0.2 22",
            "127.0.0.2 1 127.0.0.2 22",
        ] {
            assert!(check_ssh_connection(bad, &access).is_err(), "{bad}");
        }
    }
}
