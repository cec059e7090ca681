//! One kernel's shared state, and one *incarnation* of it: a launched process plus the sockets
//! the gateway itself holds, made ready by a kernel_info round trip.
//!
//! A zeromq DEALER does not survive its peer restarting, so an incarnation's sockets live and die
//! with its process: a restart builds a whole new [`Incarnation`].
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jupyter_protocol::sockets::{IopubSubscription, SessionChannels};
use jupyter_protocol::{Channel, ConnectionInfo, Header, IopubItem, Message, SocketOptions};
use kernel_launcher::{KernelSpec, PortRange};
use parking_lot::{Mutex, MutexGuard};
use resource_managers::{KernelProcess, LaunchRequest, ProcessState, ResourceManager};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_util::sync::CancellationToken;

use super::KernelSnapshot;
use super::error::ManagerError;
use super::events::KernelEvent;
use super::hub::GATEWAY_USERNAME;
use crate::Fault;

/// Log lines quoted in launch errors.
const LOG_TAIL_LINES: usize = 20;
/// How often kernel_info is re-sent while waiting for readiness (EG's nudge uses 0.5 s).
const NUDGE_INTERVAL: Duration = Duration::from_millis(500);
/// How long readiness waits for the kernel's `idle` after the kernel_info reply.
const SETTLE: Duration = Duration::from_millis(500);
/// After a failed connect to a starting kernel: how long to watch for its exit before
/// connecting again.
const CONNECT_RETRY_WAIT: Duration = Duration::from_millis(500);
/// Extra time given to a backend past the launch deadline before its future is dropped.
const BACKEND_GRACE: Duration = Duration::from_secs(2);

/// Mutable, frequently read state of a kernel (snapshots read it without asking the supervisor).
#[derive(Debug)]
pub(crate) struct Status {
    /// Last `execution_state` seen on iopub (or set by the supervisor).
    pub(crate) execution_state: String,
    /// Wall-clock time of the last iopub message.
    pub(crate) last_activity: time::OffsetDateTime,
    /// Monotonic time of the last iopub message (culling uses it, so paused time works).
    pub(crate) last_activity_at: Instant,
    /// Attached WebSocket clients.
    pub(crate) connections: usize,
    /// Why the kernel is unusable, if it is.
    pub(crate) reason: Option<String>,
    /// The current incarnation's address.
    pub(crate) host: String,
    /// Restarts so far.
    pub(crate) restarts: u32,
}

/// What the manager's table, the supervisor and WebSocket handlers share about one kernel.
#[derive(Debug)]
pub(crate) struct KernelShared {
    /// Kernel id.
    pub(crate) id: String,
    /// Kernelspec name.
    pub(crate) name: String,
    /// Effective user.
    pub(crate) username: String,
    /// The backend's name.
    pub(crate) backend: String,
    /// When the start was requested.
    pub(crate) created: time::OffsetDateTime,
    /// The kernel profile it was started under.
    pub(crate) profile: Option<String>,
    /// Status for snapshots.
    pub(crate) status: Mutex<Status>,
    /// The supervisor's event queue.
    pub(crate) events: mpsc::UnboundedSender<KernelEvent>,
    /// Set once by whoever shuts the kernel down (a concurrent second shutdown gets 404).
    pub(crate) shutdown_claimed: AtomicBool,
    /// Set once the first launch succeeded (until then the kernel is a start in flight).
    pub(crate) started: AtomicBool,
    /// Cancelled to abandon a start in flight (a shutdown of a starting kernel, or gateway exit).
    pub(crate) abort_start: CancellationToken,
}

