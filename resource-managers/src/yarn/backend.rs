//! The `yarn` backend: EG's `YarnClusterProcessProxy` and gateway_provisioners'
//! `yarn-provisioner` (reference §7.5, §8; `yarn.md` §2.1).
//!
//! A kernelspec of this backend runs a *submit command* on the gateway's machine — normally
//! `spark-submit --master yarn --deploy-mode cluster --name {kernel_id} ...` (directly, or via
//! a `run.sh` as EG's kernelspecs do) — whose application master is a kernel *launcher* (EG's
//! or gateway_provisioners' `launch_ipykernel.py`, or this workspace's `kernel-launcher` agent).
//! The launcher calls the gateway's [`ResponseListener`] back with the kernel's connection info.
//!
//! # Launch
//! 1. The ResourceManager (RM) client: the kernelspec's `config.yarn_endpoint` /
//!    `config.alt_yarn_endpoint`, else [`YarnConfig::yarn_endpoint`] /
//!    [`YarnConfig::alt_yarn_endpoint`], else the RM web addresses of `yarn-site.xml` in
//!    [`YarnConfig::hadoop_conf_dir`] (HA rm-ids, `yarn.http.policy`). The active RM is found by
//!    probing and re-probed whenever an RM stops answering or redirects (failover mid-launch
//!    works). Simple auth as the kernel's user (`KERNEL_USERNAME`); Kerberos is refused for now
//!    ([`YarnSecurity::Kerberos`] is where it goes). TLS roots from [`YarnConfig::ca_bundle`].
//! 2. Optional resource checks, as EG does: with `KERNEL_EXECUTOR_MEMORY` and
//!    `KERNEL_DRIVER_MEMORY` (MB) both set, neither may exceed `yarn.nodemanager.resource.memory-mb`
//!    of `yarn-site.xml`; with `KERNEL_QUEUE` and `KERNEL_NODE_LABEL` set, the queue's partition
//!    must be at or under `YARN_PARTITION_THRESHOLD` (default 95) percent absolute used
//!    capacity, waited for up to a fifth of the launch timeout ([`Error::Capacity`] otherwise).
//! 3. The kernelspec's `argv` is templated (`{kernel_id}`, `{response_address}`, `{public_key}`,
//!    `{port_range}`, `{resource_dir}`, `{prefix}`, `{transport_encryption}` = empty) and run
//!    locally as an argument vector with exactly the request's environment, in its own process
//!    group, its output appended to `<log_dir>/kernel-<id>.log`. With `EG_IMPERSONATION_ENABLED`
//!    (or `GP_IMPERSONATION_ENABLED`) = `True` in that environment and an `argv[0]` ending in
//!    `spark-submit`, `--proxy-user <KERNEL_USERNAME>` is inserted after it.
//! 4. Every poll interval ([`LauncherSettings::poll_interval`]) the application is looked for
//!    among those started since the launch began: a tag equal to the kernel id (`spark.yarn.tags`) or a name
//!    containing it (`--name`, what EG matches); the newest id wins, compared numerically. Once
//!    known, its state and `amHostHttpAddress` are read; the AM host's address becomes the
//!    kernel's `ip`. The launch completes when the launcher's connection info has arrived and
//!    the application is placed.
//!
//! # Failures (each kills the submit process group and the application)
//! * the submit command exits non-zero before an application shows up →
//!   [`Error::ExitedDuringLaunch`] with the tail of its output;
//! * the application ends (FAILED, KILLED, FINISHED) during start-up →
//!   [`Error::ExitedDuringLaunch`] with its diagnostics;
//! * the deadline passes: no application → [`Error::LaunchTimeout`] (EG's "Application ID is
//!   None" reason); the application RUNNING without a callback → [`Error::LaunchTimeout`];
//!   still waiting for resources (ACCEPTED, ...) → [`Error::Capacity`] (EG's 503 "YARN
//!   resources unavailable" reason).
//!
//! # The kernel afterwards ([`YarnKernelProcess`])
//! Liveness is the application's state (`GET .../apps/{id}/state`): FINISHED is an exit with
//! code 0, FAILED with code 1, KILLED a SIGKILL — so a kernel killed from the YARN side is
//! reported dead, never "unknown". Interrupts and other signals go through the launcher's
//! communication port, SIGKILL through the RM. `terminate` sends SIGTERM and `{"shutdown": 1}`
//! through the port, waits up to the grace period for the application to end, then kills it
//! (`PUT .../state {"state":"KILLED"}`, 202, poll until final). The application id is kept in
//! [`KernelRecord::process`] (`application_id`), so [`ResourceManager::reattach`] needs no search.
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use jupyter_protocol::ConnectionInfo;
use kernel_launcher::{CommOutcome, KernelSpec, PendingLaunch, ResponseListener};
use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::client::{AppsQuery, Auth, YarnClient, YarnClientConfig};
use super::error::YarnError;
use super::record::YarnRecord;
use super::site::SiteConfig;
use super::types::{App, AppState};
use crate::launcher::{
    FinalState, LaunchWatch, LauncherComm, LauncherProcess, LauncherSettings, Probe, WaitFailure,
    await_callback,
};
use crate::process::{
    create_private_dir, interrupt_signal_of, is_safe_id, parse_signal_name, read_tail,
    resolve_program,
};
use crate::{
    Error, KernelProcess, KernelRecord, LaunchRequest, LaunchedKernel, ProcessState,
    ResourceManager,
};

