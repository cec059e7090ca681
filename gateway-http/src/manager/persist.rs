//! The manager's side of the kernel store: what is written when, how a starting gateway
//! re-attaches to the kernels in the store, and the lease loop that keeps this gateway the
//! supervisor of its kernels and takes over those of a gateway that died.
//!
//! Writes: a start is *reserved* (one transaction that counts every gateway's kernels against
//! the limits and inserts a starting row), the row is completed once the kernel answered
//! `kernel_info` (before the start is answered) and rewritten after every restart; it is removed
//! when the kernel goes away. Activity and execution state are written in one batch per lease
//! renewal (every third of `lease_ttl`), never per message.
//!
//! Re-attach: each row whose lease is this gateway's or has expired is claimed (compare-and-set,
//! so of two gateways exactly one gets it), its backend rebuilds the process handle from the
//! stored `KernelRecord`, and the kernel must answer a heartbeat and `kernel_info`. It is then
//! supervised as if this gateway had started it: restarts, culling (from the stored last
//! activity), limits. A kernel that is gone is removed from the store with a log line saying why;
//! one that is found but does not answer is shut down.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::error::ManagerError;
use super::events::KernelEvent;
use super::hub::{BufferLimits, Hub};
use super::kernel::{self, Incarnation, KernelShared, LaunchPlan, ReattachError, Status};
use super::rules::RestartTracker;
use super::supervisor::Supervisor;
use super::{KernelManager, KernelSnapshot, identity, policy};
use crate::store::{Activity, KernelStore, Limits, Reservation, StoreError, StoredKernel};
use crate::{Fault, GatewayConfig};

/// How long a dead kernel's unresponsive process gets between SIGTERM and SIGKILL.
const UNRESPONSIVE_GRACE: Duration = Duration::from_secs(1);

/// Where the manager persists its kernels, and as which gateway.
#[derive(Debug, Clone)]
pub struct Persistence {
    /// The SQLite or PostgreSQL store; several gateways share one to serve the same kernels.
    pub store: Arc<dyn KernelStore>,
    /// This gateway's name in leases; a gateway restarted with the same name takes its kernels
    /// back at once, others wait until the leases expire.
    pub gateway_id: String,
    /// How long a lease holds without renewal: the bound on how long a dead gateway's kernels
    /// go unsupervised (renewed every third of it).
    pub lease_ttl: Duration,
}

/// A store failure as the API reports it: 503 with the store's text.
pub(crate) fn store_error(err: StoreError) -> ManagerError {
    crate::metrics::store_error("request");
    ManagerError::LaunchFailed {
        reason: err.to_string(),
        fault: Fault::Capacity,
    }
}

/// Reserves a start in the store: the id must be free and the limits must allow one more,
/// counting every gateway's kernels.
pub(super) async fn reserve(
    persistence: &Persistence,
    config: &GatewayConfig,
    plan: &LaunchPlan,
) -> Result<(), ManagerError> {
    let now = OffsetDateTime::now_utc();
    let row = StoredKernel {
        id: plan.kernel_id.clone(),
        kernelspec: plan.spec.name.clone(),
        username: plan.username.clone(),
        record: None,
        env: plan.env.clone(),
        cwd: plan.cwd.clone(),
        restart_count: 0,
        created: now,
        last_activity: now,
        execution_state: "starting".to_owned(),
        gateway: persistence.gateway_id.clone(),
        lease_until: now,
    };
    let limits = Limits {
        max_total: config.max_kernels,
        max_per_user: config.max_kernels_per_user,
    };
    match persistence
        .store
        .reserve(&row, limits, persistence.lease_ttl)
        .await
        .map_err(store_error)?
    {
        Reservation::Reserved => Ok(()),
        Reservation::Exists => Err(ManagerError::KernelExists(plan.kernel_id.clone())),
        Reservation::Full { total, of_user } => {
            policy::check_limits(config, total, &plan.username, of_user)?;
            // The store saw a limit the configuration does not have (another gateway's).
            Err(policy::total_limit_error(
                config.max_kernels.unwrap_or(total),
                total,
            ))
        }
    }
}

