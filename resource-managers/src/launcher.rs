//! What every backend whose kernels start through an EG-style *launcher* shares (the `ssh` and
//! `yarn` backends here; container and out-of-tree backends alike): the launcher's argv
//! variables, and its communication port together with what the kernel's shutdown did to it.
//!
//! A launcher calls the gateway's [`ResponseListener`] back with the kernel's connection info and,
//! usually, the port of a small listener of its own (the *communication port*) through which the
//! gateway signals the kernel and finally tells the launcher to stop. EG's launchers keep their
//! process alive for that listener, so once the gateway has sent the kernel `shutdown_request`
//! and told the listener to stop, a refusing port means the kernel is gone.
//! [`LauncherComm`] holds that state, and [`LauncherComm::terminate`] is the stop every such
//! backend performs: SIGTERM and "stop listening" through the port, a grace period, then the
//! backend's own kill (YARN's kill call, a signal over SSH, a container's removal).
//!
//! The launch side is shared too:
//! * [`LauncherSettings`]: what every such backend's configuration holds (the response
//!   listener, the log directory, the PATH for a relative `argv[0]`, the communication-port,
//!   poll and request timeouts);
//! * [`LauncherProcess::spawn`]: the launcher (or submit command) started here, logged, in its
//!   own process group, reaped, and killed with a bound;
//! * [`await_callback`]: waits for the launcher's callback while a backend's [`LaunchWatch`]
//!   looks at where the kernel is placed (a YARN application, a pod, a container), with the
//!   launch deadline, and says which of the usual ways it failed ([`WaitFailure`]);
//! * [`FinalState`]: a kernel's final state once seen, so that later polls skip the backend.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use kernel_launcher::{
    CommOutcome, CommPort, LauncherResponse, PendingLaunch, ResponseListener, template,
};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::{Error, LaunchRequest, ProcessState};

/// How long a killed launcher process has to go before [`LauncherProcess::kill`] stops waiting.
const LAUNCHER_KILL_WAIT: Duration = Duration::from_secs(2);

/// What the configuration of every launcher backend holds. A backend's own settings struct
/// carries one as its `launcher` field, next to what only that backend needs.
#[derive(Debug, Clone)]
pub struct LauncherSettings {
    /// The gateway's response listener, which the launchers call back.
    pub response: Arc<ResponseListener>,
    /// Where launcher output goes (`EG_KERNEL_LOG_DIR`), one `kernel-<id>.log` a kernel.
    pub log_dir: PathBuf,
    /// The gateway's PATH, to resolve a relative `argv[0]`.
    pub search_path: Vec<PathBuf>,
    /// Connect timeout of communication-port requests (`EG_SOCKET_TIMEOUT`).
    pub comm_timeout: Duration,
    /// Pause between the backend's polls during a launch and afterwards (`EG_POLL_INTERVAL`).
    pub poll_interval: Duration,
    /// Timeout of one request to the backend's service (RM, API server, engine).
    pub request_timeout: Duration,
}

impl LauncherSettings {
    /// EG's defaults (0.5 s polls, 30 s requests, the comm port's default connect timeout)
    /// for everything but the listener and the log directory.
    pub fn new(response: Arc<ResponseListener>, log_dir: PathBuf) -> LauncherSettings {
        LauncherSettings {
            response,
            log_dir,
            search_path: Vec::new(),
            comm_timeout: kernel_launcher::comm::DEFAULT_CONNECT_TIMEOUT,
            poll_interval: Duration::from_millis(500),
            request_timeout: Duration::from_secs(30),
        }
    }

    /// The log of one kernel's launch: `<log_dir>/kernel-<id>.log`.
    pub fn log_path(&self, kernel_id: &str) -> PathBuf {
        self.log_dir.join(format!("kernel-{kernel_id}.log"))
    }

