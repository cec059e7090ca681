//! Warm pools: kernels started ahead of demand, per kernelspec and profile, handed out whole on a
//! start request while a replacement starts in the background.
//!
//! A pooled kernel is a launched, ready [`Incarnation`] (it answered `kernel_info`) that no
//! supervisor owns yet and that is not in the manager's table: nobody can reach it through the
//! API, so nothing can interrupt, restart or cull it while it waits. A hit takes it out of the
//! pool for good and gives it to a new supervisor as its first incarnation; it never comes back,
//! whatever happens to it afterwards. A pooled kernel that died, or that waited as long as the
//! culler's idle timeout (the culler would take it), is stopped and replaced, never served.
//!
//! What a pool can honestly do about users: pool kernels run as the gateway's own account and
//! are launched with the environment a start of their kernelspec and profile gets, composed for
//! the gateway's user. A start is served from the pool only when the environment it would get
//! differs from the pooled kernel's in [`PATCHABLE`] variables alone (`KERNEL_USERNAME`,
//! `KERNEL_ID`, `KERNEL_LAUNCH_TIMEOUT`); those are set in the kernel's own `os.environ` by a
//! silent execute before the kernel is handed out, so its environment is the user's. Hence pools
//! exist only for Python kernels and only without impersonation (a kernel started as one OS
//! account, or with `--proxy-user`, can never become another user's); a pool configured
//! otherwise is disabled with one log line. Any other difference (a `KERNEL_ID`, a working
//! directory, a `KERNEL_*` variable the client set) makes the start a cold one (a miss).
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use jupyter_protocol::{Channel, Header, Message};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;

use super::KernelManager;
use super::hub::GATEWAY_USERNAME;
use super::kernel::{Incarnation, LaunchPlan, msg_type, teardown};
use crate::profiles::PoolSize;

/// Variables in which a request's environment may differ from a pooled kernel's; they are set
/// in the kernel before it is handed out.
pub(crate) const PATCHABLE: [&str; 3] = ["KERNEL_USERNAME", "KERNEL_ID", "KERNEL_LAUNCH_TIMEOUT"];

/// How often pools are checked for dead or stale kernels besides being woken.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long a pool waits after a failed launch before it tries again.
const RETRY_PAUSE: Duration = Duration::from_secs(5);
/// How long the silent execute that sets the user's variables may take.
const PATCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Grace period when a pooled kernel is stopped.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// A pool's key: kernelspec and profile (empty: none).
pub(crate) type PoolKey = (String, String);

/// A ready kernel waiting in a pool.
#[derive(Debug)]
pub(crate) struct Pooled {
    /// The plan it was launched with (the pool's).
    pub(crate) plan: LaunchPlan,
    /// Its process and the gateway's sockets to it.
    pub(crate) inc: Incarnation,
    /// Set when its process ended while it waited.
    dead: Arc<AtomicBool>,
    /// The task that sets `dead`.
    watcher: AbortHandle,
}

impl Pooled {
    fn new(plan: LaunchPlan, inc: Incarnation, wake: Arc<Notify>) -> Pooled {
        let dead = Arc::new(AtomicBool::new(false));
        let process = Arc::clone(&inc.process);
        let flag = Arc::clone(&dead);
        let watcher = tokio::spawn(async move {
            process.wait().await;
            flag.store(true, Ordering::SeqCst);
            wake.notify_one();
        })
        .abort_handle();
        Pooled {
            plan,
            inc,
            dead,
            watcher,
        }
    }

    /// Whether its process is still there.
    pub(crate) fn alive(&self) -> bool {
        !self.dead.load(Ordering::SeqCst)
    }

    /// Leaves the pool: the process is someone else's to watch now.
    pub(crate) fn into_parts(self) -> (LaunchPlan, Incarnation) {
        self.watcher.abort();
        (self.plan, self.inc)
    }
}

#[derive(Debug, Default)]
struct PoolState {
    size: usize,
    ready: VecDeque<Pooled>,
    launching: usize,
    /// Why the pool starts nothing, logged once.
    disabled: Option<String>,
}