/// A supervisor's link to the store.
#[derive(Debug)]
pub(crate) struct Persisted {
    persistence: Arc<Persistence>,
    /// The row stays when the supervisor ends (the kernel is left running for a later gateway).
    keep: bool,
    /// Another gateway holds the lease: this supervisor only serves this gateway's clients
    /// (WebSockets, interrupts); it neither restarts, culls nor writes the kernel.
    follower: bool,
}

impl Persisted {
    pub(crate) fn new(persistence: &Arc<Persistence>) -> Persisted {
        Persisted {
            persistence: Arc::clone(persistence),
            keep: false,
            follower: false,
        }
    }

    fn follower(persistence: &Arc<Persistence>) -> Persisted {
        Persisted {
            persistence: Arc::clone(persistence),
            keep: true,
            follower: true,
        }
    }
}

/// A kernel as the store shows it, for a kernel another gateway supervises.
fn row_snapshot(row: &StoredKernel) -> KernelSnapshot {
    KernelSnapshot {
        id: row.id.clone(),
        name: row.kernelspec.clone(),
        last_activity: row.last_activity,
        execution_state: row.execution_state.clone(),
        connections: 0,
        reason: None,
        username: row.username.clone(),
        backend: row
            .record
            .as_ref()
            .map(|r| r.resource_manager.clone())
            .unwrap_or_default(),
        host: row
            .record
            .as_ref()
            .map(|r| r.connection.ip.clone())
            .unwrap_or_default(),
        restarts: row.restart_count,
        created: row.created,
        profile: row.env.get("KERNEL_PROFILE").cloned(),
    }
}

impl Supervisor {
    /// The kernel's row as it is now.
    fn stored(&self, persistence: &Persistence, inc: &Incarnation) -> StoredKernel {
        let status = self.shared.status();
        StoredKernel {
            id: self.shared.id.clone(),
            kernelspec: self.plan.spec.name.clone(),
            username: self.plan.username.clone(),
            record: Some(inc.process.record()),
            env: self.plan.env.clone(),
            cwd: self.plan.cwd.clone(),
            restart_count: status.restarts,
            created: self.shared.created,
            last_activity: status.last_activity,
            execution_state: status.execution_state.clone(),
            gateway: persistence.gateway_id.clone(),
            lease_until: OffsetDateTime::now_utc(),
        }
    }

    /// Whether another gateway supervises this kernel (this one only serves its clients).
    pub(super) fn is_follower(&self) -> bool {
        self.persisted.as_ref().is_some_and(|p| p.follower)
    }

    /// Whether this supervisor may still act on the kernel's process (restart it after an
    /// exit): not when it follows, nor when the store says another gateway took the lease or the
    /// row is gone (the kernel was restarted or shut down through another gateway). A store that
    /// does not answer leaves the decision with this supervisor.
    pub(super) async fn still_holder(&self) -> bool {
        let Some(persisted) = &self.persisted else {
            return true;
        };
        if persisted.follower {
            return false;
        }
        let p = &persisted.persistence;
        match p.store.get(&self.shared.id).await {
            Ok(Some(row)) => row.gateway == p.gateway_id,
            Ok(None) => false,
            Err(err) => {
                tracing::warn!(kernel_id = %self.shared.id, error = %err, "cannot check the kernel's lease; acting as its supervisor");
                true
            }
        }
    }

    /// Makes this gateway the kernel's supervisor, taking the lease from whoever holds it, before
    /// a restart or shutdown asked of this gateway; the previous holder lets go of it.
    pub(super) async fn become_holder(&mut self) -> Result<(), ManagerError> {
        let Some(persisted) = self.persisted.as_mut() else {
            return Ok(());
        };
        if !persisted.follower {
            return Ok(());
        }
        let p = Arc::clone(&persisted.persistence);
        match p
            .store
            .take(&self.shared.id, &p.gateway_id, p.lease_ttl)
            .await
        {
            Ok(true) => {}
            Ok(false) => return Err(ManagerError::NoSuchKernel(self.shared.id.clone())),
            Err(err) => return Err(store_error(err)),
        }
        persisted.follower = false;
        persisted.keep = false;
        tracing::info!(kernel_id = %self.shared.id, "this gateway supervises the kernel now (asked to restart or shut it down)");
        Ok(())
    }

