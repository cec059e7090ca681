//! The kernel manager: lifecycle, limits and supervision of every kernel, whatever backend runs it.
//!
//! [`KernelManager`] is the facade the HTTP layer uses. Inside, every kernel has a *supervisor*
//! task (`supervisor`) that owns its process, its one iopub subscription and the fan-out to
//! WebSocket clients (`hub`); the manager keeps a table of kernels plus the starts in flight,
//! so limits count both atomically. `policy` holds the pure decisions of the start path
//! (authorization, limits, ids, timeouts, working directories) and `kernel` the launch and
//! readiness of one kernel incarnation.
pub mod error;
mod events;
mod hub;
mod identity;
mod kernel;
mod persist;
mod policy;
mod pool;
pub mod rules;
mod supervisor;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use kernel_launcher::env::{EnvInputs, compose, filter_request_env};
use kernel_launcher::{KernelSpec, KernelSpecs};
use parking_lot::{Mutex, RwLock};
use resource_managers::{KernelHost, Registry, Unavailable};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use error::ManagerError;
use events::{KernelEvent, ShutdownReason};
pub(crate) use hub::{Attached, ClientNotice, Handover, Kick};
pub(crate) use kernel::socket_options;
use kernel::{KernelShared, LaunchPlan, Status};
pub use persist::Persistence;
pub use pool::PoolInfo;

use crate::profiles::{Profile, ProfileSet};
use crate::{Fault, GatewayConfig};

/// A start request as the HTTP layer parsed it (EG reads only these fields).
#[derive(Debug, Clone, Default)]
pub struct StartRequest {
    /// Kernelspec name; `None` means the default. `python` is an alias of `python3`.
    pub name: Option<String>,
    /// The request's `env` object, unvalidated; `None` when the body had no `env`.
    pub env: Option<serde_json::Map<String, serde_json::Value>>,
    /// Working directory relative to the root dir.
    pub path: Option<String>,
    /// The kernel's owner, decided by the caller from the authenticated identity; it becomes
    /// `KERNEL_USERNAME` whatever the env says. `None`: the env's `KERNEL_USERNAME`, else the
    /// gateway's own user (Enterprise Gateway's behaviour for a trusted client).
    pub user: Option<String>,
    /// The owner's groups, for `group:<name>` entries of the user lists.
    pub groups: Vec<String>,
    /// The kernel profile asked for by the body's `profile` field (the env's `KERNEL_PROFILE`
    /// asks too; this one wins).
    pub profile: Option<String>,
}

/// A kernel's state as the manager sees it; the HTTP layer converts it to EG's kernel model.
#[derive(Debug, Clone)]
pub struct KernelSnapshot {
    /// The kernel's UUID.
    pub id: String,
    /// The kernelspec it was started from.
    pub name: String,
    /// Last iopub activity (UTC).
    pub last_activity: time::OffsetDateTime,
    /// Last execution_state seen (`starting`, `idle`, `busy`, `restarting`, `dead`...).
    pub execution_state: String,
    /// Open WebSocket connections.
    pub connections: usize,
    /// Why the kernel is not usable, if it is not.
    pub reason: Option<String>,
    /// The user that started it.
    pub username: String,
    /// The resource manager that runs it (`local`, `ssh`, `yarn`).
    pub backend: String,
    /// Where it runs: the address in its connection info (empty until launched).
    pub host: String,
    /// Restarts so far, requested and automatic.
    pub restarts: u32,
    /// When the start was requested (UTC).
    pub created: time::OffsetDateTime,
    /// The kernel profile it was started under, if any.
    pub profile: Option<String>,
}

/// Extra time `shutdown_all` allows past `shutdown_wait_time`.
const SHUTDOWN_ALL_SLACK: Duration = Duration::from_secs(2);
/// EG's culling interval when the configured one is zero.
const DEFAULT_CULL_INTERVAL: Duration = Duration::from_secs(300);

