//! The `docker` and `docker-swarm` resource managers; see the [module docs](super).
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use jupyter_protocol::ConnectionInfo;
use kernel_launcher::ResponseListener;
use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::client::{DockerClient, DockerError, DockerHost, Task};
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
    Error, KernelProcess, KernelRecord, LaunchRequest, LaunchedKernel, ProcessState,
    ResourceManager,
};

/// The name of the plain-Docker backend in a [`crate::Registry`].
pub const NAME_DOCKER: &str = "docker";

/// The name of the Swarm backend in a [`crate::Registry`].
pub const NAME_SWARM: &str = "docker-swarm";

/// Where EG's Docker process proxies live.
const EG_MODULE: &str = "enterprise_gateway.services.processproxies.docker_swarm";

/// EG's message when no image is known.
const NO_IMAGE: &str = "No kernel image could be determined! Set the `image_name` in the \
                        process_proxy.config stanza of the corresponding kernel.json file.";

/// Lines of a workload's output kept in the kernel's log when it is removed.
const KEPT_LINES: usize = 200;

/// Lines of output quoted in errors.
const TAIL_LINES: usize = 20;

/// How long a failed launch waits for its clean-up before leaving it to a background task.
const CLEANUP_WAIT: Duration = Duration::from_secs(5);

/// Plain containers or swarm services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DockerMode {
    /// EG's `DockerProcessProxy`: one container per kernel.
    Container,
    /// EG's `DockerSwarmProcessProxy`: one service (with one task) per kernel.
    Swarm,
}

impl DockerMode {
    /// `docker` or `swarm`, as `EG_DOCKER_MODE` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            DockerMode::Container => "docker",
            DockerMode::Swarm => "swarm",
        }
    }

    fn what(self) -> &'static str {
        match self {
            DockerMode::Container => "container",
            DockerMode::Swarm => "service",
        }
    }
}

/// Settings of the Docker backends.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// Where the engine listens (`DOCKER_HOST`: `unix:///path`, default
    /// `/var/run/docker.sock`, or `tcp://host:port`).
    pub host: DockerHost,
    /// The network kernels join (`EG_DOCKER_NETWORK`, default `bridge`; `host` shares the
    /// engine host's network).
    pub network: String,
    /// Remove a kernel's container after it ended (`EG_REMOVE_CONTAINER`, default true). Swarm
    /// services are always removed, as EG does.
    pub remove_container: bool,
    /// The image when neither the kernelspec (`image_name`) nor the client (`KERNEL_IMAGE`)
    /// names one (`EG_KERNEL_IMAGE`).
    pub image: Option<String>,
    /// The ids kernels may not run as.
    pub ids: KernelIds,
    /// `EG_MIRROR_WORKING_DIRS`: a client's `KERNEL_WORKING_DIR` becomes the container's
    /// working directory (else it is dropped, as EG does).
    pub mirror_working_dirs: bool,
    /// The address of a kernel on the host network: the engine's host as the gateway reaches
    /// it (default this machine, 127.0.0.1, right for a unix socket).
    pub host_ip: IpAddr,
    /// The listener, the launchers' log directory (`EG_KERNEL_LOG_DIR`), the PATH and the
    /// timeouts; `poll_interval` paces the engine polls, `request_timeout` bounds one engine
    /// request (an image pull is bounded by the launch deadline instead).
    pub launcher: LauncherSettings,
}

impl DockerConfig {
    /// Defaults for everything but the listener and the log directory.
    pub fn new(response: Arc<ResponseListener>, log_dir: PathBuf) -> DockerConfig {
        DockerConfig {
            host: DockerHost::default(),
            network: "bridge".into(),
            remove_container: true,
            image: None,
            ids: KernelIds::default(),
            mirror_working_dirs: false,
            host_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            launcher: LauncherSettings::new(response, log_dir),
        }
    }
}

/// The `docker` or `docker-swarm` resource manager; see the [module docs](super).
#[derive(Debug)]
pub struct DockerResourceManager {
    mode: DockerMode,
    config: DockerConfig,
    client: DockerClient,
}

/// What a launch will create, decided (and validated) before anything is.
#[derive(Debug)]
struct Plan {
    name: String,
    image: String,
    uid: u32,
    gid: u32,
    labels: BTreeMap<String, String>,
    /// The launcher's environment (EG's path).
    launch_env: BTreeMap<String, String>,
    /// The container's environment (the native path).
    container_env: BTreeMap<String, String>,
    native: bool,
    /// The container's working directory (`KERNEL_WORKING_DIR`, when mirrored).
    working_dir: Option<String>,
    /// The profile's memory limit in bytes and CPU count (the native path's container or
    /// service limits).
    memory_bytes: Option<u64>,
    cpus: Option<u32>,
}

impl DockerResourceManager {
    /// A backend of this mode (no engine traffic until a launch).
    pub fn new(mode: DockerMode, config: DockerConfig) -> DockerResourceManager {
        let client = DockerClient::new(config.host.clone(), config.launcher.request_timeout);
        DockerResourceManager {
            mode,
            config,
            client,
        }
    }

    /// The settings.
    pub fn config(&self) -> &DockerConfig {
        &self.config
    }

    /// The engine client.
    pub fn client(&self) -> &DockerClient {
        &self.client
    }

    /// Containers or services.
    pub fn mode(&self) -> DockerMode {
        self.mode
    }

