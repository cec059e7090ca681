//! One authenticated SSH connection (russh): host-key check, authentication, `exec`, and
//! `direct-tcpip` channels.
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use russh::client::{self, Handle};
use russh::keys::agent::AgentIdentity;
use russh::keys::agent::client::AgentClient;
use russh::keys::{
    PrivateKeyWithHashAlg, PublicKeyOrCertificate, check_known_hosts_path, load_secret_key,
};
use russh::{ChannelMsg, Disconnect};

/// A secret (password, key passphrase): its `Debug` never shows it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value (for the SSH library only).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How the gateway proves who it is, tried in this order: key file, agent, password.
#[derive(Debug, Clone, Default)]
pub struct SshAuth {
    /// A private key file (OpenSSH or PEM format).
    pub key_file: Option<PathBuf>,
    /// The key file's passphrase, if it has one.
    pub key_passphrase: Option<Secret>,
    /// An SSH agent's socket (the binary passes `SSH_AUTH_SOCK`).
    pub agent_socket: Option<PathBuf>,
    /// A password (`EG_REMOTE_PWD`).
    pub password: Option<Secret>,
}

/// How server host keys are checked.
#[derive(Debug, Clone, Default)]
pub struct HostKeys {
    /// The known_hosts file (`None`: the gateway user's `~/.ssh/known_hosts`, given by the
    /// backend).
    pub known_hosts: Option<PathBuf>,
    /// Accept hosts that known_hosts does not list (a changed key is always refused).
    pub accept_unknown: bool,
}

/// Why a connection could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionError {
    /// The host did not answer, refused, or the SSH handshake failed: try another host.
    Unreachable(String),
    /// The host key is unknown or changed.
    HostKey(String),
    /// No authentication method was accepted.
    Auth(String),
    /// A command or channel failed on an established connection.
    Channel(String),
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Unreachable(why)
            | SessionError::HostKey(why)
            | SessionError::Auth(why)
            | SessionError::Channel(why) => f.write_str(why),
        }
    }
}

/// The russh event handler: checks the server's host key.
#[derive(Debug)]
struct Client {
    host: String,
    port: u16,
    keys: HostKeys,
    rejected: Arc<Mutex<Option<String>>>,
}

impl Client {
    fn verdict(&self, key: &PublicKeyOrCertificate) -> Result<(), String> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            return if self.keys.accept_unknown {
                Ok(())
            } else {
                Err("the host presented a certificate; only known_hosts keys are trusted".into())
            };
        };
        let Some(path) = &self.keys.known_hosts else {
            return if self.keys.accept_unknown {
                Ok(())
            } else {
                Err("no known_hosts file is configured".into())
            };
        };
        match check_known_hosts_path(&self.host, self.port, key, path) {
            Ok(true) => Ok(()),
            Ok(false) if self.keys.accept_unknown => {
                tracing::warn!(host = %self.host, port = self.port, "accepting an unknown host key (accept-unknown-hosts is on)");
                Ok(())
            }
            Ok(false) => Err(format!(
                "host key of {}:{} is not in {}",
                self.host,
                self.port,
                path.display()
            )),
            Err(russh::keys::Error::KeyChanged { line }) => Err(format!(
                "host key of {}:{} does not match {} line {line}",
                self.host,
                self.port,
                path.display()
            )),
            Err(e) => Err(format!("cannot check {}: {e}", path.display())),
        }
    }
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        match self.verdict(key) {
            Ok(()) => Ok(true),
            Err(why) => {
                *self.rejected.lock() = Some(why);
                Ok(false)
            }
        }
    }
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Host name as configured (for known_hosts and messages).
    pub(crate) host: String,
    /// The address to connect to.
    pub(crate) addr: SocketAddr,
    /// The remote user.
    pub(crate) user: String,
}

/// What an `exec` printed and how it ended.
#[derive(Debug, Clone, Default)]
pub(crate) struct ExecOutput {
    /// Standard output.
    pub(crate) stdout: String,
    /// Standard error.
    pub(crate) stderr: String,
}

/// One authenticated connection; cheap to share (`Arc`). Dropping the last handle closes it.
pub(crate) struct Session {
    handle: Handle<Client>,
    target: Target,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Connects, checks the host key and authenticates, all within `timeout`.
    pub(crate) async fn connect(
        target: &Target,
        auth: &SshAuth,
        keys: &HostKeys,
        timeout: Duration,
    ) -> Result<Session, SessionError> {
        let where_ = format!("{}@{}", target.user, target.addr);
        match tokio::time::timeout(timeout, Session::connect_inner(target, auth, keys)).await {
            Ok(result) => result,
            Err(_) => Err(SessionError::Unreachable(format!(
                "{where_}: no SSH connection within {timeout:?}"
            ))),
        }
    }

    async fn connect_inner(
        target: &Target,
        auth: &SshAuth,
        keys: &HostKeys,
    ) -> Result<Session, SessionError> {
        let where_ = format!("{}@{}", target.user, target.addr);
        let rejected = Arc::new(Mutex::new(None));
        let handler = Client {
            host: target.host.clone(),
            port: target.addr.port(),
            keys: keys.clone(),
            rejected: Arc::clone(&rejected),
        };
        let config = Arc::new(client::Config {
            nodelay: true,
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_max: 4,
            ..client::Config::default()
        });
        let mut handle = match client::connect(config, target.addr, handler).await {
            Ok(handle) => handle,
            Err(err) => {
                let rejected = rejected.lock().take();
                return Err(match rejected {
                    Some(why) => SessionError::HostKey(format!("{where_}: {why}")),
                    None => SessionError::Unreachable(format!("{where_}: {}", describe(&err))),
                });
            }
        };
        match authenticate(&mut handle, &target.user, auth, &where_).await {
            Ok(()) => Ok(Session {
                handle,
                target: target.clone(),
            }),
            Err(e) => {
                let _ = handle.disconnect(Disconnect::ByApplication, "", "en").await;
                Err(e)
            }
        }
    }

