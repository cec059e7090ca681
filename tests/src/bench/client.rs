//! The benchmark's clients of a gateway: a minimal HTTP/1.1 client for the REST calls and a real
//! WebSocket client (tokio-tungstenite over a `TcpStream` with `TCP_NODELAY`) for the kernel
//! channels, in either framing.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use jupyter_protocol::websocket::{V1_SUBPROTOCOL, WsFrame, legacy, v1};
use jupyter_protocol::{Channel, Header, Message};
use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

/// The user name in the headers the benchmark writes.
pub(crate) const USERNAME: &str = "bench";

/// Largest WebSocket message accepted (the 50 MB display_data is one frame).
const MAX_WS_MESSAGE: usize = 1 << 30;

/// Which WebSocket framing the clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WsProtocol {
    /// No subprotocol: JSON text frames (what Jupyter Server's gateway client uses).
    Legacy,
    /// `v1.kernel.websocket.jupyter.org` binary frames (what JupyterLab uses directly).
    V1,
}

impl WsProtocol {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            WsProtocol::Legacy => "legacy",
            WsProtocol::V1 => "v1",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// One HTTP request with `Connection: close`; returns the status and the body.
pub(crate) async fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    stream.set_nodelay(true)?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>)> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("HTTP response has no end of headers")?;
    let head = String::from_utf8_lossy(raw.get(..split).unwrap_or_default()).into_owned();
    let rest = raw.get(split + 4..).unwrap_or_default();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad HTTP status line {status_line:?}"))?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Ok((status, body))
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size line not terminated")?;
        let line = String::from_utf8_lossy(data.get(..eol).unwrap_or_default()).into_owned();
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        data = data.get(eol + 2..).unwrap_or_default();
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(data.get(..size).context("truncated chunk")?);
        data = data.get(size + 2..).unwrap_or_default();
    }
}

/// `POST /api/kernels` for kernelspec `name`; returns the kernel id.
pub(crate) async fn start_kernel(port: u16, name: &str) -> Result<String> {
    #[derive(Deserialize)]
    struct Model {
        id: String,
    }
    let body = serde_json::json!({ "name": name }).to_string();
    let (status, body) = http(port, "POST", "/api/kernels", Some(&body)).await?;
    if status != 201 {
        bail!(
            "POST /api/kernels answered {status}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(300)
                .collect::<String>()
        );
    }
    let model: Model = serde_json::from_slice(&body).context("kernel model JSON")?;
    Ok(model.id)
}

/// `POST /api/kernels` with `env.KERNEL_USERNAME` = `user`; the new kernel's id.
pub(crate) async fn start_kernel_as(port: u16, name: &str, user: &str) -> Result<String> {
    #[derive(Deserialize)]
    struct Model {
        id: String,
    }
    let body = serde_json::json!({ "name": name, "env": {"KERNEL_USERNAME": user} }).to_string();
    let (status, body) = http(port, "POST", "/api/kernels", Some(&body)).await?;
    if status != 201 {
        bail!(
            "POST /api/kernels answered {status}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(300)
                .collect::<String>()
        );
    }
    let model: Model = serde_json::from_slice(&body).context("kernel model JSON")?;
    Ok(model.id)
}