/// The name of this backend in a [`crate::Registry`].
pub const NAME: &str = "yarn";

/// EG's default `YARN_PARTITION_THRESHOLD` (percent).
const DEFAULT_PARTITION_THRESHOLD: f64 = 95.0;

/// How long a failed launch waits for its clean-up before leaving it to a background task.
const CLEANUP_WAIT: Duration = Duration::from_millis(1500);

/// Lines of the submit output quoted in errors.
const TAIL_LINES: usize = 20;

/// How the gateway authenticates to the RM (`EG_YARN_ENDPOINT_SECURITY_ENABLED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum YarnSecurity {
    /// Hadoop simple auth as the kernel's user (`user.name`, then the `hadoop.auth` cookie).
    #[default]
    Simple,
    /// Kerberos/SPNEGO: not supported yet; launches fail with a clear error.
    Kerberos,
}

/// Settings of the `yarn` backend.
#[derive(Debug, Clone)]
pub struct YarnConfig {
    /// `EG_YARN_ENDPOINT` (`http://rm:8088/ws/v1/cluster`; only scheme, host and port count).
    pub yarn_endpoint: Option<String>,
    /// `EG_ALT_YARN_ENDPOINT` (the second RM of an HA pair; used only with `yarn_endpoint`).
    pub alt_yarn_endpoint: Option<String>,
    /// The Hadoop configuration directory holding `yarn-site.xml` (`YARN_CONF_DIR`, else
    /// `HADOOP_CONF_DIR`), used when no endpoint is set and for the container-memory check.
    pub hadoop_conf_dir: Option<PathBuf>,
    /// Authentication to the RM.
    pub security: YarnSecurity,
    /// PEM CA bundle for `https` RMs (`EG_YARN_CERT_BUNDLE`).
    pub ca_bundle: Option<PathBuf>,
    /// The listener, the submit commands' log directory, the PATH, and the timeouts; its
    /// `poll_interval` paces RM polls during a launch, liveness waits and kill waits, its
    /// `request_timeout` bounds one RM request.
    pub launcher: LauncherSettings,
    /// State polls after a kill request before giving up (`EG_MAX_POLL_ATTEMPTS`, 10).
    pub max_poll_attempts: u32,
}

impl YarnConfig {
    /// Defaults for everything but the listener and the log directory.
    pub fn new(response: Arc<ResponseListener>, log_dir: PathBuf) -> YarnConfig {
        YarnConfig {
            yarn_endpoint: None,
            alt_yarn_endpoint: None,
            hadoop_conf_dir: None,
            security: YarnSecurity::Simple,
            ca_bundle: None,
            launcher: LauncherSettings::new(response, log_dir),
            max_poll_attempts: 10,
        }
    }
}

/// The `yarn` resource manager; see the [module docs](self).
#[derive(Debug)]
pub struct YarnResourceManager {
    config: YarnConfig,
}

impl YarnResourceManager {
    /// A `yarn` backend (no network traffic until a launch).
    pub fn new(config: YarnConfig) -> YarnResourceManager {
        YarnResourceManager { config }
    }