    /// The communication port a launcher reported, at the kernel's address.
    pub fn comm_port(&self, ip: std::net::IpAddr, port: u16) -> CommPort {
        CommPort::new(std::net::SocketAddr::new(ip, port), self.comm_timeout)
    }
}

/// A launcher (or submit command) started on the gateway's machine: its process group and the
/// reaper's view of its exit.
#[derive(Debug, Clone)]
pub struct LauncherProcess {
    pid: Pid,
    exit: watch::Receiver<ProcessState>,
}

impl LauncherProcess {
    /// Starts `argv` (`program` is the resolved `argv[0]`) as [`crate::process::spawn_logged`]
    /// does, with `JPY_PARENT_PID`, and reaps it in the background. `what` names it in errors
    /// and logs ("launcher", "submit command").
    pub fn spawn(
        request: &LaunchRequest,
        program: &Path,
        argv: &[String],
        log_path: &Path,
        what: &str,
    ) -> Result<LauncherProcess, Error> {
        LauncherProcess::start(request, program, argv, log_path, what, true)
    }

    /// As [`Self::spawn`], without `JPY_PARENT_PID`: a launcher as independent of the gateway
    /// as one started on another host, whose kernel outlives the gateway and is re-attached
    /// (the `ssh` backend's launches on this machine).
    pub fn spawn_independent(
        request: &LaunchRequest,
        program: &Path,
        argv: &[String],
        log_path: &Path,
        what: &str,
    ) -> Result<LauncherProcess, Error> {
        LauncherProcess::start(request, program, argv, log_path, what, false)
    }

    fn start(
        request: &LaunchRequest,
        program: &Path,
        argv: &[String],
        log_path: &Path,
        what: &str,
        parent_pid: bool,
    ) -> Result<LauncherProcess, Error> {
        let child =
            crate::process::spawn_logged(request, program, argv, log_path, what, parent_pid)?;
        let Some(pid) = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw)
        else {
            return Err(Error::Spawn(format!(
                "the {what} of kernel '{}' started without a process id",
                request.spec.name
            )));
        };
        Ok(LauncherProcess {
            pid,
            exit: crate::process::spawn_reaper(child, pid),
        })
    }

    /// Its process id (and process group id).
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Its state now: running until the reaper saw it end.
    pub fn state(&self) -> ProcessState {
        *self.exit.borrow()
    }

    /// Until the reaper saw it end: its final state (`Unknown` if the reaper is gone).
    pub async fn wait(&self) -> ProcessState {
        let mut exit = self.exit.clone();
        match exit.wait_for(|s| *s != ProcessState::Running).await {
            Ok(state) => *state,
            Err(_) => ProcessState::Unknown,
        }
    }

    /// A receiver of its state, for a loop that watches the launcher among other things without
    /// making a new [`Self::wait`] on every turn.
    pub fn exit_watch(&self) -> tokio::sync::watch::Receiver<ProcessState> {
        self.exit.clone()
    }

    /// SIGKILLs its process group now, without waiting (for `Drop`).
    pub fn kill_now(&self) {
        if self.state() == ProcessState::Running {
            let _ = killpg(self.pid, Signal::SIGKILL);
        }
    }

    /// SIGKILLs its process group and waits, two seconds at most, for it to be reaped.
    pub async fn kill(&self) {
        if self.state() == ProcessState::Running {
            let _ = killpg(self.pid, Signal::SIGKILL);
            let mut exit = self.exit.clone();
            let _ = tokio::time::timeout(
                LAUNCHER_KILL_WAIT,
                exit.wait_for(|s| *s != ProcessState::Running),
            )
            .await;
        }
    }
}

/// What a [`LaunchWatch`] saw of the kernel's placement in one look.
#[derive(Debug)]
pub enum Probe<P, F> {
    /// Nothing of the kernel exists yet. A launcher that has exited non-zero by now failed.
    NotFound,
    /// It exists and is starting (waiting for resources, pulling an image, ...).
    Starting,
    /// It runs and is reachable as `P` (its address, host, ...).
    Placed(P),
    /// It ended or cannot start: the launch fails with `F`.
    Failed(F),
}