/// Every pool of a manager.
#[derive(Debug, Default)]
pub(crate) struct Pools {
    state: Mutex<BTreeMap<PoolKey, PoolState>>,
    wake: Arc<Notify>,
    started: AtomicBool,
}

/// What `GET`-style introspection shows of one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolInfo {
    /// The kernelspec the pool's kernels are started from.
    pub kernelspec: String,
    /// The profile they are started under (empty: none); only a start asking for this
    /// kernelspec and this profile can be served from the pool.
    pub profile: String,
    /// How many ready kernels the pool keeps.
    pub size: usize,
    /// Ids of the ready kernels, oldest first.
    pub ready: Vec<String>,
    /// Why the pool is disabled, if it is.
    pub disabled: Option<String>,
}

impl Pools {
    /// Applies new sizes: new pools are created, removed ones emptied (their kernels stopped),
    /// others resized. Returns the kernels to stop.
    pub(crate) fn resize(&self, sizes: &[PoolSize]) -> Vec<Pooled> {
        let mut state = self.state.lock();
        let wanted: BTreeMap<PoolKey, usize> = sizes
            .iter()
            .map(|p| {
                (
                    (p.kernelspec.clone(), p.profile.clone().unwrap_or_default()),
                    p.size,
                )
            })
            .collect();
        let mut surplus = Vec::new();
        state.retain(|key, pool| {
            if wanted.contains_key(key) {
                return true;
            }
            surplus.extend(pool.ready.drain(..));
            false
        });
        for (key, size) in wanted {
            let pool = state.entry(key).or_default();
            pool.size = size;
            pool.disabled = None;
            while pool.ready.len() > size {
                surplus.extend(pool.ready.pop_back());
            }
        }
        drop(state);
        self.wake.notify_one();
        surplus
    }

    /// Whether a pool exists for `key`.
    pub(crate) fn has(&self, key: &PoolKey) -> bool {
        self.state.lock().get(key).is_some_and(|p| p.size > 0)
    }

    /// Takes the oldest ready kernel of `key` that `fits`; wakes the filler.
    pub(crate) fn take(&self, key: &PoolKey, fits: impl Fn(&Pooled) -> bool) -> Option<Pooled> {
        let mut state = self.state.lock();
        let pool = state.get_mut(key)?;
        let index = pool.ready.iter().position(|p| p.alive() && fits(p))?;
        let taken = pool.ready.remove(index);
        let ready = pool.ready.len();
        drop(state);
        crate::metrics::pool_size(&key.0, &key.1, ready);
        self.wake.notify_one();
        taken
    }

    /// Every pool, for tests and operators.
    pub(crate) fn info(&self) -> Vec<PoolInfo> {
        self.state
            .lock()
            .iter()
            .map(|((kernelspec, profile), pool)| PoolInfo {
                kernelspec: kernelspec.clone(),
                profile: profile.clone(),
                size: pool.size,
                ready: pool
                    .ready
                    .iter()
                    .map(|p| p.plan.kernel_id.clone())
                    .collect(),
                disabled: pool.disabled.clone(),
            })
            .collect()
    }

    /// Empties every pool (gateway exit).
    pub(crate) fn drain(&self) -> Vec<Pooled> {
        let mut state = self.state.lock();
        state
            .values_mut()
            .flat_map(|pool| pool.ready.drain(..).collect::<Vec<_>>())
            .collect()
    }

    /// Starts the filler task once.
    pub(crate) fn start_filler(
        &self,
        manager: Weak<KernelManager>,
        tasks: &tokio_util::task::TaskTracker,
        cancel: CancellationToken,
    ) {
        if !self.started.swap(true, Ordering::SeqCst) {
            tasks.spawn(fill_loop(manager, cancel));
        }
    }
}

/// Stops pooled kernels in the background.
pub(crate) fn stop_all(kernels: Vec<Pooled>) {
    for pooled in kernels {
        let (_, inc) = pooled.into_parts();
        tokio::spawn(async move {
            teardown(inc.process.as_ref(), STOP_GRACE, false).await;
        });
    }
}

