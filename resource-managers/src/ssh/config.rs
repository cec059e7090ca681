//! The `ssh` backend's settings: [`SshConfig`] (what every launch needs) and [`SshOptions`] (how
//! hosts are reached over SSH), and [`Remote`], the part of them its kernels keep for later.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kernel_launcher::ResponseListener;

use super::balance::LoadBalancing;
use super::session::{HostKeys, Session, SessionError, SshAuth, Target};
use crate::launcher::LauncherSettings;

/// Settings of the `ssh` backend.
#[derive(Debug, Clone)]
pub struct SshConfig {
    /// Hosts kernels may run on (`EG_REMOTE_HOSTS`, default `localhost`); a kernelspec's
    /// `config.remote_hosts` replaces them.
    pub remote_hosts: Vec<String>,
    /// What every launcher backend holds: the response listener, where launcher logs go
    /// (`EG_KERNEL_LOG_DIR`, `kernel-<id>.log`), the PATH for a relative `argv[0]` of a launch
    /// on this machine, the communication port's connect timeout (`EG_SOCKET_TIMEOUT`; 1 s is
    /// sane, EG's 5 ms default is not).
    pub launcher: LauncherSettings,
}

impl SshConfig {
    /// No configured hosts (launches go to `localhost` unless a kernelspec names hosts) and
    /// [`LauncherSettings::new`]'s defaults.
    pub fn new(response: Arc<ResponseListener>, log_dir: PathBuf) -> SshConfig {
        SshConfig {
            remote_hosts: Vec::new(),
            launcher: LauncherSettings::new(response, log_dir),
        }
    }
}

/// SSH settings of the `ssh` backend (all optional; [`SshOptions::default`] is EG's default
/// behaviour with key files from nowhere: set at least one of [`SshAuth`]'s methods to reach
/// remote hosts).
#[derive(Debug, Clone)]
pub struct SshOptions {
    /// SSH port of the hosts (`EG_SSH_PORT`, default 22).
    pub port: u16,
    /// The remote user (`EG_REMOTE_USER`); `None` = the gateway's own OS user.
    pub remote_user: Option<String>,
    /// With impersonation (`EG_IMPERSONATION_ENABLED`), a request's `KERNEL_USERNAME` is the
    /// remote user.
    pub impersonation: bool,
    /// Key file, agent, password (`EG_REMOTE_PWD`).
    pub auth: SshAuth,
    /// known_hosts file and whether unknown hosts are accepted.
    pub host_keys: HostKeys,
    /// `EG_LOAD_BALANCING_ALGORITHM`.
    pub load_balancing: LoadBalancing,
    /// Tunnel the kernel's ports through the SSH connection (`EG_ENABLE_TUNNELING`).
    pub tunneling: bool,
    /// TCP connect, handshake and authentication must finish within this.
    pub connect_timeout: Duration,
    /// A remote command (launch, kill, log fetch) must finish within this (EG: 30 s).
    pub command_timeout: Duration,
    /// A host that could not be reached is tried last for this long.
    pub host_retry_after: Duration,
    /// Where launchers log on the hosts; `None` = the local log directory (EG uses
    /// `EG_KERNEL_LOG_DIR` for both).
    pub remote_log_dir: Option<PathBuf>,
    /// Use SSH even for hosts that are this machine (EG launches those directly).
    pub ssh_to_local_hosts: bool,
}

impl Default for SshOptions {
    fn default() -> SshOptions {
        SshOptions {
            port: 22,
            remote_user: None,
            impersonation: false,
            auth: SshAuth::default(),
            host_keys: HostKeys::default(),
            load_balancing: LoadBalancing::RoundRobin,
            tunneling: false,
            connect_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(30),
            host_retry_after: Duration::from_secs(30),
            remote_log_dir: None,
            ssh_to_local_hosts: false,
        }
    }
}

/// What the remote side of a backend needs, shared with its kernels.
#[derive(Debug)]
pub(super) struct Remote {
    pub(super) options: SshOptions,
    /// The gateway's OS user (default remote user).
    pub(super) own_user: String,
}

impl Remote {
    /// The options as given, with the gateway user's `~/.ssh/known_hosts` when they name no
    /// known_hosts file.
    pub(super) fn new(mut options: SshOptions) -> Remote {
        let me = nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten();
        if options.host_keys.known_hosts.is_none() {
            options.host_keys.known_hosts =
                me.as_ref().map(|u| u.dir.join(".ssh").join("known_hosts"));
        }
        let own_user = me.map(|u| u.name).unwrap_or_else(|| "root".to_owned());
        Remote { options, own_user }
    }

    /// A new connection to `target`, within `budget` and the connect timeout.
    pub(super) async fn connect(
        &self,
        target: &Target,
        budget: Duration,
    ) -> Result<Session, SessionError> {
        Session::connect(
            target,
            &self.options.auth,
            &self.options.host_keys,
            self.options.connect_timeout.min(budget),
        )
        .await
    }
}
