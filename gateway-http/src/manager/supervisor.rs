//! The per-kernel supervisor: one task owning a kernel's state machine
//! (starting → idle/busy → restarting → dead), driven by a closed [`KernelEvent`] enum.
//!
//! It owns the kernel's only iopub subscription. Once an incarnation is ready, the subscription is
//! diverted into the hub's [`Feed`]: its drain task observes each message (state, activity) and
//! fans it out to attached WebSocket clients itself, without waking the supervisor. The supervisor
//! relaunches the kernel on API restarts and unexpected exits, and tears it down on shutdown,
//! ending the feed of an incarnation before it says (or does) anything about that incarnation's end.
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use jupyter_protocol::sockets::Heartbeat;
use jupyter_protocol::{Channel, Header, IopubItem, Message};
use kernel_launcher::InterruptMode;
use parking_lot::Mutex;
use resource_managers::ProcessState;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use super::error::ManagerError;
use super::events::{KernelEvent, ShutdownReason};
use super::hub::{Attached, Feed, GATEWAY_USERNAME, Handover, Hub, Kick};
use super::kernel::{
    Incarnation, KernelShared, LaunchPlan, describe_exit, launch, socket_options, teardown,
    with_log,
};
use super::rules::{self, Liveness, RestartDecision, RestartTracker};
use super::{KernelSnapshot, Table};
use crate::{Fault, GatewayConfig};
/// How often liveness is polled while waiting for a kernel to exit after shutdown_request.
const EXIT_POLL: Duration = Duration::from_millis(100);
/// Heartbeat period and per-ping timeout (jupyter_client's `time_to_dead` is 3 s).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(3);
/// Consecutive missed heartbeats after which the kernel counts as unresponsive.
const HEARTBEAT_MISSES: u32 = 3;
/// The snapshot `reason` while heartbeats go unanswered.
const HEARTBEAT_LOST: &str = "the kernel is not answering heartbeats";

/// How the supervisor loop ends.
enum Exit {
    /// Keep running.
    Continue,
    /// The kernel is gone; stop.
    Stop,
}

/// The supervisor of one kernel.
pub(crate) struct Supervisor {
    pub(crate) shared: Arc<KernelShared>,
    pub(crate) plan: LaunchPlan,
    pub(crate) config: Arc<GatewayConfig>,
    pub(crate) table: Arc<Mutex<Table>>,
    pub(crate) cancel: CancellationToken,
    pub(crate) events: mpsc::UnboundedReceiver<KernelEvent>,
    pub(crate) hub: Hub,
    pub(crate) inc: Option<Incarnation>,
    pub(crate) generation: u64,
    /// Tasks watching the current incarnation (process exit, heartbeat).
    pub(crate) watchers: Vec<AbortHandle>,
    /// The span of the last restart (API or automatic): from when it was requested (or began)
    /// until it finished. API restart requests made within it are answered by it.
    pub(crate) last_restart: Option<(Instant, Instant)>,
    /// Consecutive automatic restarts.
    pub(crate) restarts: RestartTracker,
    /// The kernel's row in the store, when the gateway has one.
    pub(crate) persisted: Option<super::persist::Persisted>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("kernel_id", &self.shared.id)
            .finish_non_exhaustive()
    }
}

/// The next reply to the gateway's own session of the current incarnation (interrupt and shutdown
/// replies, late kernel_info replies), to be dropped. Pending forever when there is no
/// incarnation or its sockets closed. (Its iopub messages never come here: they go to the hub
/// from the subscription's own drain task.)
async fn next_own_reply(inc: &mut Option<Incarnation>) {
    let Some(inc) = inc.as_mut() else {
        return std::future::pending().await;
    };
    if inc.session.replies.recv().await.is_none() {
        std::future::pending::<()>().await;
    }
}

