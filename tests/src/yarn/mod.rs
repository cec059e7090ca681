//! A YARN ResourceManager emulator for tests: the RM REST API over HTTP plus a fake NodeManager
//! that runs each application's AM command as a local process group.
//!
//! No real YARN can run on the test machines (see `shared/reference/yarn.md` §1), so the YARN
//! path is tested against this. [`YarnEmulator::start`] serves one RM; [`YarnEmulator::start_with`]
//! serves an HA set of RMs (one listener each) over one shared cluster state, so a failover
//! keeps the applications, as a real RM pair with a shared state store does.
//!
//! # What it emulates
//! * `GET /ws/v1/cluster` and `/ws/v1/cluster/info` (`haState` ACTIVE or STANDBY), `/metrics`,
//!   `/scheduler` (capacity-scheduler shape: `root` with leaf queues from
//!   [`EmulatorConfig::queues`], each with `capacities.queueCapacitiesByPartition` for the
//!   default partition `""` and every [`EmulatorConfig::node_labels`] entry).
//! * `GET /ws/v1/cluster/apps` with `states`/`state`, `startedTimeBegin/End`,
//!   `finishedTimeBegin/End`, `finalStatus`, `user`, `queue` (unfinished apps only),
//!   `applicationTypes`, `applicationTags` (any tag), `name`, `limit`; `{"apps":null}` when
//!   nothing matches. `GET /apps/{id}`, `GET /apps/{id}/state` (raw internal state, so KILLING
//!   shows), `GET /apps/{id}/appattempts`.
//! * `PUT /apps/{id}/state` `{"state":"KILLED"}`: 401 without a user, 400 for other targets,
//!   403 (plain text) for a non-owner when [`EmulatorConfig::acl_enabled`], 200 with the current
//!   state when already final, else 202 `{"state":"KILLING"}` with `Location`; the AM process
//!   group gets SIGTERM, then SIGKILL after [`EmulatorConfig::kill_grace`], then KILLED.
//! * `POST /apps/new-application` and `POST /apps` (REST submission, `doAs` honoured): the app
//!   walks NEW → NEW_SAVING → SUBMITTED → ACCEPTED ([`EmulatorConfig::transition_delay`] per
//!   step), then the NodeManager runs `am-container-spec.commands.command` with `bash -c` in its
//!   own process group, with the given environment over the emulator's own plus the usual
//!   container variables (`CONTAINER_ID`, `NM_HOST`, `LOG_DIRS`, ...; `<LOG_DIR>`, `<CPS>` and
//!   `{{VAR}}` are expanded), and the app is RUNNING with `amHostHttpAddress`
//!   ([`EmulatorConfig::node_http_address`]). Exit 0 → FINISHED/SUCCEEDED; non-zero → FAILED
//!   with diagnostics holding the exit code and the stderr tail. Leftover processes of the
//!   group are killed when the AM exits.
//! * Errors in the `RemoteException` JSON shape with Hadoop's statuses.
//! * Simple auth: `?user.name=u` sets a signed `hadoop.auth` cookie; the cookie or `user.name`
//!   identifies the caller; anyone else is anonymous (reads only), or gets 401 when
//!   [`EmulatorConfig::anonymous_allowed`] is off.
//! * HA: a standby answers 307 + `Location` to the active RM (or, with
//!   [`StandbyStyle::Refresh200`], Hadoop 2.x's 200 page with `Refresh`), and 307 with only
//!   `Refresh` when no RM is active; `/ws/v1/cluster/info`, `/isActive` (405 on a standby) and
//!   the other `RMWebAppFilter` exemptions are served directly. `GET /cluster` and any
//!   `<base>/cluster` answer 200 (yarn-api-client's active-RM probe).
//! * Test controls: [`YarnEmulator::hold_new_apps`] / [`YarnEmulator::release`] (stay ACCEPTED
//!   for lack of capacity), [`YarnEmulator::fail_app`], [`YarnEmulator::kill_app`],
//!   [`YarnEmulator::set_partition_usage`], [`YarnEmulator::fail_over_to`],
//!   [`YarnEmulator::set_no_active`], [`YarnEmulator::stop_rm`], [`YarnEmulator::apps`],
//!   [`YarnEmulator::running_apps`], [`YarnEmulator::stop`]; `Drop` kills every AM process group.
//!
//! # What it does NOT emulate
//! * Hadoop IPC (port 8032, `ApplicationClientProtocol`): the real `spark-submit` cannot talk to
//!   it; use the stand-in `spark-submit` binary of this crate. No AMRM protocol (8030) either:
//!   the AM never registers; an app is RUNNING as soon as its process started, and
//!   `amRPCAddress` is `N/A`.
//! * Kerberos/SPNEGO, delegation tokens, TLS (HTTP only), XML responses (JSON always).
//! * Resource accounting and scheduling: one NodeManager with fixed totals; apps never wait for
//!   memory unless held by the test; queue capacities and node labels are configuration, usage
//!   is computed from running AMs or set by the test; no preemption, no reservations, no
//!   fair/FIFO scheduler shapes, no queue ACLs. An unknown queue fails the app at submission.
//! * Application attempts beyond the first (`max-app-attempts` is ignored), the FINAL_SAVING and
//!   FINISHING internal states, log aggregation, local resources (nothing is downloaded),
//!   container (non-AM) allocation, `/apps/{id}/queue|priority|timeouts`, `/nodes`,
//!   `/appstatistics`, `/containers`, `/reservation`, `/scheduler-conf`, `/delegation-token`.
//! * Persistence: the state lives in memory; stopping the emulator forgets everything.