    /// Validates what the request asks for and composes both environments.
    fn plan(&self, request: &LaunchRequest) -> Result<Plan, Error> {
        let spec = &request.spec;
        let raw = &spec.config.raw;
        let text = |key: &str| {
            raw.get(key)
                .and_then(serde_json::Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let env = &request.env;
        let from_env = |key: &str| {
            env.get(key)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        // The image: the client's KERNEL_IMAGE, else the kernelspec's, else the gateway's.
        let image = match from_env("KERNEL_IMAGE") {
            Some(image) => {
                validate::check_image(&image)
                    .map_err(|why| Error::InvalidRequest(format!("KERNEL_IMAGE {why}")))?;
                image
            }
            None => {
                let image = text("image_name")
                    .or_else(|| self.config.image.clone())
                    .ok_or_else(|| Error::Config(NO_IMAGE.into()))?;
                validate::check_image(&image).map_err(|why| {
                    Error::Config(format!(
                        "kernelspec '{}': image_name '{image}' {why}",
                        spec.name
                    ))
                })?;
                image
            }
        };
        let (uid, gid) = self.config.ids.check(env)?;
        let user = env
            .get("KERNEL_USERNAME")
            .cloned()
            .unwrap_or_else(|| request.username.clone());
        let name = format!("{user}-{}", request.kernel_id);
        validate::check_name(&name, self.mode == DockerMode::Swarm)
            .map_err(|why| Error::InvalidRequest(format!("KERNEL_USERNAME '{user}' {why}")))?;
        let native = text("launch").is_some_and(|l| l.eq_ignore_ascii_case("native"));

        let labels = BTreeMap::from([
            ("kernel_id".to_owned(), request.kernel_id.clone()),
            ("component".to_owned(), "kernel".to_owned()),
            ("app".to_owned(), "enterprise-gateway".to_owned()),
        ]);

        // The container's working directory: the client's, when the gateway mirrors them (EG's
        // EG_MIRROR_WORKING_DIRS; launch_docker.py reads it from its environment).
        let working_dir = match from_env("KERNEL_WORKING_DIR") {
            Some(dir) if self.config.mirror_working_dirs => {
                crate::launcher::check_working_dir("KERNEL_WORKING_DIR", &dir)?;
                Some(dir)
            }
            _ => None,
        };
        // EG's launch environment: the request's (KERNEL_WORKING_DIR only when mirrored),
        // normalised ids and the image written back.
        let mut launch_env: BTreeMap<String, String> = env
            .iter()
            .filter(|(k, _)| k.as_str() != "KERNEL_WORKING_DIR")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(dir) = &working_dir {
            launch_env.insert("KERNEL_WORKING_DIR".into(), dir.clone());
        }
        launch_env.insert("KERNEL_IMAGE".into(), image.clone());
        launch_env.insert("KERNEL_UID".into(), uid.to_string());
        launch_env.insert("KERNEL_GID".into(), gid.to_string());
        launch_env
            .entry("KERNEL_LANGUAGE".into())
            .or_insert_with(|| spec.language.clone());
        let remove = if self.config.remove_container {
            "True"
        } else {
            "False"
        };
        let mut launcher_only = BTreeMap::new();
        launcher_only.insert("DOCKER_HOST".to_owned(), self.config.host.to_string());
        for prefix in ["", "EG_", "GP_"] {
            launcher_only.insert(format!("{prefix}DOCKER_MODE"), self.mode.as_str().into());
            launcher_only.insert(
                format!("{prefix}DOCKER_NETWORK"),
                self.config.network.clone(),
            );
            launcher_only.insert(format!("{prefix}REMOVE_CONTAINER"), remove.into());
        }
        let mut container_env = launch_env.clone();
        container_env.remove("PATH");
        // launch_docker.py drops PATH from what it hands the container, and fails without one.
        if !launch_env.contains_key("PATH") {
            let path: Vec<String> = self
                .config
                .launcher
                .search_path
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            let path = if path.is_empty() {
                "/usr/local/bin:/usr/bin:/bin".to_owned()
            } else {
                path.join(":")
            };
            launcher_only.insert("PATH".to_owned(), path);
        }
        launch_env.extend(launcher_only);

        // What the launcher script would add for the container (launch_docker.py).
        let listener = &self.config.launcher.response;
        container_env.insert("KERNEL_ID".into(), request.kernel_id.clone());
        container_env.insert("RESPONSE_ADDRESS".into(), listener.response_address());
        container_env.insert("PUBLIC_KEY".into(), listener.public_key_b64().to_owned());
        container_env.insert("PORT_RANGE".into(), request.port_range.to_template());
        let flag = |name: &str| {
            spec.argv
                .iter()
                .position(|a| a == name)
                .and_then(|i| spec.argv.get(i + 1))
                .filter(|v| !v.starts_with('{'))
                .cloned()
        };
        container_env.insert(
            "KERNEL_SPARK_CONTEXT_INIT_MODE".into(),
            flag("--spark-context-initialization-mode")
                .or_else(|| flag("--RemoteProcessProxy.spark-context-initialization-mode"))
                .unwrap_or_else(|| "none".into()),
        );
        if let Some(class) = flag("--kernel-class-name") {
            container_env.insert("KERNEL_CLASS_NAME".into(), class);
        }
        container_env.retain(|k, _| !k.is_empty() && !k.contains('='));
        Ok(Plan {
            name,
            image,
            uid,
            gid,
            labels,
            launch_env,
            container_env,
            native,
            working_dir,
            memory_bytes: request.placement.limits.memory_bytes,
            cpus: request.placement.limits.cpus,
        })
    }

    /// The engine's create request for the plan (the native path).
    fn create_body(&self, plan: &Plan) -> serde_json::Value {
        let env: Vec<String> = plan
            .container_env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let user = format!("{}:{}", plan.uid, plan.gid);
        let groups: Vec<String> = if plan.gid == 100 {
            Vec::new()
        } else {
            vec!["100".into()]
        };
        let nano_cpus = plan.cpus.map(|c| u64::from(c) * 1_000_000_000);
        match self.mode {
            DockerMode::Container => {
                let mut body = serde_json::json!({
                    "Image": plan.image,
                    "Env": env,
                    "Labels": plan.labels,
                    "User": user,
                    "HostConfig": {
                        "NetworkMode": self.config.network,
                        "GroupAdd": groups,
                    },
                });
                if let Some(dir) = &plan.working_dir {
                    body["WorkingDir"] = serde_json::json!(dir);
                }
                if let Some(bytes) = plan.memory_bytes {
                    body["HostConfig"]["Memory"] = serde_json::json!(bytes);
                }
                if let Some(nano) = nano_cpus {
                    body["HostConfig"]["NanoCpus"] = serde_json::json!(nano);
                }
                body
            }
            DockerMode::Swarm => {
                let mut body = serde_json::json!({
                    "Name": plan.name,
                    "Labels": plan.labels,
                    "TaskTemplate": {
                        "ContainerSpec": {
                            "Image": plan.image,
                            "Env": env,
                            "Labels": plan.labels,
                            "User": user,
                            "Groups": groups,
                        },
                        "RestartPolicy": {"Condition": "none"},
                        "Networks": [{"Target": self.config.network}],
                    },
                    "EndpointSpec": {"Mode": "dnsrr"},
                });
                if let Some(dir) = &plan.working_dir {
                    body["TaskTemplate"]["ContainerSpec"]["Dir"] = serde_json::json!(dir);
                }
                let mut limits = serde_json::Map::new();
                if let Some(bytes) = plan.memory_bytes {
                    limits.insert("MemoryBytes".into(), serde_json::json!(bytes));
                }
                if let Some(nano) = nano_cpus {
                    limits.insert("NanoCPUs".into(), serde_json::json!(nano));
                }
                if !limits.is_empty() {
                    body["TaskTemplate"]["Resources"] = serde_json::json!({"Limits": limits});
                }
                body
            }
        }
    }

    /// Creates (and starts) the workload through the API; pulls a missing image first, as
    /// docker-py does, within the deadline.
    async fn create_native(&self, plan: &Plan, deadline: Instant) -> Result<String, Error> {
        let engine = |err: DockerError| match err.engine_message() {
            Some(message) => Error::Spawn(format!(
                "the Docker engine refused the kernel's {}: {message}",
                self.mode.what()
            )),
            None => Error::Docker(err),
        };
        if self.mode == DockerMode::Container && !self.client.image_exists(&plan.image).await? {
            let pull = self.client.pull(&plan.image);
            match tokio::time::timeout_at(deadline, pull).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    return Err(Error::Spawn(format!(
                        "image '{}' is not on the Docker engine and cannot be pulled: {}",
                        plan.image,
                        err.engine_message()
                            .map_or_else(|| err.to_string(), str::to_owned)
                    )));
                }
                Err(_) => {
                    return Err(Error::LaunchTimeout(format!(
                        "image '{}' is not on the Docker engine and pulling it did not finish before the launch deadline",
                        plan.image
                    )));
                }
            }
        }
        let body = self.create_body(plan);
        match self.mode {
            DockerMode::Container => {
                let id = self
                    .client
                    .create_container(&plan.name, &body)
                    .await
                    .map_err(engine)?;
                if let Err(err) = self.client.start_container(&id).await {
                    let _ = self.client.remove_container(&id).await;
                    return Err(engine(err));
                }
                Ok(id)
            }
            DockerMode::Swarm => self.client.create_service(&body).await.map_err(engine),
        }
    }

    /// The kernel's workload id, found by its `kernel_id` label (EG's path).
    async fn find(&self, kernel_id: &str) -> Result<Option<String>, DockerError> {
        let label = format!("kernel_id={kernel_id}");
        Ok(match self.mode {
            DockerMode::Container => self
                .client
                .containers_labelled(&label)
                .await?
                .into_iter()
                .next()
                .map(|c| c.id),
            DockerMode::Swarm => self
                .client
                .services_labelled(&label)
                .await?
                .into_iter()
                .next()
                .map(|s| s.id),
        })
    }

    /// The workload's state during launch.
    async fn seen(&self, id: &str) -> Result<Probe<IpAddr, String>, DockerError> {
        match self.mode {
            DockerMode::Container => {
                let inspect = match self.client.inspect_container(id).await {
                    Ok(inspect) => inspect,
                    Err(err) if err.is_not_found() => {
                        return Ok(Probe::Failed(
                            "Error starting kernel container; it was removed (it ended and was auto-removed)".into(),
                        ));
                    }
                    Err(err) => return Err(err),
                };
                let state = &inspect.state;
                Ok(match state.status.as_str() {
                    "created" => Probe::Starting,
                    "running" => {
                        let settings = &inspect.network_settings;
                        let on_network = settings
                            .networks
                            .as_ref()
                            .and_then(|n| n.get(&self.config.network))
                            .map(|e| e.ip_address.clone())
                            .filter(|ip| !ip.is_empty());
                        let ip = on_network
                            .or_else(|| {
                                Some(settings.ip_address.clone()).filter(|ip| !ip.is_empty())
                            })
                            .and_then(|ip| ip.parse().ok())
                            .unwrap_or(self.config.host_ip);
                        Probe::Placed(ip)
                    }
                    other => Probe::Failed(container_failure(other, state)),
                })
            }
            DockerMode::Swarm => {
                let tasks = match self.client.service_tasks(id).await {
                    Ok(tasks) => tasks,
                    Err(err) if err.is_not_found() => {
                        return Ok(Probe::Failed(
                            "Error starting kernel service; it was removed".into(),
                        ));
                    }
                    Err(err) => return Err(err),
                };
                let Some(task) = current_task(&tasks) else {
                    return Ok(Probe::Starting);
                };
                match task.status.state.as_str() {
                    "running" => Ok(Probe::Placed(self.task_ip(task).await)),
                    state if is_task_final(state) => Ok(Probe::Failed(task_failure(task))),
                    _ => Ok(Probe::Starting),
                }
            }
        }
    }

    /// A running task's address: its first network attachment's, else (host networking) its
    /// node's, else the engine's host.
    async fn task_ip(&self, task: &Task) -> IpAddr {
        let attached = task
            .networks_attachments
            .iter()
            .flat_map(|a| a.addresses.iter())
            .find_map(|cidr| cidr.split('/').next()?.parse::<IpAddr>().ok());
        if let Some(ip) = attached {
            return ip;
        }
        if !task.node_id.is_empty()
            && let Ok(addr) = self.client.node_addr(&task.node_id).await
            && let Ok(ip) = addr.parse::<IpAddr>()
            && !ip.is_unspecified()
        {
            return ip;
        }
        self.config.host_ip
    }

    /// The last lines of a workload's output, or why there are none.
    async fn workload_logs(&self, id: &str) -> String {
        let logs = match self.mode {
            DockerMode::Container => self.client.container_logs(id, TAIL_LINES).await,
            DockerMode::Swarm => self.client.service_logs(id, TAIL_LINES).await,
        };
        match logs {
            Ok(text) => text.trim_end().to_owned(),
            Err(err) => format!("(no output: {err})"),
        }
    }

    /// Removes every workload labelled with the kernel id (and `known`), bounded.
    async fn remove_all(&self, kernel_id: &str, known: Option<&str>) {
        let work = async {
            let mut ids: Vec<String> = known.map(str::to_owned).into_iter().collect();
            if let Ok(Some(found)) = self.find(kernel_id).await
                && !ids.contains(&found)
            {
                ids.push(found);
            }
            for id in ids {
                let removed = remove_workload(&self.client, self.mode, &id).await;
                if let Err(err) = removed {
                    tracing::warn!(%kernel_id, %id, "cannot remove the kernel's {}: {err}", self.mode.what());
                }
            }
        };
        let _ = tokio::time::timeout(CLEANUP_WAIT, work).await;
    }
}

/// Removes a container (forced) or a service; gone already is fine.
async fn remove_workload(
    client: &DockerClient,
    mode: DockerMode,
    id: &str,
) -> Result<(), DockerError> {
    match mode {
        DockerMode::Container => client.remove_container(id).await,
        DockerMode::Swarm => client.remove_service(id).await,
    }
}

fn container_failure(status: &str, state: &super::client::ContainerState) -> String {
    let mut why = format!("Error starting kernel container; status: '{status}'.");
    if status == "exited" || status == "dead" {
        why.push_str(&format!(" Exit code {}.", state.exit_code));
    }
    if state.oom_killed {
        why.push_str(" Killed for lack of memory.");
    }
    if !state.error.is_empty() {
        why.push_str(&format!(" {}", state.error));
    }
    why
}

/// The task that counts: the newest one the orchestrator wants running, else the newest.
fn current_task(tasks: &[Task]) -> Option<&Task> {
    tasks
        .iter()
        .find(|t| t.desired_state == "running")
        .or_else(|| tasks.first())
}

/// Task states after which a task never runs again.
fn is_task_final(state: &str) -> bool {
    matches!(
        state,
        "complete" | "failed" | "rejected" | "shutdown" | "orphaned" | "remove"
    )
}

fn task_failure(task: &Task) -> String {
    let status = &task.status;
    let mut why = format!(
        "Error starting kernel service; task status: '{}'.",
        status.state
    );
    if let Some(code) = status.container_status.as_ref().and_then(|c| c.exit_code) {
        why.push_str(&format!(" Exit code {code}."));
    }
    for note in [&status.err, &status.message] {
        if !note.is_empty() {
            why.push_str(&format!(" {note}"));
        }
    }
    why
}

/// The kernel's workload as a launch sees it: looked for by its `kernel_id` label until it
/// shows up (EG's path; the native path knows it from the start), then inspected until it
/// runs.
struct WorkloadWatch<'a> {
    backend: &'a DockerResourceManager,
    kernel_id: &'a str,
    /// The container or service id, once known.
    workload: Option<String>,
    /// The last engine error, quoted when the launch times out.
    last_engine_error: Option<String>,
    /// The workload's last state, for the timeout message.
    last_status: &'static str,
}

