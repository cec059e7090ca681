//! A Kubernetes API-server emulator for tests, with a one-node "kubelet" that runs each pod's
//! container as a local process group.
//!
//! No real API server can run on the test machines (none is packaged for Debian, PyPI or npm,
//! and nothing else can be fetched), so the Kubernetes path is tested against this, written
//! from the Kubernetes API reference (API conventions, the core/v1 and rbac/v1 resources,
//! watch semantics, `Status`). Real clients keep it honest: kubectl and the official Python
//! client run against it in the tests.
//!
//! # What it emulates
//! * Discovery: `/api` (`APIVersions`), `/api/v1` and `/apis/rbac.authorization.k8s.io/v1`
//!   (`APIResourceList`), `/apis` (`APIGroupList`), `/apis/<group>`, `/version`, `/healthz`,
//!   `/livez`, `/readyz`.
//! * Resources: namespaces, pods (+ `/log`, `/status`), services, configmaps, secrets,
//!   persistentvolumeclaims, persistentvolumes, serviceaccounts, events, nodes (empty),
//!   rolebindings, roles, clusterroles, clusterrolebindings — each with create (`generateName`
//!   too), get, list (`labelSelector` with `=`, `==`, `!=`, `in`, `notin`, exists, `!`;
//!   `fieldSelector` on `metadata.name`, `metadata.namespace`, `status.phase`, `spec.nodeName`),
//!   watch (`?watch=true`: a streamed response of JSON lines `{"type","object"}`, from
//!   `resourceVersion` or with the current objects as ADDED first, `timeoutSeconds`, an ERROR
//!   410 event for a version older than the kept log), replace (PUT, resourceVersion
//!   conflicts 409), merge patch (strategic merge patches are applied as merge patches), delete
//!   and deletecollection. kubectl's `as=Table` requests get a `Table`.
//! * Resource versions: one counter over all objects; lists carry the current one.
//! * Deletes: `gracePeriodSeconds` and `propagationPolicy` from the query or a `DeleteOptions`
//!   body. A running pod with a grace period gets `deletionTimestamp`, its container SIGTERM and
//!   SIGKILL after the grace period, then it is removed; grace 0 (or a pod with no running
//!   container) is removed at once and its container SIGKILLed. Dependents whose
//!   `ownerReferences` name the deleted uid are deleted (Background, Foreground) or orphaned.
//!   A deleted namespace is `Terminating` (new objects refused with 403), its objects go, then
//!   it goes.
//! * Admission the clients meet: a namespaced create needs its namespace (404); a pod needs its
//!   service account (403 "error looking up service account"); every new namespace gets a
//!   `default` service account. Validation (422 `Invalid` with `details.causes`): names as
//!   RFC 1123 labels (namespaces, services, containers) or subdomains, label keys and values,
//!   annotation keys, container image and name required, env names, resource quantities,
//!   security-context ids, restart policy. `Status` bodies for 400, 401, 403, 404, 405, 409,
//!   410, 415, 422.
//! * Bearer-token auth ([`EmulatorConfig::token`]): anything but `/version` and the health
//!   paths without `Authorization: Bearer <token>` gets 401.
//! * The scheduler: a pod whose requests (or limits) of cpu, memory or `nvidia.com/gpu` exceed
//!   the node's, or whose `nodeSelector` does not match [`EmulatorConfig::node_labels`], stays
//!   Pending with condition `PodScheduled=False, reason Unschedulable` and a `FailedScheduling`
//!   event.
//! * The kubelet: an image is a name in [`EmulatorConfig::images`] (entrypoint, cmd, env,
//!   working directory) — an unknown image goes `ErrImagePull` then `ImagePullBackOff`. The
//!   container's `command`/`args` combine with the image's as Kubernetes does, `$(VAR)` is
//!   expanded, the env holds the image's env then the pod's (`value` and the common `fieldRef`s),
//!   and it runs in its own process group with stdin closed and output in the pod's log. Phase
//!   Pending → Running with `podIP` and `hostIP` 127.0.0.1 and container statuses; exit 0 →
//!   Succeeded, else Failed (`terminated.exitCode`, reason `Error`); with `restartPolicy`
//!   Always/OnFailure a failing container is restarted with back-off and shows
//!   `CrashLoopBackOff`.
//! * Faults, per image ([`Image::fault`]) or per pod (annotation [`FAULT_ANNOTATION`], one of
//!   `fail`, `unschedulable`, `image-pull`, `crash-loop` via restart policy, `slow-start=<ms>`,
//!   `vanish=<ms>`): see [`Fault`].
//!
//! # What it does NOT emulate
//! * TLS (plain HTTP only), client certificates, authorization (RBAC objects are stored, never
//!   enforced), service-account token issuance, OIDC, impersonation headers.
//! * Protobuf, YAML request bodies (clients send JSON), server-side apply, strategic-merge
//!   semantics of lists, JSON patch, `dryRun`, `limit`/`continue` paging (lists are whole),
//!   field validation, OpenAPI documents (`/openapi/v2`, `/openapi/v3` answer 404, so kubectl
//!   needs `--validate=false` to create), aggregated discovery, watch bookmarks, `sendInitialEvents`.
//! * More than one node, more than one container per pod (only the first runs; init and
//!   ephemeral containers are ignored), probes, volumes and mounts (accepted, not mounted),
//!   `securityContext` (the process runs as the emulator's user), resource enforcement, images
//!   (nothing is pulled; an image is a local command), networking (every pod is 127.0.0.1; a
//!   Service gets a cluster IP nobody routes), exec/attach/port-forward, pod log options.
//! * Controllers other than namespace deletion, the default service account and owner-reference
//!   garbage collection: no Deployments, ReplicaSets, Jobs, endpoints, quotas, limit ranges or
//!   CRDs; PVCs stay Pending.
//! * Persistence: state lives in memory; stopping the emulator forgets everything.

