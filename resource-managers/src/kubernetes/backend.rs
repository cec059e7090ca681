//! The `kubernetes` backend: EG's `KubernetesProcessProxy` and gateway_provisioners'
//! `kubernetes-provisioner` (reference §7.6, §7.7, §8, §11).
//!
//! # Launch
//! 1. The pod's identity, from the request's `KERNEL_*` values and the settings, each checked
//!    before anything reaches the API server (a 400 naming the variable, or EG's 403 for ids):
//!    * image: `KERNEL_IMAGE`, else the kernelspec's `image_name`, else
//!      [`KubernetesConfig::default_image`] (none: EG's "No kernel image could be determined");
//!    * pod name: `KERNEL_POD_NAME` (its `{{ var }}` placeholders filled from the lowercased
//!      `KERNEL_*` values and `kernel_id`), else `<KERNEL_USERNAME>-<kernel id>`, normalized as
//!      EG does and required to be a DNS label (it is also the container's name);
//!    * namespace: `KERNEL_NAMESPACE` when [`KubernetesConfig::allow_client_namespace`] (it must
//!      exist and is never deleted), else the shared [`KubernetesConfig::namespace`] when
//!      [`KubernetesConfig::shared_namespace`], else a namespace named like the pod, created
//!      with a RoleBinding of [`KubernetesConfig::kernel_cluster_role`] to the kernel's service
//!      account, and deleted with the kernel (not on restarts, which reuse it);
//!    * service account `KERNEL_SERVICE_ACCOUNT_NAME` (else the default), `KERNEL_UID` /
//!      `KERNEL_GID` (EG's defaults 1000/100, the prohibited ids refused), the quantities
//!      `KERNEL_CPUS`, `KERNEL_MEMORY`, `KERNEL_GPUS` and their `_LIMIT` forms,
//!      `KERNEL_VOLUMES`/`KERNEL_VOLUME_MOUNTS` (YAML lists of mappings), `KERNEL_WORKING_DIR`
//!      (dropped unless [`KubernetesConfig::mirror_working_dirs`]).
//!
//!    The normalized values are written back into the environment (`KERNEL_POD_NAME`,
//!    `KERNEL_NAMESPACE`, `KERNEL_IMAGE`, ...), as EG does.
//! 2. The pod is created one of two ways ([`LaunchMode`], per kernelspec `config.launch`):
//!    * **launcher** (EG's way): the kernelspec's `argv` — gateway_provisioners'
//!      `launch_kubernetes.py` rendering its `kernel-pod.yaml.j2` — runs on the gateway with that
//!      environment plus [`KubernetesConfig::launcher_env`] (the gateway's `KUBECONFIG*` and
//!      `KUBERNETES_SERVICE*`), its output in `<log_dir>/kernel-<id>.log`;
//!    * **native**: the gateway renders the template itself ([`super::pod`]: client values are
//!      substituted into the parsed YAML, never pasted into its text) — the kernelspec's
//!      `config.pod_template`, else `kernel-pod.yaml.j2` beside the argv's
//!      `launch_kubernetes.py`, else `scripts/kernel-pod.yaml.j2` in the kernelspec, else a
//!      built-in pod — and creates the pod, then the template's other objects with an owner
//!      reference to the pod.
//! 3. The pod is found by the labels `kernel_id=<id>,component=kernel` and **watched** (a list,
//!    then a watch from its resource version, re-established after any break). Pending and
//!    Running are alive; once Running its `status.podIP` is the kernel's address. The launch
//!    fails at once, with the real reason, when the pod fails (phase Failed or Succeeded, with
//!    the container's exit code and reason), is deleted, cannot be scheduled
//!    (`Unschedulable`: [`Error::Capacity`], a 503, without waiting for an autoscaler), cannot
//!    pull its image (`ImagePullBackOff`, `InvalidImageName`, `ErrImageNeverPull`) or its
//!    container cannot start or keeps crashing (`CrashLoopBackOff`, `CreateContainerError`,
//!    `CreateContainerConfigError`, `RunContainerError`); or when the launcher exits non-zero
//!    before the pod appears. The launch completes when the launcher in the pod has called back
//!    with the connection info; the deadline gives EG's "Waited too long" reason with the pod's
//!    last state. A failed launch deletes what it created (pod, other objects, namespace).
//!
//! # The kernel afterwards ([`KubernetesKernelProcess`])
//! Liveness is the pod's phase; a pod that is gone has exited. Interrupts and other signals go
//! through the launcher's communication port; SIGKILL deletes the pod. `terminate` sends SIGTERM
//! and `{"shutdown": 1}` through the port, waits (watching) up to the grace period, then deletes
//! the pod with grace 0 and background propagation; `cleanup` (not on restarts) deletes the
//! other objects it created and its namespace. The record holds `kernel_ns`, `delete_ns` and
//! the pod name, so [`ResourceManager::reattach`] needs no search.
//!
//! # Why a thin client
//! The API calls are a handful (create, get, list, watch, delete) on JSON objects, so they are
//! made with the `reqwest` client already in the tree ([`super::client`]). `kube` + `k8s-openapi`
//! would add minutes of compile time on 2-core machines (k8s-openapi alone is one of the
//! largest crates on crates.io) for typed structs of which a kernel pod uses a few fields.
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use jupyter_protocol::ConnectionInfo;
use kernel_launcher::{CommPort, KernelSpec, ResponseListener, template};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::client::{Kind, KubeClient, KubeError, NAMESPACES, PODS, ROLE_BINDINGS};
use super::config::ClusterConfig;
use super::pod::{self, Rendered};
use super::validate;
use crate::launcher::{
    FinalState, KernelIds, LaunchWatch, LauncherComm, LauncherProcess, LauncherSettings, Probe,
    WaitFailure, await_callback,
};
use crate::local::{
    create_private_dir, interrupt_signal_of, is_safe_id, parse_signal_name, read_tail,
    resolve_program,
};
use crate::{
    BackendNames, Capabilities, Error, KernelProcess, KernelRecord, LaunchRequest, LaunchedKernel,
    PodPlacement, ProcessState, ResourceManager,
};

/// The name of this backend in a [`crate::Registry`].
pub const NAME: &str = "kubernetes";

/// EG's process-proxy class.
pub const EG_CLASS: &str = "enterprise_gateway.services.processproxies.k8s.KubernetesProcessProxy";

/// gateway_provisioners' provisioner name.
pub const GP_PROVISIONER: &str = "kubernetes-provisioner";

/// Lines of launcher output quoted in errors.
const TAIL_LINES: usize = 20;

/// How long a watch request lasts before it is renewed.
const WATCH_SECONDS: Duration = Duration::from_secs(60);

/// How long a failed launch waits for its clean-up before leaving it to a background task.
const CLEANUP_WAIT: Duration = Duration::from_secs(3);

/// Waiting reasons that end a launch: the container will not start on its own.
const FATAL_WAITING: [&str; 7] = [
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CrashLoopBackOff",
    "CreateContainerError",
    "CreateContainerConfigError",
    "RunContainerError",
];

/// Who creates the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LaunchMode {
    /// The kernelspec's argv (gateway_provisioners' `launch_kubernetes.py`), as EG does.
    #[default]
    Launcher,
    /// The gateway renders the template and creates the objects itself.
    Native,
}