impl KernelShared {
    /// Locks the status; a poisoned lock still holds consistent plain data, so it is recovered.
    pub(crate) fn status(&self) -> MutexGuard<'_, Status> {
        self.status.lock()
    }

    /// Whether the first launch finished.
    pub(crate) fn is_started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    /// The snapshot the HTTP layer shows; a start in flight is `starting` whatever the kernel
    /// published so far.
    pub(crate) fn snapshot(&self) -> KernelSnapshot {
        let starting = !self.is_started();
        let status = self.status();
        KernelSnapshot {
            id: self.id.clone(),
            name: self.name.clone(),
            last_activity: status.last_activity,
            execution_state: if starting {
                "starting".to_owned()
            } else {
                status.execution_state.clone()
            },
            connections: status.connections,
            reason: status.reason.clone(),
            username: self.username.clone(),
            backend: self.backend.clone(),
            host: status.host.clone(),
            restarts: status.restarts,
            created: self.created,
            profile: self.profile.clone(),
        }
    }

    /// Sets the execution state without counting it as activity.
    pub(crate) fn set_state(&self, state: &str) {
        state.clone_into(&mut self.status().execution_state);
    }

    /// Records an iopub message: activity always, execution state from `status` messages.
    pub(crate) fn observe_iopub(&self, msg: &Message) {
        self.observe_iopub_of(msg, &msg.msg_type());
    }

    /// [`KernelShared::observe_iopub`] for a message whose type the caller already read.
    pub(crate) fn observe_iopub_of(&self, msg: &Message, msg_type: &str) {
        let state = execution_state_if_status(msg, msg_type);
        let mut status = self.status();
        status.last_activity = time::OffsetDateTime::now_utc();
        status.last_activity_at = Instant::now();
        if let Some(state) = state {
            status.execution_state = state;
        }
    }
}

#[derive(Deserialize)]
struct StatusContent {
    execution_state: String,
}

/// The `execution_state` of an iopub `status` message.
pub(crate) fn execution_state_of(msg: &Message) -> Option<String> {
    execution_state_if_status(msg, &msg.msg_type())
}

/// [`execution_state_of`] for a message of type `msg_type` (only `status` has one).
fn execution_state_if_status(msg: &Message, msg_type: &str) -> Option<String> {
    if msg_type != "status" {
        return None;
    }
    msg.parse_content::<StatusContent>()
        .ok()
        .map(|c| c.execution_state)
}

/// A message type, or an empty string when the header does not parse.
pub(crate) fn msg_type(msg: &Message) -> String {
    msg.msg_type().into_owned()
}

/// Everything needed to launch (and relaunch) one kernel; fixed at start.
#[derive(Debug, Clone)]
pub(crate) struct LaunchPlan {
    /// The resource manager that launches (and relaunches) this kernel.
    pub(crate) backend: Arc<dyn ResourceManager>,
    /// The id the client sees; also names the connection file.
    pub(crate) kernel_id: String,
    /// The kernelspec as read at start: a relaunch uses the same argv even if the file changed.
    pub(crate) spec: KernelSpec,
    /// The kernel's environment after the env policy: allowed request variables, inherited
    /// gateway variables and the `KERNEL_*` ones.
    pub(crate) env: BTreeMap<String, String>,
    /// Working directory.
    pub(crate) cwd: Option<PathBuf>,
    /// Where the kernel's five ports are allocated from.
    pub(crate) port_range: PortRange,
    /// Launch timeout (launch plus readiness), for starts and restarts.
    pub(crate) timeout: Duration,
    /// Effective user.
    pub(crate) username: String,
    /// Whether the backend runs kernels elsewhere (anything but `local`): such a kernel is not
    /// restarted automatically when no client is connected.
    pub(crate) remote: bool,
    /// The OS account a local kernel runs as (impersonation), if not the gateway's.
    pub(crate) run_as: Option<resource_managers::RunAs>,
    /// What the kernel's profile asks of the backend.
    pub(crate) placement: resource_managers::Placement,
    /// The kernel's profile, if any.
    pub(crate) profile: Option<String>,
}

/// One running process of a kernel with the gateway's own sockets to it.
#[derive(Debug)]
pub(crate) struct Incarnation {
    /// Ports, transport and key of this incarnation (new ones on every relaunch).
    pub(crate) connection: ConnectionInfo,
    /// The backend's handle on the running kernel: poll, signal, kill, log tail.
    pub(crate) process: Arc<dyn KernelProcess>,
    /// The gateway's own shell/control/stdin session (kernel_info, interrupt and shutdown requests).
    pub(crate) session: SessionChannels,
    /// The gateway session id used for `session`.
    pub(crate) session_id: String,
    /// The kernel's one iopub subscription.
    pub(crate) iopub: IopubSubscription,
    /// When the process became ready.
    pub(crate) ready_at: Instant,
}

/// Socket options for a kernel, with connects bounded by `connect_timeout`. Messages from kernels
/// are not limited beyond the protocol crate's default (EG forwards outputs of any size).
pub(crate) fn socket_options(connect_timeout: Duration) -> SocketOptions {
    SocketOptions {
        connect_timeout,
        verify_aside_above: Some(jupyter_protocol::verdict::VERIFY_ASIDE_ABOVE),
        ..SocketOptions::default()
    }
}

