//! The Kubernetes backend's settings. Enterprise Gateway reads these from its environment (they
//! are no traitlets), so this gateway does too, with EG's names and defaults (gateway_provisioners'
//! `GP_*` spellings are accepted after them):
//!
//! * the API server: in-cluster when `KUBERNETES_SERVICE_HOST` is set (with
//!   `KUBERNETES_SERVICE_PORT` and the pod's service-account token and CA), unless
//!   `GP_USE_INCLUSTER_CONFIG=False`; else the kubeconfig files of `KUBECONFIG` (a `:` list;
//!   default `~/.kube/config`) at `EG_KUBERNETES_CONTEXT` or their current context;
//! * `EG_NAMESPACE` (default `default`), `EG_SHARED_NAMESPACE` (default `False`: a namespace per
//!   kernel), `EG_KERNEL_CLUSTER_ROLE` (default `cluster-admin`),
//!   `EG_DEFAULT_KERNEL_SERVICE_ACCOUNT_NAME` (default `default`), `EG_KERNEL_IMAGE`,
//!   `EG_PROHIBITED_UIDS`/`EG_PROHIBITED_GIDS` (comma lists, default `0`; a bad entry stops the
//!   gateway at start, as in EG), `EG_MIRROR_WORKING_DIRS` (default `False`);
//! * `EG_KUBERNETES_LAUNCH` — this gateway's own: `launcher` (default: the kernelspec's argv,
//!   gateway_provisioners' `launch_kubernetes.py`, as EG) or `native` (the gateway renders the
//!   pod template itself, no Python); a kernelspec's `config.launch` overrides it.
//!
//! The gateway's `KUBECONFIG*` and `KUBERNETES_SERVICE*` variables are passed to the launcher,
//! as EG copies them into the launch environment.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use kernel_launcher::response::ResponseListener;
use resource_managers::Registry;
use resource_managers::kubernetes::{
    ClusterConfig, KubernetesConfig, KubernetesResourceManager, LaunchMode, SERVICE_ACCOUNT_DIR,
};
use resource_managers::launcher::{KernelIds, LauncherSettings};

/// The `EG_*` variables read here, so the start-up check does not report them unsupported.
pub(crate) const ENV: &[&str] = &[
    "EG_NAMESPACE",
    "EG_SHARED_NAMESPACE",
    "EG_KERNEL_CLUSTER_ROLE",
    "EG_DEFAULT_KERNEL_SERVICE_ACCOUNT_NAME",
    "EG_KERNEL_IMAGE",
    "EG_PROHIBITED_UIDS",
    "EG_PROHIBITED_GIDS",
    "EG_MIRROR_WORKING_DIRS",
    "EG_KUBERNETES_CONTEXT",
    "EG_KUBERNETES_LAUNCH",
];

/// What the environment says, checked once.
#[derive(Debug, Clone)]
pub(crate) struct KubernetesSettings {
    cluster: Result<ClusterConfig, String>,
    launcher_env: std::collections::BTreeMap<String, String>,
    namespace: String,
    shared_namespace: bool,
    kernel_cluster_role: String,
    default_service_account: String,
    image: Option<String>,
    ids: KernelIds,
    mirror_working_dirs: bool,
    launch_mode: LaunchMode,
}

/// EG's prohibited user or group ids (`EG_PROHIBITED_UIDS`/`GIDS`, which the Docker backends
/// read too): a comma list, `0` when unset; an entry that is not an id stops the gateway at start,
/// naming `key`.
pub(crate) fn id_list(key: &str, list: Option<String>) -> anyhow::Result<Vec<u32>> {
    let Some(list) = list else {
        return Ok(vec![0]);
    };
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u32>()
                .with_context(|| format!("{key}: {s:?} is not a user or group id"))
        })
        .collect()
}

fn flag(key: &str, value: Option<String>, default: bool) -> anyhow::Result<bool> {
    match value.map(|v| v.to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if v == "true" => Ok(true),
        Some(v) if v == "false" => Ok(false),
        Some(other) => bail!("{key}: {other:?} is not True or False"),
    }
}

