//! A small client of one kernel.
use std::time::Duration;

use crate::{ConnectionInfo, Error, SocketOptions};
use crate::content::{ExecuteOutcome, KernelInfoReply};

/// A client of one kernel: kernel_info, execute, interrupt, shutdown, heartbeat.
#[derive(Debug)]
pub struct KernelClient {}

impl KernelClient {
    /// Connects all sockets with a fresh session id.
    pub async fn connect(info: &ConnectionInfo, opts: &SocketOptions) -> Result<KernelClient, Error> {
        todo!()
    }
    /// Sends kernel_info_request on shell and waits for the reply.
    pub async fn kernel_info(&mut self, timeout: Duration) -> Result<KernelInfoReply, Error> {
        todo!()
    }
    /// Runs `code` and collects outputs until the kernel reports idle for this request.
    pub async fn execute(&mut self, code: &str, timeout: Duration) -> Result<ExecuteOutcome, Error> {
        todo!()
    }
    /// Sends interrupt_request on control and waits for the reply.
    pub async fn interrupt(&mut self, timeout: Duration) -> Result<(), Error> {
        todo!()
    }
    /// Sends shutdown_request on control and waits for the reply.
    pub async fn shutdown(&mut self, restart: bool, timeout: Duration) -> Result<(), Error> {
        todo!()
    }
    /// Heartbeat round trip.
    pub async fn is_alive(&mut self, timeout: Duration) -> bool {
        todo!()
    }
}