mod http;
mod kubelet;
mod state;
mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use state::{Key, Shared};

/// The one node's name.
pub const NODE_NAME: &str = "emulator-node";

/// A pod annotation choosing a [`Fault`] for that pod.
pub const FAULT_ANNOTATION: &str = "emulator.kubernetes.test/fault";

/// A fault the kubelet or scheduler injects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The container starts, then is killed (exit 137, `OOMKilled`): phase Failed (with
    /// `restartPolicy: Never`).
    Fail,
    /// The scheduler refuses the pod (an untolerated taint): Pending, `Unschedulable`.
    Unschedulable,
    /// The image cannot be pulled: `ErrImagePull`, then `ImagePullBackOff`.
    ImagePull,
    /// The container starts only after this long (Pending, `ContainerCreating`, meanwhile).
    SlowStart(Duration),
    /// The pod disappears this long after its container started: the process is killed and the
    /// object removed (a DELETED event) without any delete request, as when its node is lost.
    Vanish(Duration),
}

impl Fault {
    /// Parses the annotation's text: `fail`, `unschedulable`, `image-pull`, `slow-start=<ms>`,
    /// `vanish=<ms>`.
    pub fn parse(text: &str) -> Option<Fault> {
        let ms = |v: &str| v.trim().parse::<u64>().ok().map(Duration::from_millis);
        match text.trim().split_once('=') {
            Some(("slow-start", v)) => ms(v).map(Fault::SlowStart),
            Some(("vanish", v)) => ms(v).map(Fault::Vanish),
            None => match text.trim() {
                "fail" => Some(Fault::Fail),
                "unschedulable" => Some(Fault::Unschedulable),
                "image-pull" => Some(Fault::ImagePull),
                _ => None,
            },
            _ => None,
        }
    }
}