    /// A follower's claim on an expired lease succeeded: it supervises the kernel from now on.
    pub(super) async fn lease_gained(&mut self) {
        let Some(persisted) = self.persisted.as_mut() else {
            return;
        };
        if persisted.follower {
            persisted.follower = false;
            persisted.keep = false;
            tracing::info!(kernel_id = %self.shared.id, "took over the kernel of a gateway that stopped renewing its lease");
            self.persist().await;
        }
    }

    /// Writes the kernel's row after a launch, a restart or a re-attach. A failure is logged:
    /// the kernel keeps working, it just could not be re-attached after a gateway restart.
    pub(super) async fn persist(&self) {
        let (Some(persisted), Some(inc)) = (&self.persisted, &self.inc) else {
            return;
        };
        if persisted.follower {
            return;
        }
        let row = self.stored(&persisted.persistence, inc);
        match persisted.persistence.store.save(&row).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(kernel_id = %self.shared.id, "the kernel's row is gone from the store or another gateway holds it");
            }
            Err(err) => {
                crate::metrics::store_error("save");
                tracing::warn!(kernel_id = %self.shared.id, error = %err, "the kernel's record was not written; it cannot be re-attached after a gateway restart");
            }
        }
    }

    /// The kernel is left running for a later gateway: its row stays.
    pub(super) fn keep_record(&mut self) {
        if let Some(persisted) = self.persisted.as_mut() {
            persisted.keep = true;
        }
    }

    /// Removes the kernel's row (the kernel is gone), unless it was left running.
    pub(super) async fn forget(&self) {
        let Some(persisted) = &self.persisted else {
            return;
        };
        if persisted.keep {
            return;
        }
        if let Err(err) = persisted.persistence.store.remove(&self.shared.id).await {
            tracing::warn!(kernel_id = %self.shared.id, error = %err, "the kernel's row could not be removed from the store");
        }
    }

    /// Supervises a re-attached incarnation.
    pub(super) async fn run_reattached(mut self, inc: Incarnation) {
        self.set_incarnation(inc);
        self.shared.started.store(true, Ordering::SeqCst);
        self.persist().await;
        self.supervise().await;
    }
}

impl KernelManager {
    /// Re-attaches to the kernels in the store that are this gateway's or whose lease expired,
    /// then starts the lease loop (renewal, activity, taking over the kernels of dead gateways).
    /// Returns the number of kernels re-attached. Without a store this does nothing.
    ///
    /// Call it once, before serving: kernels still being re-attached would be missing from lists.
    pub async fn recover(self: &Arc<KernelManager>) -> usize {
        let Some(persistence) = self.persistence.clone() else {
            return 0;
        };
        let rows = match persistence.store.load().await {
            Ok(rows) => rows,
            Err(err) => {
                tracing::error!(error = %err, "cannot read the kernel store; no kernel was re-attached (the lease loop tries again)");
                Vec::new()
            }
        };
        let attached = self.take_over_all(&persistence, rows, true).await;
        if attached > 0 {
            tracing::info!(kernels = attached, store = %persistence.store.describe(), "kernels re-attached from the store");
        }
        self.start_culler();
        self.tasks.spawn(lease_loop(
            Arc::downgrade(self),
            persistence,
            self.cancel.clone(),
        ));
        attached
    }

    /// Takes over every row whose lease expired, and with `ours` those leased to this gateway's
    /// name (at start-up: they are the kernels of this gateway's previous life; later a row of
    /// this gateway missing from the table is one being removed).
    async fn take_over_all(
        self: &Arc<KernelManager>,
        persistence: &Arc<Persistence>,
        rows: Vec<StoredKernel>,
        ours: bool,
    ) -> usize {
        let now = OffsetDateTime::now_utc();
        let mut tasks = tokio::task::JoinSet::new();
        for row in rows {
            let mine = row.gateway == persistence.gateway_id;
            let wanted = if mine { ours } else { row.lease_until < now };
            if !wanted {
                continue;
            }
            let local = self.table.lock().kernels.get(&row.id).cloned();
            if let Some(kernel) = local {
                // A follower here: claim the lease and let it supervise.
                if !mine {
                    let persistence = Arc::clone(persistence);
                    tasks.spawn(async move {
                        let claimed = persistence
                            .store
                            .claim(&kernel.id, &persistence.gateway_id, persistence.lease_ttl)
                            .await
                            .unwrap_or(false);
                        claimed && kernel.events.send(KernelEvent::LeaseGained).is_ok()
                    });
                }
                continue;
            }
            let manager = Arc::clone(self);
            let persistence = Arc::clone(persistence);
            tasks.spawn(async move { manager.take_over(&persistence, row).await });
        }
        let mut attached = 0;
        while let Some(done) = tasks.join_next().await {
            if matches!(done, Ok(true)) {
                attached += 1;
            }
        }
        attached
    }

