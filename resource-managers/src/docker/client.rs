//! A thin, typed client of the Docker Engine API on a unix socket or a plain TCP port
//! ([`DockerHost`]): the calls the `docker` and `docker-swarm` backends make, and only those.
//!
//! Every request opens its own HTTP/1.1 connection (hyper's client connection over tokio's
//! `UnixStream` or `TcpStream`), carries the API version in its path ([`API_VERSION`], served by Docker 20.10
//! and later and by Podman's Docker-compatible service) and is bounded by the client's
//! timeout. An answer of 400 or more becomes [`DockerError::Engine`] with the engine's own
//! `message`, so callers can quote the engine's reason.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

/// The Engine API version every request names.
pub const API_VERSION: &str = "v1.41";

/// Errors of Engine API calls.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DockerError {
    /// The engine could not be reached, or the connection broke.
    #[error("cannot reach the Docker engine at {engine}: {reason}")]
    Unreachable {
        /// Where the engine was looked for (`unix:///path`, `tcp://host:port`).
        engine: String,
        /// What went wrong.
        reason: String,
    },
    /// The engine answered with an error status.
    #[error("the Docker engine refused {what} ({status}): {message}")]
    Engine {
        /// The HTTP status.
        status: u16,
        /// The call, e.g. `POST /containers/create`.
        what: String,
        /// The engine's `message`.
        message: String,
    },
    /// The answer could not be read.
    #[error("the Docker engine's answer to {what} is not what the API describes: {reason}")]
    Decode {
        /// The call.
        what: String,
        /// Why.
        reason: String,
    },
    /// No answer within the client's timeout.
    #[error("the Docker engine did not answer {what} within {timeout:?}")]
    Timeout {
        /// The call.
        what: String,
        /// The timeout.
        timeout: Duration,
    },
}

impl DockerError {
    /// Whether the engine said 404 (no such container, service, image ...).
    pub fn is_not_found(&self) -> bool {
        matches!(self, DockerError::Engine { status: 404, .. })
    }

    /// The engine's own message, if the engine answered.
    pub fn engine_message(&self) -> Option<&str> {
        match self {
            DockerError::Engine { message, .. } => Some(message),
            _ => None,
        }
    }
}

/// Where the engine listens, as `DOCKER_HOST` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerHost {
    /// `unix:///path/to/docker.sock`.
    Unix(PathBuf),
    /// `tcp://host:port`: plain HTTP (no TLS); the port defaults to 2375, Docker's.
    Tcp {
        /// The host name or address.
        host: String,
        /// The port.
        port: u16,
    },
}

impl DockerHost {
    /// The engine's default socket, `/var/run/docker.sock`.
    pub const DEFAULT_SOCKET: &'static str = "/var/run/docker.sock";

    /// Reads a `DOCKER_HOST` value; what cannot be served is an error naming what can.
    pub fn parse(text: &str) -> Result<DockerHost, String> {
        let text = text.trim();
        let supported = "the supported forms are unix:///path/to/docker.sock and tcp://host:port (plain, without TLS)";
        if let Some(path) = text.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "DOCKER_HOST={text:?}: the socket path must be absolute; {supported}"
                ));
            }
            return Ok(DockerHost::Unix(PathBuf::from(path)));
        }
        let Some(rest) = text.strip_prefix("tcp://") else {
            return Err(format!(
                "DOCKER_HOST={text:?} is not supported; {supported}"
            ));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "DOCKER_HOST={text:?}: tcp:// takes a host and a port only; {supported}"
            ));
        }
        // `[v6]:port`, `host:port`, or a host alone.
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port))
                if !host.is_empty() && (!host.contains(':') || host.ends_with(']')) =>
            {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| {
                        format!("DOCKER_HOST={text:?}: '{port}' is not a port; {supported}")
                    })?;
                (host, port)
            }
            _ => (authority, 2375),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("DOCKER_HOST={text:?} names no host; {supported}"));
        }
        Ok(DockerHost::Tcp {
            host: host.to_owned(),
            port,
        })
    }
}

impl Default for DockerHost {
    fn default() -> DockerHost {
        DockerHost::Unix(PathBuf::from(DockerHost::DEFAULT_SOCKET))
    }
}