impl LaunchMode {
    /// `launcher` or `native`.
    pub fn parse(text: &str) -> Option<LaunchMode> {
        match text.trim().to_ascii_lowercase().as_str() {
            "launcher" => Some(LaunchMode::Launcher),
            "native" => Some(LaunchMode::Native),
            _ => None,
        }
    }
}

/// Settings of the `kubernetes` backend.
#[derive(Debug, Clone)]
pub struct KubernetesConfig {
    /// The API server, or why there is none (launches then fail with that reason).
    pub cluster: Result<ClusterConfig, String>,
    /// Added to the launcher's environment: the gateway's `KUBECONFIG*` and
    /// `KUBERNETES_SERVICE*` variables, as EG copies them.
    pub launcher_env: BTreeMap<String, String>,
    /// `EG_NAMESPACE`: the shared namespace (default `default`).
    pub namespace: String,
    /// `EG_SHARED_NAMESPACE`: every kernel in [`KubernetesConfig::namespace`].
    pub shared_namespace: bool,
    /// Whether a client's `KERNEL_NAMESPACE` is honoured (EG: always).
    pub allow_client_namespace: bool,
    /// `EG_KERNEL_CLUSTER_ROLE` (EG's default `cluster-admin`; its Helm chart uses
    /// `kernel-controller`).
    pub kernel_cluster_role: String,
    /// `EG_DEFAULT_KERNEL_SERVICE_ACCOUNT_NAME` (default `default`).
    pub default_service_account: String,
    /// `EG_KERNEL_IMAGE`: the image when neither the request nor the kernelspec names one.
    pub default_image: Option<String>,
    /// The ids kernels may not run as.
    pub ids: KernelIds,
    /// `EG_MIRROR_WORKING_DIRS`: keep `KERNEL_WORKING_DIR` (else it is dropped).
    pub mirror_working_dirs: bool,
    /// Who creates pods unless a kernelspec's `config.launch` says otherwise.
    pub launch_mode: LaunchMode,
    /// The listener, the launchers' log directory, the PATH and the timeouts;
    /// `poll_interval` is the pause before a broken watch is re-established (and between
    /// polls when watching fails), `request_timeout` bounds one API request.
    pub launcher: LauncherSettings,
}

impl KubernetesConfig {
    /// EG's defaults for everything but the cluster, the listener and the log directory.
    pub fn new(
        cluster: Result<ClusterConfig, String>,
        response: Arc<ResponseListener>,
        log_dir: PathBuf,
    ) -> KubernetesConfig {
        KubernetesConfig {
            cluster,
            launcher_env: BTreeMap::new(),
            namespace: "default".into(),
            shared_namespace: false,
            allow_client_namespace: true,
            kernel_cluster_role: "cluster-admin".into(),
            default_service_account: "default".into(),
            default_image: None,
            ids: KernelIds::default(),
            mirror_working_dirs: false,
            launch_mode: LaunchMode::Launcher,
            launcher: LauncherSettings::new(response, log_dir),
        }
    }
}

/// The `kubernetes` resource manager; see the [module docs](self).
#[derive(Debug)]
pub struct KubernetesResourceManager {
    config: KubernetesConfig,
    client: Result<Arc<KubeClient>, String>,
}

impl KubernetesResourceManager {
    /// A `kubernetes` backend (no API traffic until a launch).
    pub fn new(config: KubernetesConfig) -> KubernetesResourceManager {
        let client = match &config.cluster {
            Ok(cluster) => KubeClient::new(cluster, config.launcher.request_timeout)
                .map(Arc::new)
                .map_err(|e| format!("{e} ({})", cluster.source)),
            Err(why) => Err(why.clone()),
        };
        KubernetesResourceManager { config, client }
    }

    /// The settings.
    pub fn config(&self) -> &KubernetesConfig {
        &self.config
    }

    /// The API client, or why there is none.
    pub fn client(&self) -> Result<Arc<KubeClient>, Error> {
        self.client
            .clone()
            .map_err(|why| Error::Config(format!("no Kubernetes API server: {why}")))
    }
}

/// What a launch decided about the kernel's pod.
#[derive(Debug, Clone)]
struct Plan {
    pod_name: String,
    namespace: String,
    /// The gateway creates (and deletes) the namespace.
    own_namespace: bool,
    service_account: String,
    /// The launch environment, with the normalized `KERNEL_*` values.
    env: BTreeMap<String, String>,
    mode: LaunchMode,
}

fn spec_text(spec: &KernelSpec, key: &str) -> Option<String> {
    spec.config
        .raw
        .get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Fills `{{ var }}` placeholders of a `KERNEL_POD_NAME` from lowercased `KERNEL_*` values and
/// `kernel_id`; `None` if one is unknown or the syntax is anything else (EG then falls back).
fn fill_pod_name(raw: &str, env: &BTreeMap<String, String>, kernel_id: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = raw;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}")?;
        let var = after[..end].trim();
        let value = if var == "kernel_id" {
            kernel_id.to_owned()
        } else if var.starts_with("kernel_")
            && var
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            env.get(&var.to_ascii_uppercase())?.clone()
        } else {
            return None;
        };
        out.push_str(&value);
        rest = &after[end + 2..];
    }
    if rest.contains("}}") || rest.contains("{%") {
        return None;
    }
    out.push_str(rest);
    Some(out)
}

