//! The Docker backends' settings. Enterprise Gateway reads these from its environment only
//! (they are no traitlets), so this gateway does too, with EG's names and defaults:
//!
//! * `DOCKER_HOST` — `unix:///path/to/docker.sock` (default `/var/run/docker.sock`) or
//!   `tcp://host:port` (plain HTTP: Docker's TLS settings, `DOCKER_TLS_VERIFY` and
//!   `DOCKER_CERT_PATH`, are not supported); another form leaves the Docker backends out, with
//!   an error naming the supported ones;
//! * `EG_MIRROR_WORKING_DIRS` — a client's `KERNEL_WORKING_DIR` becomes the container's working
//!   directory (default `False`: it is dropped);
//! * `EG_DOCKER_NETWORK` — the network kernels join (default `bridge`);
//! * `EG_REMOVE_CONTAINER` — remove a kernel's container after it ended (default `True`);
//! * `EG_KERNEL_IMAGE` — the image when neither the kernelspec nor the client names one;
//! * `EG_PROHIBITED_UIDS`, `EG_PROHIBITED_GIDS` — comma lists of ids kernels may not run as
//!   (default `0`); an entry that is not an integer stops the gateway at start, as in EG.

use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs as _};
use std::sync::Arc;

use anyhow::bail;
use kernel_launcher::response::ResponseListener;
use resource_managers::Registry;
use resource_managers::docker::{DockerConfig, DockerHost, DockerMode, DockerResourceManager};
use resource_managers::launcher::{KernelIds, LauncherSettings};

/// The `EG_*` variables read here (so the start-up check does not call them unknown).
pub(crate) const ENV: &[&str] = &[
    "EG_DOCKER_NETWORK",
    "EG_REMOVE_CONTAINER",
    "EG_KERNEL_IMAGE",
    "EG_PROHIBITED_UIDS",
    "EG_PROHIBITED_GIDS",
    "EG_MIRROR_WORKING_DIRS",
];

/// What the environment says, checked once.
#[derive(Debug, Clone)]
pub(crate) struct DockerSettings {
    /// The engine, or why `DOCKER_HOST` cannot be served.
    host: Result<DockerHost, String>,
    mirror_working_dirs: bool,
    network: String,
    remove_container: bool,
    image: Option<String>,
    ids: KernelIds,
}