    /// Whether the connection has ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Runs `command` through the remote user's shell and collects its output (at most 1 MiB
    /// of each stream), within `timeout`.
    pub(crate) async fn exec(
        &self,
        command: &str,
        timeout: Duration,
    ) -> Result<ExecOutput, SessionError> {
        const LIMIT: usize = 1 << 20;
        let run = async {
            let mut channel = self
                .handle
                .channel_open_session()
                .await
                .map_err(|e| SessionError::Channel(format!("cannot open a channel: {e}")))?;
            channel
                .exec(true, command)
                .await
                .map_err(|e| SessionError::Channel(format!("exec failed: {e}")))?;
            let mut stdout = Vec::new();
            let mut stderr = Vec::new();
            while let Some(msg) = channel.wait().await {
                match msg {
                    ChannelMsg::Data { data } if stdout.len() < LIMIT => {
                        stdout.extend_from_slice(&data);
                    }
                    ChannelMsg::ExtendedData { data, .. } if stderr.len() < LIMIT => {
                        stderr.extend_from_slice(&data);
                    }
                    _ => {}
                }
            }
            Ok(ExecOutput {
                stdout: String::from_utf8_lossy(&stdout).into_owned(),
                stderr: String::from_utf8_lossy(&stderr).into_owned(),
            })
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(result) => result,
            Err(_) => Err(SessionError::Channel(format!(
                "command on {} did not finish within {timeout:?}",
                self.target.host
            ))),
        }
    }

    /// Opens a `direct-tcpip` channel to `host:port` as the remote host sees it.
    pub(crate) async fn open_direct(
        &self,
        host: &str,
        port: u16,
        originator: SocketAddr,
    ) -> Result<russh::Channel<client::Msg>, SessionError> {
        self.handle
            .channel_open_direct_tcpip(
                host,
                u32::from(port),
                originator.ip().to_string(),
                u32::from(originator.port()),
            )
            .await
            .map_err(|e| SessionError::Channel(format!("direct-tcpip to {host}:{port}: {e}")))
    }

    /// Ends the connection politely.
    pub(crate) async fn close(&self) {
        let _ = self
            .handle
            .disconnect(Disconnect::ByApplication, "", "en")
            .await;
    }
}

/// Tries the configured methods in turn (key file, agent, password) until one is accepted.
async fn authenticate(
    handle: &mut Handle<Client>,
    user: &str,
    auth: &SshAuth,
    where_: &str,
) -> Result<(), SessionError> {
    let unreachable = |e: russh::Error| SessionError::Unreachable(format!("{where_}: {e}"));
    let mut tried = Vec::new();
    if let Some(path) = &auth.key_file {
        tried.push("key file");
        let passphrase = auth.key_passphrase.as_ref().map(Secret::expose);
        let key = load_secret_key(path, passphrase).map_err(|e| {
            SessionError::Auth(format!("{where_}: cannot load key {}: {e}", path.display()))
        })?;
        let hash = handle
            .best_supported_rsa_hash()
            .await
            .map_err(unreachable)?
            .flatten();
        let key = PrivateKeyWithHashAlg::new(Arc::new(key), hash);
        let result = handle
            .authenticate_publickey(user.to_owned(), key)
            .await
            .map_err(unreachable)?;
        if result.success() {
            return Ok(());
        }
    }
    if let Some(socket) = &auth.agent_socket {
        tried.push("agent");
        if agent_auth(handle, user, socket).await {
            return Ok(());
        }
    }
    if let Some(password) = &auth.password {
        tried.push("password");
        let result = handle
            .authenticate_password(user.to_owned(), password.expose())
            .await
            .map_err(unreachable)?;
        if result.success() {
            return Ok(());
        }
    }
    Err(SessionError::Auth(if tried.is_empty() {
        format!("{where_}: no SSH key file, agent or password is configured")
    } else {
        format!(
            "{where_}: authentication failed (tried: {})",
            tried.join(", ")
        )
    }))
}

/// Tries each identity the agent holds.
async fn agent_auth(handle: &mut Handle<Client>, user: &str, socket: &std::path::Path) -> bool {
    let mut agent = match AgentClient::connect_uds(socket).await {
        Ok(agent) => agent,
        Err(e) => {
            tracing::warn!(socket = %socket.display(), "cannot reach the SSH agent: {e}");
            return false;
        }
    };
    let identities = match agent.request_identities().await {
        Ok(identities) => identities,
        Err(e) => {
            tracing::warn!("the SSH agent did not list its keys: {e}");
            return false;
        }
    };
    let hash = handle
        .best_supported_rsa_hash()
        .await
        .ok()
        .flatten()
        .flatten();
    for identity in identities {
        let AgentIdentity::PublicKey { key, .. } = identity else {
            continue;
        };
        match handle
            .authenticate_publickey_with(user.to_owned(), key, hash, &mut agent)
            .await
        {
            Ok(result) if result.success() => return true,
            Ok(_) => {}
            Err(e) => tracing::debug!("agent key refused: {e}"),
        }
    }
    false
}

/// A short text for a connect error (`connection refused`, ...).
fn describe(err: &russh::Error) -> String {
    match err {
        russh::Error::IO(io) => io.to_string(),
        other => other.to_string(),
    }
}