    /// The RM client configuration for a kernelspec and Hadoop user (see the module docs for
    /// where the endpoints come from).
    fn client_config(&self, spec: &KernelSpec, user: &str) -> Result<YarnClientConfig, Error> {
        let from_spec = |key: &str| {
            spec.config
                .raw
                .get(key)
                .and_then(serde_json::Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let endpoints = from_spec("yarn_endpoint")
            .map(|primary| {
                let mut list = vec![primary];
                list.extend(from_spec("alt_yarn_endpoint"));
                list
            })
            .unwrap_or_default();
        self.client_config_for(&endpoints, user)
    }

    /// The RM client configuration with these endpoints (empty: the backend's own settings).
    fn client_config_for(
        &self,
        endpoints: &[String],
        user: &str,
    ) -> Result<YarnClientConfig, Error> {
        let primary = self
            .config
            .yarn_endpoint
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let mut config = if let Some((first, rest)) = endpoints.split_first() {
            let mut config = YarnClientConfig::from_endpoints(first, None);
            config.endpoints.extend(rest.iter().cloned());
            config
        } else if let Some(primary) = primary {
            YarnClientConfig::from_endpoints(primary, self.config.alt_yarn_endpoint.as_deref())
        } else if let Some(dir) = &self.config.hadoop_conf_dir {
            YarnClientConfig::from_site(dir)?
        } else {
            return Err(Error::Config(
                "no YARN ResourceManager configured: set yarn_endpoint (EG_YARN_ENDPOINT) or a \
                 Hadoop configuration directory with yarn-site.xml"
                    .into(),
            ));
        };
        config.auth = match self.config.security {
            YarnSecurity::Simple => Auth::Simple {
                user: user.to_owned(),
            },
            YarnSecurity::Kerberos => Auth::Kerberos,
        };
        if let Some(bundle) = &self.config.ca_bundle {
            config = config.with_ca_bundle_file(bundle)?;
        }
        config.poll_interval = self.config.launcher.poll_interval;
        config.max_poll_attempts = self.config.max_poll_attempts;
        config.request_timeout = self.config.launcher.request_timeout;
        Ok(config)
    }

    fn client(&self, spec: &KernelSpec, user: &str) -> Result<Arc<YarnClient>, Error> {
        Ok(Arc::new(YarnClient::new(self.client_config(spec, user)?)?))
    }

    /// EG's container-memory check: `KERNEL_EXECUTOR_MEMORY` and `KERNEL_DRIVER_MEMORY` (MB)
    /// against `yarn.nodemanager.resource.memory-mb`. Skipped unless both are positive and the
    /// limit is known.
    fn check_container_memory(&self, env: &BTreeMap<String, String>) -> Result<(), Error> {
        let mb = |key: &str| -> u64 {
            env.get(key)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let (executor, driver) = (mb("KERNEL_EXECUTOR_MEMORY"), mb("KERNEL_DRIVER_MEMORY"));
        if executor == 0 || driver == 0 {
            return Ok(());
        }
        let Some(dir) = &self.config.hadoop_conf_dir else {
            return Ok(());
        };
        let limit = SiteConfig::load(dir)?.nodemanager_memory_mb();
        match limit {
            Some(limit) if executor > limit || driver > limit => Err(Error::Capacity(format!(
                "Container Memory not sufficient for a executor/driver allocation \
                 (executor {executor} MB, driver {driver} MB, node manager {limit} MB)"
            ))),
            _ => Ok(()),
        }
    }

    /// EG's queue check: waits (up to a fifth of the launch timeout) for the partition
    /// `KERNEL_NODE_LABEL` of queue `KERNEL_QUEUE` to be at or under the threshold.
    async fn wait_for_queue(
        &self,
        client: &YarnClient,
        request: &LaunchRequest,
        started: Instant,
    ) -> Result<(), Error> {
        let env = &request.env;
        let (Some(queue), Some(label)) = (env.get("KERNEL_QUEUE"), env.get("KERNEL_NODE_LABEL"))
        else {
            return Ok(());
        };
        let threshold = env
            .get("YARN_PARTITION_THRESHOLD")
            .and_then(|t| t.trim().parse::<f64>().ok())
            .unwrap_or(DEFAULT_PARTITION_THRESHOLD);
        let budget = request.timeout.mul_f64(0.2);
        loop {
            let Some(used) = client.queue_partition_usage(queue, label).await? else {
                tracing::info!(kernel_id = %request.kernel_id, %queue, %label, "queue or partition not found; skipping the capacity check");
                return Ok(());
            };
            if used <= threshold {
                return Ok(());
            }
            let waited = started.elapsed();
            if waited >= budget {
                return Err(Error::Capacity(format!(
                    "Yarn Compute Resource is unavailable after {} seconds \
                     (queue '{queue}', partition '{label}': {used}% used, threshold {threshold}%)",
                    crate::python_seconds(waited)
                )));
            }
            tracing::debug!(kernel_id = %request.kernel_id, %queue, %label, used, threshold, "queue over its threshold; waiting");
            tokio::time::sleep(self.config.launcher.poll_interval.min(budget - waited)).await;
        }
    }
}

/// The kernel's Hadoop user: `KERNEL_USERNAME`, else the request's user.
fn kernel_user(request: &LaunchRequest) -> String {
    request
        .env
        .get("KERNEL_USERNAME")
        .map(|u| u.trim())
        .filter(|u| !u.is_empty())
        .unwrap_or(&request.username)
        .to_owned()
}

/// Whether the launch env asks for impersonation (`EG_`/`GP_IMPERSONATION_ENABLED=True`).
fn impersonation_enabled(env: &BTreeMap<String, String>) -> bool {
    ["EG_IMPERSONATION_ENABLED", "GP_IMPERSONATION_ENABLED"]
        .iter()
        .any(|k| {
            env.get(*k)
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        })
}

/// Inserts `--proxy-user <user>` after a `spark-submit` program.
fn with_proxy_user(argv: Vec<String>, user: &str) -> Vec<String> {
    let is_submit = argv
        .first()
        .is_some_and(|a| a.trim_end_matches('/').ends_with("spark-submit"));
    if !is_submit || argv.iter().any(|a| a == "--proxy-user") {
        return argv;
    }
    let mut out = Vec::with_capacity(argv.len() + 2);
    let mut items = argv.into_iter();
    out.extend(items.next());
    out.push("--proxy-user".to_owned());
    out.push(user.to_owned());
    out.extend(items);
    out
}

/// Milliseconds since the epoch (wall clock: the RM compares with its own).
/// A profile's Spark settings (`--queue`, driver and executor memory, executor count and cores)
/// inserted right after `spark-submit`, before the kernelspec's own arguments; a submit command
/// that is not `spark-submit` (a `run.sh`) is left as it is.
fn with_spark_settings(argv: Vec<String>, spark: &crate::SparkSettings) -> Vec<String> {
    let extra = spark.arguments();
    let is_submit = argv.first().is_some_and(|a| a.ends_with("spark-submit"));
    if extra.is_empty() || !is_submit {
        return argv;
    }
    let mut out = Vec::with_capacity(argv.len() + extra.len());
    let mut items = argv.into_iter();
    out.extend(items.next());
    out.extend(extra);
    out.extend(items);
    out
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Whether `app` belongs to `kernel_id`: a tag equal to it, or a name containing it.
fn belongs_to(app: &App, kernel_id: &str) -> bool {
    let tag = kernel_id.to_ascii_lowercase();
    app.tags().any(|t| t.eq_ignore_ascii_case(&tag)) || app.name.contains(kernel_id)
}

/// The kernel's application among those started since `since_ms` (whole seconds, as EG):
/// unfinished ones first, else one that ended after `launched_ms` (an application that failed
/// before it was first seen); the newest id wins, compared numerically.
async fn find_app(
    client: &YarnClient,
    kernel_id: &str,
    launched_ms: i64,
) -> Result<Option<App>, YarnError> {
    let since = launched_ms - launched_ms.rem_euclid(1000);
    let apps = client
        .apps(&AppsQuery {
            started_time_begin: Some(since),
            ..AppsQuery::default()
        })
        .await?;
    let mut mine: Vec<App> = apps
        .into_iter()
        .filter(|a| belongs_to(a, kernel_id))
        .filter(|a| !a.state.is_final() || a.finished_time >= launched_ms)
        .collect();
    mine.sort_by_key(|a| (!a.state.is_final(), a.id_key().unwrap_or_default()));
    Ok(mine.pop())
}

/// Resolves the AM host to one address, IPv4 preferred.
async fn resolve(host: &str) -> Option<IpAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(ip);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await.ok()?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .map(SocketAddr::ip)
}

/// A launch whose submit command runs: what [`YarnResourceManager::submit`] started and what
/// the wait and the clean-up need of it.
struct Submission {
    kernel_id: String,
    /// The kernel's Hadoop user.
    user: String,
    client: Arc<YarnClient>,
    /// The resolved submit program (named in errors).
    program: PathBuf,
    log_path: PathBuf,
    submitter: LauncherProcess,
    /// When the submit command started (wall clock, as the RM counts).
    launched_ms: i64,
    pending: PendingLaunch,
}

/// Where a launched kernel's application master runs.
struct AmPlace {
    app_id: String,
    host: String,
    ip: IpAddr,
}

/// The kernel's application as a launch sees it: looked for until it shows up, then followed
/// until its AM host is known and resolved.
struct AppWatch<'a> {
    client: &'a YarnClient,
    kernel_id: &'a str,
    launched_ms: i64,
    app: Option<App>,
    host: Option<(String, IpAddr)>,
    /// The last RM (or AM host lookup) error, quoted when the launch times out.
    last_rm_error: Option<String>,
}

#[async_trait]
impl LaunchWatch for AppWatch<'_> {
    type Placed = AmPlace;
    /// The application ended during start-up.
    type Failure = Box<App>;

    async fn probe(&mut self) -> Probe<Self::Placed, Self::Failure> {
        let looked = match &self.app {
            None => find_app(self.client, self.kernel_id, self.launched_ms).await,
            Some(known) => self.client.app(&known.id).await.map(Some),
        };
        match looked {
            Ok(Some(found)) => {
                if self.app.is_none() {
                    tracing::info!(kernel_id = %self.kernel_id, app_id = %found.id, state = %found.state, "YARN application found");
                }
                self.app = Some(found);
                self.last_rm_error = None;
            }
            Ok(None) => self.last_rm_error = None,
            Err(err) => {
                tracing::debug!(kernel_id = %self.kernel_id, "YARN poll failed: {err}");
                self.last_rm_error = Some(err.to_string());
            }
        }
        let Some(known) = &self.app else {
            return Probe::NotFound;
        };
        if known.state.is_final() {
            return Probe::Failed(Box::new(known.clone()));
        }
        if self.host.is_none()
            && let Some(am) = known.am_host()
        {
            match resolve(am).await {
                Some(ip) => self.host = Some((am.to_owned(), ip)),
                None => self.last_rm_error = Some(format!("cannot resolve the AM host '{am}'")),
            }
        }
        match &self.host {
            Some((host, ip)) => Probe::Placed(AmPlace {
                app_id: known.id.clone(),
                host: host.clone(),
                ip: *ip,
            }),
            None => Probe::Starting,
        }
    }
}

impl YarnResourceManager {
    /// The first part of a launch: the checks (kernel id, RM client, container memory, queue
    /// capacity), then the submit command started with the launcher's variables, its Spark
    /// settings and `--proxy-user`, registered with the response listener.
    async fn submit(&self, request: &LaunchRequest, started: Instant) -> Result<Submission, Error> {
        let deadline = started + request.timeout;
        let spec = &request.spec;
        let kernel_id = request.kernel_id.clone();
        if !is_safe_id(&kernel_id) {
            return Err(Error::Config(format!("invalid kernel id '{kernel_id}'")));
        }
        let user = kernel_user(request);
        let client = self.client(spec, &user)?;
        self.check_container_memory(&request.env)?;
        let queue_check = self.wait_for_queue(&client, request, started);
        match tokio::time::timeout_at(deadline, queue_check).await {
            Ok(checked) => checked?,
            Err(_) => {
                return Err(Error::Capacity(format!(
                    "Yarn Compute Resource is unavailable after {} seconds (the ResourceManager \
                     did not answer the queue check in time)",
                    crate::python_seconds(started.elapsed())
                )));
            }
        }

        let Some(argv0) = spec.argv.first() else {
            return Err(Error::Spawn(format!(
                "kernelspec '{}' has an empty argv",
                spec.name
            )));
        };
        let settings = &self.config.launcher;
        let program = resolve_program(spec, argv0, &request.env, &settings.search_path)?;
        create_private_dir(&settings.log_dir)?;
        let log_path = settings.log_path(&kernel_id);

        let pending = settings.response.register(&kernel_id)?;
        let mut argv = crate::launcher::launcher_argv(request, &settings.response);
        argv = with_spark_settings(argv, &request.placement.spark);
        if impersonation_enabled(&request.env) {
            argv = with_proxy_user(argv, &user);
        }
        let launched_ms = now_ms();
        let submitter =
            LauncherProcess::spawn(request, &program, &argv, &log_path, "submit command")?;
        tracing::info!(%kernel_id, pid = submitter.pid().as_raw(), log = %log_path.display(), "YARN submit command started; waiting for the application and its connection info");
        Ok(Submission {
            kernel_id,
            user,
            client,
            program,
            log_path,
            submitter,
            launched_ms,
            pending,
        })
    }