/// Describes how a process ended.
pub(crate) fn describe_exit(state: &ProcessState) -> String {
    match state {
        ProcessState::Exited {
            code: Some(code), ..
        } => format!("exit code {code}"),
        ProcessState::Exited {
            signal: Some(signal),
            ..
        } => format!("killed by signal {signal}"),
        ProcessState::Exited { .. } => "exited".to_owned(),
        ProcessState::Running => "still running".to_owned(),
        ProcessState::Unknown => "state unknown".to_owned(),
    }
}

/// Where a kernel that ended during its launch ran, for the reason: a local kernel's host is the
/// gateway's (` on the gateway's host <name>`); a remote backend names its host itself.
fn on_which_host(remote: bool) -> String {
    if remote {
        return String::new();
    }
    let name = this_host();
    match name.trim() {
        "" => " on the gateway's host".to_owned(),
        name => format!(" on the gateway's host {name}"),
    }
}

/// This machine's host name, or an empty string if it cannot be had.
fn this_host() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_default()
}

/// `text`, followed by the process's last log lines when it has any.
pub(crate) fn with_log(text: String, process: &dyn KernelProcess) -> String {
    let tail = process.log_tail(LOG_TAIL_LINES);
    let tail = tail.trim();
    if tail.is_empty() {
        text
    } else {
        format!("{text}; kernel log: {tail}")
    }
}

/// Maps a backend error to a gateway error with the backend's text as the reason.
pub(crate) fn launch_error(err: resource_managers::Error) -> ManagerError {
    use resource_managers::Error as Rm;
    let fault = match &err {
        Rm::Unsupported(msg) => return ManagerError::Unsupported(msg.clone()),
        // A client value a backend refused before using it (an image reference, a name).
        Rm::InvalidRequest(msg) => {
            return ManagerError::BadRequest {
                message: msg.clone(),
            };
        }
        // Credentials refused by every host: 403 with the text in `reason`, as EG's SSH errors.
        Rm::Unauthorized(msg) => {
            return ManagerError::Forbidden {
                reason: msg.clone(),
                message: String::new(),
            };
        }
        // EG answers 503 when YARN had no room for the kernel before the deadline.
        Rm::Capacity(_) | Rm::Launcher(kernel_launcher::Error::NoFreePort(_)) => Fault::Capacity,
        Rm::Spawn(_) | Rm::ExitedDuringLaunch { .. } | Rm::LaunchTimeout(_) | Rm::Launcher(_) => {
            Fault::Kernel
        }
        _ => Fault::Internal,
    };
    ManagerError::LaunchFailed {
        reason: err.to_string(),
        fault,
    }
}

fn failed(reason: String) -> ManagerError {
    ManagerError::LaunchFailed {
        reason,
        fault: Fault::Kernel,
    }
}

/// Launches the kernel and waits until it answers kernel_info and its iopub subscription is live,
/// all within the plan's timeout. iopub messages seen meanwhile go to `on_iopub`. On failure
/// everything the launch allocated is torn down.
///
/// Cancelling `abort` abandons the launch once the backend has answered (a backend launch itself
/// is bounded by the deadline); what was started is torn down.
///
/// A kernel that dies because one of its ports was taken between allocation and its own bind (by
/// an unrelated process; nothing can reserve a port across that gap) is launched again on fresh
/// ports, within the same deadline.
pub(crate) async fn launch(
    plan: &LaunchPlan,
    previous: Option<ConnectionInfo>,
    on_iopub: &mut (dyn FnMut(IopubItem) + Send),
    abort: &CancellationToken,
) -> Result<Incarnation, ManagerError> {
    const PORT_RETRIES: usize = 2;
    let deadline = Instant::now() + plan.timeout;
    let mut previous = previous;
    let mut retries = 0;
    loop {
        match launch_once(plan, previous.clone(), deadline, on_iopub, abort).await {
            Ok(incarnation) => return Ok(incarnation),
            Err(Attempt::PortTaken(err)) if retries < PORT_RETRIES && Instant::now() < deadline => {
                retries += 1;
                tracing::warn!(kernel_id = %plan.kernel_id, error = %err,
                    "a kernel port was taken before the kernel bound it; launching again on fresh ports");
                previous = None;
            }
            Err(Attempt::PortTaken(err) | Attempt::Failed(err)) => return Err(err),
        }
    }
}