mod http;
mod nm;
mod state;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use state::{AppSnapshot, RmAppState};

/// The `spark-submit` arguments (after the program) of a YARN cluster-mode kernelspec as EG's
/// and gateway_provisioners' specs write them: the kernel id as the application's name and tag,
/// no waiting for the application, a single attempt. Shared by the YARN tests and the benchmark.
pub const CLUSTER_SUBMIT_ARGS: &[&str] = &[
    "--master",
    "yarn",
    "--deploy-mode",
    "cluster",
    "--name",
    "{kernel_id}",
    "--conf",
    "spark.yarn.submit.waitAppCompletion=false",
    "--conf",
    "spark.yarn.tags={kernel_id}",
    "--conf",
    "spark.yarn.maxAppAttempts=1",
];

use state::{ClusterState, Shared, Termination};

/// How a standby RM answers redirected paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StandbyStyle {
    /// Hadoop 3: 307 with `Location: <active RM><path>?<query>`.
    #[default]
    Redirect307,
    /// Hadoop 2.x: 200 with `Refresh: 3; url=<active>` and a "This is standby RM" page.
    Refresh200,
}

/// A leaf queue under `root`.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSpec {
    /// Short name.
    pub name: String,
    /// Capacity, percent of the cluster.
    pub capacity: f64,
}

/// The emulated cluster's settings.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Leaf queues under `root` (default: `default` at 100%).
    pub queues: Vec<QueueSpec>,
    /// Node labels (partitions) besides the default `""`.
    pub node_labels: Vec<String>,
    /// Whether callers without `user.name` or cookie may read (Hadoop's default: yes).
    pub anonymous_allowed: bool,
    /// Whether only the owner may kill an app (`yarn.acl.enable`; default off).
    pub acl_enabled: bool,
    /// Whether REST submission is allowed (default on).
    pub rest_submission_enabled: bool,
    /// How a standby answers.
    pub standby_style: StandbyStyle,
    /// Pause between NEW, NEW_SAVING, SUBMITTED and ACCEPTED (and before a KILLED that had
    /// no process).
    pub transition_delay: Duration,
    /// SIGTERM → SIGKILL grace on kill (Hadoop's `sleep-delay-before-sigkill.ms`: 250 ms).
    pub kill_grace: Duration,
    /// Lifetime of a `hadoop.auth` cookie.
    pub auth_token_validity: Duration,
    /// `host:port` reported as `amHostHttpAddress` (must resolve; default `127.0.0.1:8042`).
    pub node_http_address: String,
    /// Cluster memory (MB).
    pub total_memory_mb: u64,
    /// Cluster virtual cores.
    pub total_vcores: u32,
    /// Largest container memory (MB).
    pub max_allocation_mb: u64,
    /// Largest container vcores.
    pub max_allocation_vcores: u32,
}