/// A backend's view of where a launching kernel is placed, looked at by [`await_callback`]
/// every poll interval. The watcher keeps what it learns (ids, the last service error), so
/// that after the wait the backend can word its error from it.
#[async_trait]
pub trait LaunchWatch: Send {
    /// Where a placed kernel is reachable.
    type Placed: Send;
    /// Why the placement failed, in the backend's terms.
    type Failure: Send;
    /// Looks once. A service error is not a failure: keep it for the timeout message and
    /// answer what was seen before.
    async fn probe(&mut self) -> Probe<Self::Placed, Self::Failure>;

    /// Resolves when the watcher has news to look at before the next poll interval (a watch
    /// event of the backend's service), so that [`await_callback`] looks again at once. It
    /// must be cancel-safe: the wait drops it when something else wakes it first. The
    /// default never resolves: looks follow the poll interval.
    async fn changed(&mut self) {
        std::future::pending::<()>().await;
    }
}

/// How waiting for a launcher's callback ended without a kernel.
#[derive(Debug)]
pub enum WaitFailure<F> {
    /// The response listener stopped (or refused the registration).
    Listener(Error),
    /// The launcher process exited non-zero before the kernel was seen anywhere.
    LauncherExited(ProcessState),
    /// The watcher saw the placement fail.
    Placement(F),
    /// The deadline passed (with or without a callback or a placement).
    Timeout,
}

/// Waits until the launcher has called back *and* `watch` reports the kernel placed, or until
/// it fails or `deadline` passes. Each round `watch` looks once (bounded by the deadline), then
/// the wait sleeps until the callback arrives, `launcher` (if one runs here) exits, `watch`
/// has news ([`LaunchWatch::changed`]), or `poll_interval` passes. A placement once seen is kept. Returns the callback's payload with
/// the last placement.
pub async fn await_callback<W: LaunchWatch>(
    watch: &mut W,
    pending: &mut PendingLaunch,
    launcher: Option<&LauncherProcess>,
    poll_interval: Duration,
    deadline: Instant,
) -> Result<(LauncherResponse, W::Placed), WaitFailure<W::Failure>> {
    let mut exit = launcher.map(|l| l.exit.clone());
    let mut launcher_state = ProcessState::Running;
    let mut placed: Option<W::Placed> = None;
    let mut response: Option<LauncherResponse> = None;
    let mut tick = tokio::time::interval(poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        match tokio::time::timeout_at(deadline, watch.probe()).await {
            Err(_) => return Err(WaitFailure::Timeout),
            Ok(Probe::Failed(why)) => return Err(WaitFailure::Placement(why)),
            Ok(Probe::Placed(at)) => placed = Some(at),
            Ok(Probe::Starting) => {}
            Ok(Probe::NotFound) => {
                if let ProcessState::Exited { code, .. } = launcher_state
                    && code != Some(0)
                {
                    return Err(WaitFailure::LauncherExited(launcher_state));
                }
            }
        }
        if response.is_some() && placed.is_some() {
            break;
        }
        tokio::select! {
            got = &mut *pending, if response.is_none() => match got {
                Ok(r) => response = Some(r),
                Err(err) => return Err(WaitFailure::Listener(Error::Spawn(err.to_string()))),
            },
            changed = async {
                match exit.as_mut() {
                    Some(rx) => rx.changed().await,
                    None => std::future::pending().await,
                }
            }, if exit.is_some() && launcher_state == ProcessState::Running => {
                launcher_state = exit.as_mut().map_or(ProcessState::Unknown, |rx| *rx.borrow_and_update());
                if changed.is_err() && launcher_state == ProcessState::Running {
                    launcher_state = ProcessState::Unknown;
                }
                tracing::debug!(kernel_id = pending.kernel_id(), ?launcher_state, "the launcher process ended");
            }
            () = watch.changed() => {}
            _ = tick.tick() => {}
            () = tokio::time::sleep_until(deadline) => return Err(WaitFailure::Timeout),
        }
    }
    match (response, placed) {
        (Some(response), Some(placed)) => Ok((response, placed)),
        _ => Err(WaitFailure::Timeout),
    }
}