impl std::fmt::Display for DockerHost {
    /// As `DOCKER_HOST` spells it (what the launcher is given).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DockerHost::Unix(path) => write!(f, "unix://{}", path.display()),
            DockerHost::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp://[{host}]:{port}")
            }
            DockerHost::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
        }
    }
}

/// A Docker Engine API client; cheap to clone.
#[derive(Debug, Clone)]
pub struct DockerClient {
    host: DockerHost,
    timeout: Duration,
}

/// `GET /containers/{id}/json`, the parts the backends read.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerInspect {
    /// Full id.
    pub id: String,
    /// Name with its leading `/`.
    #[serde(default)]
    pub name: String,
    /// Run state.
    pub state: ContainerState,
    /// Addresses.
    #[serde(default)]
    pub network_settings: NetworkSettings,
    /// Labels and image, as created.
    #[serde(default)]
    pub config: ContainerConfig,
}

/// A container's `State`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerState {
    /// `created`, `running`, `paused`, `restarting`, `removing`, `exited` or `dead`.
    #[serde(default)]
    pub status: String,
    /// Exit code once exited.
    #[serde(default)]
    pub exit_code: i64,
    /// Why the engine could not run it (e.g. an executable not found).
    #[serde(default)]
    pub error: String,
    /// Whether it was killed for lack of memory.
    #[serde(default, rename = "OOMKilled")]
    pub oom_killed: bool,
}

/// A container's `NetworkSettings`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkSettings {
    /// The address on the default bridge (empty otherwise).
    #[serde(default, rename = "IPAddress")]
    pub ip_address: String,
    /// Per network.
    #[serde(default)]
    pub networks: Option<BTreeMap<String, EndpointSettings>>,
}

/// One network of a container.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct EndpointSettings {
    /// The container's address there (empty with host networking).
    #[serde(default, rename = "IPAddress")]
    pub ip_address: String,
}

/// A container's `Config`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    /// Labels.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// The image as named at creation.
    #[serde(default)]
    pub image: String,
}

/// One entry of `GET /containers/json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerSummary {
    /// Full id.
    pub id: String,
    /// Names, each with a leading `/`.
    #[serde(default)]
    pub names: Vec<String>,
    /// Run state (`created`, `running`, `exited`, ...).
    #[serde(default)]
    pub state: String,
}

/// One entry of `GET /services`.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceSummary {
    /// Service id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Its spec (name, labels).
    #[serde(rename = "Spec", default)]
    pub spec: ServiceSpecSummary,
}

/// The name of a service.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceSpecSummary {
    /// Service name.
    #[serde(default)]
    pub name: String,
}

/// One entry of `GET /tasks`.
#[derive(Debug, Clone, Deserialize)]
pub struct Task {
    /// Task id.
    #[serde(rename = "ID")]
    pub id: String,
    /// The node it was scheduled on (empty until assigned).
    #[serde(rename = "NodeID", default)]
    pub node_id: String,
    /// What the orchestrator wants of it (`running`, `shutdown`, ...).
    #[serde(rename = "DesiredState", default)]
    pub desired_state: String,
    /// Where it is.
    #[serde(rename = "Status", default)]
    pub status: TaskStatus,
    /// Its network attachments (`Addresses` in CIDR form).
    #[serde(rename = "NetworksAttachments", default)]
    pub networks_attachments: Vec<NetworkAttachment>,
    /// Creation time (RFC 3339), to find the newest.
    #[serde(rename = "CreatedAt", default)]
    pub created_at: String,
}

/// A task's `Status`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct TaskStatus {
    /// `new`, `pending`, `assigned`, `accepted`, `preparing`, `starting`, `running`,
    /// `complete`, `shutdown`, `failed`, `rejected`, `remove` or `orphaned`.
    #[serde(default)]
    pub state: String,
    /// A human-readable note.
    #[serde(default)]
    pub message: String,
    /// Why it failed.
    #[serde(default)]
    pub err: String,
    /// The container's exit code, once it exited.
    #[serde(default)]
    pub container_status: Option<TaskContainerStatus>,
}

/// A task's container.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct TaskContainerStatus {
    /// Exit code.
    #[serde(default)]
    pub exit_code: Option<i64>,
}

