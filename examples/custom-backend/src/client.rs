//! Just enough of a gateway client for the example: HTTP/1.1 requests over a fresh connection
//! each, and a kernel's channels WebSocket with execute and interrupt.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// How long any one step may take.
const STEP: Duration = Duration::from_secs(60);

/// `method path` with an optional JSON body; the status and the JSON body (`Null` if none).
pub(crate) async fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value)> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut stream = TcpStream::connect(addr).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(STEP, stream.read_to_end(&mut raw))
        .await
        .with_context(|| format!("{method} {path}: no answer"))??;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("{method} {path}: no end of headers"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("{method} {path}: no status"))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    let json = serde_json::from_str(&body).unwrap_or(Value::Null);
    Ok((status, json))
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let size =
            usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if size == 0 || tail.len() < size {
            break;
        }
        out.push_str(&tail[..size]);
        rest = tail[size..].trim_start_matches("\r\n");
    }
    out
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A kernel's channels WebSocket.
pub(crate) struct Channels {
    socket: Socket,
    session: String,
}

/// What an execute request produced.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// stdout and results, as text.
    pub(crate) text: String,
    /// The error's name, if the cell failed.
    pub(crate) error: Option<String>,
}

impl Channels {
    pub(crate) async fn open(addr: &str, kernel_id: &str) -> Result<Channels> {
        let url = format!("ws://{addr}/api/kernels/{kernel_id}/channels");
        let (socket, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(Channels {
            socket,
            session: uuid::Uuid::new_v4().simple().to_string(),
        })
    }

    async fn send(&mut self, msg_type: &str, content: Value) -> Result<String> {
        let msg_id = uuid::Uuid::new_v4().simple().to_string();
        let message = json!({
            "header": {"msg_id": msg_id, "msg_type": msg_type, "username": "example",
                       "session": self.session, "date": "2026-01-01T00:00:00.000000Z",
                       "version": "5.3"},
            "parent_header": {}, "metadata": {}, "content": content,
            "channel": "shell", "buffers": [],
        });
        self.socket
            .send(Message::Text(message.to_string().into()))
            .await?;
        Ok(msg_id)
    }

    /// The next message answering `msg_id`.
    async fn next_for(&mut self, msg_id: &str, within: Duration) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .map_err(|_| anyhow!("no answer to {msg_id} in time"))?
                .ok_or_else(|| anyhow!("the WebSocket closed"))??;
            let Message::Text(text) = frame else { continue };
            let message: Value = serde_json::from_str(&text)?;
            if message["parent_header"]["msg_id"] == msg_id {
                return Ok(message);
            }
        }
    }

    /// `kernel_info_request` until the kernel answers.
    pub(crate) async fn kernel_info(&mut self) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + STEP;
        while tokio::time::Instant::now() < deadline {
            let msg_id = self.send("kernel_info_request", json!({})).await?;
            loop {
                match self.next_for(&msg_id, Duration::from_secs(2)).await {
                    Ok(m) if m["msg_type"] == "kernel_info_reply" => {
                        return Ok(m["content"].clone());
                    }
                    Ok(_) => continue,
                    Err(_) => break,
                }
            }
        }
        bail!("kernel_info_request never answered")
    }

    /// Starts running `code`; returns the request's id.
    pub(crate) async fn execute_start(&mut self, code: &str) -> Result<String> {
        let content = json!({"code": code, "silent": false, "store_history": false,
                             "user_expressions": {}, "allow_stdin": false, "stop_on_error": true});
        self.send("execute_request", content).await
    }

    /// Waits until the kernel is busy with `msg_id`.
    pub(crate) async fn wait_busy(&mut self, msg_id: &str) -> Result<()> {
        loop {
            let m = self.next_for(msg_id, STEP).await?;
            if m["msg_type"] == "status" && m["content"]["execution_state"] == "busy" {
                return Ok(());
            }
        }
    }

    /// What `msg_id` produced, once its reply and the kernel's idle are in.
    pub(crate) async fn collect(&mut self, msg_id: &str) -> Result<Outcome> {
        let mut outcome = Outcome::default();
        let (mut replied, mut idle) = (false, false);
        while !(replied && idle) {
            let m = self.next_for(msg_id, STEP).await?;
            let content = &m["content"];
            match m["msg_type"].as_str().unwrap_or_default() {
                "stream" => outcome.text += content["text"].as_str().unwrap_or_default(),
                "execute_result" => {
                    outcome.text += content["data"]["text/plain"].as_str().unwrap_or_default();
                }
                "error" => outcome.error = content["ename"].as_str().map(str::to_owned),
                "execute_reply" => {
                    replied = true;
                    if outcome.error.is_none() && content["status"] == "error" {
                        outcome.error = content["ename"].as_str().map(str::to_owned);
                    }
                }
                "status" => idle = content["execution_state"] == "idle",
                _ => {}
            }
        }
        Ok(outcome)
    }

    pub(crate) async fn execute(&mut self, code: &str) -> Result<Outcome> {
        let msg_id = self.execute_start(code).await?;
        self.collect(&msg_id).await
    }

    pub(crate) async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}