    /// Claims one row and re-attaches its kernel; `true` when it is supervised here now.
    async fn take_over(
        self: &Arc<KernelManager>,
        persistence: &Persistence,
        row: StoredKernel,
    ) -> bool {
        let id = row.id.clone();
        let store = &persistence.store;
        match store
            .claim(&id, &persistence.gateway_id, persistence.lease_ttl)
            .await
        {
            Ok(true) => {}
            Ok(false) => return false,
            Err(err) => {
                tracing::warn!(kernel_id = %id, error = %err, "cannot claim the kernel's lease");
                return false;
            }
        }
        let forget = |why: String| async move {
            tracing::warn!(kernel_id = %id, "removing the kernel from the store: {why}");
            if let Err(err) = store.remove(&id).await {
                tracing::warn!(kernel_id = %id, error = %err, "the kernel's row could not be removed");
            }
            false
        };
        let Some(record) = row.record.clone() else {
            return forget(
                "its start never finished (the gateway starting it went away)".to_owned(),
            )
            .await;
        };
        let plan = match self.plan_for(&row, &record) {
            Ok(plan) => plan,
            Err(why) => return forget(format!("it cannot be re-attached: {why}")).await,
        };
        let Some((shared, events)) = self.register_stored(&row, &plan) else {
            return false;
        };
        let deadline = Instant::now() + self.config.launch_timeout;
        let observed = Arc::clone(&shared);
        // Only the state: re-attaching is not activity, so culling measures from the stored time.
        let mut observe = move |item: jupyter_protocol::IopubItem| {
            if let Some(state) = item.checked().and_then(kernel::execution_state_of) {
                observed.set_state(&state);
            }
        };
        match kernel::reattach(&plan, &record, deadline, &mut observe).await {
            Ok(inc) => {
                tracing::info!(kernel_id = %row.id, kernelspec = %row.kernelspec, user = %row.username,
                    from = %row.gateway, "re-attached kernel");
                // Listed from now on: the gateway may start serving before the task first runs.
                shared.started.store(true, Ordering::SeqCst);
                let supervisor =
                    self.supervisor(shared, plan, events, Some(Arc::new(persistence.clone())));
                self.tasks.spawn(supervisor.run_reattached(inc));
                true
            }
            Err(ReattachError::Gone(why)) => {
                self.unregister(&shared);
                forget(format!("it is gone ({why})")).await
            }
            Err(ReattachError::Unresponsive { why, process }) => {
                kernel::teardown(process.as_ref(), UNRESPONSIVE_GRACE, false).await;
                self.unregister(&shared);
                forget(format!("it was found but {why}; it was shut down")).await
            }
        }
    }

    /// One kernel, from this gateway's table or, for a kernel another gateway supervises, from
    /// the store.
    pub async fn find(&self, kernel_id: &str) -> Result<KernelSnapshot, ManagerError> {
        match self.get(kernel_id) {
            Err(ManagerError::NoSuchKernel(_)) => {}
            found => return found,
        }
        let Some(persistence) = &self.persistence else {
            return Err(ManagerError::NoSuchKernel(kernel_id.to_owned()));
        };
        match persistence.store.get(kernel_id).await {
            Ok(Some(row)) if row.record.is_some() && row.gateway != persistence.gateway_id => {
                Ok(row_snapshot(&row))
            }
            _ => Err(ManagerError::NoSuchKernel(kernel_id.to_owned())),
        }
    }