/// A container image: what runs when a pod uses it.
#[derive(Debug, Clone, Default)]
pub struct Image {
    /// The image's `ENTRYPOINT`.
    pub entrypoint: Vec<String>,
    /// The image's `CMD` (replaced by a container's `args`).
    pub cmd: Vec<String>,
    /// The image's environment (before the pod's).
    pub env: BTreeMap<String, String>,
    /// The image's working directory.
    pub working_dir: Option<PathBuf>,
    /// A fault every pod of this image gets.
    pub fault: Option<Fault>,
}

/// The emulated cluster's settings.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// The bearer token every request must carry (`None`: no authentication).
    pub token: Option<String>,
    /// Serve HTTPS with a certificate from a CA made at start ([`K8sEmulator::ca_pem`]); clients
    /// such as kubectl send bearer tokens over TLS only.
    pub tls: bool,
    /// Images by name.
    pub images: BTreeMap<String, Image>,
    /// The node's allocatable cpu, in millicores.
    pub node_cpu_millis: u64,
    /// The node's allocatable memory, in bytes.
    pub node_memory_bytes: u64,
    /// The node's `nvidia.com/gpu` count.
    pub node_gpus: u64,
    /// The node's labels (for `nodeSelector`).
    pub node_labels: BTreeMap<String, String>,
    /// Namespaces that exist from the start (each with a `default` service account).
    pub namespaces: Vec<String>,
    /// Time from creation to scheduling.
    pub schedule_delay: Duration,
    /// Time an image pull takes to fail (each of ErrImagePull, ImagePullBackOff).
    pub pull_delay: Duration,
    /// First back-off of a crashing container (doubles, at most 5 s).
    pub crash_backoff: Duration,
}

impl Default for EmulatorConfig {
    fn default() -> EmulatorConfig {
        EmulatorConfig {
            token: None,
            tls: false,
            images: BTreeMap::new(),
            node_cpu_millis: 8000,
            node_memory_bytes: 16 * 1024 * 1024 * 1024,
            node_gpus: 0,
            node_labels: BTreeMap::from([
                ("kubernetes.io/hostname".to_owned(), NODE_NAME.to_owned()),
                ("kubernetes.io/os".to_owned(), "linux".to_owned()),
            ]),
            namespaces: vec!["default".into(), "kube-system".into(), "kube-public".into()],
            schedule_delay: Duration::from_millis(10),
            pull_delay: Duration::from_millis(100),
            crash_backoff: Duration::from_millis(200),
        }
    }
}

/// A pod as the test sees it.
#[derive(Debug, Clone)]
pub struct PodSnapshot {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The whole object.
    pub object: Value,
}

impl PodSnapshot {
    /// `status.phase`.
    pub fn phase(&self) -> &str {
        self.object["status"]["phase"].as_str().unwrap_or_default()
    }
}

/// A running emulator.
#[derive(Debug)]
pub struct K8sEmulator {
    shared: Arc<Shared>,
    url: String,
    ca_pem: Option<String>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    _log_root: tempfile::TempDir,
}