    /// The error of a launch that did not get its kernel, in EG's words.
    fn classify(
        failure: WaitFailure<Box<App>>,
        submission: &Submission,
        watch: &AppWatch<'_>,
        request: &LaunchRequest,
        started: Instant,
    ) -> Error {
        let kernel_id = &submission.kernel_id;
        let tail = || read_tail(&submission.log_path, TAIL_LINES).unwrap_or_default();
        let timeout = crate::python_seconds(request.timeout);
        match failure {
            WaitFailure::Listener(err) => err,
            WaitFailure::LauncherExited(state) => Error::ExitedDuringLaunch {
                status: format!(
                    "Error occurred during launch of KernelID: {kernel_id}: the submit command {} ended with {}",
                    submission.program.display(),
                    state
                ),
                log_tail: tail(),
            },
            WaitFailure::Placement(app) => Error::ExitedDuringLaunch {
                status: ended_during_startup(kernel_id, &app),
                log_tail: tail(),
            },
            WaitFailure::Timeout => {
                let prefix = format!("KernelID: '{kernel_id}' launch timeout due to: ");
                let rm_note = watch
                    .last_rm_error
                    .as_deref()
                    .map(|e| format!(" Last ResourceManager error: {e}"))
                    .unwrap_or_default();
                match &watch.app {
                    None => Error::LaunchTimeout(format!(
                        "{prefix}Application ID is None. Failed to submit a new application to YARN within {timeout} seconds.  Check Enterprise Gateway log for more information.{rm_note} Submit output: {}",
                        tail()
                    )),
                    Some(app) if app.state == AppState::Running => Error::LaunchTimeout(format!(
                        "{prefix}App {} is RUNNING, but waited too long ({timeout} secs) to get connection file.  Check YARN logs for more information.{rm_note}",
                        app.id
                    )),
                    Some(app) => Error::Capacity(format!(
                        "{prefix}YARN resources unavailable after {} seconds for app {}, launch timeout: {timeout}!  Check YARN configuration.{rm_note}",
                        crate::python_seconds(started.elapsed()),
                        app.id
                    )),
                }
            }
        }
    }
}

#[async_trait]
impl ResourceManager for YarnResourceManager {
    fn name(&self) -> &str {
        NAME
    }
    fn names(&self) -> crate::BackendNames {
        crate::BackendNames::built_in(NAME)
    }
    fn capabilities(&self) -> crate::Capabilities {
        crate::Capabilities::CALLBACK_LAUNCHER
    }