/// Stops pooled kernels and waits until they are gone.
pub(crate) async fn stop_now(kernels: Vec<Pooled>) {
    let mut stopping = tokio::task::JoinSet::new();
    for pooled in kernels {
        let (_, inc) = pooled.into_parts();
        stopping.spawn(async move {
            teardown(inc.process.as_ref(), STOP_GRACE, false).await;
        });
    }
    while stopping.join_next().await.is_some() {}
}

/// Keeps every pool at its size: replaces dead and stale kernels, launches what is missing.
async fn fill_loop(manager: Weak<KernelManager>, cancel: CancellationToken) {
    loop {
        let Some(me) = manager.upgrade() else {
            return;
        };
        me.tend_pools().await;
        let wake = me.pools_wake();
        drop(me);
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(CHECK_EVERY) => {}
            () = cancel.cancelled() => return,
        }
    }
}

impl KernelManager {
    fn pools_wake(&self) -> Arc<Notify> {
        Arc::clone(&self.pools.wake)
    }

    /// One round of pool care.
    async fn tend_pools(&self) {
        let idle_limit = self.config.culling.idle_timeout;
        let mut stale = Vec::new();
        let mut wanted: Vec<PoolKey> = Vec::new();
        {
            let mut state = self.pools.state.lock();
            for (key, pool) in state.iter_mut() {
                let mut kept = VecDeque::new();
                for pooled in pool.ready.drain(..) {
                    let dead = !pooled.alive();
                    let old = !idle_limit.is_zero() && pooled.inc.ready_at.elapsed() >= idle_limit;
                    if dead || old {
                        tracing::info!(kernel_id = %pooled.plan.kernel_id, kernelspec = %key.0, profile = %key.1,
                            reason = if dead { "it exited" } else { "the culler would take it" },
                            "replacing a pool kernel");
                        stale.push(pooled);
                    } else {
                        kept.push_back(pooled);
                    }
                }
                pool.ready = kept;
                crate::metrics::pool_size(&key.0, &key.1, pool.ready.len());
                if pool.disabled.is_some() {
                    continue;
                }
                let missing = pool.size.saturating_sub(pool.ready.len() + pool.launching);
                for _ in 0..missing {
                    pool.launching += 1;
                    wanted.push(key.clone());
                }
            }
        }
        stop_all(stale);
        for key in wanted {
            match self.pool_plan(&key.0, &key.1) {
                Ok(plan) => {
                    let me = self.me.clone();
                    self.tasks.spawn(async move {
                        launch_into_pool(me, key, plan).await;
                    });
                }
                Err(why) => {
                    let mut state = self.pools.state.lock();
                    if let Some(pool) = state.get_mut(&key) {
                        pool.launching = pool.launching.saturating_sub(1);
                        if pool.disabled.is_none() {
                            tracing::warn!(kernelspec = %key.0, profile = %key.1, reason = %why, "warm pool disabled");
                            pool.disabled = Some(why);
                        }
                    }
                }
            }
        }
    }

    /// The plan of a new kernel for the pool of `kernelspec` under `profile` (empty: none), or
    /// why this pool cannot honestly exist.
    fn pool_plan(&self, kernelspec: &str, profile: &str) -> Result<LaunchPlan, String> {
        let config = &self.config;
        if config.impersonation_enabled {
            return Err("kernels run as their users (impersonation), and a kernel started as one account can never become another user's".to_owned());
        }
        let specs = self.kernelspecs();
        let spec = specs
            .get(kernelspec)
            .cloned()
            .ok_or_else(|| format!("there is no kernelspec {kernelspec:?}"))?;
        if !spec.language.eq_ignore_ascii_case("python") {
            return Err(format!(
                "its kernels are {:?}; only a Python kernel can take its user's environment after it started",
                spec.language
            ));
        }
        let backend = self
            .registry
            .resolve(&spec)
            .map_err(|unavailable| match unavailable {
                resource_managers::Unavailable::NotRegistered { backend, .. } => {
                    format!("the resource manager {backend:?} is not run here")
                }
                unclaimed => unclaimed.to_string(),
            })?;
        let set = self.profile_set();
        let profile = if profile.is_empty() {
            None
        } else {
            let found = set
                .get(profile)
                .ok_or_else(|| format!("there is no profile {profile:?}"))?;
            if !found.fits(kernelspec) {
                return Err(format!("the profile {profile:?} does not apply to it"));
            }
            Some(found.clone())
        };
        let mut request: BTreeMap<String, String> =
            profile.as_ref().map(|p| p.kernel_env()).unwrap_or_default();
        request.insert("KERNEL_USERNAME".to_owned(), config.gateway_user.clone());
        let kernel_id = uuid::Uuid::new_v4().to_string();
        let env = kernel_launcher::env::compose(&kernel_launcher::env::EnvInputs {
            request: Some(&request),
            gateway: &config.gateway_env,
            policy: &config.env_policy,
            spec: &spec,
            kernel_id: &kernel_id,
            username: &config.gateway_user,
            impersonation_enabled: false,
        });
        Ok(LaunchPlan {
            remote: backend.capabilities().host == resource_managers::KernelHost::Elsewhere,
            run_as: None,
            backend,
            kernel_id,
            cwd: Some(super::policy::working_dir(&config.root_dir, None)),
            port_range: spec.config.port_range.unwrap_or(config.port_range),
            spec,
            env,
            timeout: config.launch_timeout,
            username: config.gateway_user.clone(),
            placement: profile
                .as_ref()
                .map(|p| p.placement.clone())
                .unwrap_or_default(),
            profile: profile.map(|p| p.name),
        })
    }