/// Every kernel, started or still starting (limits count both).
#[derive(Debug, Default)]
pub(crate) struct Table {
    /// Kernels by id.
    pub(crate) kernels: BTreeMap<String, Arc<KernelShared>>,
}

impl Table {
    /// Total kernels (running + starting) and those of `user`.
    fn counts(&self, user: &str) -> (usize, usize) {
        let total = self.kernels.len();
        let of_user = self.kernels.values().filter(|k| k.username == user).count();
        (total, of_user)
    }
}

/// Owns every kernel. Cheap to share behind an `Arc`.
///
/// Dropping the manager signals every supervisor as a gateway exit would.
#[derive(Debug)]
pub struct KernelManager {
    config: Arc<GatewayConfig>,
    registry: Registry,
    table: Arc<Mutex<Table>>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    culler_started: std::sync::Once,
    /// The kernel store, when kernels outlive the gateway.
    persistence: Option<Arc<Persistence>>,
    /// This manager, for the tasks it spawns (they must not keep it alive).
    me: Weak<KernelManager>,
    /// Kernel profiles and pool sizes, replaced whole on reload.
    profiles: RwLock<Arc<ProfileSet>>,
    /// Warm pools.
    pools: pool::Pools,
}

impl KernelManager {
    /// A manager over the given backends. Spawns nothing until kernels start.
    pub fn new(config: Arc<GatewayConfig>, registry: Registry) -> Arc<KernelManager> {
        Arc::new_cyclic(|me| KernelManager {
            config,
            registry,
            table: Arc::new(Mutex::new(Table::default())),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            culler_started: std::sync::Once::new(),
            persistence: None,
            me: me.clone(),
            profiles: RwLock::default(),
            pools: pool::Pools::default(),
        })
    }
    /// A manager that records its kernels in a store, so that they outlive this gateway; call
    /// [`KernelManager::recover`] before serving to re-attach to the kernels already there.
    pub fn with_persistence(
        config: Arc<GatewayConfig>,
        registry: Registry,
        persistence: Persistence,
    ) -> Arc<KernelManager> {
        Arc::new_cyclic(|me| KernelManager {
            config,
            registry,
            table: Arc::new(Mutex::new(Table::default())),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            culler_started: std::sync::Once::new(),
            persistence: Some(Arc::new(persistence)),
            me: me.clone(),
            profiles: RwLock::default(),
            pools: pool::Pools::default(),
        })
    }
    /// Puts kernel profiles and pool sizes in force (at start and on every reload). Running
    /// kernels keep what they were started with; pools grow or shrink to their new sizes, and
    /// pools no longer configured are emptied.
    pub fn set_profiles(&self, profiles: ProfileSet) {
        let sizes = profiles.pools.clone();
        *self.profiles.write() = Arc::new(profiles);
        pool::stop_all(self.pools.resize(&sizes));
        if !sizes.is_empty() && !self.cancel.is_cancelled() {
            self.pools
                .start_filler(self.me.clone(), &self.tasks, self.cancel.clone());
        }
    }
    /// The profiles in force.
    pub fn profile_set(&self) -> Arc<ProfileSet> {
        Arc::clone(&self.profiles.read())
    }
    /// The profile a start gets: the one asked for (unknown: 400; not the user's: 403; not for
    /// this kernelspec: 400), else the default of one of the user's groups, else none.
    fn choose_profile(
        &self,
        asked: Option<&str>,
        user: &str,
        groups: &[String],
        spec: &str,
    ) -> Result<Option<Profile>, ManagerError> {
        let set = self.profile_set();
        let Some(name) = asked.map(str::trim).filter(|n| !n.is_empty()) else {
            return Ok(set.default_for(user, groups, spec).cloned());
        };
        let profile = set.get(name).ok_or_else(|| ManagerError::BadRequest {
            message: format!("Unknown kernel profile '{name}'"),
        })?;
        if !profile.allows(user, groups) {
            return Err(ManagerError::Forbidden {
                reason: format!("User '{user}' is not allowed to use the kernel profile '{name}'"),
                message: format!("User '{user}' is not allowed to use the kernel profile '{name}'"),
            });
        }
        if !profile.fits(spec) {
            return Err(ManagerError::BadRequest {
                message: format!(
                    "The kernel profile '{name}' does not apply to kernelspec '{spec}' (it applies to: {})",
                    profile.kernelspecs.join(", ")
                ),
            });
        }
        Ok(Some(profile.clone()))
    }
    /// How many resource managers are registered (readiness).
    pub fn backend_count(&self) -> usize {
        self.registry.names().count()
    }
    /// The configuration.
    pub fn config(&self) -> &Arc<GatewayConfig> {
        &self.config
    }
    /// Current kernelspecs (rescanned from disk), with the allow-list applied.
    pub fn kernelspecs(&self) -> KernelSpecs {
        let mut specs = KernelSpecs::discover(&self.config.kernelspec_dirs);
        let allowed = &self.config.allowed_kernelspecs;
        if !allowed.is_empty() {
            specs
                .specs
                .retain(|name, _| allowed.iter().any(|a| a.eq_ignore_ascii_case(name)));
            specs
                .failed
                .retain(|name, _| allowed.iter().any(|a| a.eq_ignore_ascii_case(name)));
        }
        specs
    }
    /// Why no backend of this gateway runs `spec`, when the kernelspec listing should say so
    /// (it names a class or provisioner nobody here answers to).
    pub fn unavailable(&self, spec: &KernelSpec) -> Option<String> {
        let unavailable = self.registry.resolve(spec).err()?;
        unavailable.listed_reason().map(str::to_owned)
    }
    /// Whether `user` (a member of `groups`) may use `spec` (EG §5.4: per-spec authorized list
    /// replaces the global one, unauthorized lists add up; lists are split on commas, and an
    /// entry `group:<name>` stands for the group's members). `Err(Forbidden)` with EG's texts.
    pub fn authorize(
        &self,
        spec: &KernelSpec,
        user: &str,
        groups: &[String],
    ) -> Result<(), ManagerError> {
        policy::authorize(&self.config, spec, user, groups)
    }
    /// Starts a kernel: limits (counting starts in flight), env validation, authorization, launch.
    ///
    /// Returns once the kernel answered kernel_info (bounded by the launch timeout). The launch
    /// runs in its own task, so a caller that goes away does not leave a half-started kernel.
    pub async fn start(&self, request: StartRequest) -> Result<KernelSnapshot, ManagerError> {
        let began = Instant::now();
        let asked = request.name.clone();
        let result = self.start_kernel(request).await;
        let kind = match &result {
            Ok(kernel) => kernel.name.clone(),
            // A label only ever holds a kernelspec that exists, never a client's invention.
            Err(_) => asked
                .or_else(|| Some(self.config.default_kernel_name.clone()))
                .filter(|name| self.kernelspecs().specs.contains_key(name))
                .unwrap_or_else(|| "unknown".to_owned()),
        };
        crate::metrics::record_start(&kind, result.as_ref().map(|_| ()), began.elapsed());
        result
    }