    async fn launch(&self, request: LaunchRequest) -> Result<LaunchedKernel, Error> {
        let started = Instant::now();
        let mut submission = self.submit(&request, started).await?;
        let mut watch = AppWatch {
            client: &submission.client,
            kernel_id: &submission.kernel_id,
            launched_ms: submission.launched_ms,
            app: None,
            host: None,
            last_rm_error: None,
        };
        let waited = await_callback(
            &mut watch,
            &mut submission.pending,
            Some(&submission.submitter),
            self.config.launcher.poll_interval,
            started + request.timeout,
        )
        .await;
        let (response, AmPlace { app_id, host, ip }) = match waited {
            Ok(done) => done,
            Err(failure) => {
                let err = Self::classify(failure, &submission, &watch, &request, started);
                let app_id = watch.app.map(|a| a.id);
                tracing::warn!(kernel_id = %submission.kernel_id, "YARN launch failed: {err}");
                let Submission {
                    kernel_id,
                    client,
                    submitter,
                    launched_ms,
                    pending,
                    ..
                } = submission;
                drop(pending);
                abandon(client, submitter, kernel_id, launched_ms, app_id).await;
                return Err(err);
            }
        };
        let Submission {
            kernel_id,
            user,
            client,
            log_path,
            submitter,
            ..
        } = submission;

        let mut connection = response.connection.clone();
        connection.ip = ip.to_string();
        connection.kernel_name = request.spec.name.clone();
        let comm = response
            .comm_port
            .map(|port| self.config.launcher.comm_port(ip, port));
        tracing::info!(%kernel_id, %app_id, %host, comm_port = ?response.comm_port, "YARN kernel connection info received");
        let process = YarnKernelProcess {
            kernel_id,
            app_id,
            user,
            client,
            host,
            ip,
            connection: connection.clone(),
            comm: LauncherComm::new(comm),
            remote_pid: response.pid,
            remote_pgid: response.pgid,
            submitter: Some(submitter),
            log_path,
            interrupt_signal: interrupt_signal_of(&request.spec) as i32,
            poll_interval: self.config.launcher.poll_interval,
            final_state: FinalState::default(),
            finished: AtomicBool::new(false),
            detached: AtomicBool::new(false),
        };
        Ok(LaunchedKernel {
            connection,
            process: Box::new(process),
        })
    }

