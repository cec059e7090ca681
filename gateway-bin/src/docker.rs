//! The Docker backends' settings. Enterprise Gateway reads these from its environment only
//! (they are no traitlets), so this gateway does too, with EG's names and defaults:
//!
//! * `DOCKER_HOST` — `unix:///path/to/docker.sock` (default `/var/run/docker.sock`); another
//!   scheme leaves the Docker backends out, with a warning;
//! * `EG_DOCKER_NETWORK` — the network kernels join (default `bridge`);
//! * `EG_REMOVE_CONTAINER` — remove a kernel's container after it ended (default `True`);
//! * `EG_KERNEL_IMAGE` — the image when neither the kernelspec nor the client names one;
//! * `EG_PROHIBITED_UIDS`, `EG_PROHIBITED_GIDS` — comma lists of ids kernels may not run as
//!   (default `0`); an entry that is not an integer stops the gateway at start, as in EG.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::bail;
use kernel_launcher::response::ResponseListener;
use resource_managers::Registry;
use resource_managers::docker::{DockerConfig, DockerMode, DockerResourceManager};
use resource_managers::launcher::{KernelIds, LauncherSettings};

/// The `EG_*` variables read here (so the start-up check does not call them unknown).
pub(crate) const ENV: &[&str] = &[
    "EG_DOCKER_NETWORK",
    "EG_REMOVE_CONTAINER",
    "EG_KERNEL_IMAGE",
    "EG_PROHIBITED_UIDS",
    "EG_PROHIBITED_GIDS",
];

/// What the environment says, checked once.
#[derive(Debug, Clone)]
pub(crate) struct DockerSettings {
    socket: Option<PathBuf>,
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
        let socket = match text("DOCKER_HOST") {
            None => Some(PathBuf::from(DockerConfig::DEFAULT_SOCKET)),
            Some(host) => match host.strip_prefix("unix://") {
                Some(path) if path.starts_with('/') => Some(PathBuf::from(path)),
                _ => {
                    tracing::warn!(
                        "DOCKER_HOST={host:?} is not a unix:///path socket; Docker kernelspecs are unavailable"
                    );
                    None
                }
            },
        };
        let ids = |key: &str| crate::kubernetes::id_list(key, text(key));
        let remove_container = match text("EG_REMOVE_CONTAINER").map(|v| v.to_ascii_lowercase()) {
            None => true,
            Some(v) if v == "true" => true,
            Some(v) if v == "false" => false,
            Some(other) => bail!("EG_REMOVE_CONTAINER: {other:?} is not True or False"),
        };
        Ok(DockerSettings {
            socket,
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
    let Some(socket) = docker.socket else {
        return;
    };
    let config = DockerConfig {
        socket,
        network: docker.network,
        remove_container: docker.remove_container,
        image: docker.image,
        ids: docker.ids,
        launcher: LauncherSettings {
            search_path: settings.local.search_path.clone(),
            comm_timeout: settings.comm_timeout,
            ..LauncherSettings::new(Arc::clone(response), settings.local.log_dir.clone())
        },
        ..DockerConfig::new(Arc::clone(response), settings.local.log_dir.clone())
    };
    for mode in [DockerMode::Container, DockerMode::Swarm] {
        registry.register(Arc::new(DockerResourceManager::new(mode, config.clone())));
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
        assert_eq!(defaults.socket, Some(PathBuf::from("/var/run/docker.sock")));
        assert_eq!(defaults.network, "bridge");
        assert!(defaults.remove_container);
        assert_eq!(defaults.ids.prohibited_uids, vec![0]);
        let set = read(&[
            ("DOCKER_HOST", "unix:///tmp/d.sock"),
            ("EG_DOCKER_NETWORK", "host"),
            ("EG_REMOVE_CONTAINER", "False"),
            ("EG_PROHIBITED_UIDS", "0, 1001"),
        ])?;
        assert_eq!(set.socket, Some(PathBuf::from("/tmp/d.sock")));
        assert_eq!(set.network, "host");
        assert!(!set.remove_container);
        assert_eq!(set.ids.prohibited_uids, vec![0, 1001]);
        assert_eq!(read(&[("DOCKER_HOST", "tcp://h:2375")])?.socket, None);
        assert!(read(&[("EG_PROHIBITED_GIDS", "0,root")]).is_err());
        assert!(read(&[("EG_REMOVE_CONTAINER", "maybe")]).is_err());
        Ok(())
    }
}