    /// A ready kernel from the pool of the plan's kernelspec and profile, made the user's: its
    /// id becomes the plan's, and the user's [`PATCHABLE`] variables are set in it. `None` (a
    /// cold start) when there is no pool, nothing fits, or the client named a kernel id.
    pub(super) async fn take_from_pool(
        &self,
        plan: &mut LaunchPlan,
        asked_id: bool,
    ) -> Option<Incarnation> {
        let key: PoolKey = (
            plan.spec.name.clone(),
            plan.profile.clone().unwrap_or_default(),
        );
        if !self.pools.has(&key) {
            return None;
        }
        let mut served = None;
        if !asked_id {
            while let Some(pooled) = self.pools.take(&key, |p| compatible(&p.plan, plan)) {
                let (pool_plan, mut inc) = pooled.into_parts();
                let mut vars: BTreeMap<String, String> = PATCHABLE
                    .iter()
                    .filter_map(|k| plan.env.get(*k).map(|v| ((*k).to_owned(), v.clone())))
                    .filter(|(k, v)| pool_plan.env.get(k) != Some(v))
                    .collect();
                // The kernel keeps its id; the user's env says so.
                vars.remove("KERNEL_ID");
                match patch_env(&mut inc, &vars).await {
                    Ok(()) => {
                        plan.kernel_id.clone_from(&pool_plan.kernel_id);
                        plan.env
                            .insert("KERNEL_ID".to_owned(), pool_plan.kernel_id.clone());
                        tracing::info!(kernel_id = %plan.kernel_id, kernelspec = %key.0, profile = %key.1, user = %plan.username, "kernel served from the warm pool");
                        served = Some(inc);
                        break;
                    }
                    Err(why) => {
                        tracing::warn!(kernel_id = %pool_plan.kernel_id, reason = %why, "a pool kernel could not be handed out; stopping it");
                        teardown(inc.process.as_ref(), STOP_GRACE, false).await;
                    }
                }
            }
        }
        crate::metrics::pool_start(&key.0, &key.1, served.is_some());
        if served.is_none() {
            tracing::debug!(kernelspec = %key.0, profile = %key.1, "no pool kernel fits this start; starting one");
        }
        served
    }

    /// The ready pools, for tests and operators.
    pub fn pools(&self) -> Vec<PoolInfo> {
        self.pools.info()
    }
}