/// Why one launch attempt failed.
enum Attempt {
    /// The kernel exited during the launch and its log says a port it was given was in use: the
    /// one failure a new attempt on fresh ports cures.
    PortTaken(ManagerError),
    /// Anything else.
    Failed(ManagerError),
}

/// Whether a kernel's log says it could not bind a port: `EADDRINUSE` as ZeroMQ reports it
/// (libzmq's and pyzmq's text, the same in every language binding).
fn bind_failed(log: &str) -> bool {
    log.contains("Address already in use")
}

async fn launch_once(
    plan: &LaunchPlan,
    previous: Option<ConnectionInfo>,
    deadline: Instant,
    on_iopub: &mut (dyn FnMut(IopubItem) + Send),
    abort: &CancellationToken,
) -> Result<Incarnation, Attempt> {
    if abort.is_cancelled() {
        return Err(Attempt::Failed(failed(format!(
            "the launch of kernel {} was abandoned",
            plan.kernel_id
        ))));
    }
    let request = LaunchRequest {
        kernel_id: plan.kernel_id.clone(),
        spec: plan.spec.clone(),
        env: plan.env.clone(),
        cwd: plan.cwd.clone(),
        port_range: plan.port_range,
        timeout: deadline.saturating_duration_since(Instant::now()),
        previous,
        username: plan.username.clone(),
        run_as: plan.run_as.clone(),
        placement: plan.placement.clone(),
    };
    let launched = match timeout_at(deadline + BACKEND_GRACE, plan.backend.launch(request)).await {
        Ok(Ok(launched)) => launched,
        Ok(Err(err)) => return Err(Attempt::Failed(launch_error(err))),
        Err(_) => {
            return Err(Attempt::Failed(failed(format!(
                "kernel {} was not launched within {:.1} s",
                plan.kernel_id,
                plan.timeout.as_secs_f64()
            ))));
        }
    };
    let process: Arc<dyn KernelProcess> = Arc::from(launched.process);
    match ready(
        plan,
        &launched.connection,
        process.as_ref(),
        deadline,
        on_iopub,
        abort,
    )
    .await
    {
        Ok((session, session_id, iopub)) => Ok(Incarnation {
            connection: launched.connection,
            process,
            session,
            session_id,
            iopub,
            ready_at: Instant::now(),
        }),
        Err(err) => {
            // Decided from the kernel's own evidence (it ended, and its log says why), never from
            // the text of the error built above.
            let port_taken = matches!(process.poll().await, ProcessState::Exited { .. })
                && bind_failed(&process.log_tail(LOG_TAIL_LINES));
            teardown(process.as_ref(), Duration::from_secs(1), false).await;
            Err(if port_taken {
                Attempt::PortTaken(err)
            } else {
                Attempt::Failed(err)
            })
        }
    }
}

/// Terminates a process (SIGTERM, `grace`, SIGKILL) and releases what its launch allocated.
pub(crate) async fn teardown(
    process: &dyn KernelProcess,
    grace: Duration,
    keep_connection_file: bool,
) {
    if let Err(err) = process.terminate(grace).await {
        tracing::warn!(error = %err, "terminating a kernel process failed");
    }
    process.cleanup(keep_connection_file).await;
}