async fn buffer_expiry(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Supervisor {
    /// Launches the kernel, answers `started`, then runs until the kernel is gone or the gateway
    /// exits. A failed (or aborted) launch removes the kernel and ends the task.
    pub(crate) async fn run(
        mut self,
        started: oneshot::Sender<Result<KernelSnapshot, ManagerError>>,
    ) {
        tracing::info!(kernel_id = %self.plan.kernel_id, kernelspec = %self.plan.spec.name, user = %self.plan.username, "starting kernel");
        let shared = Arc::clone(&self.shared);
        let mut observe = move |item: IopubItem| {
            if let Some(msg) = item.checked() {
                shared.observe_iopub(msg);
            }
        };
        let abort = self.shared.abort_start.clone();
        // A kernel from a warm pool comes launched and ready.
        let launched = match self.inc.take() {
            Some(inc) => Ok(inc),
            None => launch(&self.plan, None, &mut observe, &abort).await,
        };
        let inc = match launched {
            Ok(inc) => inc,
            Err(err) => {
                let err = if abort.is_cancelled() {
                    self.aborted()
                } else {
                    err
                };
                // Debug: the API logs the failure once, with the user who asked.
                tracing::debug!(kernel_id = %self.plan.kernel_id, error = %err, "kernel start failed");
                crate::metrics::backend_error(&self.shared.backend, "launch");
                self.remove_from_table();
                self.forget().await;
                let _ = started.send(Err(err));
                return;
            }
        };
        self.shared.status().host.clone_from(&inc.connection.ip);
        self.set_incarnation(inc);
        self.shared
            .started
            .store(true, std::sync::atomic::Ordering::SeqCst);
        tracing::info!(kernel_id = %self.plan.kernel_id, "kernel started");
        // Recorded before the start is answered: a kernel a client knows of survives a crash.
        self.persist().await;
        // The caller may have gone away; the kernel is registered and stays, as in EG.
        let _ = started.send(Ok(self.shared.snapshot()));
        self.supervise().await;
    }

    /// Supervises the current incarnation until the kernel is gone or the gateway exits.
    pub(super) async fn supervise(mut self) {
        self.watch_process();
        loop {
            let expiry = self.hub.buffer_expiry();
            let exit = tokio::select! {
                event = self.events.recv() => match event {
                    Some(event) => self.handle(event).await,
                    None => Exit::Stop,
                },
                () = next_own_reply(&mut self.inc) => Exit::Continue,
                reply = self.hub.next_kept_reply() => {
                    self.hub.keep_reply(reply);
                    Exit::Continue
                }
                () = buffer_expiry(expiry) => {
                    self.hub.expire_buffer(Instant::now());
                    Exit::Continue
                }
                () = self.cancel.cancelled() => {
                    self.gateway_exit().await;
                    Exit::Stop
                }
            };
            if let Exit::Stop = exit {
                break;
            }
        }
        self.stop_watching();
        self.remove_from_table();
        self.forget().await;
    }

    /// The error a start gets when its kernel was shut down (or the gateway stopped) meanwhile.
    fn aborted(&self) -> ManagerError {
        if self.cancel.is_cancelled() {
            ManagerError::LaunchFailed {
                reason: "the gateway is shutting down".to_owned(),
                fault: Fault::Capacity,
            }
        } else {
            ManagerError::LaunchFailed {
                reason: format!(
                    "kernel {} was shut down while it was starting",
                    self.plan.kernel_id
                ),
                fault: Fault::Client,
            }
        }
    }

    fn remove_from_table(&self) {
        let mut table = self.table.lock();
        if table
            .kernels
            .get(&self.shared.id)
            .is_some_and(|k| Arc::ptr_eq(k, &self.shared))
        {
            table.kernels.remove(&self.shared.id);
        }
    }

    fn stop_watching(&mut self) {
        for watcher in self.watchers.drain(..) {
            watcher.abort();
        }
    }

    /// Spawns the tasks that report the current process's exit and heartbeat as events.
    fn watch_process(&mut self) {
        self.stop_watching();
        let Some(inc) = &self.inc else {
            return;
        };
        self.generation += 1;
        let generation = self.generation;
        let process = Arc::clone(&inc.process);
        let events = self.shared.events.clone();
        let exit = tokio::spawn(async move {
            let state = process.wait().await;
            // The supervisor may already be gone; nothing to report to then.
            let _ = events.send(KernelEvent::ProcessExited { generation, state });
        });
        let events = self.shared.events.clone();
        let mut heartbeat = Heartbeat::new(&inc.connection, &socket_options(HEARTBEAT_EVERY));
        let beat = tokio::spawn(async move {
            let mut misses = 0;
            let mut tick =
                tokio::time::interval_at(Instant::now() + HEARTBEAT_EVERY, HEARTBEAT_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let event = match heartbeat.ping(HEARTBEAT_EVERY).await {
                    Ok(()) => {
                        let was_lost = misses >= HEARTBEAT_MISSES;
                        misses = 0;
                        was_lost.then_some(KernelEvent::HeartbeatRestored { generation })
                    }
                    Err(_) => {
                        misses = misses.saturating_add(1);
                        (misses == HEARTBEAT_MISSES)
                            .then_some(KernelEvent::HeartbeatLost { generation })
                    }
                };
                if let Some(event) = event
                    && events.send(event).is_err()
                {
                    return;
                }
            }
        });
        self.watchers = vec![exit.abort_handle(), beat.abort_handle()];
    }

    /// Makes `inc` current: its iopub messages (those already received first) go to the hub
    /// through a new feed, from its subscription's drain task.
    pub(super) fn set_incarnation(&mut self, mut inc: Incarnation) {
        let feed = self.hub.start_feed();
        let shared = Arc::clone(&self.shared);
        inc.iopub.divert(Box::new(move |item: IopubItem| {
            feed_one(&feed, &shared, item);
        }));
        self.inc = Some(inc);
    }

    /// Takes the current incarnation away, ending its feed first: from here on nothing it
    /// publishes reaches clients or changes the kernel's state.
    fn take_incarnation(&mut self) -> Option<Incarnation> {
        self.hub.end_feed();
        self.inc.take()
    }

    /// Sets the state and tells every client with a synthetic status carrying its session.
    fn publish_status(&mut self, state: &str, reason: Option<&str>) {
        let mut extra = serde_json::Map::new();
        if let Some(reason) = reason {
            extra.insert("reason".to_owned(), reason.into());
        }
        self.shared.set_state(state);
        self.hub.publish_status(state, &extra);
    }

    fn set_connections(&self) {
        let connections = self.hub.connections();
        self.shared.status().connections = connections;
    }

    async fn handle(&mut self, event: KernelEvent) -> Exit {
        match event {
            KernelEvent::ProcessExited { generation, state } => {
                if generation == self.generation {
                    return self.on_unexpected_exit(state).await;
                }
                Exit::Continue
            }
            KernelEvent::HeartbeatLost { generation } => {
                if generation != self.generation {
                    return Exit::Continue;
                }
                let Some(state) = self.poll().await else {
                    return Exit::Continue;
                };
                match rules::liveness(false, state) {
                    Liveness::Dead => {
                        tracing::warn!(kernel_id = %self.shared.id, "kernel lost its heartbeat and its backend does not see it running");
                        self.on_unexpected_exit(state).await
                    }
                    Liveness::Unresponsive | Liveness::Alive => {
                        tracing::warn!(kernel_id = %self.shared.id, "kernel is not answering heartbeats");
                        self.shared.status().reason = Some(HEARTBEAT_LOST.to_owned());
                        Exit::Continue
                    }
                }
            }
            KernelEvent::HeartbeatRestored { generation } => {
                if generation == self.generation {
                    tracing::info!(kernel_id = %self.shared.id, "kernel answers heartbeats again");
                    let mut status = self.shared.status();
                    if status.reason.as_deref() == Some(HEARTBEAT_LOST) {
                        status.reason = None;
                    }
                }
                Exit::Continue
            }
            KernelEvent::Restart {
                requested_at,
                reply,
            } => {
                if self
                    .last_restart
                    .is_some_and(|(from, to)| from <= requested_at && requested_at <= to)
                {
                    // A restart was pending or under way when this request came in; it has completed.
                    let _ = reply.send(Ok(()));
                    return Exit::Continue;
                }
                // Asked of a gateway that only follows the kernel: it supervises it from now on.
                if let Err(err) = self.become_holder().await {
                    let _ = reply.send(Err(err));
                    return Exit::Continue;
                }
                let result = self.restart().await;
                self.last_restart = Some((requested_at, Instant::now()));
                let stop = result.is_err();
                let _ = reply.send(result);
                if stop { Exit::Stop } else { Exit::Continue }
            }
            KernelEvent::Interrupt { reply } => {
                let _ = reply.send(self.interrupt().await);
                Exit::Continue
            }
            KernelEvent::Shutdown { reason, reply } => {
                // The manager took the lease already; this only stops following.
                if let Err(err) = self.become_holder().await {
                    tracing::warn!(kernel_id = %self.shared.id, error = %err, "shutting down a kernel whose lease could not be taken");
                }
                self.shutdown(reason).await;
                let _ = reply.send(());
                Exit::Stop
            }
            KernelEvent::Attach {
                session_id,
                account,
                reply,
            } => {
                if let Some(inc) = &self.inc {
                    let connection = inc.connection.clone();
                    self.attach_client(&session_id, account, reply, connection);
                }
                Exit::Continue
            }
            KernelEvent::Detach {
                client_id,
                handover,
            } => {
                self.hub.detach(client_id, handover);
                self.set_connections();
                Exit::Continue
            }
            KernelEvent::CullTick => self.on_cull_tick().await,
            // A follower never held the lease.
            KernelEvent::LeaseLost if self.is_follower() => Exit::Continue,
            KernelEvent::LeaseLost => {
                tracing::warn!(kernel_id = %self.shared.id, "another gateway supervises this kernel now; letting go of it");
                self.let_go();
                Exit::Stop
            }
            KernelEvent::LeaseGained => {
                self.lease_gained().await;
                Exit::Continue
            }
        }
    }

    /// Registers a WebSocket client whose sockets go to `connection`.
    fn attach_client(
        &mut self,
        session_id: &str,
        account: crate::budget::Account,
        reply: oneshot::Sender<Attached>,
        connection: jupyter_protocol::ConnectionInfo,
    ) {
        let attached = self.hub.attach(session_id, connection, account);
        self.set_connections();
        if let Err(attached) = reply.send(attached) {
            // The client gave up while waiting.
            let handover = Handover {
                queue: Some(attached.queue),
                channels: attached.channels,
                messages: attached.replay,
            };
            self.hub.detach(attached.client_id, Some(handover));
            self.set_connections();
        }
    }

    /// Waits `delay` before an automatic relaunch while still answering events: clients may
    /// attach (their sockets go to the kernel's ports, rebuilt after the relaunch), API restarts
    /// and interrupts are refused, a shutdown (or the gateway's exit) ends the kernel. `Some`
    /// when the kernel is gone.
    async fn back_off(
        &mut self,
        delay: Duration,
        previous: &jupyter_protocol::ConnectionInfo,
    ) -> Option<Exit> {
        let until = Instant::now() + delay;
        let kernel_id = self.shared.id.clone();
        let busy = move || ManagerError::LaunchFailed {
            reason: format!(
                "kernel {kernel_id} died and waits to be relaunched; try again shortly"
            ),
            fault: Fault::Capacity,
        };
        loop {
            tokio::select! {
                () = sleep_until(until) => return None,
                () = self.cancel.cancelled() => {
                    self.gateway_exit().await;
                    return Some(Exit::Stop);
                }
                event = self.events.recv() => match event {
                    None => return Some(Exit::Stop),
                    Some(KernelEvent::Attach { session_id, account, reply }) => {
                        self.attach_client(&session_id, account, reply, previous.clone());
                    }
                    Some(KernelEvent::Restart { reply, .. }) => {
                        let _ = reply.send(Err(busy()));
                    }
                    Some(KernelEvent::Interrupt { reply }) => {
                        let _ = reply.send(Err(busy()));
                    }
                    Some(KernelEvent::Shutdown { reason, reply }) => {
                        self.shutdown(reason).await;
                        let _ = reply.send(());
                        return Some(Exit::Stop);
                    }
                    Some(KernelEvent::Detach { client_id, handover }) => {
                        self.hub.detach(client_id, handover);
                        self.set_connections();
                    }
                    Some(KernelEvent::CullTick) => {
                        if let Exit::Stop = self.on_cull_tick().await {
                            return Some(Exit::Stop);
                        }
                    }
                    Some(KernelEvent::LeaseLost) => {
                        tracing::warn!(kernel_id = %self.shared.id, "another gateway supervises this kernel now; letting go of it");
                        self.let_go();
                        return Some(Exit::Stop);
                    }
                    Some(KernelEvent::LeaseGained) => self.lease_gained().await,
                    // About the incarnation that died: nothing more to learn.
                    Some(
                        KernelEvent::ProcessExited { .. }
                        | KernelEvent::HeartbeatLost { .. }
                        | KernelEvent::HeartbeatRestored { .. },
                    ) => {}
                },
            }
        }
    }

    /// Applies the culling rule; a kernel already being shut down by someone else is left alone.
    async fn on_cull_tick(&mut self) -> Exit {
        // Only the kernel's supervisor culls it.
        if self.is_follower() {
            return Exit::Continue;
        }
        let verdict = {
            let status = self.shared.status();
            let idle = Instant::now().saturating_duration_since(status.last_activity_at);
            rules::cull_verdict(
                &self.config.culling,
                &status.execution_state,
                idle,
                status.connections,
            )
        };
        let Some(reason) = verdict else {
            return Exit::Continue;
        };
        if self.shared.shutdown_claimed.swap(true, Ordering::SeqCst) {
            return Exit::Continue;
        }
        crate::metrics::cull(&self.shared.name, &reason);
        self.shutdown(ShutdownReason::Culled(reason)).await;
        Exit::Stop
    }

    /// The backend's view of the current process.
    async fn poll(&self) -> Option<ProcessState> {
        match &self.inc {
            Some(inc) => Some(inc.process.poll().await),
            None => None,
        }
    }

    async fn interrupt(&mut self) -> Result<(), ManagerError> {
        let Some(inc) = &self.inc else {
            return Err(ManagerError::NoSuchKernel(self.shared.id.clone()));
        };
        send_interrupt(&self.plan, inc).await
    }

    /// Sends `shutdown_request` on control, waits up to half of `shutdown_wait_time` for the
    /// process to exit, then terminates it (SIGTERM, the other half, SIGKILL) and cleans up.
    async fn stop_incarnation(
        &mut self,
        inc: &Incarnation,
        restart: bool,
        keep_connection_file: bool,
    ) {
        let half = self.config.shutdown_wait_time / 2;
        let header = Header::new("shutdown_request", &inc.session_id, GATEWAY_USERNAME);
        let msg = Message::new(&header, &serde_json::json!({ "restart": restart }));
        if let Err(err) = inc.session.sender.send(Channel::Control, msg).await {
            tracing::debug!(kernel_id = %self.shared.id, error = %err, "shutdown_request not sent");
        }
        inc.process.shutdown_requested().await;
        // The backend's `wait` resolves when the process ends; the poll covers backends whose
        // `wait` is slow to notice.
        let exited = timeout(half, async {
            tokio::select! {
                _ = inc.process.wait() => {}
                () = async {
                    loop {
                        sleep(EXIT_POLL).await;
                        if matches!(inc.process.poll().await, ProcessState::Exited { .. }) {
                            break;
                        }
                    }
                } => {}
            }
        })
        .await
        .is_ok();
        if !exited {
            tracing::info!(kernel_id = %self.shared.id, "kernel did not exit after shutdown_request; terminating");
        }
        teardown(inc.process.as_ref(), half, keep_connection_file).await;
    }

    /// API restart: stop gracefully (keeping ports and key), relaunch, wait for readiness, and
    /// tell attached clients to rebuild their sockets. No synthetic status (EG §4.6): the new
    /// process publishes its own `starting`.
    async fn restart(&mut self) -> Result<(), ManagerError> {
        tracing::info!(kernel_id = %self.shared.id, "restarting kernel");
        crate::metrics::restart(&self.shared.name, "requested");
        // What the old process publishes from here on (its answer to shutdown_request) goes
        // nowhere, and cannot overwrite the state.
        self.hub.end_feed();
        self.shared.set_state("restarting");
        self.hub.suspend();
        self.stop_watching();
        let Some(old) = self.take_incarnation() else {
            return Err(ManagerError::NoSuchKernel(self.shared.id.clone()));
        };
        self.stop_incarnation(&old, true, true).await;
        let previous = old.connection.clone();
        drop(old);
        let shared = Arc::clone(&self.shared);
        let hub = &mut self.hub;
        let mut forward = |msg: IopubItem| fan_out(&shared, hub, msg);
        match launch(&self.plan, Some(previous), &mut forward, &self.cancel).await {
            Ok(inc) => {
                self.install(inc);
                self.persist().await;
                tracing::info!(kernel_id = %self.shared.id, "kernel restarted");
                Ok(())
            }
            Err(err) => {
                tracing::error!(kernel_id = %self.shared.id, error = %err, "kernel restart failed; the kernel is dead");
                self.die(&err.to_string()).await;
                Err(err)
            }
        }
    }

    /// The process ended on its own: auto-restart (same ports and key) up to `restart_limit`
    /// consecutive times, else the kernel is dead. A remote kernel nobody is connected to is not
    /// restarted (EG does the same).
    async fn on_unexpected_exit(&mut self, state: ProcessState) -> Exit {
        // Restarted only by its supervisor, and only once: another gateway that took the lease
        // (or shut the kernel down) deals with the exit.
        if !self.still_holder().await {
            tracing::info!(kernel_id = %self.shared.id, "the kernel's process ended and another gateway supervises it, or it was shut down through another gateway; letting go");
            self.let_go();
            return Exit::Stop;
        }
        let how = describe_exit(&state);
        let ran_for = self.inc.as_ref().map(|inc| inc.ready_at.elapsed());
        self.stop_watching();
        let Some(old) = self.take_incarnation() else {
            return Exit::Stop;
        };
        self.hub.suspend();
        // `now` semantics: no graceful shutdown, the remains are killed at once.
        teardown(old.process.as_ref(), Duration::ZERO, true).await;
        // How this incarnation ended, with its last log lines: the reason if it is not relaunched.
        let ended = with_log(
            format!("kernel process ended ({how})"),
            old.process.as_ref(),
        );
        let previous = old.connection.clone();
        if self.plan.remote && self.hub.connections() == 0 {
            old.process.cleanup(false).await;
            let why = format!("{ended}; a remote kernel with no client connected is not restarted");
            tracing::warn!(kernel_id = %self.shared.id, "{why}");
            self.die(&why).await;
            return Exit::Stop;
        }
        let began = Instant::now();
        let mut decision = self.restarts.exited(ran_for);
        // Why the latest relaunch failed (exit status and log tail), once one did.
        let mut last_failure: Option<String> = None;
        loop {
            let attempt = match decision {
                RestartDecision::Restart { attempt } => attempt,
                RestartDecision::Disabled | RestartDecision::LimitReached { .. } => {
                    // The connection file was kept for a relaunch; nothing needs it now.
                    old.process.cleanup(false).await;
                    let why = match (decision, &last_failure) {
                        (RestartDecision::LimitReached { limit }, Some(last)) => format!(
                            "restart limit of {limit} reached; the last relaunch failed: {last} (the series began with: {ended})"
                        ),
                        (RestartDecision::LimitReached { limit }, None) => {
                            format!("{ended}; restart limit of {limit} reached")
                        }
                        _ => format!("{ended}; automatic restarts are disabled"),
                    };
                    tracing::warn!(kernel_id = %self.shared.id, "{why}");
                    self.die(&why).await;
                    return Exit::Stop;
                }
            };
            let delay = self.config.restart_backoff.delay(attempt);
            tracing::warn!(kernel_id = %self.shared.id, attempt, limit = self.config.restart_limit,
                wait_ms = delay.as_millis() as u64, "kernel process ended ({how}); restarting it");
            self.publish_status("restarting", None);
            if !delay.is_zero()
                && let Some(exit) = self.back_off(delay, &previous).await
            {
                old.process.cleanup(false).await;
                return exit;
            }
            crate::metrics::restart(&self.shared.name, "automatic");
            let shared = Arc::clone(&self.shared);
            let hub = &mut self.hub;
            let mut forward = |msg: IopubItem| fan_out(&shared, hub, msg);
            match launch(
                &self.plan,
                Some(previous.clone()),
                &mut forward,
                &self.cancel,
            )
            .await
            {
                Ok(inc) => {
                    self.install(inc);
                    self.persist().await;
                    self.last_restart = Some((began, Instant::now()));
                    return Exit::Continue;
                }
                Err(err) => {
                    tracing::warn!(kernel_id = %self.shared.id, attempt, error = %err, "automatic restart failed");
                    last_failure = Some(err.to_string());
                    if self.cancel.is_cancelled() {
                        old.process.cleanup(false).await;
                        self.die(&err.to_string()).await;
                        return Exit::Stop;
                    }
                    decision = self.restarts.relaunch_failed();
                }
            }
        }
    }

    /// Makes a freshly launched incarnation current and points clients at it.
    fn install(&mut self, inc: Incarnation) {
        self.hub.rebuild(&inc.connection);
        {
            let mut status = self.shared.status();
            status.host.clone_from(&inc.connection.ip);
            status.restarts += 1;
        }
        self.set_incarnation(inc);
        self.shared.status().reason = None;
        self.watch_process();
    }

    /// The kernel cannot be kept: status `dead` to clients, process and files cleaned up.
    async fn die(&mut self, why: &str) {
        // Nothing of the incarnation comes after its `dead`.
        self.hub.end_feed();
        self.publish_status("dead", Some(why));
        self.shared.status().reason = Some(why.to_owned());
        self.stop_watching();
        if let Some(inc) = self.take_incarnation() {
            teardown(inc.process.as_ref(), Duration::ZERO, false).await;
        }
        // Gone from the table before clients are disconnected: whoever sees the socket close
        // and asks for the kernel gets 404.
        self.remove_from_table();
        self.hub.close_all_with(Kick::KernelDied, why);
        self.set_connections();
    }

    /// Graceful shutdown in EG's order: interrupt, shutdown_request, wait, terminate, cleanup.
    /// Clients then get a `dead` status (saying why for a cull) and are disconnected.
    async fn shutdown(&mut self, reason: ShutdownReason) {
        let (why, kick) = match reason {
            ShutdownReason::Requested => {
                tracing::info!(kernel_id = %self.shared.id, "shutting down kernel");
                (None, Kick::KernelGone)
            }
            ShutdownReason::Culled(cull) => {
                let why = cull.to_string();
                tracing::info!(kernel_id = %self.shared.id, user = %self.plan.username, reason = %why, "culling kernel");
                (Some(why), Kick::Culled)
            }
        };
        self.stop_watching();
        if let Some(inc) = self.take_incarnation() {
            // EG (jupyter_client >= 6.1.12) interrupts first so a busy kernel can act on the
            // shutdown_request instead of finishing its current cell.
            if let Err(err) = send_interrupt(&self.plan, &inc).await {
                tracing::debug!(kernel_id = %self.shared.id, error = %err, "interrupt before shutdown failed");
            }
            self.stop_incarnation(&inc, false, false).await;
        }
        self.publish_status("dead", why.as_deref());
        if let Some(why) = why {
            self.shared.status().reason = Some(why);
        }
        self.remove_from_table();
        self.hub.close_all(kick);
        self.set_connections();
    }

    /// The gateway is exiting: shut the kernel down, or leave it running, per configuration.
    async fn gateway_exit(&mut self) {
        if self.config.shutdown_kernels_on_exit && !self.is_follower() {
            self.shutdown(ShutdownReason::Requested).await;
        } else {
            tracing::info!(kernel_id = %self.shared.id, "leaving kernel running at gateway exit");
            self.let_go();
        }
    }

    /// Stops supervising without touching the process (and keeps its row for whoever
    /// supervises it next); clients are disconnected and reconnect through any gateway.
    fn let_go(&mut self) {
        self.stop_watching();
        if let Some(inc) = self.take_incarnation() {
            inc.process.detach();
        }
        self.keep_record();
        self.hub.close_all(Kick::GatewayExit);
    }
}

/// Updates state and activity from a checked iopub message; whether it goes to clients (the
/// gateway's own `iopub_welcome` does not: it concerns only the gateway's subscription).
fn observe(shared: &KernelShared, msg: &Message) -> bool {
    // The header is read once here (two fields, nothing allocated) for both uses.
    let kind = msg.msg_type();
    shared.observe_iopub_of(msg, &kind);
    kind != "iopub_welcome"
}

/// The supervisor's own forwarding, while it launches an incarnation (before its feed starts).
/// A large message whose signature is still being checked is forwarded at once and observed
/// only when its verdict passed (see [`Hub::publish_item`]).
fn fan_out(shared: &KernelShared, hub: &mut Hub, item: IopubItem) {
    hub.publish_item(item, |msg| observe(shared, msg));
}

/// What a diverted subscription's drain task does with each item: observed and published under
/// the hub's lock, so it is ordered with the supervisor's own statuses, and dropped once the feed
/// ended.
fn feed_one(feed: &Feed, shared: &KernelShared, item: IopubItem) {
    feed.publish(item, |msg| observe(shared, msg));
}

/// Interrupts as the kernelspec says: a signal through the backend, or `interrupt_request` on control.
async fn send_interrupt(plan: &LaunchPlan, inc: &Incarnation) -> Result<(), ManagerError> {
    match plan.spec.interrupt_mode {
        InterruptMode::Signal => {
            inc.process
                .interrupt()
                .await
                .map_err(|err| ManagerError::LaunchFailed {
                    reason: format!("cannot interrupt kernel {}: {err}", plan.kernel_id),
                    fault: Fault::Kernel,
                })
        }
        InterruptMode::Message => {
            let header = Header::new("interrupt_request", &inc.session_id, GATEWAY_USERNAME);
            let msg = Message::new(&header, &serde_json::json!({}));
            inc.session
                .sender
                .send(Channel::Control, msg)
                .await
                .map_err(|err| ManagerError::LaunchFailed {
                    reason: format!("cannot interrupt kernel {}: {err}", plan.kernel_id),
                    fault: Fault::Kernel,
                })
        }
    }
}