#[async_trait]
impl LaunchWatch for WorkloadWatch<'_> {
    /// The kernel's address.
    type Placed = IpAddr;
    /// Why the workload ended or cannot run, in EG's words.
    type Failure = String;

    async fn probe(&mut self) -> Probe<IpAddr, String> {
        if self.workload.is_none() {
            match self.backend.find(self.kernel_id).await {
                Ok(found) => {
                    if let Some(id) = &found {
                        tracing::info!(kernel_id = %self.kernel_id, %id, "kernel {} found", self.backend.mode.what());
                    }
                    self.workload = found;
                    self.last_engine_error = None;
                }
                Err(err) => self.last_engine_error = Some(err.to_string()),
            }
        }
        let Some(id) = &self.workload else {
            return Probe::NotFound;
        };
        match self.backend.seen(id).await {
            Ok(probe) => {
                self.last_status = match &probe {
                    Probe::Placed(_) => "running",
                    _ => "starting",
                };
                probe
            }
            Err(err) => {
                self.last_engine_error = Some(err.to_string());
                Probe::Starting
            }
        }
    }
}

#[async_trait]
impl ResourceManager for DockerResourceManager {
    fn name(&self) -> &str {
        match self.mode {
            DockerMode::Container => NAME_DOCKER,
            DockerMode::Swarm => NAME_SWARM,
        }
    }
    fn names(&self) -> crate::BackendNames {
        match self.mode {
            DockerMode::Container => crate::BackendNames::new(
                &[&format!("{EG_MODULE}.DockerProcessProxy")],
                &["docker-provisioner"],
            ),
            DockerMode::Swarm => crate::BackendNames::new(
                &[&format!("{EG_MODULE}.DockerSwarmProcessProxy")],
                &["docker-swarm-provisioner"],
            ),
        }
    }
    fn capabilities(&self) -> crate::Capabilities {
        crate::Capabilities {
            uses_callback_listener: true,
            ..crate::Capabilities::ELSEWHERE
        }
    }