impl KubernetesResourceManager {
    fn plan(&self, request: &LaunchRequest) -> Result<Plan, Error> {
        let cfg = &self.config;
        let spec = &request.spec;
        let mut env = request.env.clone();
        let kernel_id = &request.kernel_id;
        let get = |env: &BTreeMap<String, String>, k: &str| {
            env.get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };

        let image = get(&env, "KERNEL_IMAGE")
            .or_else(|| spec_text(spec, "image_name"))
            .or_else(|| cfg.default_image.clone())
            .ok_or_else(|| {
                Error::Config(
                    "No kernel image could be determined! Set the `image_name` in the process_proxy.config stanza of the corresponding kernel.json file."
                        .into(),
                )
            })?;
        validate::image("KERNEL_IMAGE", &image)?;
        env.insert("KERNEL_IMAGE".into(), image);
        if let Some(exec) =
            get(&env, "KERNEL_EXECUTOR_IMAGE").or_else(|| spec_text(spec, "executor_image_name"))
        {
            validate::image("KERNEL_EXECUTOR_IMAGE", &exec)?;
            env.insert("KERNEL_EXECUTOR_IMAGE".into(), exec);
        }

        let username = get(&env, "KERNEL_USERNAME").unwrap_or_else(|| request.username.clone());
        let raw_name = get(&env, "KERNEL_POD_NAME")
            .and_then(|raw| fill_pod_name(&raw, &env, kernel_id))
            .unwrap_or_else(|| format!("{username}-{kernel_id}"));
        let pod_name = validate::normalize_name(&raw_name);
        if pod_name.is_empty() || pod_name.len() > validate::MAX_LABEL {
            let source = if env.contains_key("KERNEL_POD_NAME") {
                "KERNEL_POD_NAME"
            } else {
                "KERNEL_USERNAME"
            };
            return Err(Error::InvalidRequest(format!(
                "{source}: the kernel's pod name '{}' must be 1 to 63 characters after normalization (it is also its container's name), not {}",
                validate::excerpt(&pod_name),
                pod_name.len()
            )));
        }
        validate::dns_label("KERNEL_POD_NAME", &pod_name)?;
        env.insert("KERNEL_POD_NAME".into(), pod_name.clone());

        let service_account = get(&env, "KERNEL_SERVICE_ACCOUNT_NAME")
            .unwrap_or_else(|| cfg.default_service_account.clone());
        validate::dns_subdomain("KERNEL_SERVICE_ACCOUNT_NAME", &service_account)?;
        env.insert(
            "KERNEL_SERVICE_ACCOUNT_NAME".into(),
            service_account.clone(),
        );

        let (namespace, own_namespace) = match get(&env, "KERNEL_NAMESPACE") {
            Some(ns) if cfg.allow_client_namespace => {
                validate::dns_label("KERNEL_NAMESPACE", &ns)?;
                (ns, false)
            }
            Some(_) => {
                return Err(Error::Unauthorized(
                    "KERNEL_NAMESPACE is not allowed on this gateway (kernels run in the namespace it chooses)".into(),
                ));
            }
            None if cfg.shared_namespace => (cfg.namespace.clone(), false),
            None => (pod_name.clone(), true),
        };
        env.insert("KERNEL_NAMESPACE".into(), namespace.clone());

        let (uid, gid) = cfg.ids.check(&env)?;
        env.insert("KERNEL_UID".into(), uid.to_string());
        env.insert("KERNEL_GID".into(), gid.to_string());

        for base in ["KERNEL_CPUS", "KERNEL_MEMORY", "KERNEL_GPUS"] {
            for key in [base.to_owned(), format!("{base}_LIMIT")] {
                if let Some(v) = env.get(&key) {
                    let trimmed = v.trim().to_owned();
                    validate::quantity(&key, &trimmed)?;
                    env.insert(key, trimmed);
                }
            }
        }
        for key in ["KERNEL_VOLUMES", "KERNEL_VOLUME_MOUNTS"] {
            if let Some(v) = env.get(key) {
                pod::parse_list_var(key, v)?;
            }
        }
        if cfg.mirror_working_dirs {
            if let Some(dir) = env.get("KERNEL_WORKING_DIR") {
                validate::working_dir("KERNEL_WORKING_DIR", dir)?;
            }
        } else {
            env.remove("KERNEL_WORKING_DIR");
        }
        let mode = match spec_text(spec, "launch") {
            Some(text) => LaunchMode::parse(&text).ok_or_else(|| {
                Error::Config(format!(
                    "kernelspec '{}': config.launch '{text}' is neither 'launcher' nor 'native'",
                    spec.name
                ))
            })?,
            None => cfg.launch_mode,
        };
        let placement = &request.placement.kubernetes;
        validate::pod_placement(placement)?;
        if !placement.is_empty() && matches!(mode, LaunchMode::Launcher) {
            return Err(Error::Config(format!(
                "kernelspec '{}': the profile's kubernetes settings (node selector, tolerations, \
                 pod template) apply to pods the gateway renders; this kernelspec's pod is made by \
                 its launcher (use EG_KUBERNETES_LAUNCH=native or the kernelspec's config.launch \
                 'native')",
                spec.name
            )));
        }
        Ok(Plan {
            pod_name,
            namespace,
            own_namespace,
            service_account,
            env,
            mode,
        })
    }

    /// The namespace: created with its RoleBinding when the gateway owns it (a 409 means a
    /// restart reuses it); a client's must exist.
    async fn prepare_namespace(
        &self,
        client: &KubeClient,
        plan: &Plan,
        kernel_id: &str,
    ) -> Result<(), Error> {
        if !plan.own_namespace {
            return match client.get(NAMESPACES, None, &plan.namespace).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_not_found() => Err(Error::InvalidRequest(format!(
                    "KERNEL_NAMESPACE: namespace '{}' does not exist",
                    plan.namespace
                ))),
                Err(e) => Err(e.into()),
            };
        }
        let labels =
            json!({"app": "enterprise-gateway", "component": "kernel", "kernel_id": kernel_id});
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": plan.namespace, "labels": labels}});
        match client.create(NAMESPACES, None, &ns).await {
            Ok(_) => {
                tracing::info!(%kernel_id, namespace = %plan.namespace, "kernel namespace created")
            }
            Err(e) if e.is_conflict() => {
                tracing::info!(%kernel_id, namespace = %plan.namespace, "kernel namespace exists; reusing it")
            }
            Err(e) => return Err(e.into()),
        }
        let role = &self.config.kernel_cluster_role;
        let binding = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": role, "namespace": plan.namespace, "labels": labels},
            "subjects": [{"kind": "ServiceAccount", "name": plan.service_account, "namespace": plan.namespace}],
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        });
        match client
            .create(ROLE_BINDINGS, Some(&plan.namespace), &binding)
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_conflict() => {}
            Err(e) => {
                let _ = client
                    .delete(NAMESPACES, None, &plan.namespace, None, "Background")
                    .await;
                return Err(e.into());
            }
        }
        Ok(())
    }
}

/// Where a pod stands, as the launch and liveness checks see it.
#[derive(Debug, Clone, PartialEq)]
enum PodView {
    /// No such pod (yet, or any more).
    Absent,
    /// Pending (scheduling, pulling, creating).
    Pending(String),
    /// Running, at this address.
    Running {
        ip: Option<IpAddr>,
        node_ip: Option<String>,
    },
    /// Ended: phase Failed or Succeeded, with an exit code and the reason.
    Ended { code: Option<i32>, reason: String },
    /// Will not start on its own: an unschedulable pod.
    Unschedulable(String),
    /// Will not start on its own: its container cannot be pulled, created or kept running.
    Stuck(String),
}

fn classify(pod: &Value) -> PodView {
    let status = &pod["status"];
    let phase = status["phase"].as_str().unwrap_or("Pending");
    let container = status["containerStatuses"]
        .get(0)
        .cloned()
        .unwrap_or(Value::Null);
    let terminated = &container["state"]["terminated"];
    match phase {
        "Failed" | "Succeeded" => {
            let code = terminated["exitCode"]
                .as_i64()
                .and_then(|c| i32::try_from(c).ok());
            let mut reason = format!("pod phase {phase}");
            if let Some(r) = status["reason"].as_str() {
                reason.push_str(&format!(
                    " ({r}: {})",
                    status["message"].as_str().unwrap_or_default()
                ));
            }
            if !terminated.is_null() {
                reason.push_str(&format!(
                    "; container terminated: {} (exit code {})",
                    terminated["reason"].as_str().unwrap_or("unknown reason"),
                    terminated["exitCode"]
                ));
                if let Some(m) = terminated["message"].as_str().filter(|m| !m.is_empty()) {
                    reason.push_str(&format!(": {m}"));
                }
            }
            let code = code.or(if phase == "Succeeded" {
                Some(0)
            } else {
                Some(1)
            });
            return PodView::Ended { code, reason };
        }
        _ => {}
    }
    if let Some(waiting) = container["state"]["waiting"].as_object()
        && let Some(reason) = waiting.get("reason").and_then(Value::as_str)
        && FATAL_WAITING.contains(&reason)
    {
        let message = waiting
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default();
        return PodView::Stuck(format!("{reason}: {message}"));
    }
    if let Some(conds) = status["conditions"].as_array()
        && let Some(c) = conds.iter().find(|c| {
            c["type"] == "PodScheduled" && c["status"] == "False" && c["reason"] == "Unschedulable"
        })
    {
        return PodView::Unschedulable(format!(
            "Unschedulable: {}",
            c["message"].as_str().unwrap_or_default()
        ));
    }
    if phase == "Running" {
        let ip = status["podIP"].as_str().and_then(|s| s.parse().ok());
        return PodView::Running {
            ip,
            node_ip: status["hostIP"].as_str().map(str::to_owned),
        };
    }
    let detail = container["state"]["waiting"]["reason"]
        .as_str()
        .unwrap_or(phase);
    PodView::Pending(detail.to_owned())
}