    /// Every started kernel: this gateway's and, from the store, those other gateways supervise
    /// (the same list from every gateway). A store that does not answer leaves this gateway's.
    pub async fn list_all(&self) -> Vec<KernelSnapshot> {
        let mut kernels = self.list();
        let Some(persistence) = &self.persistence else {
            return kernels;
        };
        match persistence.store.load().await {
            Ok(rows) => {
                let local: std::collections::HashSet<String> =
                    self.table.lock().kernels.keys().cloned().collect();
                kernels.extend(
                    rows.iter()
                        .filter(|row| {
                            row.record.is_some()
                                && row.gateway != persistence.gateway_id
                                && !local.contains(&row.id)
                        })
                        .map(row_snapshot),
                );
            }
            Err(err) => {
                tracing::warn!(error = %err, "listing only this gateway's kernels: the store does not answer");
            }
        }
        kernels
    }

    /// A kernel another gateway supervises, made reachable here: its backend handle is rebuilt
    /// from the stored record and a follower supervisor connects to its channels, serving this
    /// gateway's clients. Unknown ids (and starts still in flight elsewhere) are `NoSuchKernel`.
    pub(super) async fn adopt(&self, kernel_id: &str) -> Result<Arc<KernelShared>, ManagerError> {
        let unknown = || ManagerError::NoSuchKernel(kernel_id.to_owned());
        let Some(persistence) = &self.persistence else {
            return Err(unknown());
        };
        let row = match persistence.store.get(kernel_id).await {
            Ok(Some(row)) => row,
            Ok(None) => return Err(unknown()),
            Err(err) => return Err(store_error(err)),
        };
        // This gateway's own row missing from its table is a kernel being removed.
        let Some(record) = row
            .record
            .clone()
            .filter(|_| row.gateway != persistence.gateway_id)
        else {
            return Err(unknown());
        };
        let unreachable = |why: String| ManagerError::LaunchFailed {
            reason: format!(
                "kernel {kernel_id} is supervised by gateway {} and cannot be reached from this one: {why}",
                row.gateway
            ),
            fault: Fault::Kernel,
        };
        let plan = self.plan_for(&row, &record).map_err(unreachable)?;
        let Some((shared, events)) = self.register_stored(&row, &plan) else {
            // Adopted meanwhile by another request.
            return self.lookup(kernel_id);
        };
        let observed = Arc::clone(&shared);
        let mut observe = move |item: jupyter_protocol::IopubItem| {
            if let Some(state) = item.checked().and_then(kernel::execution_state_of) {
                observed.set_state(&state);
            }
        };
        let deadline = Instant::now() + self.config.launch_timeout;
        match kernel::reattach(&plan, &record, deadline, &mut observe).await {
            Ok(inc) => {
                tracing::info!(kernel_id, supervisor = %row.gateway, "serving a kernel another gateway supervises");
                let mut supervisor = self.supervisor(Arc::clone(&shared), plan, events, None);
                supervisor.persisted = Some(Persisted::follower(persistence));
                self.tasks.spawn(supervisor.run_reattached(inc));
                Ok(shared)
            }
            Err(err) => {
                self.unregister(&shared);
                match err {
                    ReattachError::Gone(_) => Err(unknown()),
                    ReattachError::Unresponsive { why, process } => {
                        // Not this gateway's to stop: only the handle is dropped.
                        process.detach();
                        Err(unreachable(why))
                    }
                }
            }
        }
    }