/// A kernel's final state once a backend has seen it (it cannot change any more), so that
/// polls after it need not ask the backend's service again.
#[derive(Debug, Default)]
pub struct FinalState(parking_lot::Mutex<Option<ProcessState>>);

impl FinalState {
    /// The final state, if one was seen.
    pub fn get(&self) -> Option<ProcessState> {
        *self.0.lock()
    }

    /// Keeps `state` if it is final ([`ProcessState::Exited`]) and returns it either way.
    pub fn remember(&self, state: ProcessState) -> ProcessState {
        if matches!(state, ProcessState::Exited { .. }) {
            *self.0.lock() = Some(state);
        }
        state
    }
}

/// The user and group a container backend's kernel runs as (`KERNEL_UID`, `KERNEL_GID`; EG's
/// defaults 1000 and 100) and the ids refused (`EG_PROHIBITED_UIDS`, `EG_PROHIBITED_GIDS`;
/// default `0`): what the `docker` and `kubernetes` settings share beside [`LauncherSettings`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelIds {
    /// `KERNEL_UID` values refused.
    pub prohibited_uids: Vec<u32>,
    /// `KERNEL_GID` values refused.
    pub prohibited_gids: Vec<u32>,
}

impl Default for KernelIds {
    fn default() -> KernelIds {
        KernelIds {
            prohibited_uids: vec![0],
            prohibited_gids: vec![0],
        }
    }
}

impl KernelIds {
    /// The request's `KERNEL_UID` and `KERNEL_GID` (EG's defaults when absent), checked with
    /// EG's messages; a bad or prohibited id is [`Error::Unauthorized`] (EG's 403).
    pub fn check(&self, env: &BTreeMap<String, String>) -> Result<(u32, u32), Error> {
        let uid = check_id(env, "UID", "1000", &self.prohibited_uids)?;
        let gid = check_id(env, "GID", "100", &self.prohibited_gids)?;
        Ok((uid, gid))
    }
}

fn check_id(
    env: &BTreeMap<String, String>,
    what: &str,
    default: &str,
    prohibited: &[u32],
) -> Result<u32, Error> {
    let value = env
        .get(&format!("KERNEL_{what}"))
        .map_or(default, String::as_str);
    let number: i128 = value.trim().parse().map_err(|_| {
        Error::Unauthorized(format!(
            "Invalid KERNEL_{what} value '{}': not a valid integer!",
            excerpt(value)
        ))
    })?;
    let id = u32::try_from(number).map_err(|_| {
        Error::Unauthorized(format!(
            "Invalid KERNEL_{what} value '{}': must be in range 0-4294967295!",
            excerpt(value)
        ))
    })?;
    if prohibited.contains(&id) {
        return Err(Error::Unauthorized(format!(
            "Kernel's {what} value of '{id}' has been denied via EG_PROHIBITED_{what}S!"
        )));
    }
    Ok(id)
}

/// A client's working directory for a container (`KERNEL_WORKING_DIR`): an absolute POSIX
/// path, printable, at most 4096 bytes; otherwise a 400 naming `field`.
pub fn check_working_dir(field: &str, value: &str) -> Result<(), Error> {
    let ok = value.starts_with('/') && value.len() <= 4096 && !value.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!(
            "{field} '{}' must be an absolute path without control characters",
            excerpt(value)
        )))
    }
}