impl KubernetesSettings {
    /// Reads the variables through `get`; `vars` lists every variable (for the launcher's
    /// `KUBECONFIG*`/`KUBERNETES_SERVICE*` copies).
    pub(crate) fn read(
        get: impl Fn(&str) -> Option<String>,
        vars: &[(String, String)],
        account_dir: &std::path::Path,
    ) -> anyhow::Result<KubernetesSettings> {
        let text = |key: &str| {
            get(key)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let either = |eg: &str, gp: &str| text(eg).or_else(|| text(gp));
        let ids = |eg: &str, gp: &str| id_list(eg, either(eg, gp));
        let in_cluster = flag(
            "GP_USE_INCLUSTER_CONFIG",
            text("GP_USE_INCLUSTER_CONFIG"),
            true,
        )?;
        let cluster = match text("KUBERNETES_SERVICE_HOST") {
            Some(host) if in_cluster => {
                let port = text("KUBERNETES_SERVICE_PORT").unwrap_or_else(|| "443".into());
                ClusterConfig::in_cluster(&host, &port, account_dir).map_err(|e| e.to_string())
            }
            _ => {
                let paths: Vec<PathBuf> = match text("KUBECONFIG") {
                    Some(list) => list
                        .split(':')
                        .filter(|p| !p.is_empty())
                        .map(PathBuf::from)
                        .collect(),
                    None => text("HOME")
                        .map(|h| PathBuf::from(h).join(".kube/config"))
                        .into_iter()
                        .collect(),
                };
                ClusterConfig::from_kubeconfig(&paths, text("EG_KUBERNETES_CONTEXT").as_deref())
                    .map_err(|e| e.to_string())
            }
        };
        let launch_mode = match text("EG_KUBERNETES_LAUNCH") {
            None => LaunchMode::Launcher,
            Some(v) => LaunchMode::parse(&v).with_context(|| {
                format!("EG_KUBERNETES_LAUNCH: {v:?} is not launcher or native")
            })?,
        };
        Ok(KubernetesSettings {
            cluster,
            launcher_env: vars
                .iter()
                .filter(|(k, _)| k.starts_with("KUBECONFIG") || k.starts_with("KUBERNETES_SERVICE"))
                .cloned()
                .collect(),
            namespace: either("EG_NAMESPACE", "GP_NAMESPACE").unwrap_or_else(|| "default".into()),
            shared_namespace: flag(
                "EG_SHARED_NAMESPACE",
                either("EG_SHARED_NAMESPACE", "GP_SHARED_NAMESPACE"),
                false,
            )?,
            kernel_cluster_role: either("EG_KERNEL_CLUSTER_ROLE", "GP_KERNEL_CLUSTER_ROLE")
                .unwrap_or_else(|| "cluster-admin".into()),
            default_service_account: either(
                "EG_DEFAULT_KERNEL_SERVICE_ACCOUNT_NAME",
                "GP_DEFAULT_KERNEL_SERVICE_ACCOUNT_NAME",
            )
            .unwrap_or_else(|| "default".into()),
            image: either("EG_KERNEL_IMAGE", "GP_IMAGE_NAME"),
            ids: KernelIds {
                prohibited_uids: ids("EG_PROHIBITED_UIDS", "GP_PROHIBITED_UIDS")?,
                prohibited_gids: ids("EG_PROHIBITED_GIDS", "GP_PROHIBITED_GIDS")?,
            },
            mirror_working_dirs: flag(
                "EG_MIRROR_WORKING_DIRS",
                text("EG_MIRROR_WORKING_DIRS"),
                false,
            )?,
            launch_mode,
        })
    }

    /// The process environment's settings.
    pub(crate) fn from_env() -> anyhow::Result<KubernetesSettings> {
        let vars: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        KubernetesSettings::read(
            |key| std::env::var(key).ok(),
            &vars,
            std::path::Path::new(SERVICE_ACCOUNT_DIR),
        )
    }
}

/// Registers the `kubernetes` backend (no API traffic until a launch; without a cluster its
/// launches fail naming what is missing).
pub(crate) fn register(
    registry: &mut Registry,
    settings: &crate::settings::Settings,
    response: &Arc<ResponseListener>,
) {
    let k8s = match KubernetesSettings::from_env() {
        Ok(k8s) => k8s,
        Err(err) => {
            tracing::error!("Kubernetes kernelspecs are unavailable: {err:#}");
            return;
        }
    };
    if let Err(why) = &k8s.cluster {
        tracing::debug!(
            "no Kubernetes API server configured ({why}); Kubernetes kernelspecs will fail to start"
        );
    }
    let config = KubernetesConfig {
        launcher_env: k8s.launcher_env,
        namespace: k8s.namespace,
        shared_namespace: k8s.shared_namespace,
        kernel_cluster_role: k8s.kernel_cluster_role,
        default_service_account: k8s.default_service_account,
        default_image: k8s.image,
        ids: k8s.ids,
        mirror_working_dirs: k8s.mirror_working_dirs,
        launch_mode: k8s.launch_mode,
        launcher: LauncherSettings {
            search_path: settings.local.search_path.clone(),
            comm_timeout: settings.comm_timeout,
            ..LauncherSettings::new(Arc::clone(response), settings.local.log_dir.clone())
        },
        ..KubernetesConfig::new(
            k8s.cluster,
            Arc::clone(response),
            settings.local.log_dir.clone(),
        )
    };
    registry.register(Arc::new(KubernetesResourceManager::new(config)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)], dir: &std::path::Path) -> anyhow::Result<KubernetesSettings> {
        let vars: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let get = |k: &str| {
            vars.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        KubernetesSettings::read(get, &vars, dir)
    }

    #[test]
    fn eg_names_and_defaults() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let s = read(&[], dir.path())?;
        assert!(s.cluster.is_err());
        assert_eq!(
            (s.namespace.as_str(), s.shared_namespace),
            ("default", false)
        );
        assert_eq!(s.kernel_cluster_role, "cluster-admin");
        assert_eq!(s.ids.prohibited_uids, vec![0]);
        assert_eq!(s.launch_mode, LaunchMode::Launcher);

        let kc = dir.path().join("kc");
        std::fs::write(
            &kc,
            "current-context: c\nclusters: [{name: k, cluster: {server: 'http://k:8080'}}]\ncontexts: [{name: c, context: {cluster: k}}]\n",
        )?;
        let kc_text = kc.display().to_string();
        let s = read(
            &[
                ("KUBECONFIG", kc_text.as_str()),
                ("EG_SHARED_NAMESPACE", "True"),
                ("GP_NAMESPACE", "kernels"),
                ("EG_KERNEL_CLUSTER_ROLE", "kernel-controller"),
                ("EG_PROHIBITED_UIDS", "0, 65534"),
                ("EG_KUBERNETES_LAUNCH", "native"),
                ("PATH", "/bin"),
            ],
            dir.path(),
        )?;
        assert_eq!(
            s.cluster.as_ref().map(|c| c.server.clone()).ok(),
            Some("http://k:8080".into())
        );
        assert_eq!(
            (s.namespace.as_str(), s.shared_namespace),
            ("kernels", true)
        );
        assert_eq!(s.kernel_cluster_role, "kernel-controller");
        assert_eq!(s.ids.prohibited_uids, vec![0, 65534]);
        assert_eq!(s.launch_mode, LaunchMode::Native);
        assert_eq!(s.launcher_env.get("KUBECONFIG"), Some(&kc_text));
        assert!(!s.launcher_env.contains_key("PATH"));
        assert!(read(&[("EG_PROHIBITED_GIDS", "x")], dir.path()).is_err());
        assert!(read(&[("EG_KUBERNETES_LAUNCH", "maybe")], dir.path()).is_err());
        // In-cluster wins when the service host is set (and fails clearly without the files).
        let s = read(
            &[
                ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
                ("KUBECONFIG", kc_text.as_str()),
            ],
            dir.path(),
        )?;
        assert!(
            s.cluster
                .as_ref()
                .err()
                .is_some_and(|e| e.contains("service-account token")),
            "{:?}",
            s.cluster
        );
        Ok(())
    }
}