impl Default for EmulatorConfig {
    fn default() -> EmulatorConfig {
        EmulatorConfig {
            queues: vec![QueueSpec {
                name: "default".into(),
                capacity: 100.0,
            }],
            node_labels: Vec::new(),
            anonymous_allowed: true,
            acl_enabled: false,
            rest_submission_enabled: true,
            standby_style: StandbyStyle::Redirect307,
            transition_delay: Duration::from_millis(20),
            kill_grace: Duration::from_millis(250),
            auth_token_validity: Duration::from_secs(36_000),
            node_http_address: "127.0.0.1:8042".into(),
            total_memory_mb: 8192,
            total_vcores: 8,
            max_allocation_mb: 8192,
            max_allocation_vcores: 8,
        }
    }
}

/// One RM's HTTP listener.
#[derive(Debug)]
struct RmServer {
    url: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// A running emulated cluster: one or more RMs (HA) and a fake NodeManager.
#[derive(Debug)]
pub struct YarnEmulator {
    shared: Arc<Shared>,
    servers: Vec<RmServer>,
    _log_root: tempfile::TempDir,
}

impl YarnEmulator {
    /// Starts one active RM with the default configuration on `addr` (use port 0).
    pub async fn start(addr: SocketAddr) -> std::io::Result<YarnEmulator> {
        YarnEmulator::start_with(EmulatorConfig::default(), &[addr]).await
    }