    async fn start_kernel(&self, request: StartRequest) -> Result<KernelSnapshot, ManagerError> {
        if self.cancel.is_cancelled() {
            return Err(ManagerError::LaunchFailed {
                reason: "the gateway is shutting down".to_owned(),
                fault: Fault::Capacity,
            });
        }
        let config = &self.config;
        // EG checks the total limit before reading the body.
        if let Some(limit) = config.max_kernels {
            let (total, _) = self.table.lock().counts("");
            if total >= limit {
                return Err(policy::total_limit_error(limit, total));
            }
        }
        let filtered = match &request.env {
            Some(env) => Some(filter_request_env(env, &config.env_policy).map_err(|err| {
                ManagerError::BadRequest {
                    message: err.to_string(),
                }
            })?),
            None => None,
        };
        let mut filtered = filtered;
        let username = match &request.user {
            Some(user) => {
                // The owner is the user the kernel is for; the env says nothing else.
                if let Some(env) = filtered.as_mut() {
                    env.insert("KERNEL_USERNAME".to_owned(), user.clone());
                }
                user.clone()
            }
            None => filtered
                .as_ref()
                .and_then(|env| env.get("KERNEL_USERNAME"))
                .filter(|u| !u.is_empty())
                .cloned()
                .unwrap_or_else(|| config.gateway_user.clone()),
        };
        {
            let (total, of_user) = self.table.lock().counts(&username);
            policy::check_limits(config, total, &username, of_user)?;
        }
        let kernel_id = match filtered.as_ref().and_then(|env| env.get("KERNEL_ID")) {
            Some(id) => {
                policy::validate_kernel_id(id)?;
                id.clone()
            }
            None => uuid::Uuid::new_v4().to_string(),
        };
        let mut name = request
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| config.default_kernel_name.clone());
        if name == "python" {
            name = "python3".to_owned();
        }
        let specs = self.kernelspecs();
        let spec = specs
            .get(&name)
            .cloned()
            .ok_or_else(|| ManagerError::NoSuchKernelSpec(name.clone()))?;
        let resolved = self.registry.resolve(&spec);
        if let Err(unclaimed @ Unavailable::Unclaimed { .. }) = &resolved {
            return Err(ManagerError::Unsupported(unclaimed.to_string()));
        }
        // Authorize before anything is allocated (EG leaves files behind when it does not).
        policy::authorize(config, &spec, &username, &request.groups)?;
        let asked = request.profile.clone().or_else(|| {
            filtered
                .as_ref()
                .and_then(|env| env.get("KERNEL_PROFILE"))
                .cloned()
        });
        let profile =
            self.choose_profile(asked.as_deref(), &username, &request.groups, &spec.name)?;
        if let Some(profile) = &profile {
            // The administrator's settings win over the client's.
            filtered
                .get_or_insert_with(BTreeMap::new)
                .extend(profile.kernel_env());
        } else if let Some(env) = filtered.as_mut() {
            env.remove("KERNEL_PROFILE");
        }
        let asked_id = filtered
            .as_ref()
            .is_some_and(|env| env.contains_key("KERNEL_ID"));
        let empty = BTreeMap::new();
        let timeout = policy::launch_timeout(config, filtered.as_ref().unwrap_or(&empty))?;
        let backend =
            resolved.map_err(|unavailable| ManagerError::Unsupported(unavailable.to_string()))?;
        let mut env = compose(&EnvInputs {
            request: filtered.as_ref(),
            gateway: &config.gateway_env,
            policy: &config.env_policy,
            spec: &spec,
            kernel_id: &kernel_id,
            username: &username,
            impersonation_enabled: config.impersonation_enabled,
        });
        let capabilities = backend.capabilities();
        let remote = capabilities.host == KernelHost::Elsewhere;
        let run_as = if config.impersonation_enabled && capabilities.honours_run_as {
            identity::local_account(&username, &mut env)?
        } else {
            None
        };
        let mut plan = LaunchPlan {
            remote,
            run_as,
            backend,
            kernel_id: kernel_id.clone(),
            cwd: Some(policy::working_dir(
                &config.root_dir,
                request.path.as_deref(),
            )),
            port_range: spec.config.port_range.unwrap_or(config.port_range),
            spec,
            env,
            timeout,
            username,
            placement: profile
                .as_ref()
                .map(|p| p.placement.clone())
                .unwrap_or_default(),
            profile: profile.as_ref().map(|p| p.name.clone()),
        };
        let prelaunched = self.take_from_pool(&mut plan, asked_id).await;
        let kernel_id = plan.kernel_id.clone();
        // The store's reservation counts the kernels of every gateway sharing it.
        if let Some(persistence) = &self.persistence {
            persist::reserve(persistence, config, &plan).await?;
        }
        let (shared, events) = match self.reserve(&plan) {
            Ok(reserved) => reserved,
            Err(err) => {
                if let Some(inc) = prelaunched {
                    kernel::teardown(inc.process.as_ref(), Duration::from_secs(2), false).await;
                }
                if let Some(persistence) = &self.persistence
                    && !matches!(err, ManagerError::KernelExists(_))
                {
                    let _ = persistence.store.remove(&plan.kernel_id).await;
                }
                return Err(err);
            }
        };
        let (reply, started) = oneshot::channel();
        let mut supervisor = self.supervisor(shared, plan, events, self.persistence.clone());
        supervisor.inc = prelaunched;
        // The supervisor owns the launch, so a caller that goes away leaves no half-started kernel.
        self.tasks.spawn(supervisor.run(reply));
        let snapshot = started.await.map_err(|_| {
            ManagerError::Internal(format!("the start of kernel {kernel_id} was lost"))
        })??;
        self.start_culler();
        Ok(snapshot)
    }
    /// Registers a starting kernel: the id must be free and both limits must allow one more,
    /// checked and taken under one lock (starts in flight count).
    fn reserve(
        &self,
        plan: &LaunchPlan,
    ) -> Result<(Arc<KernelShared>, mpsc::UnboundedReceiver<KernelEvent>), ManagerError> {
        let mut table = self.table.lock();
        if table.kernels.contains_key(&plan.kernel_id) {
            return Err(ManagerError::KernelExists(plan.kernel_id.clone()));
        }
        let (total, of_user) = table.counts(&plan.username);
        policy::check_limits(&self.config, total, &plan.username, of_user)?;
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(KernelShared {
            id: plan.kernel_id.clone(),
            name: plan.spec.name.clone(),
            username: plan.username.clone(),
            backend: plan.backend.name().to_owned(),
            created: time::OffsetDateTime::now_utc(),
            profile: plan.profile.clone(),
            status: Mutex::new(Status {
                execution_state: "starting".to_owned(),
                last_activity: time::OffsetDateTime::now_utc(),
                last_activity_at: Instant::now(),
                connections: 0,
                reason: None,
                host: String::new(),
                restarts: 0,
            }),
            events: events_tx,
            shutdown_claimed: AtomicBool::new(false),
            started: AtomicBool::new(false),
            abort_start: self.cancel.child_token(),
        });
        table
            .kernels
            .insert(plan.kernel_id.clone(), Arc::clone(&shared));
        Ok((shared, events_rx))
    }
    /// Starts the culler once, when culling is configured.
    fn start_culler(&self) {
        if self.config.culling.idle_timeout.is_zero() {
            return;
        }
        self.culler_started.call_once(|| {
            let table = Arc::clone(&self.table);
            let config = Arc::clone(&self.config);
            let cancel = self.cancel.clone();
            self.tasks.spawn(cull_loop(table, config, cancel));
        });
    }
    fn lookup(&self, kernel_id: &str) -> Result<Arc<KernelShared>, ManagerError> {
        self.table
            .lock()
            .kernels
            .get(kernel_id)
            .cloned()
            .ok_or_else(|| ManagerError::NoSuchKernel(kernel_id.to_owned()))
    }
    /// A kernel of the table or, when another gateway sharing the store supervises it, adopted
    /// into the table (see [`KernelManager::find`] for a snapshot only).
    async fn reach(&self, kernel_id: &str) -> Result<Arc<KernelShared>, ManagerError> {
        match self.lookup(kernel_id) {
            Err(ManagerError::NoSuchKernel(_)) if self.persistence.is_some() => {
                self.adopt(kernel_id).await
            }
            found => found,
        }
    }
    /// One kernel; a start in flight answers with `execution_state: "starting"`.
    pub fn get(&self, kernel_id: &str) -> Result<KernelSnapshot, ManagerError> {
        self.lookup(kernel_id).map(|k| k.snapshot())
    }
    /// Kernels that finished starting (EG lists no starts in flight).
    pub fn list(&self) -> Vec<KernelSnapshot> {
        self.table
            .lock()
            .kernels
            .values()
            .filter(|k| k.is_started())
            .map(|k| k.snapshot())
            .collect()
    }
    /// Kernels started or starting, as limits count them.
    pub fn count(&self) -> usize {
        self.table.lock().kernels.len()
    }
    /// Sends an event that expects a reply; a vanished supervisor means the kernel is gone. An
    /// event for a starting kernel is handled once it started.
    async fn ask<T>(
        &self,
        kernel_id: &str,
        event: impl FnOnce(oneshot::Sender<T>) -> KernelEvent,
    ) -> Result<T, ManagerError> {
        let kernel = self.reach(kernel_id).await?;
        if kernel.shutdown_claimed.load(Ordering::SeqCst) {
            return Err(ManagerError::NoSuchKernel(kernel_id.to_owned()));
        }
        let (tx, rx) = oneshot::channel();
        kernel
            .events
            .send(event(tx))
            .map_err(|_| ManagerError::NoSuchKernel(kernel_id.to_owned()))?;
        rx.await
            .map_err(|_| ManagerError::NoSuchKernel(kernel_id.to_owned()))
    }
    /// Interrupts by signal or message as the kernelspec says.
    pub async fn interrupt(&self, kernel_id: &str) -> Result<(), ManagerError> {
        self.ask(kernel_id, |reply| KernelEvent::Interrupt { reply })
            .await?
    }
    /// Restarts (same ports for local kernels); concurrent restarts wait for the one in progress.
    ///
    /// Returns once the new kernel answered kernel_info; attached WebSockets stay open and are
    /// re-pointed at the new process.
    pub async fn restart(&self, kernel_id: &str) -> Result<KernelSnapshot, ManagerError> {
        let requested_at = Instant::now();
        self.ask(kernel_id, |reply| KernelEvent::Restart {
            requested_at,
            reply,
        })
        .await??;
        self.get(kernel_id)
    }
    /// Graceful shutdown: shutdown_request, wait, terminate, kill, cleanup. A starting kernel's
    /// launch is abandoned (its start answers with an error) and torn down.
    ///
    /// Of two concurrent shutdowns of one kernel, the second gets `NoSuchKernel`.
    pub async fn shutdown(&self, kernel_id: &str) -> Result<(), ManagerError> {
        let kernel = self.reach(kernel_id).await?;
        if kernel.shutdown_claimed.swap(true, Ordering::SeqCst) {
            return Err(ManagerError::NoSuchKernel(kernel_id.to_owned()));
        }
        // Another gateway's kernel: its lease first, so that gateway does not restart it.
        if let Err(err) = self.take_lease(kernel_id).await {
            kernel.shutdown_claimed.store(false, Ordering::SeqCst);
            return Err(err);
        }
        if !kernel.is_started() {
            tracing::info!(%kernel_id, "shutting down a kernel that is still starting");
            kernel.abort_start.cancel();
        }
        let (reply, done) = oneshot::channel();
        let event = KernelEvent::Shutdown {
            reason: ShutdownReason::Requested,
            reply,
        };
        if kernel.events.send(event).is_ok() {
            // An error means the supervisor ended on its own (the kernel died): it is gone either way.
            let _ = done.await;
        }
        let mut table = self.table.lock();
        if table
            .kernels
            .get(kernel_id)
            .is_some_and(|k| Arc::ptr_eq(k, &kernel))
        {
            table.kernels.remove(kernel_id);
        }
        Ok(())
    }
    /// Shuts every kernel down (or leaves them, per config); bounded in time.
    pub async fn shutdown_all(&self) {
        let kernels = self.table.lock().kernels.len();
        tracing::info!(
            kernels,
            shutdown = self.config.shutdown_kernels_on_exit,
            "stopping the kernel manager"
        );
        self.tasks.close();
        self.cancel.cancel();
        // Pool kernels are nobody's: they never outlive the gateway.
        pool::stop_now(self.pools.drain()).await;
        let bound = self.config.shutdown_wait_time + SHUTDOWN_ALL_SLACK;
        if tokio::time::timeout(bound, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                bound_secs = bound.as_secs_f64(),
                "some kernels did not stop in time"
            );
        }
        // Kernels left running may be taken over by another gateway at once.
        if let Some(persistence) = &self.persistence
            && !self.config.shutdown_kernels_on_exit
            && let Err(err) = persistence.store.release(&persistence.gateway_id).await
        {
            tracing::warn!(error = %err, "the leases of the kernels left running were not released");
        }
    }
    /// Registers a WebSocket client with a kernel's supervisor.
    pub(crate) async fn attach(
        &self,
        kernel_id: &str,
        session_id: &str,
        account: crate::budget::Account,
    ) -> Result<ClientLease, ManagerError> {
        let kernel = self.reach(kernel_id).await?;
        let session_id = session_id.to_owned();
        let attached = self
            .ask(kernel_id, |reply| KernelEvent::Attach {
                session_id,
                account,
                reply,
            })
            .await?;
        Ok(ClientLease {
            events: kernel.events.clone(),
            client_id: attached.client_id,
            attached,
            handover: None,
        })
    }
    /// The token cancelled when the gateway shuts down.
    pub(crate) fn cancelled(&self) -> &CancellationToken {
        &self.cancel
    }
}

