//! Where the API server is and how to authenticate: in-cluster (the pod's service-account
//! token and CA, `KUBERNETES_SERVICE_HOST`/`_PORT` as the gateway read them) or a kubeconfig
//! file (its current context, or a named one). The library reads no environment variables;
//! the gateway binary passes in what it found.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::Value;

use super::client::KubeError;

/// Where the in-cluster credentials live in a pod.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How requests authenticate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ClusterAuth {
    /// None.
    #[default]
    None,
    /// A fixed bearer token.
    Token(String),
    /// A bearer token read from a file before each request (service-account tokens rotate).
    TokenFile(PathBuf),
    /// A client certificate and key (PEM).
    ClientCert {
        /// Certificate chain (PEM).
        cert_pem: Vec<u8>,
        /// Private key (PEM).
        key_pem: Vec<u8>,
    },
    /// HTTP basic auth (old clusters).
    Basic {
        /// User.
        username: String,
        /// Password.
        password: String,
    },
}

/// A resolved cluster connection.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct ClusterConfig {
    /// Base URL of the API server (`https://10.0.0.1:443`).
    pub server: String,
    /// CA certificates (PEM) the server's certificate must chain to; `None`: the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Skip certificate verification (`insecure-skip-tls-verify`).
    pub insecure: bool,
    /// Credentials.
    pub auth: ClusterAuth,
    /// The context's namespace (kubeconfig) or the pod's (in-cluster), if known.
    pub namespace: Option<String>,
    /// Where this came from, for messages (`in-cluster`, `kubeconfig /path (context c)`).
    pub source: String,
}

impl std::fmt::Debug for ClusterConfig {
    /// Never prints credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("server", &self.server)
            .field("source", &self.source)
            .field("namespace", &self.namespace)
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

fn config_err(msg: impl Into<String>) -> KubeError {
    KubeError::Config(msg.into())
}

impl ClusterConfig {
    /// In-cluster configuration: `https://<host>:<port>` (the values of
    /// `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`), the token file and CA of
    /// `account_dir` (normally [`SERVICE_ACCOUNT_DIR`]), and the pod's namespace from there.
    pub fn in_cluster(
        host: &str,
        port: &str,
        account_dir: &Path,
    ) -> Result<ClusterConfig, KubeError> {
        let host = host.trim();
        let port = port.trim();
        if host.is_empty() {
            return Err(config_err(
                "in-cluster configuration needs KUBERNETES_SERVICE_HOST",
            ));
        }
        let port: u16 = if port.is_empty() {
            443
        } else {
            port.parse().map_err(|_| {
                config_err(format!("KUBERNETES_SERVICE_PORT '{port}' is not a port"))
            })?
        };
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let token_file = account_dir.join("token");
        if !token_file.is_file() {
            return Err(config_err(format!(
                "in-cluster configuration: no service-account token at {}",
                token_file.display()
            )));
        }
        let ca_file = account_dir.join("ca.crt");
        let ca_pem = std::fs::read(&ca_file).map_err(|e| {
            config_err(format!(
                "in-cluster configuration: cannot read {}: {e}",
                ca_file.display()
            ))
        })?;
        let namespace = std::fs::read_to_string(account_dir.join("namespace"))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty());
        Ok(ClusterConfig {
            server: format!("https://{host}:{port}"),
            ca_pem: Some(ca_pem),
            insecure: false,
            auth: ClusterAuth::TokenFile(token_file),
            namespace,
            source: "in-cluster".into(),
        })
    }