    async fn launch(&self, request: LaunchRequest) -> Result<LaunchedKernel, Error> {
        let started = Instant::now();
        let deadline = started + request.timeout;
        let spec = &request.spec;
        let kernel_id = request.kernel_id.clone();
        if !is_safe_id(&kernel_id) {
            return Err(Error::Config(format!("invalid kernel id '{kernel_id}'")));
        }
        let plan = self.plan(&request)?;
        if self.mode == DockerMode::Swarm && !self.client.is_swarm_manager().await? {
            return Err(Error::Config(format!(
                "the Docker engine at {} is not a swarm manager; swarm kernelspecs need `docker swarm init` (or EG_DOCKER_MODE=docker kernelspecs)",
                self.config.host
            )));
        }
        create_private_dir(&self.config.launcher.log_dir)?;
        let log_path = self.config.launcher.log_path(&kernel_id);
        let listener = &self.config.launcher.response;
        let mut pending = listener.register(&kernel_id)?;

        let mut workload: Option<String> = None;
        let mut submitter: Option<LauncherProcess> = None;
        if plan.native {
            match self.create_native(&plan, deadline).await {
                Ok(id) => {
                    tracing::info!(%kernel_id, %id, image = %plan.image, name = %plan.name, "kernel {} created; waiting for its connection info", self.mode.what());
                    workload = Some(id);
                }
                Err(err) => {
                    self.remove_all(&kernel_id, None).await;
                    return Err(err);
                }
            }
        } else {
            let Some(argv0) = spec.argv.first() else {
                return Err(Error::Spawn(format!(
                    "kernelspec '{}' has an empty argv (set \"launch\": \"native\" in its config to have the gateway create the {})",
                    spec.name,
                    self.mode.what()
                )));
            };
            let program = resolve_program(
                spec,
                argv0,
                &plan.launch_env,
                &self.config.launcher.search_path,
            )?;
            let argv = crate::launcher::launcher_argv(&request, listener);
            let launch_request = LaunchRequest {
                env: plan.launch_env.clone(),
                run_as: None,
                ..request.clone()
            };
            let launcher =
                LauncherProcess::spawn(&launch_request, &program, &argv, &log_path, "launcher")?;
            let pid = launcher.pid();
            submitter = Some(launcher);
            tracing::info!(%kernel_id, pid = pid.as_raw(), log = %log_path.display(), "Docker launcher started; waiting for the kernel's {} and its connection info", self.mode.what());
        }

        let mut watch = WorkloadWatch {
            backend: self,
            kernel_id: &kernel_id,
            workload,
            last_engine_error: None,
            last_status: "not found yet",
        };
        let waited = await_callback(
            &mut watch,
            &mut pending,
            submitter.as_ref(),
            self.config.launcher.poll_interval,
            deadline,
        )
        .await;
        drop(pending);
        let WorkloadWatch {
            workload,
            last_engine_error,
            last_status,
            ..
        } = watch;

        let (response, ip) = match waited {
            Ok(done) => done,
            Err(failure) => {
                let launcher_tail = || read_tail(&log_path, TAIL_LINES).unwrap_or_default();
                let output = match &workload {
                    Some(id) => self.workload_logs(id).await,
                    None => launcher_tail(),
                };
                let engine_note = last_engine_error
                    .as_deref()
                    .map(|e| format!(" Last Docker engine error: {e}"))
                    .unwrap_or_default();
                let err = match failure {
                    WaitFailure::Listener(err) => err,
                    WaitFailure::LauncherExited(state) => Error::ExitedDuringLaunch {
                        status: format!(
                            "Error occurred during launch of KernelID: {kernel_id}: the launcher ended with {state} before the kernel's {} was created{engine_note}",
                            self.mode.what()
                        ),
                        log_tail: launcher_tail(),
                    },
                    WaitFailure::Placement(why) => Error::ExitedDuringLaunch {
                        status: format!("KernelID: '{kernel_id}': {why}"),
                        log_tail: output,
                    },
                    WaitFailure::Timeout => Error::LaunchTimeout(format!(
                        "KernelID: '{kernel_id}' launch timeout due to: Waited too long ({}s) to get connection file (kernel {} {last_status}).{engine_note} Output: {output}",
                        crate::python_seconds(request.timeout),
                        self.mode.what(),
                    )),
                };
                tracing::warn!(%kernel_id, "Docker launch failed: {err}");
                if let Some(submitter) = &submitter {
                    submitter.kill().await;
                }
                self.remove_all(&kernel_id, workload.as_deref()).await;
                return Err(err);
            }
        };
        let Some(id) = workload else {
            return Err(Error::Config(format!(
                "kernel {kernel_id}: launched without a {}",
                self.mode.what()
            )));
        };

        let mut connection = response.connection.clone();
        connection.ip = ip.to_string();
        connection.kernel_name = spec.name.clone();
        let comm = response
            .comm_port
            .map(|port| self.config.launcher.comm_port(ip, port));
        tracing::info!(%kernel_id, %id, %ip, comm_port = ?response.comm_port, "Docker kernel connection info received");
        let process = DockerKernelProcess {
            mode: self.mode,
            backend: self.name().to_owned(),
            kernel_id,
            client: self.client.clone(),
            id,
            name: plan.name,
            ip,
            connection: connection.clone(),
            comm: LauncherComm::new(comm),
            remote_pid: response.pid,
            remote_pgid: response.pgid,
            submitter,
            log_path,
            interrupt_signal: interrupt_signal_of(spec) as i32,
            poll_interval: self.config.launcher.poll_interval,
            remove: self.mode == DockerMode::Swarm || self.config.remove_container,
            last_final: FinalState::default(),
            finished: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            detached: AtomicBool::new(false),
        };
        Ok(LaunchedKernel {
            connection,
            process: Box::new(process),
        })
    }