/// Follows the pods matching `selector` in `namespace`: a list, then a watch from its version,
/// again after any break. Sends the first matching pod (or `None` when there is none) after each
/// change; ends when the receiver is dropped.
fn follow_pods(
    client: Arc<KubeClient>,
    namespace: String,
    selector: String,
    pause: Duration,
) -> mpsc::Receiver<Result<Option<Value>, String>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let (items, rv) = match client.list(PODS, Some(&namespace), &selector).await {
                Ok(listed) => listed,
                Err(e) => {
                    if tx.send(Err(e.to_string())).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(pause).await;
                    continue;
                }
            };
            let mut current: BTreeMap<String, Value> = items
                .into_iter()
                .map(|p| {
                    (
                        p["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        p,
                    )
                })
                .collect();
            if tx.send(Ok(current.values().next().cloned())).await.is_err() {
                return;
            }
            let mut watch = match client
                .watch(PODS, Some(&namespace), &selector, &rv, WATCH_SECONDS)
                .await
            {
                Ok(w) => w,
                Err(e) => {
                    if tx.send(Err(e.to_string())).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(pause).await;
                    continue;
                }
            };
            loop {
                let event = tokio::select! {
                    e = watch.next() => e,
                    () = tx.closed() => return,
                };
                match event {
                    Ok(Some(ev)) => {
                        let name = ev.object["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned();
                        match ev.kind.as_str() {
                            "ADDED" | "MODIFIED" => {
                                current.insert(name, ev.object);
                            }
                            "DELETED" => {
                                current.remove(&name);
                            }
                            "ERROR" => break,
                            _ => continue,
                        }
                        if tx.send(Ok(current.values().next().cloned())).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(%namespace, %selector, "pod watch broke: {e}");
                        tokio::time::sleep(pause).await;
                        break;
                    }
                }
            }
        }
    });
    rx
}

/// An object created for a kernel, deleted with it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Created {
    kind: Kind,
    namespace: Option<String>,
    name: String,
}

/// Deletes what a kernel owns: the pod (grace 0, background), the other objects, the namespace.
async fn delete_all(
    client: &KubeClient,
    namespace: &str,
    pod_name: &str,
    created: &[Created],
    delete_ns: bool,
) -> Result<(), KubeError> {
    let mut first_error = None;
    if let Err(e) = client
        .delete(PODS, Some(namespace), pod_name, Some(0), "Background")
        .await
    {
        first_error.get_or_insert(e);
    }
    for c in created {
        if let Err(e) = client
            .delete(
                c.kind,
                c.namespace.as_deref(),
                &c.name,
                Some(0),
                "Background",
            )
            .await
        {
            first_error.get_or_insert(e);
        }
    }
    if delete_ns
        && let Err(e) = client
            .delete(NAMESPACES, None, namespace, None, "Background")
            .await
    {
        first_error.get_or_insert(e);
    }
    first_error.map_or(Ok(()), Err)
}

/// Why a pod's launch failed, as the watch saw it.
#[derive(Debug)]
enum PodFailure {
    /// Phase Failed or Succeeded: why.
    Ended(String),
    /// Deleted during the launch.
    Vanished,
    /// Cannot be scheduled.
    Unschedulable(String),
    /// Its container cannot be pulled, created or kept running.
    Stuck(String),
    /// The watch stopped.
    WatchEnded,
}

/// The kernel's pod as a launch sees it: the first pod labelled with the kernel id, as the
/// watch of [`follow_pods`] reports it. Every update wakes the wait ([`LaunchWatch::changed`]),
/// so a failing pod ends the launch as soon as the API server says so.
struct PodWatch<'a> {
    updates: mpsc::Receiver<Result<Option<Value>, String>>,
    kernel_id: &'a str,
    view: PodView,
    seen_pod: bool,
    /// The pod's name (the launcher may name it otherwise than the plan).
    pod_name: String,
    /// The last API error, quoted when the launch times out.
    last_api_error: Option<String>,
    /// The watch's sender is gone.
    closed: bool,
}

impl PodWatch<'_> {
    fn apply(&mut self, update: Option<Result<Option<Value>, String>>) {
        match update {
            Some(Ok(Some(pod))) => {
                self.seen_pod = true;
                self.last_api_error = None;
                if let Some(name) = pod["metadata"]["name"].as_str() {
                    self.pod_name = name.to_owned();
                }
                let next = classify(&pod);
                if next != self.view {
                    tracing::debug!(kernel_id = %self.kernel_id, pod = %self.pod_name, state = ?next, "kernel pod");
                }
                self.view = next;
            }
            Some(Ok(None)) => self.view = PodView::Absent,
            Some(Err(e)) => self.last_api_error = Some(e),
            None => self.closed = true,
        }
    }
}

#[async_trait]
impl LaunchWatch for PodWatch<'_> {
    /// The pod's address and its node's.
    type Placed = (IpAddr, Option<String>);
    type Failure = PodFailure;

    async fn probe(&mut self) -> Probe<Self::Placed, PodFailure> {
        loop {
            match self.updates.try_recv() {
                Ok(update) => self.apply(Some(update)),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.apply(None);
                    break;
                }
            }
        }
        match &self.view {
            PodView::Ended { reason, .. } => Probe::Failed(PodFailure::Ended(reason.clone())),
            PodView::Unschedulable(why) => Probe::Failed(PodFailure::Unschedulable(why.clone())),
            PodView::Stuck(why) => Probe::Failed(PodFailure::Stuck(why.clone())),
            PodView::Absent if self.seen_pod => Probe::Failed(PodFailure::Vanished),
            _ if self.closed => Probe::Failed(PodFailure::WatchEnded),
            PodView::Absent => Probe::NotFound,
            PodView::Running {
                ip: Some(ip),
                node_ip,
            } => Probe::Placed((*ip, node_ip.clone())),
            PodView::Running { ip: None, .. } | PodView::Pending(_) => Probe::Starting,
        }
    }

    async fn changed(&mut self) {
        if self.closed {
            return std::future::pending().await;
        }
        let update = self.updates.recv().await;
        self.apply(update);
    }
}

#[async_trait]
impl ResourceManager for KubernetesResourceManager {
    fn name(&self) -> &str {
        NAME
    }