impl DockerSettings {
    /// Reads the variables through `get` (the process environment in the binary).
    pub(crate) fn read(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<DockerSettings> {
        let text = |key: &str| {
            get(key)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let host = match text("DOCKER_HOST") {
            None => Ok(DockerHost::default()),
            Some(host) => DockerHost::parse(&host).and_then(|parsed| {
                let tls = text("DOCKER_TLS_VERIFY").is_some_and(|v| v != "0");
                match parsed {
                    DockerHost::Tcp { .. } if tls => Err(format!(
                        "DOCKER_HOST={host:?} with DOCKER_TLS_VERIFY: TLS to the Docker engine is not supported (a unix socket, or tcp:// on a trusted network, is)"
                    )),
                    parsed => Ok(parsed),
                }
            }),
        };
        let ids = |key: &str| crate::kubernetes::id_list(key, text(key));
        let remove_container = match text("EG_REMOVE_CONTAINER").map(|v| v.to_ascii_lowercase()) {
            None => true,
            Some(v) if v == "true" => true,
            Some(v) if v == "false" => false,
            Some(other) => bail!("EG_REMOVE_CONTAINER: {other:?} is not True or False"),
        };
        let mirror_working_dirs =
            match text("EG_MIRROR_WORKING_DIRS").map(|v| v.to_ascii_lowercase()) {
                None => false,
                Some(v) if v == "true" => true,
                Some(v) if v == "false" => false,
                Some(other) => bail!("EG_MIRROR_WORKING_DIRS: {other:?} is not True or False"),
            };
        Ok(DockerSettings {
            host,
            mirror_working_dirs,
            network: text("EG_DOCKER_NETWORK").unwrap_or_else(|| "bridge".into()),
            remove_container,
            image: text("EG_KERNEL_IMAGE"),
            ids: KernelIds {
                prohibited_uids: ids("EG_PROHIBITED_UIDS")?,
                prohibited_gids: ids("EG_PROHIBITED_GIDS")?,
            },
        })
    }

    /// The process environment's settings.
    pub(crate) fn from_env() -> anyhow::Result<DockerSettings> {
        DockerSettings::read(|key| std::env::var(key).ok())
    }
}

/// Registers the `docker` and `docker-swarm` backends (no engine traffic until a launch).
pub(crate) fn register(
    registry: &mut Registry,
    settings: &crate::settings::Settings,
    response: &Arc<ResponseListener>,
) {
    let docker = match DockerSettings::from_env() {
        Ok(docker) => docker,
        Err(err) => {
            tracing::error!("Docker kernelspecs are unavailable: {err:#}");
            return;
        }
    };
    let host = match docker.host {
        Ok(host) => host,
        Err(why) => {
            tracing::error!("Docker kernelspecs are unavailable: {why}");
            return;
        }
    };
    let host_ip = engine_ip(&host);
    let config = DockerConfig {
        host,
        host_ip,
        mirror_working_dirs: docker.mirror_working_dirs,
        network: docker.network,
        remove_container: docker.remove_container,
        image: docker.image,
        ids: docker.ids,
        launcher: LauncherSettings {
            search_path: settings.local.search_path.clone(),
            comm_timeout: settings.comm_timeout,
            ..LauncherSettings::new(Arc::clone(response), settings.local.log_dir.clone())
        },
    };
    for mode in [DockerMode::Container, DockerMode::Swarm] {
        registry.register(Arc::new(DockerResourceManager::new(mode, config.clone())));
    }
}

/// Where a kernel on the engine's host network is reached: the engine's address for a
/// `tcp://` engine (resolved once here), this machine for a unix socket.
fn engine_ip(host: &DockerHost) -> IpAddr {
    let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let DockerHost::Tcp { host, port } = host else {
        return local;
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return ip;
    }
    match (host.as_str(), *port).to_socket_addrs() {
        Ok(mut addrs) => addrs.next().map_or(local, |a| a.ip()),
        Err(err) => {
            tracing::warn!(
                "cannot resolve the Docker engine's host {host:?} ({err}); host-network kernels are looked for at {local}"
            );
            local
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> anyhow::Result<DockerSettings> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        DockerSettings::read(|key| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()))
    }

    #[test]
    fn defaults_and_values_as_eg() -> anyhow::Result<()> {
        let defaults = read(&[])?;
        assert_eq!(defaults.host, Ok(DockerHost::default()));
        assert!(!defaults.mirror_working_dirs);
        assert_eq!(defaults.network, "bridge");
        assert!(defaults.remove_container);
        assert_eq!(defaults.ids.prohibited_uids, vec![0]);
        let set = read(&[
            ("DOCKER_HOST", "unix:///tmp/d.sock"),
            ("EG_DOCKER_NETWORK", "host"),
            ("EG_REMOVE_CONTAINER", "False"),
            ("EG_MIRROR_WORKING_DIRS", "True"),
            ("EG_PROHIBITED_UIDS", "0, 1001"),
        ])?;
        assert_eq!(set.host, Ok(DockerHost::Unix("/tmp/d.sock".into())));
        assert!(set.mirror_working_dirs);
        assert_eq!(set.network, "host");
        assert!(!set.remove_container);
        assert_eq!(set.ids.prohibited_uids, vec![0, 1001]);
        let tcp = read(&[("DOCKER_HOST", "tcp://127.0.0.1:2375")])?.host;
        assert_eq!(
            tcp.as_ref().map(engine_ip),
            Ok(IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
        let tls = read(&[("DOCKER_HOST", "tcp://h:2376"), ("DOCKER_TLS_VERIFY", "1")])?;
        assert!(tls.host.is_err_and(|e| e.contains("TLS")));
        let ssh = read(&[("DOCKER_HOST", "ssh://me@h")])?.host;
        assert!(ssh.is_err_and(|e| e.contains("tcp://host:port")));
        assert_eq!(
            engine_ip(&DockerHost::Tcp {
                host: "10.1.2.3".into(),
                port: 2375
            }),
            IpAddr::from([10, 1, 2, 3])
        );
        assert!(read(&[("EG_PROHIBITED_GIDS", "0,root")]).is_err());
        assert!(read(&[("EG_REMOVE_CONTAINER", "maybe")]).is_err());
        Ok(())
    }
}