async fn launch_into_pool(manager: Weak<KernelManager>, key: PoolKey, plan: LaunchPlan) {
    let abort = CancellationToken::new();
    let launched = super::kernel::launch(&plan, None, &mut |_| {}, &abort).await;
    let Some(me) = manager.upgrade() else {
        if let Ok(inc) = launched {
            teardown(inc.process.as_ref(), STOP_GRACE, false).await;
        }
        return;
    };
    // What is not kept is stopped, outside the lock.
    let leftover = {
        let mut state = me.pools.state.lock();
        let pool = state.get_mut(&key);
        let keep = pool
            .as_ref()
            .is_some_and(|p| p.ready.len() < p.size && !me.cancel.is_cancelled());
        match (pool, launched) {
            (Some(pool), Ok(inc)) if keep => {
                pool.launching = pool.launching.saturating_sub(1);
                tracing::info!(kernel_id = %plan.kernel_id, kernelspec = %key.0, profile = %key.1, "pool kernel ready");
                pool.ready
                    .push_back(Pooled::new(plan, inc, Arc::clone(&me.pools.wake)));
                crate::metrics::pool_size(&key.0, &key.1, pool.ready.len());
                None
            }
            (pool, launched) => {
                // A failed launch stays counted until its retry pause is over.
                if let Some(pool) = pool.filter(|_| launched.is_ok()) {
                    pool.launching = pool.launching.saturating_sub(1);
                }
                Some(launched)
            }
        }
    };
    drop(me);
    match leftover {
        None => {}
        Some(Ok(inc)) => teardown(inc.process.as_ref(), STOP_GRACE, false).await,
        Some(Err(err)) => {
            tracing::warn!(kernelspec = %key.0, profile = %key.1, error = %err, "a pool kernel failed to start");
            tokio::time::sleep(RETRY_PAUSE).await;
            if let Some(me) = manager.upgrade()
                && let Some(pool) = me.pools.state.lock().get_mut(&key)
            {
                pool.launching = pool.launching.saturating_sub(1);
            }
        }
    }
}

/// Whether a kernel launched with `pooled` is what a start with `wanted` would launch, but for
/// the [`PATCHABLE`] variables.
fn compatible(pooled: &LaunchPlan, wanted: &LaunchPlan) -> bool {
    let differs = |a: &BTreeMap<String, String>, b: &BTreeMap<String, String>| {
        a.iter()
            .any(|(k, v)| !PATCHABLE.contains(&k.as_str()) && b.get(k) != Some(v))
    };
    pooled.cwd == wanted.cwd
        && pooled.run_as.is_none()
        && wanted.run_as.is_none()
        && pooled.placement == wanted.placement
        && !differs(&pooled.env, &wanted.env)
        && !differs(&wanted.env, &pooled.env)
}

/// Sets `vars` in a pooled Python kernel's `os.environ` with a silent execute, before it is
/// handed out. Errors say why the kernel cannot be used.
pub(crate) async fn patch_env(
    inc: &mut Incarnation,
    vars: &BTreeMap<String, String>,
) -> Result<(), String> {
    if vars.is_empty() {
        return Ok(());
    }
    // A JSON object of strings is a Python dict literal.
    let literal = serde_json::to_string(vars).map_err(|e| e.to_string())?;
    let code = format!("__import__('os').environ.update({literal})");
    let header = Header::new("execute_request", &inc.session_id, GATEWAY_USERNAME);
    let msg_id = header.msg_id.clone();
    let content = serde_json::json!({
        "code": code,
        "silent": true,
        "store_history": false,
        "user_expressions": {},
        "allow_stdin": false,
        "stop_on_error": true,
    });
    inc.session
        .sender
        .send(Channel::Shell, Message::new(&header, &content))
        .await
        .map_err(|e| format!("cannot send the environment to the kernel: {e}"))?;
    let deadline = Instant::now() + PATCH_TIMEOUT;
    loop {
        tokio::select! {
            reply = timeout_at(deadline, inc.session.replies.recv()) => match reply {
                Ok(Some((_, msg))) => {
                    if msg_type(&msg) == "execute_reply" && msg.parent_msg_id().as_deref() == Some(msg_id.as_str()) {
                        #[derive(serde::Deserialize)]
                        struct Reply { status: String }
                        return match msg.parse_content::<Reply>() {
                            Ok(reply) if reply.status == "ok" => Ok(()),
                            _ => Err("the kernel refused the environment".to_owned()),
                        };
                    }
                }
                Ok(None) => return Err("the kernel's sockets closed".to_owned()),
                Err(_) => return Err("the kernel did not take the environment in time".to_owned()),
            },
            // What the silent execute publishes is nobody's business.
            _ = inc.iopub.messages.recv() => {}
        }
    }
}