/// Connects iopub and the gateway's session, then nudges with kernel_info until both a reply and
/// an iopub message have arrived (so the subscription is known to be live).
async fn ready(
    plan: &LaunchPlan,
    info: &ConnectionInfo,
    process: &dyn KernelProcess,
    deadline: Instant,
    on_iopub: &mut (dyn FnMut(IopubItem) + Send),
    abort: &CancellationToken,
) -> Result<(SessionChannels, String, IopubSubscription), ManagerError> {
    let abandoned = || {
        failed(format!(
            "the launch of kernel {} was abandoned",
            plan.kernel_id
        ))
    };
    let session_id = uuid::Uuid::new_v4().to_string();
    let timed_out = || {
        failed(with_log(
            format!(
                "kernel {} did not become ready within {:.1} s",
                plan.kernel_id,
                plan.timeout.as_secs_f64()
            ),
            process,
        ))
    };
    let exited = |state: ProcessState| {
        failed(with_log(
            format!(
                "kernel {} exited during launch ({}){}",
                plan.kernel_id,
                describe_exit(&state),
                on_which_host(plan.remote)
            ),
            process,
        ))
    };
    // One wait for the whole launch, polled by every `select!` below: making a new one per loop
    // turn would restart a backend's liveness check (a communication-port probe for launcher
    // kernels) on every iopub message.
    let exit = process.wait();
    tokio::pin!(exit);
    let (mut iopub, mut session) = loop {
        let opts = socket_options(deadline.saturating_duration_since(Instant::now()));
        let connect = async {
            let iopub = IopubSubscription::connect(info, &opts).await?;
            let session = SessionChannels::connect(info, &session_id, &opts).await?;
            Ok::<_, jupyter_protocol::Error>((iopub, session))
        };
        let err = tokio::select! {
            connected = connect => match connected {
                Ok(sockets) => break sockets,
                // The connect timeout is the time left until the deadline.
                Err(jupyter_protocol::Error::ConnectTimeout(_)) => return Err(timed_out()),
                Err(err) => err,
            },
            state = &mut exit => return Err(exited(state)),
            () = sleep_until(deadline) => return Err(timed_out()),
            () = abort.cancelled() => return Err(abandoned()),
        };
        // A refused or reset connection usually means the kernel is dying (for example a port
        // of its was taken before it bound it): say so, with its log, once its exit is seen.
        // A kernel still alive afterwards is connected to again, within the same deadline.
        let settle = (Instant::now() + CONNECT_RETRY_WAIT).min(deadline);
        if let Ok(state) = timeout_at(settle, &mut exit).await {
            return Err(exited(state));
        }
        if Instant::now() >= deadline {
            return Err(failed(format!(
                "cannot connect to kernel {}: {err}",
                plan.kernel_id
            )));
        }
        tracing::info!(kernel_id = %plan.kernel_id, error = %err,
            "connecting to a starting kernel failed while it kept running; connecting again");
    };
    let mut sent: HashSet<String> = HashSet::new();
    let mut replied = false;
    let mut heard_iopub = false;
    let mut settled = false;
    let mut settle_by: Option<Instant> = None;
    let mut nudge = tokio::time::interval(NUDGE_INTERVAL);
    loop {
        if replied && heard_iopub {
            // Give the kernel a moment to publish `idle` for the nudge, so the state the caller
            // sees has settled; kernels that publish no status for kernel_info are not waited for.
            let by = *settle_by.get_or_insert_with(|| (Instant::now() + SETTLE).min(deadline));
            if settled || Instant::now() >= by {
                break;
            }
        }
        let settle_at = settle_by.unwrap_or(deadline);
        tokio::select! {
            _ = nudge.tick(), if !(replied && heard_iopub) => {
                let header = Header::new("kernel_info_request", &session_id, GATEWAY_USERNAME);
                sent.insert(header.msg_id.clone());
                let msg = Message::new(&header, &serde_json::json!({}));
                if let Err(err) = session.sender.send(Channel::Shell, msg).await {
                    return Err(failed(format!("cannot send kernel_info_request to kernel {}: {err}", plan.kernel_id)));
                }
            }
            reply = session.replies.recv() => match reply {
                Some((_, msg)) => {
                    if msg_type(&msg) == "kernel_info_reply" && msg.parent_msg_id().is_some_and(|id| sent.contains(&id)) {
                        replied = true;
                    }
                }
                None => return Err(failed(format!("the sockets of kernel {} closed during launch", plan.kernel_id))),
            },
            msg = iopub.messages.recv() => match msg {
                Some(msg) => {
                    heard_iopub = true;
                    if let Some(checked) = msg.checked()
                        && execution_state_of(checked).as_deref() == Some("idle")
                        && checked.parent_msg_id().is_some_and(|id| sent.contains(&id))
                    {
                        settled = true;
                    }
                    on_iopub(msg);
                }
                None => return Err(failed(format!("the iopub socket of kernel {} closed during launch", plan.kernel_id))),
            },
            state = &mut exit => return Err(exited(state)),
            () = sleep_until(settle_at), if settle_by.is_some() => {}
            () = sleep_until(deadline) => return Err(timed_out()),
            () = abort.cancelled() => return Err(abandoned()),
        }
    }
    Ok((session, session_id, iopub))
}