/// A printable excerpt of a client value for error messages: control characters escaped, at
/// most 80 characters (then `…`).
pub fn excerpt(value: &str) -> String {
    let mut out: String = value
        .chars()
        .take(80)
        .flat_map(char::escape_debug)
        .collect();
    if value.chars().count() > 80 {
        out.push('…');
    }
    out
}

/// The `{…}` values a launcher's argv template gets: `kernel_id`, `response_address`,
/// `public_key`, `port_range`, `resource_dir`, `transport_encryption` (empty, as EG sends it),
/// and `prefix` when the kernelspec sits in a Python environment.
pub fn launcher_vars(
    request: &LaunchRequest,
    listener: &ResponseListener,
) -> BTreeMap<&'static str, String> {
    let spec = &request.spec;
    let mut vars: BTreeMap<&'static str, String> = BTreeMap::new();
    vars.insert("kernel_id", request.kernel_id.clone());
    vars.insert("response_address", listener.response_address());
    vars.insert("public_key", listener.public_key_b64().to_owned());
    vars.insert("port_range", request.port_range.to_template());
    vars.insert(
        "resource_dir",
        spec.resource_dir.to_string_lossy().into_owned(),
    );
    vars.insert("transport_encryption", String::new());
    if let Some(prefix) = spec.prefix() {
        vars.insert("prefix", prefix.to_string_lossy().into_owned());
    }
    vars
}

/// The kernelspec's argv with [`launcher_vars`] filled in, item by item.
pub fn launcher_argv(request: &LaunchRequest, listener: &ResponseListener) -> Vec<String> {
    template::substitute(&request.spec.argv, &launcher_vars(request, listener))
}

/// A way to a launcher's communication port: [`CommPort`] directly, or a backend's own path to
/// it (the `ssh` backend tunnels through its SSH connection).
#[async_trait]
pub trait CommChannel: Send + Sync + Debug {
    /// Sends one request (`{"signum": n}` or `{"shutdown": 1}`) and reports what happened.
    async fn send(&self, request: &serde_json::Value) -> CommOutcome;
}

#[async_trait]
impl CommChannel for CommPort {
    async fn send(&self, request: &serde_json::Value) -> CommOutcome {
        CommPort::send(self, request).await
    }
}

/// A launcher's communication port (if it reported one) and whether its listener was told to
/// stop after the kernel's `shutdown_request`.
#[derive(Debug)]
pub struct LauncherComm<C = CommPort> {
    port: Option<C>,
    listener_stopped: AtomicBool,
}

impl<C: CommChannel> LauncherComm<C> {
    /// The port as the launcher reported it (`None` when it has none).
    pub fn new(port: Option<C>) -> LauncherComm<C> {
        LauncherComm {
            port,
            listener_stopped: AtomicBool::new(false),
        }
    }

    /// The port, if the launcher has one.
    pub fn port(&self) -> Option<&C> {
        self.port.as_ref()
    }

    /// Sends `signum` (0 probes); without a port the outcome is `Unknown` with the reason.
    pub async fn signal(&self, signum: i32) -> CommOutcome {
        match &self.port {
            Some(port) => port.send(&serde_json::json!({ "signum": signum })).await,
            None => CommOutcome::Unknown("the launcher has no communication port".to_owned()),
        }
    }

    /// For [`crate::KernelProcess::signal`]: sends `signum` through the port as a kernel's
    /// signal. Without a port it is [`Error::Unsupported`]; a refused connection is
    /// `not_running()`; another failure an I/O error naming the kernel `at` its place.
    pub async fn signal_kernel(
        &self,
        kernel_id: &str,
        signum: i32,
        at: &str,
        not_running: impl FnOnce() -> Error,
    ) -> Result<(), Error> {
        if self.port.is_none() {
            return Err(Error::Unsupported(format!(
                "kernel {kernel_id}: its launcher has no communication port to signal through"
            )));
        }
        match self.signal(signum).await {
            CommOutcome::Delivered => Ok(()),
            CommOutcome::Refused => Err(not_running()),
            CommOutcome::Unknown(why) => Err(Error::Io(std::io::Error::other(format!(
                "cannot signal kernel {kernel_id} {at}: {why}"
            )))),
        }
    }

