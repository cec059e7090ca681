//! The per-kernel supervisor: one task owning a kernel's state machine
//! (starting → idle/busy → restarting → dead), driven by a closed [`KernelEvent`] enum.
//!
//! It owns the kernel's only iopub subscription and fans it out to attached WebSocket clients,
//! relaunches the kernel on API restarts and unexpected exits, and tears it down on shutdown.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jupyter_protocol::sockets::Heartbeat;
use jupyter_protocol::{Channel, Header, Message};
use kernel_launcher::InterruptMode;
use resource_managers::ProcessState;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use super::Table;
use super::hub::{Attached, Hub, Kick};
use super::kernel::{
    GATEWAY_USERNAME, Incarnation, KernelShared, LaunchPlan, describe_exit, launch, msg_type,
    socket_options, synthetic_status, teardown,
};
use crate::{Error, Fault, GatewayConfig};

/// An incarnation that ran at least this long before exiting starts a new series of auto-restarts.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// How often liveness is polled while waiting for a kernel to exit after shutdown_request.
const EXIT_POLL: Duration = Duration::from_millis(100);
/// Heartbeat period and per-ping timeout (jupyter_client's `time_to_dead` is 3 s).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(3);
/// Consecutive missed heartbeats after which the kernel counts as unresponsive.
const HEARTBEAT_MISSES: u32 = 3;
/// The snapshot `reason` while heartbeats go unanswered.
const HEARTBEAT_LOST: &str = "the kernel is not answering heartbeats";

/// Why a kernel is shut down.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ShutdownReason {
    /// `DELETE /api/kernels/{id}` (or a session delete).
    Requested,
    /// The culler found it idle for this long.
    Culled {
        /// Idle time.
        idle: Duration,
    },
}

/// Everything that can happen to a kernel.
#[derive(Debug)]
pub(crate) enum KernelEvent {
    /// The process of incarnation `generation` ended.
    ProcessExited {
        /// Which incarnation.
        generation: u64,
        /// How it ended.
        state: ProcessState,
    },
    /// The process of incarnation `generation` stopped answering heartbeats (it may be hung, or
    /// its host unreachable); the process state decides what happens.
    HeartbeatLost {
        /// Which incarnation.
        generation: u64,
    },
    /// The heartbeat of incarnation `generation` answers again.
    HeartbeatRestored {
        /// Which incarnation.
        generation: u64,
    },
    /// API restart; a request issued while another restart ran is answered by that restart.
    Restart {
        /// When the request was made.
        requested_at: Instant,
        /// Result.
        reply: oneshot::Sender<Result<(), Error>>,
    },
    /// API interrupt.
    Interrupt {
        /// Result.
        reply: oneshot::Sender<Result<(), Error>>,
    },
    /// Graceful shutdown; the supervisor ends afterwards.
    Shutdown {
        /// Why.
        reason: ShutdownReason,
        /// Answered when the kernel is gone.
        reply: oneshot::Sender<()>,
    },
    /// A WebSocket client attaches.
    Attach {
        /// Its session id.
        session_id: String,
        /// Its registration.
        reply: oneshot::Sender<Attached>,
    },
    /// A WebSocket client went away.
    Detach {
        /// Its id.
        client_id: u64,
    },
}

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
    /// Unexpected exits in the current series.
    pub(crate) failures: u32,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("kernel_id", &self.shared.id)
            .finish_non_exhaustive()
    }
}

/// The next iopub message of the current incarnation, draining replies to the gateway's own
/// session (interrupt/shutdown replies, late kernel_info replies) meanwhile. Pending forever
/// when there is no incarnation or its sockets closed.
async fn next_iopub(inc: &mut Option<Incarnation>) -> Message {
    let Some(inc) = inc.as_mut() else {
        return std::future::pending().await;
    };
    let mut replies_open = true;
    loop {
        tokio::select! {
            msg = inc.iopub.messages.recv() => match msg {
                Some(msg) => return msg,
                None => return std::future::pending().await,
            },
            reply = inc.session.replies.recv(), if replies_open => {
                if reply.is_none() {
                    replies_open = false;
                }
            }
        }
    }
}