impl K8sEmulator {
    /// Starts the API server on `addr` (use port 0).
    pub async fn start(config: EmulatorConfig, addr: SocketAddr) -> std::io::Result<K8sEmulator> {
        let log_root = tempfile::Builder::new().prefix("k8s-emulator-").tempdir()?;
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let pki = if config.tls { Some(tls::pki()?) } else { None };
        let scheme = if pki.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{local}");
        let namespaces = config.namespaces.clone();
        let shared = Arc::new(Shared::new(config, log_root.path().to_path_buf()));
        *shared
            .url
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = url.clone();
        for ns in namespaces {
            shared.seed_namespace(&ns);
        }
        let router = http::router(shared.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let ca_pem = pki.as_ref().map(|p| p.ca_pem.clone());
        let task = match pki {
            Some(pki) => {
                let listener = tls::TlsListener::new(listener, pki.acceptor)?;
                tokio::spawn(async move {
                    let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
                        let _ = rx.await;
                    });
                    let _ = serve.await;
                })
            }
            None => tokio::spawn(async move {
                let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
                    let _ = rx.await;
                });
                let _ = serve.await;
            }),
        };
        Ok(K8sEmulator {
            shared,
            url,
            ca_pem,
            shutdown: Some(tx),
            task: Some(task),
            _log_root: log_root,
        })
    }

    /// Base URL (`http://127.0.0.1:<port>`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The CA certificate (PEM) that signed the server's, when serving TLS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// Every pod, by namespace and name.
    pub fn pods(&self) -> Vec<PodSnapshot> {
        self.objects("pods")
            .into_iter()
            .map(|(namespace, name, object)| PodSnapshot {
                namespace,
                name,
                object,
            })
            .collect()
    }

    /// Names of every namespace.
    pub fn namespaces(&self) -> Vec<String> {
        self.objects("namespaces")
            .into_iter()
            .map(|(_, n, _)| n)
            .collect()
    }

    /// Every stored object of a resource (plural, e.g. `rolebindings`), as
    /// `(namespace, name, object)`.
    pub fn objects(&self, plural: &str) -> Vec<(String, String, Value)> {
        self.shared
            .lock()
            .objects
            .iter()
            .filter(|(k, _)| k.plural == plural)
            .map(|(k, v)| (k.namespace.clone(), k.name.clone(), v.clone()))
            .collect()
    }

    /// Every container process group the kubelet ever started.
    pub fn process_groups(&self) -> Vec<i32> {
        self.shared.lock().every_pgid.clone()
    }

    /// Container process groups that still have a live process.
    pub fn live_process_groups(&self) -> Vec<i32> {
        self.process_groups()
            .into_iter()
            .filter(|p| kubelet::group_alive(*p))
            .collect()
    }

    /// Makes a pod vanish now (its process killed, the object removed without a delete request);
    /// false if there is no such pod.
    pub fn vanish(&self, namespace: &str, name: &str) -> bool {
        let key = Key {
            plural: "pods",
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        let mut st = self.shared.lock();
        let Some(pod) = st.objects.get(&key).cloned() else {
            return false;
        };
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if let Some(rt) = st.runtimes.get_mut(&uid) {
            rt.grace = Some(0);
            if let Some(p) = rt.pgid {
                kubelet::signal_group(p, nix::sys::signal::Signal::SIGKILL);
            }
            rt.stop.notify_one();
        }
        st.remove(&self.shared.events_tx, &key);
        true
    }

    /// Stops the server and kills every container.
    pub async fn stop(mut self) {
        self.kill_everything();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }

    fn kill_everything(&self) {
        let groups = {
            let mut st = self.shared.lock();
            st.stopped = true;
            st.every_pgid.clone()
        };
        let tasks = std::mem::take(
            &mut *self
                .shared
                .tasks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for task in tasks {
            task.abort();
        }
        for pgid in groups {
            kubelet::signal_group(pgid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Drop for K8sEmulator {
    fn drop(&mut self) {
        self.kill_everything();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Shared {
    /// Creates a namespace with its `default` service account (start-up only).
    fn seed_namespace(&self, name: &str) {
        let mut st = self.lock();
        let uid = st.uid();
        let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": name, "uid": uid, "creationTimestamp": state::now_rfc3339(),
            "labels": {"kubernetes.io/metadata.name": name}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
        let key = Key {
            plural: "namespaces",
            namespace: String::new(),
            name: name.to_owned(),
        };
        st.put(&self.events_tx, key, ns, state::EventType::Added);
        let sa_uid = st.uid();
        let sa = serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {
            "name": "default", "namespace": name, "uid": sa_uid, "creationTimestamp": state::now_rfc3339()}});
        let key = Key {
            plural: "serviceaccounts",
            namespace: name.to_owned(),
            name: "default".into(),
        };
        st.put(&self.events_tx, key, sa, state::EventType::Added);
    }
}