    /// The first of `paths` (a `KUBECONFIG` list) that exists, merged as kubectl does (the first
    /// file defining a cluster, user, context or `current-context` wins), at `context` or the
    /// current context.
    pub fn from_kubeconfig(
        paths: &[PathBuf],
        context: Option<&str>,
    ) -> Result<ClusterConfig, KubeError> {
        let mut files = Vec::new();
        for path in paths {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    let doc = super::yaml::parse_value(&text)
                        .map_err(|e| config_err(format!("kubeconfig {}: {e}", path.display())))?;
                    files.push((path.clone(), doc));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(config_err(format!(
                        "cannot read kubeconfig {}: {e}",
                        path.display()
                    )));
                }
            }
        }
        if files.is_empty() {
            let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            return Err(config_err(format!(
                "no kubeconfig file found (looked at {})",
                list.join(", ")
            )));
        }
        let current = context.map(str::to_owned).or_else(|| {
            files.iter().find_map(|(_, d)| {
                d["current-context"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
            })
        });
        let Some(current) = current else {
            return Err(config_err(
                "kubeconfig has no current-context (and none was chosen)",
            ));
        };
        let find = |section: &str, name: &str| -> Option<(PathBuf, Value)> {
            files.iter().find_map(|(path, d)| {
                d[section]
                    .as_array()?
                    .iter()
                    .find(|e| e["name"].as_str() == Some(name))
                    .map(|e| (path.clone(), e.clone()))
            })
        };
        let (_, ctx) = find("contexts", &current)
            .ok_or_else(|| config_err(format!("kubeconfig: no context '{current}'")))?;
        let ctx = &ctx["context"];
        let cluster_name = ctx["cluster"].as_str().unwrap_or_default();
        let (cluster_file, cluster) = find("clusters", cluster_name)
            .ok_or_else(|| config_err(format!("kubeconfig: context '{current}' names cluster '{cluster_name}', which is not defined")))?;
        let cluster = &cluster["cluster"];
        let server = cluster["server"]
            .as_str()
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_owned();
        if server.is_empty() {
            return Err(config_err(format!(
                "kubeconfig: cluster '{cluster_name}' has no server"
            )));
        }
        let relative = |file: &Path, p: &str| -> PathBuf {
            let p = PathBuf::from(p);
            if p.is_absolute() {
                p
            } else {
                file.parent().unwrap_or(Path::new(".")).join(p)
            }
        };
        let data_or_file = |file: &Path,
                            v: &Value,
                            data_key: &str,
                            file_key: &str|
         -> Result<Option<Vec<u8>>, KubeError> {
            if let Some(data) = v[data_key].as_str() {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data.trim())
                    .map_err(|e| {
                        config_err(format!("kubeconfig: {data_key} is not base64: {e}"))
                    })?;
                return Ok(Some(bytes));
            }
            if let Some(path) = v[file_key].as_str() {
                let path = relative(file, path);
                return std::fs::read(&path).map(Some).map_err(|e| {
                    config_err(format!(
                        "kubeconfig: cannot read {file_key} {}: {e}",
                        path.display()
                    ))
                });
            }
            Ok(None)
        };
        let ca_pem = data_or_file(
            &cluster_file,
            cluster,
            "certificate-authority-data",
            "certificate-authority",
        )?;
        let insecure = cluster["insecure-skip-tls-verify"]
            .as_bool()
            .unwrap_or(false);
        let user_name = ctx["user"].as_str().unwrap_or_default();
        let auth = match find("users", user_name) {
            None if user_name.is_empty() => ClusterAuth::None,
            None => {
                return Err(config_err(format!(
                    "kubeconfig: context '{current}' names user '{user_name}', which is not defined"
                )));
            }
            Some((user_file, user)) => {
                let user = &user["user"];
                if !user["exec"].is_null() || !user["auth-provider"].is_null() {
                    return Err(config_err(format!(
                        "kubeconfig: user '{user_name}' authenticates through an exec plugin or auth provider, which this gateway does not run; use a token, token file or client certificate"
                    )));
                }
                let cert = data_or_file(
                    &user_file,
                    user,
                    "client-certificate-data",
                    "client-certificate",
                )?;
                let key = data_or_file(&user_file, user, "client-key-data", "client-key")?;
                if let Some(token) = user["token"].as_str().filter(|t| !t.is_empty()) {
                    ClusterAuth::Token(token.to_owned())
                } else if let Some(file) = user["tokenFile"].as_str() {
                    ClusterAuth::TokenFile(relative(&user_file, file))
                } else if let (Some(cert_pem), Some(key_pem)) = (cert, key) {
                    ClusterAuth::ClientCert { cert_pem, key_pem }
                } else if let (Some(u), Some(p)) =
                    (user["username"].as_str(), user["password"].as_str())
                {
                    ClusterAuth::Basic {
                        username: u.to_owned(),
                        password: p.to_owned(),
                    }
                } else {
                    ClusterAuth::None
                }
            }
        };
        Ok(ClusterConfig {
            server,
            ca_pem,
            insecure,
            auth,
            namespace: ctx["namespace"].as_str().map(str::to_owned),
            source: format!("kubeconfig {} (context {current})", files[0].0.display()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_current_context() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("ca.pem"), "CA")?;
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: b\nclusters:\n- name: c1\n  cluster: {server: 'https://k:6443/', certificate-authority: ca.pem}\n\
             users:\n- name: u\n  user: {token: t0k}\ncontexts:\n- name: a\n  context: {cluster: c1}\n- name: b\n  context: {cluster: c1, user: u, namespace: ns}\n",
        )?;
        let c = ClusterConfig::from_kubeconfig(&[dir.path().join("missing"), path.clone()], None)?;
        assert_eq!(c.server, "https://k:6443");
        assert_eq!(c.ca_pem.as_deref(), Some(&b"CA"[..]));
        assert_eq!(c.auth, ClusterAuth::Token("t0k".into()));
        assert_eq!(c.namespace.as_deref(), Some("ns"));
        let a = ClusterConfig::from_kubeconfig(std::slice::from_ref(&path), Some("a"))?;
        assert_eq!(a.auth, ClusterAuth::None);
        assert!(ClusterConfig::from_kubeconfig(&[path], Some("zz")).is_err());
        assert!(!format!("{c:?}").contains("t0k"));
        Ok(())
    }

    #[test]
    fn in_cluster_reads_the_service_account() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        assert!(ClusterConfig::in_cluster("10.0.0.1", "443", dir.path()).is_err());
        std::fs::write(dir.path().join("token"), "tok")?;
        std::fs::write(dir.path().join("ca.crt"), "CA")?;
        std::fs::write(dir.path().join("namespace"), "eg\n")?;
        let c = ClusterConfig::in_cluster("10.0.0.1", "6443", dir.path())?;
        assert_eq!(c.server, "https://10.0.0.1:6443");
        assert_eq!(c.namespace.as_deref(), Some("eg"));
        assert_eq!(c.auth, ClusterAuth::TokenFile(dir.path().join("token")));
        assert!(ClusterConfig::in_cluster("", "443", dir.path()).is_err());
        assert!(ClusterConfig::in_cluster("h", "x", dir.path()).is_err());
        Ok(())
    }
}