    async fn reattach(&self, record: &KernelRecord) -> Result<LaunchedKernel, Error> {
        let stored = record.process_of(NAME, YarnRecord::from_json)?;
        let app_id = stored.application_id.clone();
        if app_id.is_empty() {
            return Err(Error::Config(format!(
                "kernel {}: the yarn process record has no application_id",
                record.kernel_id
            )));
        }
        let ip: IpAddr = stored.ip.parse().map_err(|_| {
            Error::Config(format!(
                "kernel {}: the yarn process record has no usable ip",
                record.kernel_id
            ))
        })?;
        let user = stored.user.clone();
        let endpoints = stored.endpoints.clone();
        let client_config = self.client_config_for(&endpoints, &user)?;
        let client = Arc::new(YarnClient::new(client_config)?);
        let state = client.app_state(&app_id).await?;
        if state.is_final() {
            return Err(Error::NotRunning(format!(
                "kernel {}: YARN application {app_id} is {state}",
                record.kernel_id
            )));
        }
        let comm = stored
            .comm_port
            .filter(|p| *p != 0)
            .map(|port| self.config.launcher.comm_port(ip, port));
        let process = YarnKernelProcess {
            kernel_id: record.kernel_id.clone(),
            app_id,
            user,
            client,
            host: stored.host.clone(),
            ip,
            connection: record.connection.clone(),
            comm: LauncherComm::new(comm),
            remote_pid: stored.pid,
            remote_pgid: stored.pgid,
            submitter: None,
            log_path: stored.log_path,
            interrupt_signal: parse_signal_name(&stored.interrupt_signal).unwrap_or(Signal::SIGINT)
                as i32,
            poll_interval: self.config.launcher.poll_interval,
            final_state: FinalState::default(),
            finished: AtomicBool::new(false),
            detached: AtomicBool::new(false),
        };
        Ok(LaunchedKernel {
            connection: record.connection.clone(),
            process: Box::new(process),
        })
    }
}

/// Cleans up after a failed launch: the submit process group, then the application (looked
/// for once more if it was not seen yet). Waits [`CLEANUP_WAIT`] at most; the rest goes on in
/// the background.
async fn abandon(
    client: Arc<YarnClient>,
    submitter: LauncherProcess,
    kernel_id: String,
    launched_ms: i64,
    app_id: Option<String>,
) {
    let work = tokio::spawn(async move {
        submitter.kill().await;
        let app_id = match app_id {
            Some(id) => Some(id),
            None => find_app(&client, &kernel_id, launched_ms)
                .await
                .ok()
                .flatten()
                .map(|a| a.id),
        };
        if let Some(id) = app_id {
            match client.kill(&id).await {
                Ok(state) => {
                    tracing::info!(%kernel_id, app_id = %id, %state, "YARN application of a failed launch stopped");
                }
                Err(err) => {
                    tracing::warn!(%kernel_id, app_id = %id, "cannot kill the YARN application of a failed launch: {err}");
                }
            }
        }
    });
    let _ = tokio::time::timeout(CLEANUP_WAIT, work).await;
}

/// A kernel running as a YARN application; see the [module docs](self).
#[derive(Debug)]
pub struct YarnKernelProcess {
    kernel_id: String,
    app_id: String,
    user: String,
    client: Arc<YarnClient>,
    host: String,
    ip: IpAddr,
    connection: ConnectionInfo,
    /// The launcher's communication port, and whether its listener was told to stop after
    /// `shutdown_request` (from then on a refusing port means the kernel is gone, as EG treats
    /// it, and the application is killed without waiting out the grace period: an application
    /// master can linger).
    comm: LauncherComm,
    remote_pid: Option<i32>,
    remote_pgid: Option<i32>,
    /// The local submit process (launches only; reaped at clean-up as EG does).
    submitter: Option<LauncherProcess>,
    log_path: PathBuf,
    interrupt_signal: i32,
    poll_interval: Duration,
    /// The final state once seen (it cannot change any more).
    final_state: FinalState,
    finished: AtomicBool,
    detached: AtomicBool,
}

/// A final application state as a process exit: FINISHED = code 0, FAILED = code 1,
/// KILLED = SIGKILL.
fn exit_of(state: &AppState) -> ProcessState {
    match state {
        AppState::Finished => ProcessState::Exited {
            code: Some(0),
            signal: None,
        },
        AppState::Failed => ProcessState::Exited {
            code: Some(1),
            signal: None,
        },
        AppState::Killed => ProcessState::Exited {
            code: None,
            signal: Some(Signal::SIGKILL as i32),
        },
        _ => ProcessState::Running,
    }
}

impl YarnKernelProcess {
    fn cached(&self) -> Option<ProcessState> {
        self.final_state.get()
    }

    fn remember(&self, state: ProcessState) -> ProcessState {
        self.final_state.remember(state)
    }

    /// The application's state from the RM: final states as exits, others as running; an
    /// application the RM does not know is gone; an unreachable RM is "unknown".
    async fn app_state(&self) -> ProcessState {
        if let Some(state) = self.cached() {
            return state;
        }
        match self.client.app_state(&self.app_id).await {
            Ok(state) => self.remember(exit_of(&state)),
            Err(err) if err.is_not_found() => self.remember(ProcessState::GONE),
            Err(err) => {
                tracing::debug!(kernel_id = %self.kernel_id, app_id = %self.app_id, "liveness unknown: {err}");
                ProcessState::Unknown
            }
        }
    }

