//! The hardened HTTP edge over real sockets: raw HTTP/1.1 bytes against `serve`, for head and
//! body limits, ambiguous framing, stalled and silent clients, and the per-client connection cap.
//! After every hostile case the gateway must still answer others, with no kernel started.
use std::time::Duration;

use anyhow::Context as _;
use gateway_http::config::HttpLimits;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use test_support::http::{self, Reply};

use crate::support::{self, Served, contains};

/// Far beyond any timeout configured here: only there to turn a hang into a failure.
const HANG: Duration = Duration::from_secs(20);

impl Served {
    /// A normal `GET /api` on a fresh connection answers 200, and no kernel was started.
    async fn still_serving(&self) -> anyhow::Result<()> {
        let mut stream = TcpStream::connect(self.addr).await?;
        stream
            .write_all(b"GET /api HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await?;
        let reply = read_reply(&mut stream).await?;
        anyhow::ensure!(reply.status == 200, "GET /api: {reply:?}");
        anyhow::ensure!(
            self.manager.count() == 0,
            "{} kernels started",
            self.manager.count()
        );
        Ok(())
    }
}

/// Reads one response, then whether the connection is closed: with `linger`, waits up to that
/// long for the end of the stream (a reset counts as closed).
async fn read_reply_then(stream: &mut TcpStream, linger: Duration) -> anyhow::Result<Reply> {
    let mut reply = http::read_reply(stream, HANG)
        .await?
        .context("connection closed before a response")?;
    if !linger.is_zero() {
        http::linger(stream, &mut reply, linger).await;
    }
    Ok(reply)
}

async fn read_reply(stream: &mut TcpStream) -> anyhow::Result<Reply> {
    read_reply_then(stream, Duration::ZERO).await
}

/// Whether the server ends the connection within `within`, having sent nothing.
async fn closed_silently(stream: &mut TcpStream, within: Duration) -> anyhow::Result<()> {
    let mut chunk = [0u8; 1024];
    match tokio::time::timeout(within, stream.read(&mut chunk)).await {
        Err(_) => anyhow::bail!("still open after {within:?}"),
        Ok(Ok(0)) | Ok(Err(_)) => Ok(()),
        Ok(Ok(n)) => anyhow::bail!(
            "sent {:?} instead of closing",
            String::from_utf8_lossy(chunk.get(..n).unwrap_or_default())
        ),
    }
}

/// What a hostile client sends, and what it must get.
struct Case {
    name: &'static str,
    /// Sent at once; the client then sends nothing more and waits.
    bytes: Vec<u8>,
    status: u16,
    /// Contained in the JSON body (`Null`: no expectation, e.g. hyper's empty bodies).
    body: Value,
    /// The connection must be closed after the response.
    closes: bool,
}

fn case(
    name: &'static str,
    bytes: impl Into<Vec<u8>>,
    status: u16,
    body: Value,
    closes: bool,
) -> Case {
    Case {
        name,
        bytes: bytes.into(),
        status,
        body,
        closes,
    }
}

fn error(reason: &str, message: &str) -> Value {
    json!({"reason": reason, "message": message})
}

/// Runs every case on its own connection; after each, the gateway must still serve others.
async fn check(served: &Served, cases: Vec<Case>, linger: Duration) -> anyhow::Result<()> {
    let mut failures = Vec::new();
    for case in cases {
        let outcome = async {
            let mut stream = TcpStream::connect(served.addr).await?;
            // A server refusing early may close while a large head is still being written.
            let _ = stream.write_all(&case.bytes).await;
            let reply = read_reply_then(
                &mut stream,
                if case.closes { linger } else { Duration::ZERO },
            )
            .await?;
            anyhow::ensure!(
                reply.status == case.status
                    && (case.body.is_null() || contains(&reply.json(), &case.body)),
                "expected {} {}, got {reply:?}",
                case.status,
                case.body
            );
            if case.closes {
                anyhow::ensure!(
                    reply.closed && reply.after.is_empty(),
                    "connection not closed after the response: {reply:?}"
                );
                anyhow::ensure!(
                    reply.head.contains("\r\nconnection: close\r\n") || case.body.is_null(),
                    "no Connection: close: {reply:?}"
                );
            }
            served.still_serving().await
        }
        .await;
        if let Err(error) = outcome {
            failures.push(format!("{}: {error:#}", case.name));
        }
    }
    anyhow::ensure!(
        failures.is_empty(),
        "{} failing cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

/// A request head with an `X-Pad` field that brings it to exactly `size` bytes (`complete`:
/// with the blank line that ends it, counted in `size`).
fn padded_head(target: &str, size: usize, complete: bool) -> Vec<u8> {
    let start = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nX-Pad: ");
    let end = if complete { "\r\n\r\n" } else { "" };
    let pad = size.saturating_sub(start.len() + end.len());
    format!("{start}{}{end}", "a".repeat(pad)).into_bytes()
}

/// Limits small enough to reach quickly, below hyper's smallest head buffer (8 KiB) so both the
/// middleware and hyper enforce the head limit.
fn small_limits() -> HttpLimits {
    HttpLimits {
        max_head_bytes: 4096,
        max_body_bytes: 1024,
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        ..HttpLimits::default()
    }
}

#[tokio::test]
async fn edge_limits_and_framing() -> anyhow::Result<()> {
    let served = Served::start(|c| c.limits = small_limits()).await?;
    let too_large = error(
        "Request Header Fields Too Large",
        "request line and headers too large",
    );
    let post = |headers: &str, body: &str| {
        format!("POST /api/kernels HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n{body}").into_bytes()
    };
    let chunk = format!("258\r\n{}\r\n", " ".repeat(0x258));
    let cases = vec![
        // Within the limit (the blank line included) a head is served.
        case(
            "head at the limit",
            padded_head("/api", 4096, true),
            200,
            json!({"gateway_version": "3.3.0"}),
            false,
        ),
        // Past it: the middleware answers (the head fits hyper's 8 KiB buffer) ...
        case(
            "head over the limit",
            padded_head("/api", 5000, true),
            431,
            too_large.clone(),
            true,
        ),
        case(
            "long URI",
            format!(
                "GET /api?{} HTTP/1.1\r\nHost: localhost\r\n\r\n",
                "q".repeat(5000)
            ),
            431,
            too_large,
            true,
        ),
        // ... or hyper does, with its own empty 431, once its buffer is full (a URI too: hyper
        // answers 414 only past 64 KiB, which no buffer here reaches).
        case(
            "head filling hyper's buffer",
            padded_head("/api", 8192, false),
            431,
            Value::Null,
            true,
        ),
        case(
            "URI filling hyper's buffer",
            format!("GET /{}", "u".repeat(8187)),
            431,
            Value::Null,
            true,
        ),
        // Bodies: a declared length past the limit is refused before any of the body arrives.
        case(
            "declared body too large",
            post("Content-Length: 1000000000\r\n", ""),
            413,
            error("Payload Too Large", "request body too large"),
            true,
        ),
        case(
            "chunked body growing too large",
            post(
                "Transfer-Encoding: chunked\r\n",
                &format!("{chunk}{chunk}0\r\n\r\n"),
            ),
            413,
            error("Payload Too Large", "request body too large"),
            true,
        ),
        // Ambiguous framing. hyper drops a Content-Length beside Transfer-Encoding and a repeated
        // equal Content-Length; the edge refuses both.
        case(
            "Content-Length and Transfer-Encoding",
            post(
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            400,
            error(
                "Bad Request",
                "both Content-Length and Transfer-Encoding headers",
            ),
            true,
        ),
        case(
            "Transfer-Encoding and Content-Length",
            post(
                "Transfer-Encoding: chunked\r\ncontent-length: 5\r\n",
                "0\r\n\r\n",
            ),
            400,
            error(
                "Bad Request",
                "both Content-Length and Transfer-Encoding headers",
            ),
            true,
        ),
        case(
            "equal Content-Lengths",
            post("Content-Length: 2\r\nContent-Length: 2\r\n", "{}"),
            400,
            error("Bad Request", "more than one Content-Length header"),
            true,
        ),
        // hyper refuses these itself (400, empty body) before any request exists.
        case(
            "different Content-Lengths",
            post("Content-Length: 2\r\nContent-Length: 3\r\n", "{}"),
            400,
            Value::Null,
            true,
        ),
        case(
            "Content-Length list",
            post("Content-Length: 2, 2\r\n", "{}"),
            400,
            Value::Null,
            true,
        ),
        case(
            "non-numeric Content-Length",
            post("Content-Length: abc\r\n", ""),
            400,
            Value::Null,
            true,
        ),
        case(
            "signed Content-Length",
            post("Content-Length: +2\r\n", "{}"),
            400,
            Value::Null,
            true,
        ),
        case(
            "Transfer-Encoding not chunked",
            post("Transfer-Encoding: gzip\r\n", ""),
            400,
            Value::Null,
            true,
        ),
        // A normal request with a body keeps its connection.
        case(
            "normal request",
            post("Content-Length: 16\r\n", r#"{"name": "nope"}"#),
            404,
            error("Not Found", "No such kernel named nope"),
            false,
        ),
    ];
    check(&served, cases, HANG).await?;
    served.shutdown().await
}

#[tokio::test]
async fn edge_stalled_and_silent_clients() -> anyhow::Result<()> {
    let limits = small_limits();
    // Closed within the timeout plus slack for a loaded machine.
    let within = limits.header_timeout + Duration::from_secs(10);
    let served = Served::start(|c| c.limits = limits.clone()).await?;
    let cases = vec![
        case(
            "stalled head",
            "GET /api HTTP/1.1\r\nHost: localhost\r\n",
            408,
            error("Request Timeout", "the request head did not arrive in time"),
            true,
        ),
        case(
            "stalled request line",
            "GET /ap",
            408,
            error("Request Timeout", "the request head did not arrive in time"),
            true,
        ),
        case(
            "stalled body",
            "POST /api/kernels HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{\"name\": \"",
            408,
            error("Request Timeout", "the request body stopped arriving"),
            true,
        ),
        case(
            "stalled chunked body",
            "POST /api/kernels HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{\"name\"",
            408,
            error("Request Timeout", "the request body stopped arriving"),
            true,
        ),
    ];
    check(&served, cases, within).await?;

    // A connection that never sends a byte is closed, without an answer.
    let mut silent = TcpStream::connect(served.addr).await?;
    closed_silently(&mut silent, within).await?;
    served.still_serving().await?;

    // So is a kept-alive connection that sends no further request; the one before was served.
    let mut idle = TcpStream::connect(served.addr).await?;
    idle.write_all(b"GET /api HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await?;
    let reply = read_reply(&mut idle).await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    closed_silently(&mut idle, within).await?;
    served.still_serving().await?;

    // A client that keeps sending in time is served, request after request.
    let mut steady = TcpStream::connect(served.addr).await?;
    for _ in 0..3 {
        for part in ["GET /api HTTP/1.1\r\n", "Host: localhost\r\n", "\r\n"] {
            steady.write_all(part.as_bytes()).await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let reply = read_reply(&mut steady).await?;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    served.shutdown().await
}

#[tokio::test]
async fn edge_connection_cap_per_client() -> anyhow::Result<()> {
    const CAP: usize = 3;
    let served = Served::start(|c| {
        c.limits.max_connections_per_client = CAP;
    })
    .await?;
    let get = b"GET /api HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let mut open = Vec::new();
    for _ in 0..CAP {
        let mut stream = TcpStream::connect(served.addr).await?;
        stream.write_all(get).await?;
        // Answered: the gateway has counted it.
        assert_eq!(read_reply(&mut stream).await?.status, 200);
        open.push(stream);
    }
    let mut extra = TcpStream::connect(served.addr).await?;
    let _ = extra.write_all(get).await;
    let reply = read_reply_then(&mut extra, HANG).await?;
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(
        reply.json(),
        error(
            "Service Unavailable",
            "too many connections from this address"
        )
    );
    assert!(
        reply.head.contains("\r\nconnection: close\r\n"),
        "{reply:?}"
    );
    assert!(reply.closed && reply.after.is_empty(), "{reply:?}");

    // The connections already open keep working.
    for stream in &mut open {
        stream.write_all(get).await?;
        assert_eq!(read_reply(stream).await?.status, 200);
    }
    // Once one closes, a new connection is served (as soon as the gateway saw the close).
    drop(open.pop());
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let mut stream = TcpStream::connect(served.addr).await?;
        let _ = stream.write_all(get).await;
        let reply = read_reply(&mut stream).await?;
        if reply.status == 200 {
            break;
        }
        assert_eq!(reply.status, 503, "{reply:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "never below the cap again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(served.manager.count(), 0);
    drop(open);
    served.shutdown().await
}

/// The head deadline only runs while a head is awaited: a start that takes longer than it and a
/// WebSocket that stays quiet longer than it are not cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_e2e_head_deadline_spares_slow_requests_and_websockets() -> anyhow::Result<()> {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;

    let limits = HttpLimits {
        header_timeout: Duration::from_secs(1),
        ..HttpLimits::default()
    };
    let (manager, dir) = support::ipykernel_manager(|c| c.limits = limits)?;
    let served = Served::with_manager(manager, Some(dir)).await?;
    let mut http = TcpStream::connect(served.addr).await?;
    let body = r#"{"name": "python3"}"#;
    http.write_all(
        format!(
            "POST /api/kernels HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await?;
    let reply = read_reply(&mut http).await?;
    assert_eq!(reply.status, 201, "{reply:?}");
    let kernel_id = reply.json()["id"].as_str().context("no id")?.to_owned();

    let url = format!(
        "ws://{}/api/kernels/{kernel_id}/channels?session_id=edge",
        served.addr
    );
    let (mut ws, response) = tokio_tungstenite::connect_async(url).await?;
    assert_eq!(response.status(), 101);
    // Quiet for twice the head deadline.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let msg_id = uuid::Uuid::new_v4().to_string();
    let request = json!({
        "header": {"msg_id": msg_id, "msg_type": "kernel_info_request", "username": "", "session": "",
                   "version": "5.3", "date": "2024-01-01T00:00:00.000000Z"},
        "parent_header": {}, "metadata": {}, "content": {}, "channel": "shell", "buffers": [],
    });
    ws.send(Message::text(request.to_string())).await?;
    loop {
        let frame = tokio::time::timeout(HANG, ws.next())
            .await?
            .context("WebSocket closed")??;
        let Message::Text(text) = frame else {
            continue;
        };
        let message: Value = serde_json::from_str(text.as_str())?;
        if message["channel"] == "shell" && message["parent_header"]["msg_id"] == msg_id.as_str() {
            assert_eq!(message["header"]["msg_type"], "kernel_info_reply");
            break;
        }
    }
    ws.close(None).await?;

    let mut http = TcpStream::connect(served.addr).await?;
    http.write_all(
        format!("DELETE /api/kernels/{kernel_id} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
    )
    .await?;
    assert_eq!(read_reply(&mut http).await?.status, 204);
    served.shutdown().await
}