/// `DELETE /api/kernels/{id}`.
pub(crate) async fn delete_kernel(port: u16, id: &str) -> Result<()> {
    let (status, body) = http(port, "DELETE", &format!("/api/kernels/{id}"), None).await?;
    if status != 204 {
        bail!(
            "DELETE /api/kernels/{id} answered {status}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(300)
                .collect::<String>()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------------------------

/// A WebSocket client of one kernel's channels.
#[derive(Debug)]
pub(crate) struct WsClient {
    stream: WebSocketStream<TcpStream>,
    protocol: WsProtocol,
    session: String,
}

/// What a received message is about, read from its header and parent header only.
#[derive(Debug)]
pub(crate) struct Seen {
    /// The channel it came on.
    pub(crate) channel: Channel,
    /// `header.msg_type`.
    pub(crate) msg_type: String,
    /// `parent_header.msg_id`, if any.
    pub(crate) parent: Option<String>,
    /// The message itself.
    pub(crate) msg: Message,
    /// When its WebSocket frame arrived (before decoding).
    pub(crate) at: Instant,
}

impl Seen {
    fn new(channel: Channel, msg: Message, at: Instant) -> Result<Seen> {
        #[derive(Deserialize)]
        struct MsgType {
            msg_type: String,
        }
        let header: MsgType = serde_json::from_slice(&msg.header).context("message header JSON")?;
        Ok(Seen {
            channel,
            msg_type: header.msg_type,
            parent: msg.parent_msg_id(),
            msg,
            at,
        })
    }
}

impl WsClient {
    /// Opens `/api/kernels/{id}/channels` with a fresh session id. The TCP connection is made
    /// here and set to `TCP_NODELAY` before the handshake.
    pub(crate) async fn connect(port: u16, kernel_id: &str, protocol: WsProtocol) -> Result<Self> {
        let session = uuid::Uuid::new_v4().to_string();
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
        tcp.set_nodelay(true)?;
        let url =
            format!("ws://127.0.0.1:{port}/api/kernels/{kernel_id}/channels?session_id={session}");
        let mut request = url.into_client_request()?;
        if protocol == WsProtocol::V1 {
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static(V1_SUBPROTOCOL),
            );
        }
        // A small read buffer: tungstenite zero-fills its free part before every read, and the
        // 128 KiB default would make the clients, not the gateways, the cost being measured.
        let config = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .max_message_size(Some(MAX_WS_MESSAGE))
            .max_frame_size(Some(MAX_WS_MESSAGE));
        let (stream, response) =
            tokio_tungstenite::client_async_with_config(request, tcp, Some(config))
                .await
                .with_context(|| format!("WebSocket handshake for kernel {kernel_id}"))?;
        if protocol == WsProtocol::V1 {
            let chosen = response
                .headers()
                .get("Sec-WebSocket-Protocol")
                .and_then(|v| v.to_str().ok());
            if chosen != Some(V1_SUBPROTOCOL) {
                bail!("the gateway did not accept the {V1_SUBPROTOCOL} subprotocol");
            }
        }
        Ok(WsClient {
            stream,
            protocol,
            session,
        })
    }

    /// Builds a request of this client's session; returns its msg_id and the message.
    pub(crate) fn request(
        &self,
        msg_type: &str,
        content: &impl serde::Serialize,
    ) -> (String, Message) {
        let header = Header::new(msg_type, &self.session, USERNAME);
        (header.msg_id.clone(), Message::new(&header, content))
    }

    /// Sends a message on `channel`.
    pub(crate) async fn send(&mut self, channel: Channel, msg: &Message) -> Result<()> {
        let frame = match self.protocol {
            WsProtocol::V1 => WsMessage::Binary(Bytes::from(v1::encode(channel, msg))),
            WsProtocol::Legacy => match legacy::encode(channel, msg)? {
                WsFrame::Text(text) => WsMessage::Text(text.into()),
                WsFrame::Binary(bytes) => WsMessage::Binary(Bytes::from(bytes)),
            },
        };
        self.stream.send(frame).await.context("WebSocket send")
    }

    /// The next kernel message; `None` when the gateway closed the socket.
    pub(crate) async fn recv(&mut self) -> Result<Option<Seen>> {
        loop {
            let frame = match self.stream.next().await {
                None => return Ok(None),
                Some(Err(tungstenite::Error::ConnectionClosed)) => return Ok(None),
                Some(frame) => frame.context("WebSocket receive")?,
            };
            let at = Instant::now();
            let (channel, msg) = match frame {
                WsMessage::Text(text) => legacy::decode_text(text.as_str())?,
                WsMessage::Binary(bytes) => match self.protocol {
                    WsProtocol::V1 => v1::decode_bytes(bytes)?,
                    WsProtocol::Legacy => legacy::decode_binary(&bytes)?,
                },
                WsMessage::Close(_) => return Ok(None),
                WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => continue,
            };
            return Seen::new(channel, msg, at).map(Some);
        }
    }

    /// Like [`WsClient::recv`] with a deadline; a closed socket is an error.
    pub(crate) async fn recv_until(&mut self, deadline: Instant) -> Result<Option<Seen>> {
        match tokio::time::timeout_at(deadline, self.recv()).await {
            Err(_) => Ok(None),
            Ok(Ok(Some(seen))) => Ok(Some(seen)),
            Ok(Ok(None)) => Err(anyhow!("the gateway closed the WebSocket")),
            Ok(Err(err)) => Err(err),
        }
    }

    /// Sends a request on shell and waits for its reply, discarding everything else.
    pub(crate) async fn shell_round_trip(
        &mut self,
        msg_type: &str,
        content: &impl serde::Serialize,
        timeout: Duration,
    ) -> Result<Seen> {
        let deadline = Instant::now() + timeout;
        let (msg_id, msg) = self.request(msg_type, content);
        self.send(Channel::Shell, &msg).await?;
        let want = msg_type.replace("_request", "_reply");
        loop {
            let Some(seen) = self.recv_until(deadline).await? else {
                bail!("no {want} within {timeout:?}");
            };
            if seen.channel == Channel::Shell
                && seen.msg_type == want
                && seen.parent.as_deref() == Some(msg_id.as_str())
            {
                return Ok(seen);
            }
        }
    }

    /// Closes the socket politely (errors ignored: the gateway may already be gone).
    pub(crate) async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.stream.close(None)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_plain_and_chunked() {
        let (status, body) =
            parse_response(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}").expect("plain");
        assert_eq!((status, body.as_slice()), (201, b"{}".as_slice()));
        let (status, body) = parse_response(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        )
        .expect("chunked");
        assert_eq!((status, body.as_slice()), (200, b"{}".as_slice()));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }
}
