//! A thin, typed client of the Kubernetes REST API on the workspace's `reqwest`: the calls a
//! kernel backend needs (create, get, list by label selector, watch as a stream of JSON lines,
//! delete with a grace period and propagation policy) over JSON objects, with the API server's
//! `Status` errors as [`KubeError::Api`].

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};

use super::config::{ClusterAuth, ClusterConfig};

/// Errors talking to the API server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeError {
    /// Bad or missing configuration (kubeconfig, in-cluster files, certificates).
    #[error("Kubernetes configuration: {0}")]
    Config(String),
    /// The server could not be reached, or the connection failed.
    #[error("cannot reach the Kubernetes API server at {server}: {message}")]
    Transport {
        /// The server's base URL.
        server: String,
        /// What went wrong (with the causes).
        message: String,
    },
    /// The server answered with an error `Status`.
    #[error("Kubernetes API: {code} {reason}: {message}")]
    Api {
        /// HTTP status.
        code: u16,
        /// `Status.reason` (`NotFound`, `AlreadyExists`, `Invalid`, `Forbidden`, ...).
        reason: String,
        /// `Status.message`.
        message: String,
    },
    /// The answer was not what the API promises.
    #[error("unexpected answer from the Kubernetes API server: {0}")]
    Decode(String),
}

impl KubeError {
    /// Whether the server said 404.
    pub fn is_not_found(&self) -> bool {
        matches!(self, KubeError::Api { code: 404, .. })
    }

    /// Whether the server said 409 (already exists, or a conflict).
    pub fn is_conflict(&self) -> bool {
        matches!(self, KubeError::Api { code: 409, .. })
    }
}

/// A resource kind's place in the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// `Pod`, `Namespace`, ...
    pub kind: &'static str,
    /// `api/v1` or `apis/<group>/<version>`.
    pub prefix: &'static str,
    /// `pods`, ...
    pub plural: &'static str,
    /// Whether its objects live in namespaces.
    pub namespaced: bool,
}

/// Pods.
pub const PODS: Kind = Kind {
    kind: "Pod",
    prefix: "api/v1",
    plural: "pods",
    namespaced: true,
};
/// Namespaces.
pub const NAMESPACES: Kind = Kind {
    kind: "Namespace",
    prefix: "api/v1",
    plural: "namespaces",
    namespaced: false,
};
/// Role bindings.
pub const ROLE_BINDINGS: Kind = Kind {
    kind: "RoleBinding",
    prefix: "apis/rbac.authorization.k8s.io/v1",
    plural: "rolebindings",
    namespaced: true,
};
/// The kinds a pod template may also create, besides the pod.
pub const TEMPLATE_KINDS: [Kind; 6] = [
    PODS,
    Kind {
        kind: "Secret",
        prefix: "api/v1",
        plural: "secrets",
        namespaced: true,
    },
    Kind {
        kind: "PersistentVolumeClaim",
        prefix: "api/v1",
        plural: "persistentvolumeclaims",
        namespaced: true,
    },
    Kind {
        kind: "PersistentVolume",
        prefix: "api/v1",
        plural: "persistentvolumes",
        namespaced: false,
    },
    Kind {
        kind: "Service",
        prefix: "api/v1",
        plural: "services",
        namespaced: true,
    },
    Kind {
        kind: "ConfigMap",
        prefix: "api/v1",
        plural: "configmaps",
        namespaced: true,
    },
];

/// The template kind named `kind`.
pub fn template_kind(kind: &str) -> Option<Kind> {
    TEMPLATE_KINDS.iter().copied().find(|k| k.kind == kind)
}

/// One watch event.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchEvent {
    /// `ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK` or `ERROR`.
    pub kind: String,
    /// The object (a `Status` for `ERROR`).
    pub object: Value,
}

/// An open watch: events as the server streams them.
#[derive(Debug)]
pub struct Watch {
    response: reqwest::Response,
    buf: Vec<u8>,
    server: String,
}

impl Watch {
    /// The next event; `None` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<WatchEvent>, KubeError> {
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_str(line)
                    .map_err(|e| KubeError::Decode(format!("watch line is not JSON ({e})")))?;
                let kind = v["type"].as_str().unwrap_or_default().to_owned();
                return Ok(Some(WatchEvent {
                    kind,
                    object: v["object"].clone(),
                }));
            }
            match self.response.chunk().await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                Ok(None) => return Ok(None),
                Err(e) => return Err(transport(&self.server, &e)),
            }
        }
    }
}

