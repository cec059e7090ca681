//! What can happen to a kernel, as the messages its supervisor receives: the closed
//! [`KernelEvent`] enum that the manager, the WebSocket layer, the culler and the process and
//! heartbeat watchers send, and why a kernel is shut down. On their own so that senders
//! (`kernel`, `persist`, the manager) and the receiver (`supervisor`) do not import each other.
use resource_managers::ProcessState;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::error::ManagerError;
use super::hub::{Attached, Handover};
use super::rules::CullReason;

/// Why a kernel is shut down.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ShutdownReason {
    /// `DELETE /api/kernels/{id}` (or a session delete).
    Requested,
    /// The culler took it.
    Culled(CullReason),
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
        reply: oneshot::Sender<Result<(), ManagerError>>,
    },
    /// API interrupt.
    Interrupt {
        /// Result.
        reply: oneshot::Sender<Result<(), ManagerError>>,
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
        /// The Jupyter session id it connects with; a reconnect under the same id gets what was
        /// buffered for it.
        session_id: String,
        /// Where what is held for it is charged.
        account: crate::budget::Account,
        /// Its registration.
        reply: oneshot::Sender<Attached>,
    },
    /// A WebSocket client went away, leaving this behind (undelivered messages, its sockets).
    Detach {
        /// The id the hub gave it when it attached.
        client_id: u64,
        /// Its leftovers.
        handover: Option<Handover>,
    },
    /// The culler's periodic look: the supervisor applies the culling rule to itself.
    CullTick,
    /// Another gateway holds the kernel's lease now (this one could not renew it in time): stop
    /// supervising it and leave the process alone.
    LeaseLost,
    /// This gateway claimed the expired lease of a kernel it followed: supervise it.
    LeaseGained,
}