    /// Takes the lease of a kernel another gateway supervises (before shutting it down from
    /// here). A store that does not answer is logged and does not stop the shutdown.
    pub(super) async fn take_lease(&self, kernel_id: &str) -> Result<(), ManagerError> {
        let Some(p) = &self.persistence else {
            return Ok(());
        };
        match p.store.get(kernel_id).await {
            Ok(Some(row)) if row.gateway != p.gateway_id => {
                p.store
                    .take(kernel_id, &p.gateway_id, p.lease_ttl)
                    .await
                    .map_err(store_error)?;
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(err) => {
                tracing::warn!(kernel_id, error = %err, "shutting a kernel down without checking its lease: the store does not answer");
                Ok(())
            }
        }
    }

    /// The launch plan of a stored kernel, as its start composed it.
    fn plan_for(
        &self,
        row: &StoredKernel,
        record: &resource_managers::KernelRecord,
    ) -> Result<LaunchPlan, String> {
        let backend = self.registry.get(&record.resource_manager).ok_or_else(|| {
            format!(
                "its resource manager {:?} is not run by this gateway",
                record.resource_manager
            )
        })?;
        let spec = self
            .kernelspecs()
            .get(&row.kernelspec)
            .cloned()
            .ok_or_else(|| format!("its kernelspec {:?} no longer exists", row.kernelspec))?;
        if let Err(unclaimed @ resource_managers::Unavailable::Unclaimed { .. }) =
            self.registry.resolve(&spec)
        {
            return Err(unclaimed.to_string());
        }
        let capabilities = backend.capabilities();
        let remote = capabilities.host == resource_managers::KernelHost::Elsewhere;
        let mut env = row.env.clone();
        let run_as = if self.config.impersonation_enabled && capabilities.honours_run_as {
            identity::local_account(&row.username, &mut env).map_err(|e| e.to_string())?
        } else {
            None
        };
        Ok(LaunchPlan {
            remote,
            run_as,
            backend,
            kernel_id: row.id.clone(),
            cwd: row.cwd.clone(),
            port_range: spec.config.port_range.unwrap_or(self.config.port_range),
            spec,
            env: row.env.clone(),
            timeout: self.config.launch_timeout,
            username: row.username.clone(),
            // The profile's name is in the kernel's env; its settings are today's.
            placement: row
                .env
                .get("KERNEL_PROFILE")
                .and_then(|name| self.profile_set().get(name).map(|p| p.placement.clone()))
                .unwrap_or_default(),
            profile: row.env.get("KERNEL_PROFILE").cloned(),
        })
    }

    /// Enters a stored kernel in the table (as a start in flight until re-attached); `None` when
    /// the id is taken.
    fn register_stored(
        &self,
        row: &StoredKernel,
        plan: &LaunchPlan,
    ) -> Option<(Arc<KernelShared>, mpsc::UnboundedReceiver<KernelEvent>)> {
        let mut table = self.table.lock();
        if table.kernels.contains_key(&row.id) {
            return None;
        }
        let idle = (OffsetDateTime::now_utc() - row.last_activity)
            .try_into()
            .unwrap_or(Duration::ZERO);
        let now = Instant::now();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(KernelShared {
            id: row.id.clone(),
            name: row.kernelspec.clone(),
            username: row.username.clone(),
            backend: plan.backend.name().to_owned(),
            created: row.created,
            profile: plan.profile.clone(),
            status: Mutex::new(Status {
                execution_state: row.execution_state.clone(),
                last_activity: row.last_activity,
                last_activity_at: now.checked_sub(idle).unwrap_or(now),
                connections: 0,
                reason: None,
                host: row
                    .record
                    .as_ref()
                    .map(|r| r.connection.ip.clone())
                    .unwrap_or_default(),
                restarts: row.restart_count,
            }),
            events: events_tx,
            shutdown_claimed: AtomicBool::new(false),
            started: AtomicBool::new(false),
            abort_start: self.cancel.child_token(),
        });
        table.kernels.insert(row.id.clone(), Arc::clone(&shared));
        Some((shared, events_rx))
    }

    fn unregister(&self, shared: &Arc<KernelShared>) {
        let mut table = self.table.lock();
        if table
            .kernels
            .get(&shared.id)
            .is_some_and(|k| Arc::ptr_eq(k, shared))
        {
            table.kernels.remove(&shared.id);
        }
    }

    /// A supervisor for a kernel entered in the table.
    pub(super) fn supervisor(
        &self,
        shared: Arc<KernelShared>,
        plan: LaunchPlan,
        events: mpsc::UnboundedReceiver<KernelEvent>,
        persistence: Option<Arc<Persistence>>,
    ) -> Supervisor {
        let config = &self.config;
        Supervisor {
            hub: Hub::new(
                shared.id.clone(),
                BufferLimits {
                    max_messages: config.buffer_max_messages,
                    max_bytes: config.buffer_max_bytes,
                    ttl: config.buffer_ttl,
                },
            ),
            shared,
            plan,
            config: Arc::clone(&self.config),
            table: Arc::clone(&self.table),
            cancel: self.cancel.clone(),
            events,
            inc: None,
            generation: 0,
            watchers: Vec::new(),
            last_restart: None,
            restarts: RestartTracker::new(config.restart_limit),
            persisted: persistence.as_ref().map(Persisted::new),
        }
    }
}

/// Every third of the lease time: renew this gateway's leases, write the activity that changed,
/// tell supervisors whose lease another gateway took, and take over expired leases.
async fn lease_loop(
    manager: Weak<KernelManager>,
    persistence: Arc<Persistence>,
    cancel: CancellationToken,
) {
    let period = (persistence.lease_ttl / 3).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut written: HashMap<String, (OffsetDateTime, String)> = HashMap::new();
    let mut down = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cancel.cancelled() => return,
        }
        let Some(manager) = manager.upgrade() else {
            return;
        };
        match lease_round(&manager, &persistence, &mut written).await {
            Ok(()) if down => {
                down = false;
                tracing::info!(store = %persistence.store.describe(), "the kernel store answers again");
            }
            Ok(()) => {}
            Err(err) if !down => {
                crate::metrics::store_error("lease");
                down = true;
                tracing::warn!(error = %err, "the kernel store is unavailable; running kernels keep working, starts are refused until it is back");
            }
            Err(_) => {}
        }
    }
}