async fn buffer_expiry(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Supervisor {
    /// Runs until the kernel is gone or the gateway exits.
    pub(crate) async fn run(mut self) {
        self.watch_process();
        loop {
            let expiry = self.hub.buffer_expiry();
            let exit = tokio::select! {
                event = self.events.recv() => match event {
                    Some(event) => self.handle(event).await,
                    None => Exit::Stop,
                },
                msg = next_iopub(&mut self.inc) => {
                    self.on_iopub(msg);
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
    }

    fn remove_from_table(&self) {
        let mut table = self
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
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

    fn on_iopub(&mut self, msg: Message) {
        fan_out(&self.shared, &mut self.hub, msg);
    }

    fn publish_status(&mut self, state: &str) {
        let session = self
            .inc
            .as_ref()
            .map_or_else(|| self.shared.id.clone(), |inc| inc.session_id.clone());
        let msg = synthetic_status(&session, state);
        self.shared.set_state(state);
        self.hub.publish(&msg);
    }

    fn set_connections(&self) {
        self.shared.status().connections = self.hub.connections();
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
                if generation == self.generation {
                    tracing::warn!(kernel_id = %self.shared.id, "kernel is not answering heartbeats");
                    self.shared.status().reason = Some(HEARTBEAT_LOST.to_owned());
                }
                Exit::Continue
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
                self.shutdown(reason).await;
                let _ = reply.send(());
                Exit::Stop
            }
            KernelEvent::Attach { session_id, reply } => {
                if let Some(inc) = &self.inc {
                    let attached = self.hub.attach(&session_id, inc.connection.clone());
                    self.set_connections();
                    if let Err(attached) = reply.send(attached) {
                        // The client gave up while waiting.
                        self.hub.detach(attached.client_id);
                        self.set_connections();
                    }
                }
                Exit::Continue
            }
            KernelEvent::Detach { client_id } => {
                self.hub.detach(client_id);
                self.set_connections();
                Exit::Continue
            }
        }
    }

    async fn interrupt(&mut self) -> Result<(), Error> {
        let Some(inc) = &self.inc else {
            return Err(Error::NoSuchKernel(self.shared.id.clone()));
        };
        send_interrupt(&self.plan, inc).await
    }

    /// Sends `shutdown_request` on control, waits up to `wait` for the process to exit, then
    /// terminates it with `grace`.
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
        let exited = timeout(half, async {
            loop {
                if matches!(inc.process.poll().await, ProcessState::Exited { .. }) {
                    break;
                }
                sleep(EXIT_POLL).await;
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
    /// tell attached clients to rebuild their sockets.
    async fn restart(&mut self) -> Result<(), Error> {
        tracing::info!(kernel_id = %self.shared.id, "restarting kernel");
        self.publish_status("restarting");
        self.stop_watching();
        let Some(old) = self.inc.take() else {
            return Err(Error::NoSuchKernel(self.shared.id.clone()));
        };
        self.stop_incarnation(&old, true, true).await;
        let previous = old.connection.clone();
        drop(old);
        self.relaunch(previous).await
    }

    /// Launches a new incarnation on the previous connection info; on failure the kernel is dead.
    async fn relaunch(&mut self, previous: jupyter_protocol::ConnectionInfo) -> Result<(), Error> {
        let shared = Arc::clone(&self.shared);
        let hub = &mut self.hub;
        let mut forward = |msg: Message| fan_out(&shared, hub, msg);
        match launch(&self.plan, Some(previous), &mut forward).await {
            Ok(inc) => {
                self.install(inc);
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
    /// consecutive times, else the kernel is dead. `restart_limit` 0 never restarts.
    async fn on_unexpected_exit(&mut self, state: ProcessState) -> Exit {
        let how = describe_exit(&state);
        if self
            .inc
            .as_ref()
            .is_some_and(|inc| inc.ready_at.elapsed() >= STABLE_AFTER)
        {
            self.failures = 0;
        }
        self.stop_watching();
        let Some(old) = self.inc.take() else {
            return Exit::Stop;
        };
        teardown(old.process.as_ref(), Duration::ZERO, true).await;
        let previous = old.connection.clone();
        let limit = self.config.restart_limit;
        let began = Instant::now();
        loop {
            self.failures += 1;
            if limit == 0 || self.failures > limit {
                // The connection file was kept for the relaunch; nothing needs it now.
                old.process.cleanup(false).await;
                let why = if limit == 0 {
                    format!("kernel process ended ({how}); automatic restarts are disabled")
                } else {
                    format!("kernel process ended ({how}); restart limit of {limit} reached")
                };
                tracing::warn!(kernel_id = %self.shared.id, "{why}");
                self.die(&why).await;
                return Exit::Stop;
            }
            tracing::warn!(kernel_id = %self.shared.id, attempt = self.failures, "kernel process ended ({how}); restarting it");
            self.publish_status("restarting");
            let shared = Arc::clone(&self.shared);
            let hub = &mut self.hub;
            let mut forward = |msg: Message| fan_out(&shared, hub, msg);
            match launch(&self.plan, Some(previous.clone()), &mut forward).await {
                Ok(inc) => {
                    self.install(inc);
                    self.last_restart = Some((began, Instant::now()));
                    return Exit::Continue;
                }
                Err(err) => {
                    tracing::warn!(kernel_id = %self.shared.id, error = %err, "automatic restart failed");
                }
            }
        }
    }

    /// Makes a freshly launched incarnation current and points clients at it.
    fn install(&mut self, inc: Incarnation) {
        self.hub.rebuild(&inc.connection);
        self.inc = Some(inc);
        self.shared.status().reason = None;
        self.watch_process();
    }

    /// The kernel cannot be kept: status `dead` to clients, process and files cleaned up.
    async fn die(&mut self, why: &str) {
        self.publish_status("dead");
        self.shared.status().reason = Some(why.to_owned());
        self.stop_watching();
        if let Some(inc) = self.inc.take() {
            teardown(inc.process.as_ref(), Duration::ZERO, false).await;
        }
        self.hub.close_all(Kick::KernelGone);
        self.set_connections();
    }

    /// Graceful shutdown in EG's order: interrupt, shutdown_request, wait, terminate, cleanup.
    async fn shutdown(&mut self, reason: ShutdownReason) {
        match reason {
            ShutdownReason::Requested => {
                tracing::info!(kernel_id = %self.shared.id, "shutting down kernel")
            }
            ShutdownReason::Culled { idle } => tracing::info!(
                kernel_id = %self.shared.id,
                idle_secs = idle.as_secs(),
                "culling kernel: idle for {} s",
                idle.as_secs()
            ),
        }
        self.stop_watching();
        if let Some(inc) = self.inc.take() {
            // EG (jupyter_client >= 6.1.12) interrupts first so a busy kernel can act on the
            // shutdown_request instead of finishing its current cell.
            if let Err(err) = send_interrupt(&self.plan, &inc).await {
                tracing::debug!(kernel_id = %self.shared.id, error = %err, "interrupt before shutdown failed");
            }
            self.stop_incarnation(&inc, false, false).await;
        }
        self.publish_status("dead");
        self.hub.close_all(Kick::KernelGone);
        self.set_connections();
    }

    /// The gateway is exiting: shut the kernel down, or leave it running, per configuration.
    async fn gateway_exit(&mut self) {
        if self.config.shutdown_kernels_on_exit {
            self.shutdown(ShutdownReason::Requested).await;
        } else {
            tracing::info!(kernel_id = %self.shared.id, "leaving kernel running at gateway exit");
            self.stop_watching();
            if let Some(inc) = self.inc.take() {
                inc.process.detach();
            }
            self.hub.close_all(Kick::GatewayExit);
        }
    }
}

/// Updates state and activity from an iopub message and forwards it to clients (the gateway's own
/// `iopub_welcome` is not forwarded: it concerns only the gateway's subscription).
fn fan_out(shared: &KernelShared, hub: &mut Hub, msg: Message) {
    shared.observe_iopub(&msg);
    if msg_type(&msg) == "iopub_welcome" {
        return;
    }
    hub.publish(&msg);
}

/// Interrupts as the kernelspec says: a signal through the backend, or `interrupt_request` on control.
async fn send_interrupt(plan: &LaunchPlan, inc: &Incarnation) -> Result<(), Error> {
    match plan.spec.interrupt_mode {
        InterruptMode::Signal => inc
            .process
            .interrupt()
            .await
            .map_err(|err| Error::LaunchFailed {
                reason: format!("cannot interrupt kernel {}: {err}", plan.kernel_id),
                fault: Fault::Kernel,
            }),
        InterruptMode::Message => {
            let header = Header::new("interrupt_request", &inc.session_id, GATEWAY_USERNAME);
            let msg = Message::new(&header, &serde_json::json!({}));
            inc.session
                .sender
                .send(Channel::Control, msg)
                .await
                .map_err(|err| Error::LaunchFailed {
                    reason: format!("cannot interrupt kernel {}: {err}", plan.kernel_id),
                    fault: Fault::Kernel,
                })
        }
    }
}