    async fn wait_final(&self) -> ProcessState {
        loop {
            match self.app_state().await {
                state @ ProcessState::Exited { .. } => return state,
                _ => tokio::time::sleep(self.poll_interval).await,
            }
        }
    }

    /// Kills the application through the RM; returns its final state.
    async fn kill_app(&self) -> Result<ProcessState, Error> {
        match self.client.kill(&self.app_id).await {
            Ok(state) => Ok(self.remember(exit_of(&state))),
            Err(err) if err.is_not_found() => Ok(self.remember(ProcessState::GONE)),
            Err(err) => Err(err.into()),
        }
    }

    fn not_running(&self) -> Error {
        Error::NotRunning(format!(
            "kernel {} (YARN application {}) is not running",
            self.kernel_id, self.app_id
        ))
    }
}

#[async_trait]
impl KernelProcess for YarnKernelProcess {
    fn record(&self) -> KernelRecord {
        KernelRecord {
            resource_manager: NAME.to_owned(),
            kernel_id: self.kernel_id.clone(),
            connection: self.connection.clone(),
            process: YarnRecord {
                application_id: self.app_id.clone(),
                user: self.user.clone(),
                endpoints: self.client.endpoints(),
                host: self.host.clone(),
                ip: self.ip.to_string(),
                pid: self.remote_pid,
                pgid: self.remote_pgid,
                comm_port: self.comm.port().map(|c| c.addr().port()),
                log_path: self.log_path.clone(),
                interrupt_signal: Signal::try_from(self.interrupt_signal)
                    .map(|s| s.as_str())
                    .unwrap_or("SIGINT")
                    .to_owned(),
            }
            .to_json(),
        }
    }

    async fn poll(&self) -> ProcessState {
        self.comm.poll_state(self.app_state().await).await
    }

    async fn wait(&self) -> ProcessState {
        self.wait_final().await
    }

    async fn signal(&self, signum: i32) -> Result<(), Error> {
        if signum == 0 {
            return match self.app_state().await {
                ProcessState::Running => Ok(()),
                ProcessState::Exited { .. } => Err(self.not_running()),
                ProcessState::Unknown => Err(Error::Io(std::io::Error::other(format!(
                    "cannot tell whether YARN application {} runs",
                    self.app_id
                )))),
            };
        }
        if let Some(ProcessState::Exited { .. }) = self.cached() {
            return Err(self.not_running());
        }
        if signum == Signal::SIGKILL as i32 {
            return self.kill_app().await.map(|_| ());
        }
        if self.comm.port().is_none() {
            return Err(Error::Unsupported(format!(
                "kernel {}: its launcher has no communication port to signal through",
                self.kernel_id
            )));
        }
        match self.comm.signal(signum).await {
            CommOutcome::Delivered => Ok(()),
            CommOutcome::Refused => Err(self.not_running()),
            CommOutcome::Unknown(why) => Err(Error::Io(std::io::Error::other(format!(
                "cannot signal kernel {} on {}: {why}",
                self.kernel_id, self.host
            )))),
        }
    }

    async fn interrupt(&self) -> Result<(), Error> {
        self.signal(self.interrupt_signal).await
    }

    async fn terminate(&self, grace: Duration) -> Result<ProcessState, Error> {
        if let Some(state) = self.cached() {
            self.finished.store(true, Ordering::SeqCst);
            return Ok(state);
        }
        let state = self
            .comm
            .terminate(
                &self.kernel_id,
                grace,
                || self.wait_final(),
                || async {
                    tracing::info!(kernel_id = %self.kernel_id, app_id = %self.app_id, "killing the YARN application");
                    self.kill_app().await
                },
            )
            .await?;
        self.finished.store(true, Ordering::SeqCst);
        Ok(state)
    }

    async fn shutdown_requested(&self) {
        if self.cached().is_none() {
            self.comm.shutdown_requested(&self.kernel_id).await;
        }
    }

    async fn cleanup(&self, _keep_connection_file: bool) {
        // The launcher owns the connection file. Reap the submit process, as EG does.
        if let Some(submitter) = &self.submitter {
            submitter.kill().await;
        }
        if self.cached().is_none() {
            let _ = self.comm.stop_listener().await;
        }
    }

    fn log_tail(&self, max_lines: usize) -> String {
        read_tail(&self.log_path, max_lines).unwrap_or_default()
    }

    fn detach(&self) {
        self.detached.store(true, Ordering::SeqCst);
    }
}

impl Drop for YarnKernelProcess {
    fn drop(&mut self) {
        if self.finished.load(Ordering::SeqCst) || self.detached.load(Ordering::SeqCst) {
            return;
        }
        if let Some(submitter) = &self.submitter {
            submitter.kill_now();
        }
        if self.cached().is_some() {
            return;
        }
        // Nothing may be left in the RM: kill the application in the background if we can.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            tracing::warn!(kernel_id = %self.kernel_id, app_id = %self.app_id, "kernel handle dropped while running: killing its YARN application");
            let client = Arc::clone(&self.client);
            let app_id = self.app_id.clone();
            runtime.spawn(async move {
                if let Err(err) = client.kill(&app_id).await {
                    tracing::warn!(%app_id, "cannot kill the YARN application: {err}");
                }
            });
        }
    }
}