    async fn reattach(&self, record: &KernelRecord) -> Result<LaunchedKernel, Error> {
        if record.resource_manager != self.name() {
            return Err(Error::Config(format!(
                "kernel {} was launched by '{}', not by the {} backend",
                record.kernel_id,
                record.resource_manager,
                self.name()
            )));
        }
        let field = |key: &str| record.process.get(key);
        let text = |key: &str| {
            field(key)
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let id = text("id");
        if id.is_empty() {
            return Err(Error::Config(format!(
                "kernel {}: the {} process record has no {} id",
                record.kernel_id,
                self.name(),
                self.mode.what()
            )));
        }
        let ip: IpAddr = text("ip").parse().map_err(|_| {
            Error::Config(format!(
                "kernel {}: the {} process record has no usable ip",
                record.kernel_id,
                self.name()
            ))
        })?;
        let int = |key: &str| {
            field(key)
                .and_then(serde_json::Value::as_i64)
                .and_then(|v| i32::try_from(v).ok())
        };
        let comm = field("comm_port")
            .and_then(serde_json::Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .map(|port| self.config.launcher.comm_port(ip, port));
        let process = DockerKernelProcess {
            mode: self.mode,
            backend: self.name().to_owned(),
            kernel_id: record.kernel_id.clone(),
            client: self.client.clone(),
            id,
            name: text("name"),
            ip,
            connection: record.connection.clone(),
            comm: LauncherComm::new(comm),
            remote_pid: int("pid"),
            remote_pgid: int("pgid"),
            submitter: None,
            log_path: PathBuf::from(text("log_path")),
            interrupt_signal: field("interrupt_signal")
                .and_then(serde_json::Value::as_str)
                .and_then(parse_signal_name)
                .unwrap_or(Signal::SIGINT) as i32,
            poll_interval: self.config.launcher.poll_interval,
            remove: field("remove")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(true),
            last_final: FinalState::default(),
            finished: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            detached: AtomicBool::new(false),
        };
        match process.state().await {
            ProcessState::Running => {}
            ProcessState::Unknown => {
                process.detach();
                return Err(Error::Io(std::io::Error::other(format!(
                    "kernel {}: cannot tell from the Docker engine whether its {} runs",
                    record.kernel_id,
                    self.mode.what()
                ))));
            }
            state @ ProcessState::Exited { .. } => {
                // Nothing to re-attach to: let the handle remove what is left.
                process.finished.store(true, Ordering::SeqCst);
                process.cleanup(false).await;
                return Err(Error::NotRunning(format!(
                    "kernel {}: its {} {} has ended ({state})",
                    record.kernel_id,
                    self.mode.what(),
                    process.id
                )));
            }
        }
        Ok(LaunchedKernel {
            connection: record.connection.clone(),
            process: Box::new(process),
        })
    }
}

/// A kernel running in a container or a swarm service; see the [module docs](super).
#[derive(Debug)]
pub struct DockerKernelProcess {
    mode: DockerMode,
    backend: String,
    kernel_id: String,
    client: DockerClient,
    /// Container or service id.
    id: String,
    name: String,
    ip: IpAddr,
    connection: ConnectionInfo,
    comm: LauncherComm,
    remote_pid: Option<i32>,
    remote_pgid: Option<i32>,
    /// The local launcher process (EG's path, launches only).
    submitter: Option<LauncherProcess>,
    log_path: PathBuf,
    interrupt_signal: i32,
    poll_interval: Duration,
    /// Remove the workload once the kernel ended.
    remove: bool,
    last_final: FinalState,
    finished: AtomicBool,
    removed: AtomicBool,
    detached: AtomicBool,
}

impl DockerKernelProcess {
    /// The container or service id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The container or service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kernel's address.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    fn cached(&self) -> Option<ProcessState> {
        self.last_final.get()
    }

    fn remember(&self, state: ProcessState) -> ProcessState {
        self.last_final.remember(state)
    }

    /// The workload's state from the engine: gone or ended as an exit, an unreachable engine
    /// as unknown.
    async fn state(&self) -> ProcessState {
        if let Some(state) = self.cached() {
            return state;
        }
        let gone = ProcessState::Exited {
            code: None,
            signal: None,
        };
        let state = match self.mode {
            DockerMode::Container => match self.client.inspect_container(&self.id).await {
                Ok(inspect) => match inspect.state.status.as_str() {
                    "created" | "running" => ProcessState::Running,
                    "exited" | "dead" => ProcessState::Exited {
                        code: i32::try_from(inspect.state.exit_code).ok(),
                        signal: None,
                    },
                    // EG's error states: restarting, removing, paused.
                    _ => gone,
                },
                Err(err) if err.is_not_found() => gone,
                Err(err) => {
                    tracing::debug!(kernel_id = %self.kernel_id, id = %self.id, "liveness unknown: {err}");
                    ProcessState::Unknown
                }
            },
            DockerMode::Swarm => match self.client.service_tasks(&self.id).await {
                Ok(tasks) => match current_task(&tasks) {
                    None => gone,
                    Some(task) if is_task_final(&task.status.state) => {
                        let code = task
                            .status
                            .container_status
                            .as_ref()
                            .and_then(|c| c.exit_code)
                            .and_then(|c| i32::try_from(c).ok());
                        ProcessState::Exited { code, signal: None }
                    }
                    Some(_) => ProcessState::Running,
                },
                Err(err) if err.is_not_found() => gone,
                Err(err) => {
                    tracing::debug!(kernel_id = %self.kernel_id, id = %self.id, "liveness unknown: {err}");
                    ProcessState::Unknown
                }
            },
        };
        self.remember(state)
    }

    async fn wait_final(&self) -> ProcessState {
        loop {
            match self.state().await {
                state @ ProcessState::Exited { .. } => return state,
                _ => tokio::time::sleep(self.poll_interval).await,
            }
        }
    }

    /// Stops the workload now: a container is killed (and removed when it should be), a
    /// service removed.
    async fn force_stop(&self) -> Result<ProcessState, Error> {
        match self.mode {
            DockerMode::Container => {
                match self.client.kill_container(&self.id, "SIGKILL").await {
                    Ok(()) => {}
                    Err(err) if err.is_not_found() => {}
                    // 409: not running any more.
                    Err(DockerError::Engine { status: 409, .. }) => {}
                    Err(err) => return Err(Error::Docker(err)),
                }
                if self.remove {
                    self.remove_now().await?;
                }
            }
            DockerMode::Swarm => self.remove_now().await?,
        }
        let state = ProcessState::Exited {
            code: None,
            signal: Some(Signal::SIGKILL as i32),
        };
        Ok(self.cached().unwrap_or_else(|| self.remember(state)))
    }

    async fn remove_now(&self) -> Result<(), Error> {
        if self.removed.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.keep_output().await;
        remove_workload(&self.client, self.mode, &self.id)
            .await
            .map_err(Error::Docker)?;
        self.removed.store(true, Ordering::SeqCst);
        tracing::info!(kernel_id = %self.kernel_id, id = %self.id, "kernel {} removed", self.mode.what());
        Ok(())
    }

    /// Appends the workload's last output to the kernel's log file before the workload goes,
    /// so [`KernelProcess::log_tail`] still has it.
    async fn keep_output(&self) {
        let logs = match self.mode {
            DockerMode::Container => self.client.container_logs(&self.id, KEPT_LINES).await,
            DockerMode::Swarm => self.client.service_logs(&self.id, KEPT_LINES).await,
        };
        let Ok(text) = logs else {
            return;
        };
        if text.is_empty() || self.log_path.as_os_str().is_empty() {
            return;
        }
        let header = format!("----- output of {} {} -----\n", self.mode.what(), self.name);
        let write = async {
            use tokio::io::AsyncWriteExt as _;
            let mut file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.log_path)
                .await?;
            file.write_all(header.as_bytes()).await?;
            file.write_all(text.as_bytes()).await
        };
        if let Err(err) = write.await {
            tracing::debug!(kernel_id = %self.kernel_id, "cannot keep the kernel's output: {err}");
        }
    }

