//! The pure decisions of a kernel's lifecycle: whether it is alive, whether to restart it after
//! an unexpected exit, and whether the culler takes it. The supervisor acts on them; tests can
//! check them without processes (time is passed in, so `tokio::time::pause()` works too).
use std::time::Duration;

use resource_managers::ProcessState;

use crate::config::Culling;

/// An incarnation that ran at least this long before it ended starts a new series of
/// automatic restarts (jupyter_client's `stable_start_time`).
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

/// What heartbeat and process state together say about a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// It runs and answers (or runs and heartbeats are not in question).
    Alive,
    /// Its process runs but it does not answer heartbeats: kept, and reported in the model.
    Unresponsive,
    /// It is gone: its process ended, or the backend cannot tell and it does not answer.
    Dead,
}

/// Combines the heartbeat (`answering`) with the resource manager's own view of the process.
///
/// The backend's word wins when it has one: an ended process is dead even if something still
/// answers on its port, and a running local process that stopped answering (stuck in native
/// code, stopped with SIGSTOP) is kept, as EG keeps it. When the backend cannot tell (a remote
/// host that does not answer), the heartbeat decides.
pub fn liveness(answering: bool, state: ProcessState) -> Liveness {
    match (state, answering) {
        (ProcessState::Exited { .. }, _) => Liveness::Dead,
        (ProcessState::Running | ProcessState::Unknown, true) => Liveness::Alive,
        (ProcessState::Running, false) => Liveness::Unresponsive,
        (ProcessState::Unknown, false) => Liveness::Dead,
    }
}

/// What to do after a kernel ended unexpectedly (or a relaunch failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartDecision {
    /// Relaunch it; this is the `attempt`-th consecutive one.
    Restart {
        /// 1-based attempt in the current series.
        attempt: u32,
    },
    /// Automatic restarts are disabled (`restart_limit` = 0): the kernel is dead.
    Disabled,
    /// `limit` consecutive restarts did not keep it alive: the kernel is dead.
    LimitReached {
        /// The configured limit.
        limit: u32,
    },
}

/// Counts consecutive automatic restarts against EG's `restart_limit`.
///
/// A series ends when an incarnation stays up for [`STABLE_AFTER`]; `limit` 0 never restarts.
#[derive(Debug, Clone)]
pub struct RestartTracker {
    limit: u32,
    attempts: u32,
}

impl RestartTracker {
    /// A tracker for `limit` consecutive restarts.
    pub fn new(limit: u32) -> RestartTracker {
        RestartTracker { limit, attempts: 0 }
    }

    /// Restarts in the current series so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The kernel ended after running for `ran_for` (`None`: it never became ready).
    pub fn exited(&mut self, ran_for: Option<Duration>) -> RestartDecision {
        if ran_for.is_some_and(|ran| ran >= STABLE_AFTER) {
            self.attempts = 0;
        }
        self.next()
    }

    /// A relaunch failed; this counts as another failure of the series.
    pub fn relaunch_failed(&mut self) -> RestartDecision {
        self.next()
    }

    fn next(&mut self) -> RestartDecision {
        if self.limit == 0 {
            return RestartDecision::Disabled;
        }
        if self.attempts >= self.limit {
            return RestartDecision::LimitReached { limit: self.limit };
        }
        self.attempts += 1;
        RestartDecision::Restart {
            attempt: self.attempts,
        }
    }
}

/// Why the culler takes a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CullReason {
    /// Its execution state is `dead`.
    Dead,
    /// Idle (not busy) for this long, beyond `cull_idle_timeout`.
    Idle(Duration),
    /// Busy without any output for this long, beyond the busy timeout.
    Busy(Duration),
}

impl std::fmt::Display for CullReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CullReason::Dead => write!(f, "culled: the kernel is dead"),
            CullReason::Idle(idle) => write!(f, "culled: idle for {} s", idle.as_secs()),
            CullReason::Busy(idle) => write!(
                f,
                "culled: busy without any activity for {} s",
                idle.as_secs()
            ),
        }
    }
}

/// EG's culling rule (§9.5) with a separate busy timeout (EG#665).
///
/// `idle` is the time since the kernel's last iopub message. Nothing is culled when
/// `idle_timeout` is zero; kernels with clients only with `cull_connected`; busy kernels only with
/// `cull_busy`, after `busy_timeout` (or `idle_timeout` when that is zero).
pub fn cull_verdict(
    culling: &Culling,
    execution_state: &str,
    idle: Duration,
    connections: usize,
) -> Option<CullReason> {
    if culling.idle_timeout.is_zero() {
        return None;
    }
    if execution_state == "dead" {
        return Some(CullReason::Dead);
    }
    if connections > 0 && !culling.cull_connected {
        return None;
    }
    if execution_state == "busy" {
        if !culling.cull_busy {
            return None;
        }
        let limit = if culling.busy_timeout.is_zero() {
            culling.idle_timeout
        } else {
            culling.busy_timeout
        };
        return (idle > limit).then_some(CullReason::Busy(idle));
    }
    (idle > culling.idle_timeout).then_some(CullReason::Idle(idle))
}