/// Re-attaches to a kernel a previous gateway (or this one, before a restart) launched: the
/// backend rebuilds its process handle from `record`, then the kernel must answer a heartbeat and
/// `kernel_info` (asked on control and shell, so a kernel busy with a long cell still answers on
/// control) before `deadline`. iopub messages seen meanwhile go to `on_iopub`. The error says
/// why the kernel cannot be kept; the caller decides what to do with a process that still runs.
pub(crate) async fn reattach(
    plan: &LaunchPlan,
    record: &resource_managers::KernelRecord,
    deadline: Instant,
    on_iopub: &mut (dyn FnMut(IopubItem) + Send),
) -> Result<Incarnation, ReattachError> {
    let launched = plan
        .backend
        .reattach(record)
        .await
        .map_err(|err| ReattachError::Gone(err.to_string()))?;
    let process: Arc<dyn KernelProcess> = Arc::from(launched.process);
    let info = launched.connection;
    let unresponsive = |why: String| ReattachError::Unresponsive {
        why,
        process: Arc::clone(&process),
    };
    let left = || deadline.saturating_duration_since(Instant::now());
    let opts = socket_options(left());
    let mut heartbeat = jupyter_protocol::sockets::Heartbeat::new(&info, &opts);
    let mut answered = false;
    while !answered && Instant::now() < deadline {
        answered = heartbeat
            .ping(left().min(Duration::from_secs(3)))
            .await
            .is_ok();
    }
    if !answered {
        return Err(unresponsive("it does not answer heartbeats".to_owned()));
    }
    let session_id = uuid::Uuid::new_v4().to_string();
    let connect = async {
        let iopub = IopubSubscription::connect(&info, &opts).await?;
        let session = SessionChannels::connect(&info, &session_id, &opts).await?;
        Ok::<_, jupyter_protocol::Error>((iopub, session))
    };
    let (mut iopub, mut session) = match timeout_at(deadline, connect).await {
        Ok(Ok(sockets)) => sockets,
        Ok(Err(err)) => return Err(unresponsive(format!("cannot connect to it: {err}"))),
        Err(_) => return Err(unresponsive("connecting to it timed out".to_owned())),
    };
    let mut sent: HashSet<String> = HashSet::new();
    for channel in [Channel::Control, Channel::Shell] {
        let header = Header::new("kernel_info_request", &session_id, GATEWAY_USERNAME);
        sent.insert(header.msg_id.clone());
        let msg = Message::new(&header, &serde_json::json!({}));
        if let Err(err) = session.sender.send(channel, msg).await {
            return Err(unresponsive(format!(
                "cannot send kernel_info_request: {err}"
            )));
        }
    }
    {
        let exit = process.wait();
        tokio::pin!(exit);
        loop {
            tokio::select! {
                reply = session.replies.recv() => match reply {
                    Some((_, msg)) => {
                        if msg_type(&msg) == "kernel_info_reply" && msg.parent_msg_id().is_some_and(|id| sent.contains(&id)) {
                            break;
                        }
                    }
                    None => return Err(unresponsive("its sockets closed".to_owned())),
                },
                msg = iopub.messages.recv() => match msg {
                    Some(msg) => on_iopub(msg),
                    None => return Err(unresponsive("its iopub socket closed".to_owned())),
                },
                state = &mut exit => return Err(ReattachError::Gone(format!("it ended ({})", describe_exit(&state)))),
                () = sleep_until(deadline) => return Err(unresponsive("it did not answer kernel_info in time".to_owned())),
            }
        }
    }
    Ok(Incarnation {
        connection: info,
        process,
        session,
        session_id,
        iopub,
        ready_at: Instant::now(),
    })
}

/// Why a stored kernel could not be re-attached.
#[derive(Debug)]
pub(crate) enum ReattachError {
    /// Its process is gone (or its backend cannot find it).
    Gone(String),
    /// Its process was found but does not answer; the handle lets the caller stop it.
    Unresponsive {
        /// What did not answer.
        why: String,
        /// The re-attached process.
        process: Arc<dyn KernelProcess>,
    },
}

#[cfg(test)]
mod tests {
    use super::{on_which_host, this_host};

    #[test]
    fn a_local_kernel_that_ended_names_the_gateways_host() {
        let local = on_which_host(false);
        let name = this_host();
        assert!(!name.is_empty());
        assert!(local.starts_with(" on the gateway's host"), "{local}");
        assert!(local.ends_with(name.trim()), "{local}");
        assert_eq!(
            on_which_host(true),
            "",
            "a remote backend names its own host"
        );
    }
}