    fn not_running(&self) -> Error {
        Error::NotRunning(format!(
            "kernel {} ({} {}) is not running",
            self.kernel_id,
            self.mode.what(),
            self.name
        ))
    }
}

#[async_trait]
impl KernelProcess for DockerKernelProcess {
    fn record(&self) -> KernelRecord {
        KernelRecord {
            resource_manager: self.backend.clone(),
            kernel_id: self.kernel_id.clone(),
            connection: self.connection.clone(),
            process: serde_json::json!({
                "mode": self.mode.as_str(),
                "id": self.id,
                "name": self.name,
                "ip": self.ip.to_string(),
                "assigned_ip": self.ip.to_string(),
                "pid": self.remote_pid,
                "pgid": self.remote_pgid,
                "comm_port": self.comm.port().map(|c| c.addr().port()),
                "remove": self.remove,
                "log_path": self.log_path,
                "interrupt_signal": Signal::try_from(self.interrupt_signal).map(|s| s.as_str()).unwrap_or("SIGINT"),
            }),
        }
    }

    async fn poll(&self) -> ProcessState {
        self.comm.poll_state(self.state().await).await
    }

    async fn wait(&self) -> ProcessState {
        self.wait_final().await
    }

    async fn signal(&self, signum: i32) -> Result<(), Error> {
        if signum == 0 {
            return match self.state().await {
                ProcessState::Running => Ok(()),
                ProcessState::Exited { .. } => Err(self.not_running()),
                ProcessState::Unknown => Err(Error::Io(std::io::Error::other(format!(
                    "cannot tell whether the {} of kernel {} runs",
                    self.mode.what(),
                    self.kernel_id
                )))),
            };
        }
        if let Some(ProcessState::Exited { .. }) = self.cached() {
            return Err(self.not_running());
        }
        if signum == Signal::SIGKILL as i32 {
            return self.force_stop().await.map(|_| ());
        }
        self.comm
            .signal_kernel(&self.kernel_id, signum, &format!("at {}", self.ip), || {
                self.not_running()
            })
            .await
    }