    /// Tells the launcher's listener to stop; `None` without a port.
    pub async fn stop_listener(&self) -> Option<CommOutcome> {
        let port = self.port.as_ref()?;
        Some(port.send(&serde_json::json!({ "shutdown": 1 })).await)
    }

    /// For [`crate::KernelProcess::shutdown_requested`]: tells the listener to stop and
    /// remembers that it was told.
    pub async fn shutdown_requested(&self, kernel_id: &str) {
        if let Some(outcome) = self.stop_listener().await {
            tracing::debug!(
                kernel_id,
                ?outcome,
                "told the launcher's listener that the kernel is shutting down"
            );
            self.listener_stopped.store(true, Ordering::SeqCst);
        }
    }

    /// Whether the listener was told to stop (see [`Self::shutdown_requested`]).
    pub fn listener_stopped(&self) -> bool {
        self.port.is_some() && self.listener_stopped.load(Ordering::SeqCst)
    }

    /// Whether the listener, told to stop, now refuses connections: the kernel is gone.
    pub async fn listener_gone(&self) -> bool {
        self.listener_stopped() && self.signal(0).await == CommOutcome::Refused
    }

    /// For [`crate::KernelProcess::poll`]: the backend's own view of the kernel, `state`, except
    /// that a kernel the backend still sees running is gone once [`Self::listener_gone`].
    pub async fn poll_state(&self, state: ProcessState) -> ProcessState {
        if state == ProcessState::Running && self.listener_gone().await {
            return ProcessState::GONE;
        }
        state
    }

    /// Asks the launcher to stop the kernel: SIGTERM, then "stop listening". Returns whether
    /// nothing is left to wait for (the signal was refused after the listener had been told to
    /// stop: the kernel answered its `shutdown_request`). Without a port, `false`.
    pub async fn ask_to_stop(&self, kernel_id: &str) -> bool {
        if self.port.is_none() {
            return false;
        }
        let term = self.signal(Signal::SIGTERM as i32).await;
        let stop = self.stop_listener().await;
        tracing::debug!(
            kernel_id,
            ?term,
            ?stop,
            "asked the launcher to stop the kernel"
        );
        term == CommOutcome::Refused && self.listener_stopped()
    }