/// One network a task is attached to.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkAttachment {
    /// `10.0.1.5/24`, ...
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// `GET /nodes/{id}`, the node's address.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct Node {
    #[serde(default)]
    status: NodeStatus,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct NodeStatus {
    #[serde(default)]
    addr: String,
}

/// `GET /info`, the swarm part.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct Info {
    #[serde(default)]
    swarm: SwarmInfo,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct SwarmInfo {
    #[serde(default)]
    local_node_state: String,
    #[serde(default)]
    control_available: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Created {
    id: String,
}

#[derive(Debug, Deserialize)]
struct ServiceCreated {
    #[serde(rename = "ID")]
    id: String,
}

/// An HTTP/1.1 client connection on `stream`, driven in the background.
async fn handshake<S>(
    stream: S,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

impl DockerClient {
    /// A client of the engine at `host`; every call gives up after `timeout`.
    pub fn new(host: DockerHost, timeout: Duration) -> DockerClient {
        DockerClient { host, timeout }
    }

    /// Where the engine is.
    pub fn host(&self) -> &DockerHost {
        &self.host
    }

    /// One call; the status and the whole body. Statuses of 400 and more are errors carrying
    /// the engine's message.
    async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Bytes, DockerError> {
        let path = path_and_query.split('?').next().unwrap_or_default();
        let what = format!("{method} {path}");
        let work = self.exchange(method, path_and_query, body, &what);
        let (status, bytes) = tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| DockerError::Timeout {
                what: what.clone(),
                timeout: self.timeout,
            })??;
        if status.as_u16() >= 400 {
            #[derive(Deserialize)]
            struct Message {
                message: String,
            }
            let message = serde_json::from_slice::<Message>(&bytes)
                .map(|m| m.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).trim().to_owned());
            return Err(DockerError::Engine {
                status: status.as_u16(),
                what,
                message,
            });
        }
        Ok(bytes)
    }

    async fn exchange(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
        what: &str,
    ) -> Result<(StatusCode, Bytes), DockerError> {
        let unreachable = |reason: String| DockerError::Unreachable {
            engine: self.host.to_string(),
            reason,
        };
        let (mut sender, host_header) = match &self.host {
            DockerHost::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|e| unreachable(e.to_string()))?;
                (
                    handshake(stream).await.map_err(unreachable)?,
                    "docker".to_owned(),
                )
            }
            DockerHost::Tcp { host, port } => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(|e| unreachable(e.to_string()))?;
                let _ = stream.set_nodelay(true);
                let header = match host.contains(':') {
                    true => format!("[{host}]:{port}"),
                    false => format!("{host}:{port}"),
                };
                (handshake(stream).await.map_err(unreachable)?, header)
            }
        };
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("/{API_VERSION}{path_and_query}"))
            .header(hyper::header::HOST, host_header);
        if body.is_some() {
            builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request =
            builder
                .body(Full::new(Bytes::from(payload)))
                .map_err(|e| DockerError::Decode {
                    what: what.to_owned(),
                    reason: format!("cannot build the request: {e}"),
                })?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        Ok((status, bytes))
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, DockerError> {
        let bytes = self.call(method.clone(), path_and_query, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| DockerError::Decode {
            what: format!(
                "{method} {}",
                path_and_query.split('?').next().unwrap_or_default()
            ),
            reason: e.to_string(),
        })
    }

    /// `GET /_ping`: whether the engine answers.
    pub async fn ping(&self) -> Result<(), DockerError> {
        self.call(Method::GET, "/_ping", None).await.map(|_| ())
    }

    /// Whether the engine is a manager of an active swarm (`GET /info`).
    pub async fn is_swarm_manager(&self) -> Result<bool, DockerError> {
        let info: Info = self.json(Method::GET, "/info", None).await?;
        Ok(info.swarm.local_node_state == "active" && info.swarm.control_available)
    }

    /// `GET /images/{name}/json` answered 200.
    pub async fn image_exists(&self, image: &str) -> Result<bool, DockerError> {
        match self
            .call(
                Method::GET,
                &format!("/images/{}/json", encode(image)),
                None,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(err) if err.is_not_found() => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// `POST /images/create?fromImage=...`: pulls an image. The engine streams progress; an
    /// `error` in the stream is the pull's failure.
    pub async fn pull(&self, image: &str) -> Result<(), DockerError> {
        let bytes = self
            .call(
                Method::POST,
                &format!("/images/create?fromImage={}", encode(image)),
                None,
            )
            .await?;
        for line in bytes.split(|b| *b == b'\n') {
            if let Ok(value) = serde_json::from_slice::<serde_json::Value>(line)
                && let Some(error) = value.get("error").and_then(serde_json::Value::as_str)
            {
                return Err(DockerError::Engine {
                    status: 500,
                    what: "POST /images/create".into(),
                    message: error.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// `POST /containers/create?name=...`; the new container's id.
    pub async fn create_container(
        &self,
        name: &str,
        body: &serde_json::Value,
    ) -> Result<String, DockerError> {
        let created: Created = self
            .json(
                Method::POST,
                &format!("/containers/create?name={}", encode(name)),
                Some(body),
            )
            .await?;
        Ok(created.id)
    }

    /// `POST /containers/{id}/start`.
    pub async fn start_container(&self, id: &str) -> Result<(), DockerError> {
        self.call(
            Method::POST,
            &format!("/containers/{}/start", encode(id)),
            None,
        )
        .await
        .map(|_| ())
    }

    /// `GET /containers/{id}/json`.
    pub async fn inspect_container(&self, id: &str) -> Result<ContainerInspect, DockerError> {
        self.json(
            Method::GET,
            &format!("/containers/{}/json", encode(id)),
            None,
        )
        .await
    }

    /// `GET /containers/json?all=true` with a label filter (`key=value`).
    pub async fn containers_labelled(
        &self,
        label: &str,
    ) -> Result<Vec<ContainerSummary>, DockerError> {
        let filters = serde_json::json!({ "label": [label] }).to_string();
        self.json(
            Method::GET,
            &format!("/containers/json?all=true&filters={}", encode(&filters)),
            None,
        )
        .await
    }

    /// `POST /containers/{id}/kill?signal=...`.
    pub async fn kill_container(&self, id: &str, signal: &str) -> Result<(), DockerError> {
        self.call(
            Method::POST,
            &format!("/containers/{}/kill?signal={}", encode(id), encode(signal)),
            None,
        )
        .await
        .map(|_| ())
    }

    /// `DELETE /containers/{id}?force=true&v=true`; a container already gone is fine.
    pub async fn remove_container(&self, id: &str) -> Result<(), DockerError> {
        match self
            .call(
                Method::DELETE,
                &format!("/containers/{}?force=true&v=true", encode(id)),
                None,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if err.is_not_found() => Ok(()),
            // "removal of container ... is already in progress"
            Err(DockerError::Engine { status: 409, .. }) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// The last `tail` lines of a container's output (`GET /containers/{id}/logs`).
    pub async fn container_logs(&self, id: &str, tail: usize) -> Result<String, DockerError> {
        let bytes = self
            .call(
                Method::GET,
                &format!(
                    "/containers/{}/logs?stdout=true&stderr=true&tail={tail}",
                    encode(id)
                ),
                None,
            )
            .await?;
        Ok(demultiplex(&bytes))
    }

    /// `POST /services/create`; the new service's id.
    pub async fn create_service(&self, body: &serde_json::Value) -> Result<String, DockerError> {
        let created: ServiceCreated = self
            .json(Method::POST, "/services/create", Some(body))
            .await?;
        Ok(created.id)
    }

    /// `GET /services` with a label filter.
    pub async fn services_labelled(&self, label: &str) -> Result<Vec<ServiceSummary>, DockerError> {
        let filters = serde_json::json!({ "label": [label] }).to_string();
        self.json(
            Method::GET,
            &format!("/services?filters={}", encode(&filters)),
            None,
        )
        .await
    }

    /// `GET /services/{id}`.
    pub async fn inspect_service(&self, id: &str) -> Result<ServiceSummary, DockerError> {
        self.json(Method::GET, &format!("/services/{}", encode(id)), None)
            .await
    }

    /// `DELETE /services/{id}`; a service already gone is fine.
    pub async fn remove_service(&self, id: &str) -> Result<(), DockerError> {
        match self
            .call(Method::DELETE, &format!("/services/{}", encode(id)), None)
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if err.is_not_found() => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// The tasks of a service (`GET /tasks?filters={"service":[id]}`), newest first.
    pub async fn service_tasks(&self, service: &str) -> Result<Vec<Task>, DockerError> {
        let filters = serde_json::json!({ "service": [service] }).to_string();
        let mut tasks: Vec<Task> = self
            .json(
                Method::GET,
                &format!("/tasks?filters={}", encode(&filters)),
                None,
            )
            .await?;
        tasks.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        Ok(tasks)
    }

    /// A swarm node's address (`GET /nodes/{id}`, `Status.Addr`).
    pub async fn node_addr(&self, node: &str) -> Result<String, DockerError> {
        let node: Node = self
            .json(Method::GET, &format!("/nodes/{}", encode(node)), None)
            .await?;
        Ok(node.status.addr)
    }

    /// The last `tail` lines of a service's output (`GET /services/{id}/logs`).
    pub async fn service_logs(&self, id: &str, tail: usize) -> Result<String, DockerError> {
        let bytes = self
            .call(
                Method::GET,
                &format!(
                    "/services/{}/logs?stdout=true&stderr=true&tail={tail}",
                    encode(id)
                ),
                None,
            )
            .await?;
        Ok(demultiplex(&bytes))
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986), for paths and queries.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The text of a log stream: the engine frames each chunk with 8 bytes (stream, 0, 0, 0, a
/// big-endian length) unless the container has a TTY, whose output comes raw.
pub fn demultiplex(bytes: &[u8]) -> String {
    let framed = bytes.len() >= 8
        && matches!(bytes.first(), Some(0..=2))
        && bytes.get(1..4) == Some(&[0, 0, 0]);
    if !framed {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some(header) = rest.get(..8) {
        let len = u32::from_be_bytes([
            header.get(4).copied().unwrap_or(0),
            header.get(5).copied().unwrap_or(0),
            header.get(6).copied().unwrap_or(0),
            header.get(7).copied().unwrap_or(0),
        ]) as usize;
        let end = (8 + len).min(rest.len());
        out.extend_from_slice(rest.get(8..end).unwrap_or_default());
        rest = rest.get(end..).unwrap_or_default();
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hosts_read_as_docker_spells_them() {
        let tcp = |host: &str, port| DockerHost::Tcp {
            host: host.to_owned(),
            port,
        };
        for (text, host) in [
            ("unix:///tmp/d.sock", DockerHost::Unix("/tmp/d.sock".into())),
            ("tcp://127.0.0.1:2376", tcp("127.0.0.1", 2376)),
            ("tcp://engine.example:12375/", tcp("engine.example", 12375)),
            ("tcp://engine", tcp("engine", 2375)),
            ("tcp://[::1]:2375", tcp("::1", 2375)),
        ] {
            assert_eq!(DockerHost::parse(text).as_ref(), Ok(&host), "{text}");
            assert_eq!(
                DockerHost::parse(&host.to_string()).as_ref(),
                Ok(&host),
                "{host}"
            );
        }
        for bad in [
            "unix://relative.sock",
            "ssh://me@engine",
            "npipe:////./pipe/docker_engine",
            "tcp://",
            "tcp://h:port",
            "tcp://h:0",
            "tcp://h:2375/path",
            "/var/run/docker.sock",
        ] {
            let err = DockerHost::parse(bad).expect_err(bad);
            assert!(
                err.contains("unix:///path/to/docker.sock and tcp://host:port"),
                "{err}"
            );
        }
    }

    #[test]
    fn queries_are_encoded() {
        assert_eq!(encode("a b/c:d"), "a%20b%2Fc%3Ad");
        assert_eq!(
            encode(r#"{"label":["kernel_id=x"]}"#),
            "%7B%22label%22%3A%5B%22kernel_id%3Dx%22%5D%7D"
        );
    }

    #[test]
    fn log_streams_are_demultiplexed() {
        let mut framed = vec![1, 0, 0, 0, 0, 0, 0, 3];
        framed.extend_from_slice(b"hi\n");
        framed.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 4]);
        framed.extend_from_slice(b"err\n");
        assert_eq!(demultiplex(&framed), "hi\nerr\n");
        assert_eq!(demultiplex(b"plain tty output\n"), "plain tty output\n");
        // A truncated frame keeps what is there.
        assert_eq!(demultiplex(&[1, 0, 0, 0, 0, 0, 0, 9, b'a']), "a");
    }
}