    async fn interrupt(&self) -> Result<(), Error> {
        self.signal(self.interrupt_signal).await
    }

    async fn terminate(&self, grace: Duration) -> Result<ProcessState, Error> {
        if let Some(state) = self.cached() {
            if self.remove {
                self.remove_now().await?;
            }
            self.finished.store(true, Ordering::SeqCst);
            return Ok(state);
        }
        // A kernel that answered its shutdown_request is gone: its container only has to end.
        let grace = if self.comm.ask_to_stop(&self.kernel_id).await {
            grace.min(self.poll_interval * 4)
        } else {
            grace
        };
        let state = match tokio::time::timeout(grace, self.wait_final()).await {
            Ok(state) => {
                if self.remove {
                    self.remove_now().await?;
                }
                state
            }
            Err(_) => {
                tracing::info!(kernel_id = %self.kernel_id, id = %self.id, "kernel {} still running; stopping it", self.mode.what());
                self.force_stop().await?
            }
        };
        self.finished.store(true, Ordering::SeqCst);
        Ok(state)
    }

    async fn shutdown_requested(&self) {
        if self.cached().is_none() {
            self.comm.shutdown_requested(&self.kernel_id).await;
        }
    }

    async fn cleanup(&self, _keep_connection_file: bool) {
        if let Some(submitter) = &self.submitter {
            submitter.kill().await;
        }
        if self.detached.load(Ordering::SeqCst) {
            return;
        }
        if self.cached().is_none() {
            let _ = self.comm.stop_listener().await;
        }
        // A kernel that ended by itself leaves its workload: remove it as shutdown would.
        if matches!(self.state().await, ProcessState::Exited { .. }) {
            self.finished.store(true, Ordering::SeqCst);
            if self.remove
                && let Err(err) = self.remove_now().await
            {
                tracing::warn!(kernel_id = %self.kernel_id, id = %self.id, "cannot remove the kernel's {}: {err}", self.mode.what());
            }
        }
    }