/// EG's reason for an application that ended during the kernel's start-up, with the host its
/// application master ran on when the RM says (the diagnostics name what failed there, such as
/// a missing executable in the AM's stderr; the host says where to look).
fn ended_during_startup(kernel_id: &str, app: &App) -> String {
    let host = app
        .am_host_http_address
        .as_deref()
        .map(|address| address.rsplit_once(':').map_or(address, |(host, _)| host))
        .filter(|host| !host.is_empty() && *host != "N/A")
        .map(|host| format!(" Its application master ran on host {host}."))
        .unwrap_or_default();
    format!(
        "KernelID: '{kernel_id}', ApplicationID: '{}' unexpectedly found in state '{}' during kernel startup!{host} Diagnostics: {}",
        app.id,
        app.state,
        app.diagnostics.trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn spark_settings_go_after_spark_submit_only() {
        let spark = crate::SparkSettings {
            queue: Some("large".into()),
            executor_count: Some(4),
            ..crate::SparkSettings::default()
        };
        assert_eq!(
            with_spark_settings(
                strings(&["/opt/spark/bin/spark-submit", "--name", "k"]),
                &spark
            ),
            strings(&[
                "/opt/spark/bin/spark-submit",
                "--queue",
                "large",
                "--num-executors",
                "4",
                "--name",
                "k"
            ])
        );
        let script = strings(&["run.sh", "--name", "k"]);
        assert_eq!(with_spark_settings(script.clone(), &spark), script);
    }

    #[test]
    fn proxy_user_goes_after_spark_submit_only() {
        let check = |argv: &[&str], expected: &[&str]| {
            assert_eq!(with_proxy_user(strings(argv), "bob"), strings(expected));
        };
        check(
            &["/opt/spark/bin/spark-submit", "--master", "yarn"],
            &[
                "/opt/spark/bin/spark-submit",
                "--proxy-user",
                "bob",
                "--master",
                "yarn",
            ],
        );
        check(
            &["run.sh", "--master", "yarn"],
            &["run.sh", "--master", "yarn"],
        );
        check(
            &["spark-submit", "--proxy-user", "x"],
            &["spark-submit", "--proxy-user", "x"],
        );
        check(&[], &[]);
    }

    #[test]
    fn impersonation_flag() {
        let env = |k: &str, v: &str| BTreeMap::from([(k.to_owned(), v.to_owned())]);
        assert!(impersonation_enabled(&env(
            "EG_IMPERSONATION_ENABLED",
            "True"
        )));
        assert!(impersonation_enabled(&env(
            "GP_IMPERSONATION_ENABLED",
            "true"
        )));
        assert!(!impersonation_enabled(&env(
            "EG_IMPERSONATION_ENABLED",
            "False"
        )));
        assert!(!impersonation_enabled(&BTreeMap::new()));
    }

    #[test]
    fn final_states_are_exits() {
        assert_eq!(
            exit_of(&AppState::Killed),
            ProcessState::Exited {
                code: None,
                signal: Some(9)
            }
        );
        assert_eq!(
            exit_of(&AppState::Finished),
            ProcessState::Exited {
                code: Some(0),
                signal: None
            }
        );
        for live in [AppState::Accepted, AppState::Running, AppState::Killing] {
            assert_eq!(exit_of(&live), ProcessState::Running);
        }
    }

    #[test]
    fn an_application_ended_during_startup_names_its_am_host() {
        let mut app = App {
            id: "application_1_0002".into(),
            user: String::new(),
            name: String::new(),
            queue: String::new(),
            state: AppState::Failed,
            final_status: "FAILED".into(),
            diagnostics: "AM Container exited with exitCode: 127\n/opt/no-java/bin/java: No such file or directory\n".into(),
            application_type: String::new(),
            application_tags: String::new(),
            started_time: 0,
            finished_time: 0,
            am_host_http_address: Some("node-7.example:8042".into()),
            tracking_url: None,
        };
        let text = ended_during_startup("k-1", &app);
        assert!(text.starts_with("KernelID: 'k-1', ApplicationID: 'application_1_0002' unexpectedly found in state 'FAILED' during kernel startup!"), "{text}");
        assert!(text.contains("ran on host node-7.example."), "{text}");
        assert!(
            text.ends_with("/opt/no-java/bin/java: No such file or directory"),
            "{text}"
        );
        for unknown in [None, Some(String::new()), Some("N/A".to_owned())] {
            app.am_host_http_address = unknown;
            let text = ended_during_startup("k-1", &app);
            assert!(!text.contains("host"), "no host to name: {text}");
        }
    }

    #[test]
    fn apps_match_by_tag_or_name() {
        let app = |name: &str, tags: &str| App {
            id: "application_1_0001".into(),
            user: String::new(),
            name: name.into(),
            queue: String::new(),
            state: AppState::Running,
            final_status: String::new(),
            diagnostics: String::new(),
            application_type: String::new(),
            application_tags: tags.into(),
            started_time: 0,
            finished_time: 0,
            am_host_http_address: None,
            tracking_url: None,
        };
        let id = "3f1c0000-0000-4000-8000-000000000001";
        assert!(belongs_to(&app(id, ""), id));
        assert!(belongs_to(&app(&format!("spark-{id}"), ""), id));
        assert!(belongs_to(&app("other", &format!("x,{id}")), id));
        assert!(!belongs_to(&app("other", "x,y"), id));
    }
}