    /// The stop of a launcher-started kernel: [`Self::ask_to_stop`], then up to `grace` for
    /// `exited` (no grace when nothing is left to wait for), then `kill`, the backend's own
    /// forced stop, which reports the final state. When `kill` fails, SIGKILL goes through the
    /// port as a last resort and the error is returned.
    pub async fn terminate<E, K>(
        &self,
        kernel_id: &str,
        grace: Duration,
        exited: impl Fn() -> E,
        kill: impl FnOnce() -> K,
    ) -> Result<ProcessState, Error>
    where
        E: Future<Output = ProcessState>,
        K: Future<Output = Result<ProcessState, Error>>,
    {
        let grace = if self.ask_to_stop(kernel_id).await {
            Duration::ZERO
        } else {
            grace
        };
        if let Ok(state) = tokio::time::timeout(grace, exited()).await {
            return Ok(state);
        }
        tracing::info!(kernel_id, "kernel did not stop in time; killing it");
        match kill().await {
            Ok(state) => Ok(state),
            Err(err) => {
                tracing::warn!(
                    kernel_id,
                    "kill failed ({err}); killing through the launcher"
                );
                let _ = self.signal(Signal::SIGKILL as i32).await;
                Err(err)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A port that answers from a script and records what it was sent.
    #[derive(Debug, Default)]
    struct Scripted {
        /// Answers to signals (after the first `shutdown`, `after_stop` is used).
        signal: Option<CommOutcome>,
        after_stop: Option<CommOutcome>,
        sent: Mutex<Vec<serde_json::Value>>,
    }

    #[async_trait]
    impl CommChannel for Scripted {
        async fn send(&self, request: &serde_json::Value) -> CommOutcome {
            let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
            let stopped = sent.iter().any(|r| r.get("shutdown").is_some());
            sent.push(request.clone());
            if request.get("shutdown").is_some() {
                return CommOutcome::Delivered;
            }
            let answer = if stopped {
                &self.after_stop
            } else {
                &self.signal
            };
            answer.clone().unwrap_or(CommOutcome::Delivered)
        }
    }

    fn sent(comm: &LauncherComm<Scripted>) -> Vec<serde_json::Value> {
        comm.port()
            .map(|p| p.sent.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default()
    }

    /// A watch answering from a script (its last answer repeats), counting its looks.
    struct ScriptedWatch {
        answers: Vec<Probe<u16, &'static str>>,
        looks: usize,
    }

    #[async_trait]
    impl LaunchWatch for ScriptedWatch {
        type Placed = u16;
        type Failure = &'static str;
        async fn probe(&mut self) -> Probe<u16, &'static str> {
            self.looks += 1;
            if self.answers.len() > 1 {
                self.answers.remove(0)
            } else {
                match self.answers.first() {
                    Some(Probe::Placed(p)) => Probe::Placed(*p),
                    Some(Probe::Failed(f)) => Probe::Failed(*f),
                    Some(Probe::Starting) => Probe::Starting,
                    _ => Probe::NotFound,
                }
            }
        }
    }

    async fn wait_with(
        answers: Vec<Probe<u16, &'static str>>,
        within: Duration,
    ) -> (Result<u16, WaitFailure<&'static str>>, usize) {
        let listener = ResponseListener::bind(
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            kernel_launcher::ListenerOptions::default(),
        )
        .await
        .expect("listener");
        let mut pending = listener.register("k").expect("register");
        let mut watch = ScriptedWatch { answers, looks: 0 };
        let got = await_callback(
            &mut watch,
            &mut pending,
            None,
            Duration::from_millis(10),
            Instant::now() + within,
        )
        .await
        .map(|(_, placed)| placed);
        (got, watch.looks)
    }

    #[tokio::test]
    async fn a_failed_placement_ends_the_wait_at_once() {
        let (got, looks) = wait_with(
            vec![Probe::NotFound, Probe::Starting, Probe::Failed("gone")],
            Duration::from_secs(30),
        )
        .await;
        assert!(matches!(got, Err(WaitFailure::Placement("gone"))));
        assert_eq!(looks, 3);
    }

    #[tokio::test]
    async fn a_placement_without_a_callback_times_out() {
        let started = Instant::now();
        let (got, looks) = wait_with(vec![Probe::Placed(7)], Duration::from_millis(200)).await;
        assert!(matches!(got, Err(WaitFailure::Timeout)));
        assert!(looks > 2, "looked {looks} times");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn kernel_ids_as_eg_checks_them() {
        let ids = KernelIds::default();
        let env = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(ids.check(&env(&[])).ok(), Some((1000, 100)));
        let message = |pairs: &[(&str, &str)]| {
            ids.check(&env(pairs))
                .map_err(|e| (matches!(e, Error::Unauthorized(_)), e.to_string()))
                .err()
        };
        assert_eq!(
            message(&[("KERNEL_UID", "0")]),
            Some((
                true,
                "Kernel's UID value of '0' has been denied via EG_PROHIBITED_UIDS!".into()
            ))
        );
        assert_eq!(
            message(&[("KERNEL_GID", "x")]),
            Some((
                true,
                "Invalid KERNEL_GID value 'x': not a valid integer!".into()
            ))
        );
        assert_eq!(
            message(&[("KERNEL_UID", "4294967296")]),
            Some((
                true,
                "Invalid KERNEL_UID value '4294967296': must be in range 0-4294967295!".into()
            ))
        );
        assert!(message(&[("KERNEL_UID", "-1")]).is_some());
        assert!(message(&[("KERNEL_GID", "0")]).is_some());
        let open = KernelIds {
            prohibited_uids: Vec::new(),
            prohibited_gids: Vec::new(),
        };
        assert_eq!(
            open.check(&env(&[("KERNEL_UID", " 0 ")])).ok(),
            Some((0, 100))
        );
    }

    #[test]
    fn only_exits_are_remembered_as_final() {
        let cell = FinalState::default();
        assert_eq!(cell.remember(ProcessState::Running), ProcessState::Running);
        assert_eq!(cell.get(), None);
        let exit = ProcessState::Exited {
            code: Some(0),
            signal: None,
        };
        assert_eq!(cell.remember(exit), exit);
        assert_eq!(cell.get(), Some(exit));
    }

    #[tokio::test]
    async fn without_a_port_nothing_is_sent_and_signals_are_unknown() {
        let comm: LauncherComm<Scripted> = LauncherComm::new(None);
        assert!(matches!(comm.signal(2).await, CommOutcome::Unknown(_)));
        assert_eq!(comm.stop_listener().await, None);
        comm.shutdown_requested("k").await;
        assert!(!comm.listener_stopped());
        assert!(!comm.listener_gone().await);
        assert!(!comm.ask_to_stop("k").await);
    }

    #[tokio::test]
    async fn a_refusing_listener_after_shutdown_means_the_kernel_is_gone() {
        let comm = LauncherComm::new(Some(Scripted {
            after_stop: Some(CommOutcome::Refused),
            ..Scripted::default()
        }));
        assert!(!comm.listener_gone().await, "not told to stop yet");
        comm.shutdown_requested("k").await;
        assert!(comm.listener_stopped());
        assert!(comm.listener_gone().await);
        // Terminating now needs no grace period and no kill.
        let state = comm
            .terminate(
                "k",
                Duration::from_secs(3600),
                || async {
                    ProcessState::Exited {
                        code: Some(0),
                        signal: None,
                    }
                },
                || async { Err(Error::Unsupported("no kill expected".into())) },
            )
            .await;
        assert!(matches!(
            state,
            Ok(ProcessState::Exited { code: Some(0), .. })
        ));
        let sent = sent(&comm);
        // Nothing is sent before the shutdown; then a probe, SIGTERM and the stop.
        assert_eq!(sent.first(), Some(&serde_json::json!({"shutdown": 1})));
        assert!(sent.contains(&serde_json::json!({"signum": 0})));
        assert!(sent.contains(&serde_json::json!({"signum": Signal::SIGTERM as i32})));
    }

    #[tokio::test]
    async fn a_kernel_that_does_not_stop_gets_the_backends_kill_then_sigkill_by_port() {
        let comm = LauncherComm::new(Some(Scripted::default()));
        let killed = comm
            .terminate(
                "k",
                Duration::from_millis(20),
                std::future::pending::<ProcessState>,
                || async {
                    Ok(ProcessState::Exited {
                        code: None,
                        signal: Some(9),
                    })
                },
            )
            .await;
        assert!(matches!(
            killed,
            Ok(ProcessState::Exited {
                signal: Some(9),
                ..
            })
        ));
        assert!(!sent(&comm).contains(&serde_json::json!({"signum": 9})));
        let failed = comm
            .terminate(
                "k",
                Duration::from_millis(20),
                std::future::pending::<ProcessState>,
                || async { Err(Error::Unsupported("the RM is away".into())) },
            )
            .await;
        assert!(matches!(failed, Err(Error::Unsupported(_))));
        assert!(sent(&comm).contains(&serde_json::json!({"signum": 9})));
    }
}