/// A client of one API server.
#[derive(Debug, Clone)]
pub struct KubeClient {
    http: reqwest::Client,
    server: String,
    auth: ClusterAuth,
    request_timeout: Duration,
}

fn transport(server: &str, e: &reqwest::Error) -> KubeError {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    KubeError::Transport {
        server: server.to_owned(),
        message,
    }
}

/// Appends `query` to `url`.
fn with_query(mut url: Url, query: &[(&str, String)]) -> Url {
    if !query.is_empty() {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in query {
            pairs.append_pair(k, v);
        }
    }
    url
}

impl KubeClient {
    /// A client for `config`; each non-watch request is bounded by `request_timeout`.
    pub fn new(config: &ClusterConfig, request_timeout: Duration) -> Result<KubeClient, KubeError> {
        let server = config.server.trim_end_matches('/').to_owned();
        Url::parse(&server)
            .map_err(|e| KubeError::Config(format!("server URL '{server}': {e}")))?;
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(request_timeout.min(Duration::from_secs(10)));
        if let Some(pem) = &config.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| KubeError::Config(format!("invalid CA certificate: {e}")))?;
            if certs.is_empty() {
                return Err(KubeError::Config("the CA data holds no certificate".into()));
            }
            builder = builder.tls_certs_only(certs);
        }
        if config.insecure {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        if let ClusterAuth::ClientCert { cert_pem, key_pem } = &config.auth {
            let mut pem = cert_pem.clone();
            pem.push(b'\n');
            pem.extend_from_slice(key_pem);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                KubeError::Config(format!("invalid client certificate or key: {e}"))
            })?;
            builder = builder.identity(identity);
        }
        let http = builder
            .build()
            .map_err(|e| KubeError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(KubeClient {
            http,
            server,
            auth: config.auth.clone(),
            request_timeout,
        })
    }

    /// The API server's base URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The URL of a collection (`name` None) or of one object.
    pub fn url(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Result<Url, KubeError> {
        let mut path = format!("{}/{}", self.server, kind.prefix);
        if kind.namespaced {
            let ns = namespace
                .ok_or_else(|| KubeError::Config(format!("{} need a namespace", kind.plural)))?;
            path.push_str("/namespaces/");
            path.push_str(ns);
        }
        path.push('/');
        path.push_str(kind.plural);
        if let Some(name) = name {
            path.push('/');
            path.push_str(name);
        }
        Url::parse(&path).map_err(|e| KubeError::Config(format!("bad URL {path}: {e}")))
    }

    fn authorize(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, KubeError> {
        Ok(match &self.auth {
            ClusterAuth::Token(t) => req.bearer_auth(t),
            ClusterAuth::TokenFile(path) => {
                let token = std::fs::read_to_string(path).map_err(|e| {
                    KubeError::Config(format!(
                        "cannot read the token file {}: {e}",
                        path.display()
                    ))
                })?;
                req.bearer_auth(token.trim())
            }
            ClusterAuth::Basic { username, password } => req.basic_auth(username, Some(password)),
            ClusterAuth::None | ClusterAuth::ClientCert { .. } => req,
        })
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<reqwest::Response, KubeError> {
        let mut req = self
            .http
            .request(method, url)
            .timeout(timeout)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(body) = body {
            req = req.json(body);
        }
        let req = self.authorize(req)?;
        req.send().await.map_err(|e| transport(&self.server, &e))
    }

    async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Value, KubeError> {
        let resp = self.send(method, url, body, self.request_timeout).await?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport(&self.server, &e))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| KubeError::Decode(format!("{e}")));
        }
        Err(status_error(status, &bytes))
    }

    /// Creates an object (`POST` to its collection); returns the stored object.
    pub async fn create(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        object: &Value,
    ) -> Result<Value, KubeError> {
        self.call(Method::POST, self.url(kind, namespace, None)?, Some(object))
            .await
    }

    /// One object.
    pub async fn get(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, KubeError> {
        self.call(Method::GET, self.url(kind, namespace, Some(name))?, None)
            .await
    }

    /// Objects matching `label_selector`, and the list's resource version.
    pub async fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        label_selector: &str,
    ) -> Result<(Vec<Value>, String), KubeError> {
        let url = with_query(
            self.url(kind, namespace, None)?,
            &[("labelSelector", label_selector.to_owned())],
        );
        let list = self.call(Method::GET, url, None).await?;
        let rv = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let items = list["items"].as_array().cloned().unwrap_or_default();
        Ok((items, rv))
    }

    /// The last `tail_lines` lines of a pod's (first container's) log.
    pub async fn pod_log(
        &self,
        namespace: &str,
        name: &str,
        tail_lines: usize,
    ) -> Result<String, KubeError> {
        let mut url = self.url(PODS, Some(namespace), Some(name))?;
        url.path_segments_mut()
            .map_err(|()| KubeError::Config("the server URL cannot have a path".into()))?
            .push("log");
        let url = with_query(url, &[("tailLines", tail_lines.to_string())]);
        let resp = self
            .send(Method::GET, url, None, self.request_timeout)
            .await?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport(&self.server, &e))?;
        if status.is_success() {
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        } else {
            Err(status_error(status, &bytes))
        }
    }

    /// Deletes an object with a grace period and `propagationPolicy` (`Background`,
    /// `Foreground`, `Orphan`). Returns false if it did not exist.
    pub async fn delete(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        grace_seconds: Option<u64>,
        propagation: &str,
    ) -> Result<bool, KubeError> {
        let mut options =
            json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation});
        if let Some(g) = grace_seconds {
            options["gracePeriodSeconds"] = json!(g);
        }
        match self
            .call(
                Method::DELETE,
                self.url(kind, namespace, Some(name))?,
                Some(&options),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Watches objects matching `label_selector` from `resource_version` (empty: the current
    /// objects first, as ADDED); the server ends the stream after `timeout`.
    pub async fn watch(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        label_selector: &str,
        resource_version: &str,
        timeout: Duration,
    ) -> Result<Watch, KubeError> {
        let mut query = vec![
            ("watch", "true".to_owned()),
            ("labelSelector", label_selector.to_owned()),
            ("timeoutSeconds", timeout.as_secs().max(1).to_string()),
        ];
        if !resource_version.is_empty() {
            query.push(("resourceVersion", resource_version.to_owned()));
        }
        let url = with_query(self.url(kind, namespace, None)?, &query);
        let resp = self
            .send(Method::GET, url, None, timeout + self.request_timeout)
            .await?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| transport(&self.server, &e))?;
            return Err(status_error(status, &bytes));
        }
        Ok(Watch {
            response: resp,
            buf: Vec::new(),
            server: self.server.clone(),
        })
    }
}