    /// Starts an RM per address over one shared cluster; the first is active.
    pub async fn start_with(
        config: EmulatorConfig,
        addrs: &[SocketAddr],
    ) -> std::io::Result<YarnEmulator> {
        if addrs.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "no RM address",
            ));
        }
        let log_root = tempfile::Builder::new()
            .prefix("yarn-emulator-")
            .tempdir()?;
        let mut listeners = Vec::with_capacity(addrs.len());
        let mut urls = Vec::with_capacity(addrs.len());
        for addr in addrs {
            let listener = TcpListener::bind(addr).await?;
            let local = listener.local_addr()?;
            let host = if local.ip().is_unspecified() {
                "127.0.0.1".to_owned()
            } else {
                local.ip().to_string()
            };
            let host = if local.is_ipv6() && !local.ip().is_unspecified() {
                format!("[{host}]")
            } else {
                host
            };
            urls.push(format!("http://{host}:{}", local.port()));
            listeners.push(listener);
        }
        let mut cluster = ClusterState::new(addrs.len());
        cluster.rm_urls = urls.clone();
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(cluster),
            secret: std::hash::RandomState::new(),
            log_root: log_root.path().to_path_buf(),
            tasks: Mutex::new(Vec::new()),
        });
        let mut servers = Vec::with_capacity(listeners.len());
        for (index, (listener, url)) in listeners.into_iter().zip(urls).enumerate() {
            let router = http::router(http::Rm {
                shared: shared.clone(),
                index,
            });
            let (tx, rx) = oneshot::channel::<()>();
            let task = tokio::spawn(async move {
                let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
                    let _ = rx.await;
                });
                // A failing accept loop ends this RM; tests see connection errors.
                let _ = serve.await;
            });
            servers.push(RmServer {
                url,
                shutdown: Some(tx),
                task: Some(task),
            });
        }
        Ok(YarnEmulator {
            shared,
            servers,
            _log_root: log_root,
        })
    }

    /// Base URL (`http://127.0.0.1:<port>`) of the first RM.
    pub fn url(&self) -> String {
        self.servers
            .first()
            .map(|s| s.url.clone())
            .unwrap_or_default()
    }

    /// Base URL of RM `index`.
    pub fn rm_url(&self, index: usize) -> Option<String> {
        self.servers.get(index).map(|s| s.url.clone())
    }

    /// Makes RM `index` active; the others become standbys redirecting to it.
    pub fn fail_over_to(&self, index: usize) {
        self.shared.lock().active = Some(index);
    }

    /// Makes every RM a standby with no active RM known.
    pub fn set_no_active(&self) {
        self.shared.lock().active = None;
    }

    /// Stops RM `index`'s listener (clients then get "connection refused"); apps keep running.
    pub async fn stop_rm(&mut self, index: usize) {
        let Some(server) = self.servers.get_mut(index) else {
            return;
        };
        if let Some(tx) = server.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = server.task.take()
            && tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }

    /// While on, newly submitted apps stay ACCEPTED (no capacity) until [`YarnEmulator::release`].
    pub fn hold_new_apps(&self, on: bool) {
        self.shared.lock().hold_new_apps = on;
    }

    /// Lets a held app start its AM; false if there is no such app.
    pub fn release(&self, id: &str) -> bool {
        let mut st = self.shared.lock();
        let Some(app) = st.apps.get_mut(id) else {
            return false;
        };
        app.held = false;
        app.wake.notify_one();
        true
    }

    /// Fails an unfinished app with these diagnostics (its processes are killed); false if the
    /// app is unknown or already final.
    pub fn fail_app(&self, id: &str, diagnostics: &str) -> bool {
        self.terminate(id, Termination::Fail(diagnostics.to_owned()))
    }

    /// Kills an unfinished app from the RM side (like `yarn application -kill`).
    pub fn kill_app(&self, id: &str) -> bool {
        self.terminate(
            id,
            Termination::Kill(format!(
                "Application {id} was killed by user yarn at 127.0.0.1"
            )),
        )
    }

    fn terminate(&self, id: &str, term: Termination) -> bool {
        let mut st = self.shared.lock();
        let Some(app) = st.apps.get_mut(id) else {
            return false;
        };
        if app.state.is_final() || app.pending.is_some() {
            return false;
        }
        if matches!(term, Termination::Kill(_)) {
            app.before_kill = app.state;
            app.state = RmAppState::Killing;
        }
        app.pending = Some(term);
        app.wake.notify_one();
        true
    }

    /// Sets a queue's `absoluteUsedCapacity` in a partition (`""` = default), overriding the
    /// value computed from running apps.
    pub fn set_partition_usage(&self, queue: &str, partition: &str, absolute_used: f64) {
        self.shared
            .lock()
            .usage
            .entry(queue.to_owned())
            .or_default()
            .insert(partition.to_owned(), absolute_used);
    }

    /// Every application, oldest first.
    pub fn apps(&self) -> Vec<AppSnapshot> {
        let st = self.shared.lock();
        let mut apps: Vec<AppSnapshot> = st.apps.values().map(ClusterState::snapshot).collect();
        apps.sort_by_key(|a| {
            a.id.rsplit('_')
                .next()
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(u64::MAX)
        });
        apps
    }

    /// One application.
    pub fn app(&self, id: &str) -> Option<AppSnapshot> {
        self.shared.lock().apps.get(id).map(ClusterState::snapshot)
    }

    /// Applications not yet in a final state.
    pub fn running_apps(&self) -> Vec<AppSnapshot> {
        self.apps()
            .into_iter()
            .filter(|a| !a.state.is_final())
            .collect()
    }

    /// Every AM process group the NodeManager ever started (alive or not).
    pub fn process_groups(&self) -> Vec<i32> {
        self.shared.lock().every_pgid.iter().copied().collect()
    }

    /// Whether a process group has a live (non-zombie) member.
    pub fn process_group_alive(pgid: i32) -> bool {
        nm::group_alive(pgid)
    }

    /// Every AM process group the NodeManager ever started that still has a live process.
    pub fn live_process_groups(&self) -> Vec<i32> {
        let groups: Vec<i32> = self.shared.lock().every_pgid.iter().copied().collect();
        groups.into_iter().filter(|p| nm::group_alive(*p)).collect()
    }

    /// Waits until `id` is in `state` or `timeout` passes; returns the last snapshot.
    pub async fn wait_for_state(
        &self,
        id: &str,
        state: RmAppState,
        timeout: Duration,
    ) -> Option<AppSnapshot> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let snap = self.app(id);
            if snap.as_ref().is_some_and(|s| s.state == state)
                || tokio::time::Instant::now() >= deadline
            {
                return snap;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops every RM and kills every AM process group.
    pub async fn stop(mut self) {
        self.kill_everything();
        for i in 0..self.servers.len() {
            self.stop_rm(i).await;
        }
    }

    fn kill_everything(&self) {
        let (groups, tasks) = {
            let mut st = self.shared.lock();
            st.stopped = true;
            let groups: Vec<i32> = st.every_pgid.iter().copied().collect();
            let tasks = std::mem::take(
                &mut *self
                    .shared
                    .tasks
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            (groups, tasks)
        };
        for task in tasks {
            task.abort();
        }
        for pgid in groups {
            nm::signal_group(pgid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Drop for YarnEmulator {
    fn drop(&mut self) {
        self.kill_everything();
        for server in &mut self.servers {
            if let Some(tx) = server.shutdown.take() {
                let _ = tx.send(());
            }
            if let Some(task) = server.task.take() {
                task.abort();
            }
        }
    }
}