impl Drop for KernelManager {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A WebSocket client's registration; detaches on drop.
#[derive(Debug)]
pub(crate) struct ClientLease {
    events: mpsc::UnboundedSender<KernelEvent>,
    client_id: u64,
    /// What the supervisor handed over.
    pub(crate) attached: Attached,
    /// What the connection left behind, returned to the supervisor on drop.
    handover: Option<Handover>,
}

impl ClientLease {
    /// Ends the registration with what the connection did not deliver (and its sockets): they go
    /// to the connection that replaced this one, else back to the supervisor.
    pub(crate) fn finish(mut self, mut handover: Handover) {
        handover.queue = Some(self.attached.queue.take());
        if let Some(successor) = self.attached.kick.successor() {
            match successor.send(handover) {
                Ok(()) => return,
                // The successor gave up waiting; the supervisor gets it (and discards it).
                Err(back) => handover = back,
            }
        }
        self.handover = Some(handover);
    }
}

impl Drop for ClientLease {
    fn drop(&mut self) {
        // The supervisor may be gone already; then there is nothing to detach from.
        let _ = self.events.send(KernelEvent::Detach {
            client_id: self.client_id,
            handover: self.handover.take(),
        });
    }
}

/// Every `interval`, asks each started kernel's supervisor to apply the culling rule (EG §9.5,
/// plus a separate timeout for busy kernels).
async fn cull_loop(
    table: Arc<Mutex<Table>>,
    config: Arc<GatewayConfig>,
    cancel: CancellationToken,
) {
    let period = if config.culling.interval.is_zero() {
        DEFAULT_CULL_INTERVAL
    } else {
        config.culling.interval
    };
    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let kernels: Vec<Arc<KernelShared>> = table.lock().kernels.values().cloned().collect();
                for kernel in kernels.iter().filter(|k| k.is_started()) {
                    // A supervisor that is gone has nothing left to cull.
                    let _ = kernel.events.send(KernelEvent::CullTick);
                }
            }
            () = cancel.cancelled() => return,
        }
    }
}