async fn lease_round(
    manager: &Arc<KernelManager>,
    persistence: &Arc<Persistence>,
    written: &mut HashMap<String, (OffsetDateTime, String)>,
) -> Result<(), StoreError> {
    let store = &persistence.store;
    let held = store
        .renew(&persistence.gateway_id, persistence.lease_ttl)
        .await?;
    let kernels: Vec<Arc<KernelShared>> = manager
        .table
        .lock()
        .kernels
        .values()
        .filter(|k| k.is_started())
        .cloned()
        .collect();
    let held: std::collections::HashSet<String> = held.into_iter().collect();
    let mut activity = Vec::new();
    for kernel in &kernels {
        if !held.contains(&kernel.id) {
            // Another gateway took it over (this one could not renew in time), or it was
            // removed: this gateway stops supervising it without touching the process.
            let _ = kernel.events.send(KernelEvent::LeaseLost);
            continue;
        }
        let status = kernel.status();
        let now = (status.last_activity, status.execution_state.clone());
        if written.get(&kernel.id) != Some(&now) {
            activity.push(Activity {
                id: kernel.id.clone(),
                last_activity: now.0,
                execution_state: now.1.clone(),
            });
            written.insert(kernel.id.clone(), now);
        }
    }
    written.retain(|id, _| held.contains(id));
    store.touch(&persistence.gateway_id, &activity).await?;
    let rows = store.load().await?;
    let rows = forget_stale(manager, persistence, rows).await;
    manager.take_over_all(persistence, rows, false).await;
    Ok(())
}

/// Removes this gateway's rows that no kernel of its table stands for: a start whose caller went
/// away while it was being reserved (older than the longest launch), or a kernel whose removal
/// could not be written while the store was down. Returns the other rows.
async fn forget_stale(
    manager: &KernelManager,
    persistence: &Persistence,
    rows: Vec<StoredKernel>,
) -> Vec<StoredKernel> {
    let oldest_start = OffsetDateTime::now_utc() - manager.config.max_launch_timeout;
    let mut kept = Vec::with_capacity(rows.len());
    for row in rows {
        let stale = row.gateway == persistence.gateway_id
            && !manager.table.lock().kernels.contains_key(&row.id)
            && (row.record.is_some() || row.created < oldest_start);
        if !stale {
            kept.push(row);
            continue;
        }
        tracing::info!(kernel_id = %row.id, "removing a row of this gateway that no kernel stands for");
        if let Err(err) = persistence.store.remove(&row.id).await {
            tracing::warn!(kernel_id = %row.id, error = %err, "the row could not be removed");
        }
    }
    kept
}