/// A `Status` error body (or whatever came instead) as a [`KubeError::Api`].
fn status_error(status: StatusCode, body: &[u8]) -> KubeError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let (reason, message) = match parsed {
        Some(v) if v["kind"] == "Status" => (
            v["reason"].as_str().unwrap_or_default().to_owned(),
            v["message"].as_str().unwrap_or_default().to_owned(),
        ),
        _ => (
            status.canonical_reason().unwrap_or_default().to_owned(),
            String::from_utf8_lossy(body).chars().take(300).collect(),
        ),
    };
    KubeError::Api {
        code: status.as_u16(),
        reason,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() -> Result<(), KubeError> {
        let c = KubeClient::new(
            &ClusterConfig {
                server: "http://k:8080/".into(),
                ..ClusterConfig::default()
            },
            Duration::from_secs(1),
        )?;
        assert_eq!(
            c.url(PODS, Some("ns"), Some("p"))?.as_str(),
            "http://k:8080/api/v1/namespaces/ns/pods/p"
        );
        assert_eq!(
            c.url(NAMESPACES, None, Some("ns"))?.as_str(),
            "http://k:8080/api/v1/namespaces/ns"
        );
        assert_eq!(
            c.url(ROLE_BINDINGS, Some("ns"), None)?.as_str(),
            "http://k:8080/apis/rbac.authorization.k8s.io/v1/namespaces/ns/rolebindings"
        );
        assert!(c.url(PODS, None, None).is_err());
        Ok(())
    }

    #[test]
    fn status_bodies() {
        let e = status_error(
            StatusCode::CONFLICT,
            br#"{"kind":"Status","reason":"AlreadyExists","message":"pods \"p\" already exists"}"#,
        );
        assert!(e.is_conflict());
        assert_eq!(
            e.to_string(),
            "Kubernetes API: 409 AlreadyExists: pods \"p\" already exists"
        );
        let e = status_error(StatusCode::BAD_GATEWAY, b"upstream down");
        assert_eq!(
            e.to_string(),
            "Kubernetes API: 502 Bad Gateway: upstream down"
        );
    }
}