    fn log_tail(&self, max_lines: usize) -> String {
        read_tail(&self.log_path, max_lines).unwrap_or_default()
    }

    fn detach(&self) {
        self.detached.store(true, Ordering::SeqCst);
    }
}

impl Drop for DockerKernelProcess {
    fn drop(&mut self) {
        if let Some(submitter) = &self.submitter {
            submitter.kill_now();
        }
        if self.detached.load(Ordering::SeqCst) || self.removed.load(Ordering::SeqCst) {
            return;
        }
        let finished = self.finished.load(Ordering::SeqCst);
        if finished && !self.remove {
            return;
        }
        // Nothing may be left running: remove the workload in the background if we can.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            if !finished {
                tracing::warn!(kernel_id = %self.kernel_id, id = %self.id, "kernel handle dropped while running: removing its {}", self.mode.what());
            }
            let client = self.client.clone();
            let (mode, id) = (self.mode, self.id.clone());
            let kill_only = mode == DockerMode::Container && !self.remove;
            runtime.spawn(async move {
                let result = if kill_only {
                    client.kill_container(&id, "SIGKILL").await
                } else {
                    remove_workload(&client, mode, &id).await
                };
                if let Err(err) = result
                    && !err.is_not_found()
                {
                    tracing::warn!(%id, "cannot stop the kernel's {}: {err}", mode.what());
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::client::TaskStatus;

    #[tokio::test]
    async fn a_profiles_limits_and_the_working_dir_become_the_containers() {
        let listener = ResponseListener::bind(
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            kernel_launcher::ListenerOptions::default(),
        )
        .await
        .expect("listener");
        let config = DockerConfig::new(listener, std::env::temp_dir());
        let plan = Plan {
            name: "alice-k".into(),
            image: "kernel-py".into(),
            uid: 1000,
            gid: 100,
            labels: BTreeMap::new(),
            launch_env: BTreeMap::new(),
            container_env: BTreeMap::new(),
            native: true,
            working_dir: Some("/home/alice/work".into()),
            memory_bytes: Some(1 << 30),
            cpus: Some(2),
        };
        let container = DockerResourceManager::new(DockerMode::Container, config.clone());
        let body = container.create_body(&plan);
        assert_eq!(body["HostConfig"]["Memory"], 1u64 << 30);
        assert_eq!(body["HostConfig"]["NanoCpus"], 2_000_000_000u64);
        assert_eq!(body["WorkingDir"], "/home/alice/work");
        let swarm = DockerResourceManager::new(DockerMode::Swarm, config);
        let body = swarm.create_body(&plan);
        let limits = &body["TaskTemplate"]["Resources"]["Limits"];
        assert_eq!(limits["MemoryBytes"], 1u64 << 30);
        assert_eq!(limits["NanoCPUs"], 2_000_000_000u64);
        assert_eq!(
            body["TaskTemplate"]["ContainerSpec"]["Dir"],
            "/home/alice/work"
        );
        let unlimited = Plan {
            working_dir: None,
            memory_bytes: None,
            cpus: None,
            ..plan
        };
        let body = container.create_body(&unlimited);
        assert!(body["HostConfig"].get("Memory").is_none(), "{body}");
        assert!(body.get("WorkingDir").is_none(), "{body}");
    }

    fn task(state: &str, desired: &str, created: &str) -> Task {
        Task {
            id: format!("t-{state}"),
            node_id: String::new(),
            desired_state: desired.into(),
            status: TaskStatus {
                state: state.into(),
                ..TaskStatus::default()
            },
            networks_attachments: Vec::new(),
            created_at: created.into(),
        }
    }

    #[test]
    fn the_current_task_is_the_one_wanted_running() {
        let tasks = vec![
            task("failed", "shutdown", "2026-12-03T10:00:02Z"),
            task("running", "running", "2026-12-03T10:00:01Z"),
        ];
        assert_eq!(
            current_task(&tasks).map(|t| t.id.as_str()),
            Some("t-running")
        );
        let ended = vec![task("complete", "shutdown", "2026-12-03T10:00:02Z")];
        assert_eq!(
            current_task(&ended).map(|t| t.id.as_str()),
            Some("t-complete")
        );
        assert!(current_task(&[]).is_none());
        for state in [
            "complete", "failed", "rejected", "shutdown", "orphaned", "remove",
        ] {
            assert!(is_task_final(state), "{state}");
        }
        for state in [
            "new",
            "pending",
            "assigned",
            "preparing",
            "starting",
            "running",
        ] {
            assert!(!is_task_final(state), "{state}");
        }
    }

    #[test]
    fn failures_read_like_eg() {
        let state = super::super::client::ContainerState {
            status: "exited".into(),
            exit_code: 127,
            error: String::new(),
            oom_killed: false,
        };
        assert_eq!(
            container_failure("exited", &state),
            "Error starting kernel container; status: 'exited'. Exit code 127."
        );
        let mut failed = task("failed", "shutdown", "");
        failed.status.err = "No such image: nope:latest".into();
        assert_eq!(
            task_failure(&failed),
            "Error starting kernel service; task status: 'failed'. No such image: nope:latest"
        );
    }
}
