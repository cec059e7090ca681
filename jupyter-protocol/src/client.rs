//! A small client of one kernel.
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::content::{
    ErrorContent, ExecuteOutcome, ExecuteReply, ExecuteRequest, InterruptRequest, KernelInfoReply,
    KernelInfoRequest, ShutdownRequest, Stream, text_plain,
};
use crate::sockets::default_transport;
use crate::transport::KernelTransport;
use crate::{Channel, ConnectionInfo, Error, Header, KernelSockets, Message, SocketOptions};

/// How often [`KernelClient::execute`] re-sends `kernel_info_request` while it waits for the first
/// iopub message.
const NUDGE_INTERVAL: Duration = Duration::from_millis(500);

/// The user name written in the headers of this client's messages.
const USERNAME: &str = "username";

/// A client of one kernel: kernel_info, execute, interrupt, shutdown, heartbeat.
///
/// It owns one [`KernelSockets`] unit. After the kernel restarts, drop the client and connect a
/// new one.
#[derive(Debug)]
pub struct KernelClient {
    sockets: KernelSockets,
    session_id: String,
    /// Whether an iopub message has arrived, proving the subscription is live.
    iopub_live: bool,
}

impl KernelClient {
    /// Connects all sockets with a fresh session id.
    pub async fn connect(
        info: &ConnectionInfo,
        opts: &SocketOptions,
    ) -> Result<KernelClient, Error> {
        KernelClient::connect_with(default_transport(), info, opts).await
    }

    /// Like [`KernelClient::connect`], over the given transport.
    pub async fn connect_with(
        transport: Arc<dyn KernelTransport>,
        info: &ConnectionInfo,
        opts: &SocketOptions,
    ) -> Result<KernelClient, Error> {
        let session_id = uuid::Uuid::new_v4().to_string();
        let sockets = KernelSockets::connect_with(transport, info, &session_id, opts).await?;
        Ok(KernelClient {
            sockets,
            session_id,
            iopub_live: false,
        })
    }

    /// The session id of this client (also the ZMQ identity of its DEALERs).
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// How many iopub messages were dropped because this client fell behind.
    pub fn iopub_dropped(&self) -> u64 {
        self.sockets.iopub.dropped()
    }

    fn message(&self, msg_type: &str, content: &impl serde::Serialize) -> (String, Message) {
        let header = Header::new(msg_type, &self.session_id, USERNAME);
        let msg = Message::new(&header, content);
        (header.msg_id, msg)
    }

    /// Waits for the reply on `channel` whose parent is `msg_id`, discarding others.
    async fn reply_to(
        &mut self,
        channel: Channel,
        msg_id: &str,
        what: &str,
        deadline: Instant,
    ) -> Result<Message, Error> {
        loop {
            let next = tokio::time::timeout_at(deadline, self.sockets.session.replies.recv()).await;
            match next {
                Err(_) => return Err(Error::Timeout(what.to_owned())),
                Ok(None) => return Err(Error::Closed),
                Ok(Some((got, msg)))
                    if got == channel && msg.parent_msg_id().as_deref() == Some(msg_id) =>
                {
                    return Ok(msg);
                }
                Ok(Some((got, _))) => tracing::debug!(channel = %got, "ignoring unrelated reply"),
            }
        }
    }

    async fn request(
        &mut self,
        channel: Channel,
        msg_type: &str,
        content: &impl serde::Serialize,
        timeout: Duration,
    ) -> Result<Message, Error> {
        let deadline = Instant::now() + timeout;
        let (msg_id, msg) = self.message(msg_type, content);
        self.sockets.session.sender.send(channel, msg).await?;
        let what = msg_type.replace("_request", "_reply");
        self.reply_to(channel, &msg_id, &what, deadline).await
    }

    /// Sends kernel_info_request on shell and waits for the reply.
    pub async fn kernel_info(&mut self, timeout: Duration) -> Result<KernelInfoReply, Error> {
        let reply = self
            .request(
                Channel::Shell,
                "kernel_info_request",
                &KernelInfoRequest {},
                timeout,
            )
            .await?;
        reply.parse_content()
    }