    fn names(&self) -> BackendNames {
        BackendNames::new(&[EG_CLASS], &[GP_PROVISIONER])
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            uses_callback_listener: true,
            ..Capabilities::ELSEWHERE
        }
    }

    async fn launch(&self, request: LaunchRequest) -> Result<LaunchedKernel, Error> {
        let started = Instant::now();
        let deadline = started + request.timeout;
        let kernel_id = request.kernel_id.clone();
        if !is_safe_id(&kernel_id) {
            return Err(Error::Config(format!("invalid kernel id '{kernel_id}'")));
        }
        let plan = self.plan(&request)?;
        let client = self.client()?;
        let spec = &request.spec;
        let listener = &self.config.launcher.response;
        create_private_dir(&self.config.launcher.log_dir)?;
        let log_path = self.config.launcher.log_path(&kernel_id);

        // The argv's variables (the launcher needs them; the native path reads the template's
        // place from the argv).
        let vars = crate::launcher::launcher_vars(&request, listener);
        let argv = template::substitute(&spec.argv, &vars);
        let mut env = plan.env.clone();
        env.insert("KERNEL_ID".into(), kernel_id.clone());
        env.insert(
            "KERNEL_NAME".into(),
            spec.resource_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| spec.name.clone()),
        );
        env.insert("RESPONSE_ADDRESS".into(), vars["response_address"].clone());
        env.insert("PUBLIC_KEY".into(), vars["public_key"].clone());
        env.insert("PORT_RANGE".into(), vars["port_range"].clone());
        env.entry("KERNEL_LANGUAGE".into())
            .or_insert_with(|| spec.language.clone());

        self.prepare_namespace(&client, &plan, &kernel_id).await?;
        let mut pending = match listener.register(&kernel_id) {
            Ok(p) => p,
            Err(e) => {
                let _ = delete_all(
                    &client,
                    &plan.namespace,
                    &plan.pod_name,
                    &[],
                    plan.own_namespace,
                )
                .await;
                return Err(e.into());
            }
        };
        let mut created: Vec<Created> = Vec::new();
        let mut launcher: Option<LauncherProcess> = None;

        let start = match plan.mode {
            LaunchMode::Launcher => {
                let mut launch_env = env.clone();
                for (k, v) in &self.config.launcher_env {
                    launch_env.insert(k.clone(), v.clone());
                }
                let spawn = || -> Result<LauncherProcess, Error> {
                    let Some(argv0) = argv.first() else {
                        return Err(Error::Spawn(format!(
                            "kernelspec '{}' has an empty argv",
                            spec.name
                        )));
                    };
                    let program = resolve_program(
                        spec,
                        argv0,
                        &launch_env,
                        &self.config.launcher.search_path,
                    )?;
                    let launch_request = LaunchRequest {
                        env: launch_env.clone(),
                        ..request.clone()
                    };
                    LauncherProcess::spawn_independent(
                        &launch_request,
                        &program,
                        &argv,
                        &log_path,
                        "pod launcher",
                    )
                };
                spawn().map(|l| {
                    tracing::info!(%kernel_id, pid = l.pid().as_raw(), log = %log_path.display(), "pod launcher started; watching for the pod");
                    launcher = Some(l);
                })
            }
            LaunchMode::Native => {
                let container_env: BTreeMap<String, String> = env.clone();
                let rendered = self
                    .render(
                        spec,
                        &argv,
                        &env,
                        &container_env,
                        &request.placement.kubernetes,
                    )
                    .and_then(|mut r| {
                        place_pod(&mut r.pod, &request.placement.kubernetes)?;
                        Ok(r)
                    });
                match rendered {
                    Ok(r) => create_objects(&client, &plan, r, &mut created).await,
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(err) = start {
            drop(pending);
            abandon(client, launcher, plan, created).await;
            return Err(err);
        }

        let selector = format!("kernel_id={kernel_id},component=kernel");
        let mut watch = PodWatch {
            updates: follow_pods(
                Arc::clone(&client),
                plan.namespace.clone(),
                selector,
                self.config.launcher.poll_interval,
            ),
            kernel_id: &kernel_id,
            view: PodView::Absent,
            seen_pod: false,
            pod_name: plan.pod_name.clone(),
            last_api_error: None,
            closed: false,
        };
        let waited = await_callback(
            &mut watch,
            &mut pending,
            launcher.as_ref(),
            self.config.launcher.poll_interval,
            deadline,
        )
        .await;
        drop(pending);
        let PodWatch {
            view,
            seen_pod,
            pod_name,
            last_api_error,
            ..
        } = watch;

        let (response, (ip, node_ip)) = match waited {
            Ok(done) => done,
            Err(failure) => {
                // The launcher's output, then the container's log (what the kernel said as it died).
                let mut logs = read_tail(&log_path, TAIL_LINES).unwrap_or_default();
                if seen_pod
                    && let Ok(Ok(text)) = tokio::time::timeout(
                        Duration::from_secs(2),
                        client.pod_log(&plan.namespace, &pod_name, TAIL_LINES),
                    )
                    .await
                    && !text.trim().is_empty()
                {
                    if !logs.is_empty() {
                        logs.push('\n');
                    }
                    logs.push_str("container log: ");
                    logs.push_str(text.trim());
                }
                let tail = || logs.clone();
                let timeout = crate::python_seconds(request.timeout);
                let where_ = format!("pod '{pod_name}' in namespace '{}'", plan.namespace);
                let err = match failure {
                    WaitFailure::Listener(err) => err,
                    WaitFailure::LauncherExited(state) => Error::ExitedDuringLaunch {
                        status: format!(
                            "Error occurred during launch of KernelID: {kernel_id}: the pod launcher ended with {state} before {where_} appeared"
                        ),
                        log_tail: tail(),
                    },
                    WaitFailure::Placement(PodFailure::Ended(reason)) => {
                        Error::ExitedDuringLaunch {
                            status: format!("Error starting kernel container; {where_}: {reason}"),
                            log_tail: tail(),
                        }
                    }
                    WaitFailure::Placement(PodFailure::Vanished) => Error::ExitedDuringLaunch {
                        status: format!(
                            "Error starting kernel container; {where_} was deleted during the launch"
                        ),
                        log_tail: tail(),
                    },
                    WaitFailure::Placement(PodFailure::Stuck(why)) => Error::ExitedDuringLaunch {
                        status: format!("Error starting kernel container; {where_}: {why}"),
                        log_tail: tail(),
                    },
                    WaitFailure::Placement(PodFailure::Unschedulable(why)) => Error::Capacity(
                        format!("KernelID: '{kernel_id}': {where_} cannot be scheduled: {why}"),
                    ),
                    WaitFailure::Placement(PodFailure::WatchEnded) => Error::Io(
                        std::io::Error::other(format!("the watch of {where_} ended")),
                    ),
                    WaitFailure::Timeout => {
                        let state = match &view {
                            PodView::Absent => "no pod was created".to_owned(),
                            PodView::Pending(detail) => format!("{where_} is Pending ({detail})"),
                            PodView::Running { .. } => format!("{where_} is Running"),
                            other => format!("{where_}: {other:?}"),
                        };
                        let api = last_api_error
                            .map(|e| format!(" Last API error: {e}"))
                            .unwrap_or_default();
                        Error::LaunchTimeout(format!(
                            "KernelID: '{kernel_id}' launch timeout due to: Waited too long ({timeout}s) to get connection file; {state}.{api} Launcher output: {}",
                            tail()
                        ))
                    }
                };
                tracing::warn!(%kernel_id, "Kubernetes launch failed: {err}");
                let plan = Plan { pod_name, ..plan };
                abandon(client, launcher, plan, created).await;
                return Err(err);
            }
        };

        let mut connection = response.connection.clone();
        connection.ip = ip.to_string();
        connection.kernel_name = spec.name.clone();
        let comm = response
            .comm_port
            .map(|port| self.config.launcher.comm_port(ip, port));
        tracing::info!(%kernel_id, pod = %pod_name, namespace = %plan.namespace, %ip, comm_port = ?response.comm_port, "Kubernetes kernel connection info received");
        let process = KubernetesKernelProcess {
            kernel_id,
            client,
            namespace: plan.namespace,
            pod_name,
            delete_ns: plan.own_namespace,
            ip,
            node_ip,
            connection: connection.clone(),
            comm: LauncherComm::new(comm),
            remote_pid: response.pid,
            remote_pgid: response.pgid,
            launcher,
            created,
            log_path,
            interrupt_signal: interrupt_signal_of(spec) as i32,
            poll_interval: self.config.launcher.poll_interval,
            last_final: FinalState::default(),
            pod_deleted: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            detached: AtomicBool::new(false),
        };
        Ok(LaunchedKernel {
            connection,
            process: Box::new(process),
        })
    }

    async fn reattach(&self, record: &KernelRecord) -> Result<LaunchedKernel, Error> {
        if record.resource_manager != NAME {
            return Err(Error::Config(format!(
                "kernel {} was launched by '{}', not by the kubernetes backend",
                record.kernel_id, record.resource_manager
            )));
        }
        let client = self.client()?;
        let field = |key: &str| record.process.get(key);
        let text = |key: &str| {
            field(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let (namespace, pod_name) = (text("kernel_ns"), text("pod_name"));
        if namespace.is_empty() || pod_name.is_empty() {
            return Err(Error::Config(format!(
                "kernel {}: the kubernetes record has no kernel_ns or pod_name",
                record.kernel_id
            )));
        }
        let ip: IpAddr = text("ip").parse().map_err(|_| {
            Error::Config(format!(
                "kernel {}: the kubernetes record has no usable ip",
                record.kernel_id
            ))
        })?;
        let pod = match client.get(PODS, Some(&namespace), &pod_name).await {
            Ok(p) => p,
            Err(e) if e.is_not_found() => {
                return Err(Error::NotRunning(format!(
                    "kernel {}: pod '{pod_name}' in '{namespace}' is gone",
                    record.kernel_id
                )));
            }
            Err(e) => return Err(e.into()),
        };
        match classify(&pod) {
            PodView::Running { .. } | PodView::Pending(_) => {}
            other => {
                return Err(Error::NotRunning(format!(
                    "kernel {}: pod '{pod_name}' is not running ({other:?})",
                    record.kernel_id
                )));
            }
        }
        let int = |key: &str| {
            field(key)
                .and_then(Value::as_i64)
                .and_then(|v| i32::try_from(v).ok())
        };
        let comm = field("comm_port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .map(|port| self.config.launcher.comm_port(ip, port));
        let created = field("created")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|c| {
                        let kind = super::client::template_kind(c["kind"].as_str()?)?;
                        Some(Created {
                            kind,
                            namespace: c["namespace"].as_str().map(str::to_owned),
                            name: c["name"].as_str()?.to_owned(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let process = KubernetesKernelProcess {
            kernel_id: record.kernel_id.clone(),
            client,
            namespace,
            pod_name,
            delete_ns: field("delete_ns").and_then(Value::as_bool).unwrap_or(false),
            ip,
            node_ip: field("assigned_node_ip")
                .and_then(Value::as_str)
                .map(str::to_owned),
            connection: record.connection.clone(),
            comm: LauncherComm::new(comm),
            remote_pid: int("pid"),
            remote_pgid: int("pgid"),
            launcher: None,
            created,
            log_path: PathBuf::from(text("log_path")),
            interrupt_signal: field("interrupt_signal")
                .and_then(Value::as_str)
                .and_then(parse_signal_name)
                .unwrap_or(Signal::SIGINT) as i32,
            poll_interval: self.config.launcher.poll_interval,
            last_final: FinalState::default(),
            pod_deleted: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            detached: AtomicBool::new(false),
        };
        Ok(LaunchedKernel {
            connection: record.connection.clone(),
            process: Box::new(process),
        })
    }
}

impl KubernetesResourceManager {
    /// The native path's objects: the profile's template, the kernelspec's, or the built-in pod.
    fn render(
        &self,
        spec: &KernelSpec,
        argv: &[String],
        env: &BTreeMap<String, String>,
        container_env: &BTreeMap<String, String>,
        placement: &PodPlacement,
    ) -> Result<Rendered, Error> {
        let from_spec = spec_text(spec, "pod_template").map(|p| {
            let p = PathBuf::from(p);
            if p.is_absolute() {
                p
            } else {
                spec.resource_dir.join(p)
            }
        });
        let configured = placement.pod_template.clone().or(from_spec);
        let beside_launcher = argv
            .iter()
            .find(|a| a.ends_with("launch_kubernetes.py"))
            .and_then(|a| {
                PathBuf::from(a)
                    .parent()
                    .map(|d| d.join("kernel-pod.yaml.j2"))
            });
        let in_spec = spec.resource_dir.join("scripts/kernel-pod.yaml.j2");
        let path = match configured {
            Some(p) => Some(p),
            None => beside_launcher
                .filter(|p| p.is_file())
                .or_else(|| Some(in_spec).filter(|p| p.is_file())),
        };
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    Error::Config(format!(
                        "kernelspec '{}': cannot read pod template {}: {e}",
                        spec.name,
                        path.display()
                    ))
                })?;
                pod::render(&path.display().to_string(), &text, env, container_env)
            }
            None => pod::default_pod(env, container_env),
        }
    }
}

/// Adds a profile's node selector and tolerations to a rendered pod's `spec` (as values in the
/// tree: nothing is parsed from them). A selector key the template set keeps the profile's value.
fn place_pod(pod: &mut Value, placement: &PodPlacement) -> Result<(), Error> {
    if placement.node_selector.is_empty() && placement.tolerations.is_empty() {
        return Ok(());
    }
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Err(Error::Config(
            "the rendered pod has no spec mapping for the profile's node selector and tolerations"
                .into(),
        ));
    };
    if !placement.node_selector.is_empty() {
        let selector = spec.entry("nodeSelector").or_insert_with(|| json!({}));
        let Some(map) = selector.as_object_mut() else {
            return Err(Error::Config(
                "the rendered pod's spec.nodeSelector is not a mapping".into(),
            ));
        };
        for (k, v) in &placement.node_selector {
            map.insert(k.clone(), json!(v));
        }
    }
    if !placement.tolerations.is_empty() {
        let list = spec.entry("tolerations").or_insert_with(|| json!([]));
        let Some(items) = list.as_array_mut() else {
            return Err(Error::Config(
                "the rendered pod's spec.tolerations is not a list".into(),
            ));
        };
        for t in &placement.tolerations {
            let mut item = serde_json::Map::new();
            let fields = [
                ("key", &t.key),
                ("operator", &t.operator),
                ("value", &t.value),
                ("effect", &t.effect),
            ];
            for (name, value) in fields {
                if let Some(v) = value {
                    item.insert(name.to_owned(), json!(v));
                }
            }
            if let Some(seconds) = t.toleration_seconds {
                item.insert("tolerationSeconds".to_owned(), json!(seconds));
            }
            items.push(Value::Object(item));
        }
    }
    Ok(())
}

/// Creates the rendered objects: the pod first (in the plan's namespace, with its name), then
/// the others with an owner reference to it. A 409 on another object reuses it (a restart).
async fn create_objects(
    client: &KubeClient,
    plan: &Plan,
    rendered: Rendered,
    created: &mut Vec<Created>,
) -> Result<(), Error> {
    let Rendered { mut pod, others } = rendered;
    let pod_name = pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if pod_name != plan.pod_name {
        return Err(Error::Config(format!(
            "the pod template names the pod '{}', not '{}' (use {{{{ kernel_pod_name }}}})",
            validate::excerpt(&pod_name),
            plan.pod_name
        )));
    }
    pod["metadata"]["namespace"] = json!(plan.namespace);
    let stored = client.create(PODS, Some(&plan.namespace), &pod).await?;
    let owner = json!([{
        "apiVersion": "v1", "kind": "Pod", "name": plan.pod_name,
        "uid": stored["metadata"]["uid"], "controller": false, "blockOwnerDeletion": false,
    }]);
    for (kind, mut obj) in others {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let namespace = kind.namespaced.then(|| plan.namespace.clone());
        if let Some(ns) = &namespace {
            obj["metadata"]["namespace"] = json!(ns);
        }
        if kind.kind != "PersistentVolume" && kind.kind != "PersistentVolumeClaim" {
            obj["metadata"]["ownerReferences"] = owner.clone();
        }
        match client.create(kind, namespace.as_deref(), &obj).await {
            Ok(_) => {}
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e.into()),
        }
        if kind.kind != "PersistentVolume" && kind.kind != "PersistentVolumeClaim" {
            created.push(Created {
                kind,
                namespace,
                name,
            });
        }
    }
    Ok(())
}

/// Cleans up after a failed launch: the launcher, the pod (by label too, for a launcher that
/// named it otherwise), the other objects, the namespace. Waits [`CLEANUP_WAIT`] at most.
async fn abandon(
    client: Arc<KubeClient>,
    launcher: Option<LauncherProcess>,
    plan: Plan,
    created: Vec<Created>,
) {
    let work = tokio::spawn(async move {
        if let Some(l) = &launcher {
            l.kill().await;
        }
        if let Err(e) = delete_all(
            &client,
            &plan.namespace,
            &plan.pod_name,
            &created,
            plan.own_namespace,
        )
        .await
        {
            tracing::warn!(pod = %plan.pod_name, namespace = %plan.namespace, "cleaning up a failed launch: {e}");
        }
        let kernel_id = plan.env.get("KERNEL_ID").cloned().unwrap_or_default();
        if let Ok((pods, _)) = client
            .list(
                PODS,
                Some(&plan.namespace),
                &format!("kernel_id={kernel_id},component=kernel"),
            )
            .await
        {
            for p in pods {
                if let Some(name) = p["metadata"]["name"].as_str() {
                    let _ = client
                        .delete(PODS, Some(&plan.namespace), name, Some(0), "Background")
                        .await;
                }
            }
        }
    });
    let _ = tokio::time::timeout(CLEANUP_WAIT, work).await;
}

/// A kernel running as a pod; see the [module docs](self).
#[derive(Debug)]
pub struct KubernetesKernelProcess {
    kernel_id: String,
    client: Arc<KubeClient>,
    namespace: String,
    pod_name: String,
    delete_ns: bool,
    ip: IpAddr,
    node_ip: Option<String>,
    connection: ConnectionInfo,
    comm: LauncherComm,
    remote_pid: Option<i32>,
    remote_pgid: Option<i32>,
    launcher: Option<LauncherProcess>,
    created: Vec<Created>,
    log_path: PathBuf,
    interrupt_signal: i32,
    poll_interval: Duration,
    last_final: FinalState,
    pod_deleted: AtomicBool,
    finished: AtomicBool,
    detached: AtomicBool,
}

fn gone() -> ProcessState {
    ProcessState::Exited {
        code: None,
        signal: None,
    }
}

fn state_of(view: &PodView) -> ProcessState {
    match view {
        PodView::Absent => gone(),
        PodView::Ended { code, .. } => ProcessState::Exited {
            code: *code,
            signal: None,
        },
        _ => ProcessState::Running,
    }
}

impl KubernetesKernelProcess {
    /// The pod's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The pod's name.
    pub fn pod_name(&self) -> &str {
        &self.pod_name
    }

    /// Whether the gateway created the namespace (and deletes it with the kernel).
    pub fn owns_namespace(&self) -> bool {
        self.delete_ns
    }

    /// The launcher's communication port, if it has one.
    pub fn comm_port(&self) -> Option<CommPort> {
        self.comm.port().copied()
    }

    fn cached(&self) -> Option<ProcessState> {
        self.last_final.get()
    }

    fn remember(&self, state: ProcessState) -> ProcessState {
        self.last_final.remember(state)
    }

    async fn pod_state(&self) -> ProcessState {
        if let Some(state) = self.cached() {
            return state;
        }
        match self
            .client
            .get(PODS, Some(&self.namespace), &self.pod_name)
            .await
        {
            Ok(pod) => self.remember(state_of(&classify(&pod))),
            Err(e) if e.is_not_found() => self.remember(gone()),
            Err(e) => {
                tracing::debug!(kernel_id = %self.kernel_id, pod = %self.pod_name, "liveness unknown: {e}");
                ProcessState::Unknown
            }
        }
    }

    /// Watches the pod until it ends or goes.
    async fn wait_final(&self) -> ProcessState {
        if let Some(state) = self.cached() {
            return state;
        }
        let selector = format!("kernel_id={},component=kernel", self.kernel_id);
        let mut updates = follow_pods(
            Arc::clone(&self.client),
            self.namespace.clone(),
            selector,
            self.poll_interval,
        );
        while let Some(update) = updates.recv().await {
            match update {
                Ok(Some(pod))
                    if pod["metadata"]["name"].as_str() == Some(self.pod_name.as_str()) =>
                {
                    let state = state_of(&classify(&pod));
                    if matches!(state, ProcessState::Exited { .. }) {
                        return self.remember(state);
                    }
                }
                Ok(Some(_)) | Err(_) => {}
                Ok(None) => return self.remember(gone()),
            }
        }
        ProcessState::Unknown
    }

    async fn delete_pod(&self) -> Result<(), Error> {
        self.client
            .delete(
                PODS,
                Some(&self.namespace),
                &self.pod_name,
                Some(0),
                "Background",
            )
            .await?;
        self.pod_deleted.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn not_running(&self) -> Error {
        Error::NotRunning(format!(
            "kernel {} (pod {} in {}) is not running",
            self.kernel_id, self.pod_name, self.namespace
        ))
    }
}

#[async_trait]
impl KernelProcess for KubernetesKernelProcess {
    fn record(&self) -> KernelRecord {
        let created: Vec<Value> = self
            .created
            .iter()
            .map(|c| json!({"kind": c.kind.kind, "namespace": c.namespace, "name": c.name}))
            .collect();
        KernelRecord {
            resource_manager: NAME.to_owned(),
            kernel_id: self.kernel_id.clone(),
            connection: self.connection.clone(),
            process: json!({
                "kernel_ns": self.namespace,
                "delete_ns": self.delete_ns,
                "pod_name": self.pod_name,
                "assigned_host": self.pod_name,
                "assigned_ip": self.ip.to_string(),
                "assigned_node_ip": self.node_ip,
                "ip": self.ip.to_string(),
                "pid": self.remote_pid,
                "pgid": self.remote_pgid,
                "comm_port": self.comm.port().map(|c| c.addr().port()),
                "created": created,
                "log_path": self.log_path,
                "interrupt_signal": Signal::try_from(self.interrupt_signal).map(|s| s.as_str()).unwrap_or("SIGINT"),
            }),
        }
    }

    async fn poll(&self) -> ProcessState {
        self.comm.poll_state(self.pod_state().await).await
    }

    async fn wait(&self) -> ProcessState {
        loop {
            match self.wait_final().await {
                ProcessState::Unknown => tokio::time::sleep(self.poll_interval).await,
                state => return state,
            }
        }
    }

    async fn signal(&self, signum: i32) -> Result<(), Error> {
        if signum == 0 {
            return match self.pod_state().await {
                ProcessState::Running => Ok(()),
                ProcessState::Exited { .. } => Err(self.not_running()),
                ProcessState::Unknown => Err(Error::Io(std::io::Error::other(format!(
                    "cannot tell whether pod {} runs",
                    self.pod_name
                )))),
            };
        }
        if let Some(ProcessState::Exited { .. }) = self.cached() {
            return Err(self.not_running());
        }
        if signum == Signal::SIGKILL as i32 {
            self.delete_pod().await?;
            self.remember(ProcessState::Exited {
                code: None,
                signal: Some(signum),
            });
            return Ok(());
        }
        let at = format!("in pod {}", self.pod_name);
        self.comm
            .signal_kernel(&self.kernel_id, signum, &at, || self.not_running())
            .await
    }

    async fn interrupt(&self) -> Result<(), Error> {
        self.signal(self.interrupt_signal).await
    }

    async fn terminate(&self, grace: Duration) -> Result<ProcessState, Error> {
        let mut state = self.cached();
        if state.is_none() {
            // A kernel that answered its shutdown_request is gone: the pod is deleted at once.
            let grace = if self.comm.ask_to_stop(&self.kernel_id).await {
                Duration::ZERO
            } else {
                grace
            };
            state = tokio::time::timeout(grace, self.wait_final()).await.ok();
        }
        // EG deletes the pod whatever happened to it (a finished pod object stays otherwise).
        if !self.pod_deleted.load(Ordering::SeqCst) {
            self.delete_pod().await?;
        }
        self.finished.store(true, Ordering::SeqCst);
        let state = match state {
            Some(s @ ProcessState::Exited { .. }) => s,
            _ => ProcessState::Exited {
                code: None,
                signal: Some(Signal::SIGKILL as i32),
            },
        };
        Ok(self.remember(state))
    }

    async fn shutdown_requested(&self) {
        if self.cached().is_none() {
            self.comm.shutdown_requested(&self.kernel_id).await;
        }
    }

    async fn cleanup(&self, keep_connection_file: bool) {
        if let Some(launcher) = &self.launcher {
            launcher.kill().await;
        }
        if keep_connection_file {
            // A restart: the pod goes, its namespace and other objects stay for the next one.
            if !self.pod_deleted.load(Ordering::SeqCst) && self.delete_pod().await.is_err() {
                tracing::warn!(kernel_id = %self.kernel_id, pod = %self.pod_name, "cannot delete the kernel pod");
            }
            return;
        }
        if let Err(e) = delete_all(
            &self.client,
            &self.namespace,
            &self.pod_name,
            &self.created,
            self.delete_ns,
        )
        .await
        {
            tracing::warn!(kernel_id = %self.kernel_id, pod = %self.pod_name, namespace = %self.namespace, "cleaning up the kernel's objects: {e}");
        } else {
            self.pod_deleted.store(true, Ordering::SeqCst);
        }
        self.finished.store(true, Ordering::SeqCst);
    }

    fn log_tail(&self, max_lines: usize) -> String {
        read_tail(&self.log_path, max_lines).unwrap_or_default()
    }

    fn detach(&self) {
        self.detached.store(true, Ordering::SeqCst);
    }
}

impl Drop for KubernetesKernelProcess {
    fn drop(&mut self) {
        if self.finished.load(Ordering::SeqCst) || self.detached.load(Ordering::SeqCst) {
            return;
        }
        if let Some(l) = &self.launcher {
            l.kill_now();
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            tracing::warn!(kernel_id = %self.kernel_id, pod = %self.pod_name, "kernel handle dropped while running: deleting its pod");
            let client = Arc::clone(&self.client);
            let (ns, pod, created, delete_ns) = (
                self.namespace.clone(),
                self.pod_name.clone(),
                self.created.clone(),
                self.delete_ns,
            );
            runtime.spawn(async move {
                if let Err(e) = delete_all(&client, &ns, &pod, &created, delete_ns).await {
                    tracing::warn!(%pod, "cannot delete the kernel pod: {e}");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_fill_placeholders_as_eg() {
        let env = BTreeMap::from([("KERNEL_USERNAME".to_owned(), "Bob".to_owned())]);
        assert_eq!(
            fill_pod_name("{{ kernel_username }}-x-{{kernel_id}}", &env, "k1").as_deref(),
            Some("Bob-x-k1")
        );
        assert_eq!(fill_pod_name("{{ other }}", &env, "k1"), None);
        assert_eq!(fill_pod_name("{{ kernel_missing }}", &env, "k1"), None);
        assert_eq!(fill_pod_name("{% if %}", &env, "k1"), None);
    }

    #[test]
    fn pod_states() {
        let pending = json!({"status": {"phase": "Pending", "containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}]}});
        assert_eq!(
            classify(&pending),
            PodView::Pending("ContainerCreating".into())
        );
        let pull = json!({"status": {"phase": "Pending", "containerStatuses": [{"state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"x\""}}}]}});
        assert!(matches!(classify(&pull), PodView::Stuck(m) if m.starts_with("ImagePullBackOff")));
        let unsched = json!({"status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1 nodes"}]}});
        assert!(matches!(classify(&unsched), PodView::Unschedulable(m) if m.contains("0/1 nodes")));
        let running =
            json!({"status": {"phase": "Running", "podIP": "10.1.2.3", "hostIP": "10.0.0.1"}});
        assert_eq!(
            classify(&running),
            PodView::Running {
                ip: "10.1.2.3".parse().ok(),
                node_ip: Some("10.0.0.1".into())
            }
        );
        let failed = json!({"status": {"phase": "Failed", "containerStatuses": [{"state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}});
        assert!(
            matches!(classify(&failed), PodView::Ended { code: Some(137), reason } if reason.contains("OOMKilled"))
        );
        assert_eq!(state_of(&classify(&running)), ProcessState::Running);
    }
}