    /// Makes sure the iopub subscription is live before output matters: until some iopub message
    /// arrives, send `kernel_info_request` (which makes the kernel publish `status`) every 0.5 s.
    async fn await_iopub(&mut self, deadline: Instant) -> Result<(), Error> {
        while !self.iopub_live {
            let (_, nudge) = self.message("kernel_info_request", &KernelInfoRequest {});
            self.sockets
                .session
                .sender
                .send(Channel::Shell, nudge)
                .await?;
            let until = (Instant::now() + NUDGE_INTERVAL).min(deadline);
            match tokio::time::timeout_at(until, self.sockets.iopub.messages.recv()).await {
                Ok(Some(_)) => self.iopub_live = true,
                Ok(None) => return Err(Error::Closed),
                Err(_) if until >= deadline => {
                    return Err(Error::Timeout("a first iopub message".to_owned()));
                }
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Runs `code` and collects outputs until the kernel reports idle for this request.
    pub async fn execute(
        &mut self,
        code: &str,
        timeout: Duration,
    ) -> Result<ExecuteOutcome, Error> {
        self.execute_with(code, timeout, |_| {}).await
    }

    /// Like [`KernelClient::execute`], also showing `observe` every iopub message of the request
    /// as it arrives (status, execute_input, streams, display data...).
    pub async fn execute_with(
        &mut self,
        code: &str,
        timeout: Duration,
        mut observe: impl FnMut(&Message) + Send,
    ) -> Result<ExecuteOutcome, Error> {
        let deadline = Instant::now() + timeout;
        self.await_iopub(deadline).await?;
        let (msg_id, msg) = self.message("execute_request", &ExecuteRequest::new(code));
        self.sockets
            .session
            .sender
            .send(Channel::Shell, msg)
            .await?;

        let mut outcome = ExecuteOutcome::default();
        let mut replied = false;
        let mut idle = false;
        while !(replied && idle) {
            tokio::select! {
                reply = self.sockets.session.replies.recv() => {
                    let Some((channel, reply)) = reply else { return Err(Error::Closed) };
                    if channel != Channel::Shell || reply.parent_msg_id().as_deref() != Some(msg_id.as_str()) {
                        continue;
                    }
                    let content: ExecuteReply = reply.parse_content()?;
                    if let (None, Some(ename), Some(evalue)) =
                        (&outcome.error, content.ename, content.evalue)
                    {
                        outcome.error = Some(ErrorContent {
                            ename,
                            evalue,
                            traceback: content.traceback.unwrap_or_default(),
                        });
                    }
                    outcome.status = content.status;
                    replied = true;
                }
                published = self.sockets.iopub.messages.recv() => {
                    let Some(item) = published else { return Err(Error::Closed) };
                    // A large message counts once its verdict passed.
                    let Some(published) = item.into_checked() else { continue };
                    if published.parent_msg_id().as_deref() == Some(msg_id.as_str()) {
                        observe(&published);
                        idle |= collect(&mut outcome, &published)?;
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Err(Error::Timeout("execute_reply and idle status".to_owned()));
                }
            }
        }
        Ok(outcome)
    }

    /// Sends interrupt_request on control and waits for the reply.
    pub async fn interrupt(&mut self, timeout: Duration) -> Result<(), Error> {
        self.request(
            Channel::Control,
            "interrupt_request",
            &InterruptRequest {},
            timeout,
        )
        .await
        .map(drop)
    }

    /// Sends shutdown_request on control and waits for the reply.
    pub async fn shutdown(&mut self, restart: bool, timeout: Duration) -> Result<(), Error> {
        self.request(
            Channel::Control,
            "shutdown_request",
            &ShutdownRequest { restart },
            timeout,
        )
        .await
        .map(drop)
    }

    /// Heartbeat round trip.
    pub async fn is_alive(&mut self, timeout: Duration) -> bool {
        self.sockets.heartbeat.ping(timeout).await.is_ok()
    }
}

/// Adds one iopub message of the request to the outcome; `true` when it is the idle status.
fn collect(outcome: &mut ExecuteOutcome, msg: &Message) -> Result<bool, Error> {
    let header = msg.parse_header()?;
    match header.msg_type.as_str() {
        "status" => {
            let status: crate::content::Status = msg.parse_content()?;
            return Ok(status.execution_state == "idle");
        }
        "stream" => {
            let stream: Stream = msg.parse_content()?;
            match stream.name.as_str() {
                "stderr" => outcome.stderr.push_str(&stream.text),
                _ => outcome.stdout.push_str(&stream.text),
            }
        }
        "execute_result" | "display_data" => {
            #[derive(serde::Deserialize)]
            struct Bundle {
                #[serde(default)]
                data: serde_json::Map<String, serde_json::Value>,
            }
            let bundle: Bundle = msg.parse_content()?;
            if let Some(text) = text_plain(&bundle.data) {
                outcome.results.push(text);
            }
        }
        "error" => outcome.error = Some(msg.parse_content()?),
        _ => {}
    }
    Ok(false)
}
