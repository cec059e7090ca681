//! The kernel channels WebSocket against real ipykernels, with a tokio-tungstenite client.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use gateway_http::KernelManager;
use jupyter_protocol::websocket::{V1_SUBPROTOCOL, v1};
use jupyter_protocol::{Channel, Header, Message};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::manager::{Kernels, request};
use test_support::eventually;

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const T: Duration = Duration::from_secs(30);

/// A minimal router with only the channels route, served on a free port; stops on drop.
pub(crate) struct Server {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn channels(
    State(manager): State<Arc<KernelManager>>,
    Path(kernel_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    ws: gateway_http::ws::ChannelsUpgrade,
) -> Response {
    match gateway_http::ws::upgrade(manager, kernel_id, query.get("session_id").cloned(), ws).await
    {
        Ok(response) => response,
        Err(err) => (http::StatusCode::NOT_FOUND, err.to_string()).into_response(),
    }
}

pub(crate) async fn serve(manager: Arc<KernelManager>) -> anyhow::Result<Server> {
    let app = Router::new()
        .route("/api/kernels/{kernel_id}/channels", get(channels))
        .with_state(manager);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(Server { addr, task })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Legacy,
    V1,
}

pub(crate) async fn connect(
    server: &Server,
    kernel_id: &str,
    session: Option<&str>,
    mode: Mode,
) -> anyhow::Result<Ws> {
    let query = session
        .map(|s| format!("?session_id={s}"))
        .unwrap_or_default();
    let mut req = format!(
        "ws://{}/api/kernels/{kernel_id}/channels{query}",
        server.addr
    )
    .into_client_request()?;
    if mode == Mode::V1 {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", V1_SUBPROTOCOL.parse()?);
    }
    let (ws, response) = tokio_tungstenite::connect_async(req).await?;
    let selected = response
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.as_bytes().to_vec());
    match mode {
        Mode::V1 => assert_eq!(selected.as_deref(), Some(V1_SUBPROTOCOL.as_bytes())),
        Mode::Legacy => assert_eq!(selected, None),
    }
    Ok(ws)
}

/// A received kernel message: channel, header, parent header and content as JSON.
#[derive(Debug)]
pub(crate) struct Got {
    pub(crate) channel: String,
    pub(crate) header: Value,
    pub(crate) parent: Value,
    pub(crate) content: Value,
}

impl Got {
    pub(crate) fn msg_type(&self) -> &str {
        self.header["msg_type"].as_str().unwrap_or_default()
    }
    pub(crate) fn parent_id(&self) -> &str {
        self.parent["msg_id"].as_str().unwrap_or_default()
    }
}

/// The next kernel message, or `None` when the socket closed (with its close code).
pub(crate) async fn next(ws: &mut Ws) -> anyhow::Result<Result<Got, Option<CloseCode>>> {
    loop {
        let frame = timeout(T, ws.next()).await?;
        let frame = match frame {
            None => return Ok(Err(None)),
            Some(Err(_)) => return Ok(Err(None)),
            Some(Ok(frame)) => frame,
        };
        match frame {
            Frame::Text(text) => {
                let v: Value = serde_json::from_str(text.as_str())?;
                assert_eq!(v["msg_type"], v["header"]["msg_type"]);
                return Ok(Ok(Got {
                    channel: v["channel"].as_str().unwrap_or_default().to_owned(),
                    header: v["header"].clone(),
                    parent: v["parent_header"].clone(),
                    content: v["content"].clone(),
                }));
            }
            Frame::Binary(data) => {
                let (channel, msg) = v1::decode(&data)?;
                return Ok(Ok(Got {
                    channel: channel.as_str().to_owned(),
                    header: serde_json::from_slice(&msg.header)?,
                    parent: serde_json::from_slice(&msg.parent_header)?,
                    content: serde_json::from_slice(&msg.content)?,
                }));
            }
            Frame::Close(frame) => return Ok(Err(frame.map(|f| f.code))),
            _ => {}
        }
    }
}

pub(crate) async fn expect_msg(ws: &mut Ws) -> anyhow::Result<Got> {
    next(ws)
        .await?
        .map_err(|code| anyhow::anyhow!("socket closed ({code:?})"))
}

/// Sends an execute_request; returns its msg_id.
pub(crate) async fn send_execute(ws: &mut Ws, mode: Mode, code: &str) -> anyhow::Result<String> {
    let header = Header::new("execute_request", "test-session", "tester");
    let content = json!({"code": code, "silent": false, "store_history": false, "user_expressions": {}, "allow_stdin": false});
    match mode {
        Mode::Legacy => {
            let frame = json!({"header": header, "parent_header": {}, "metadata": {}, "content": content,
                               "channel": "shell", "buffers": {}});
            ws.send(Frame::text(frame.to_string())).await?;
        }
        Mode::V1 => {
            let msg = Message::new(&header, &content);
            ws.send(Frame::binary(v1::encode(Channel::Shell, &msg)))
                .await?;
        }
    }
    Ok(header.msg_id)
}

/// Collects stdout of request `msg_id` until both its execute_reply and its idle status arrived.
async fn collect(ws: &mut Ws, msg_id: &str) -> anyhow::Result<String> {
    let (mut stdout, mut replied, mut idle) = (String::new(), false, false);
    while !(replied && idle) {
        let got = expect_msg(ws).await?;
        if got.parent_id() != msg_id {
            continue;
        }
        match (got.channel.as_str(), got.msg_type()) {
            ("shell", "execute_reply") => replied = true,
            ("iopub", "status") => idle |= got.content["execution_state"] == "idle",
            ("iopub", "stream") => {
                stdout.push_str(got.content["text"].as_str().unwrap_or_default())
            }
            _ => {}
        }
    }
    Ok(stdout)
}

pub(crate) async fn execute(ws: &mut Ws, mode: Mode, code: &str) -> anyhow::Result<String> {
    let id = send_execute(ws, mode, code).await?;
    collect(ws, &id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_over_legacy_and_v1_with_shared_iopub() -> anyhow::Result<()> {
    let k = Kernels::new(|c| c.ws_ping_interval = Duration::from_millis(200))?;
    let server = serve(Arc::clone(&k.manager)).await?;
    let id = k.manager.start(request(None, None)).await?.id;

    let unknown = connect(
        &server,
        "6f1b3c1e-2a4d-4f6b-9c1d-2e3f4a5b6c7d",
        None,
        Mode::Legacy,
    )
    .await;
    assert!(unknown.is_err(), "unknown kernel upgraded");

    let mut legacy = connect(&server, &id, Some("legacy-session"), Mode::Legacy).await?;
    let mut modern = connect(&server, &id, None, Mode::V1).await?;
    assert!(eventually(T, || k.manager.get(&id).is_ok_and(|s| s.connections == 2)).await);

    assert_eq!(
        execute(&mut legacy, Mode::Legacy, "print(6 * 7)").await?,
        "42\n"
    );
    assert_eq!(execute(&mut modern, Mode::V1, "print('v1')").await?, "v1\n");

    // A request from one client is seen on iopub by the other one too.
    let msg_id = send_execute(&mut legacy, Mode::Legacy, "print('shared')").await?;
    let mut seen = String::new();
    while !seen.contains("shared") {
        let got = expect_msg(&mut modern).await?;
        if got.parent_id() == msg_id && got.msg_type() == "stream" {
            assert_eq!(got.channel, "iopub");
            seen.push_str(got.content["text"].as_str().unwrap_or_default());
        }
    }
    collect(&mut legacy, &msg_id).await?;

    // A message for a channel clients cannot write is dropped; the connection keeps working.
    legacy
        .send(Frame::text(
            json!({"header": Header::new("kernel_info_request", "s", "u"), "parent_header": {},
                                 "metadata": {}, "content": {}, "channel": "iopub"})
            .to_string(),
        ))
        .await?;
    legacy.send(Frame::text("not json")).await?;
    assert_eq!(
        execute(&mut legacy, Mode::Legacy, "print('still here')").await?,
        "still here\n"
    );

    // The server pings.
    let pinged = timeout(Duration::from_secs(5), async {
        while let Some(Ok(frame)) = legacy.next().await {
            if let Frame::Ping(_) = frame {
                return true;
            }
        }
        false
    })
    .await?;
    assert!(pinged);

    // Binary garbage closes a v1 connection with 1003.
    modern.send(Frame::binary(vec![0xff; 64])).await?;
    let closed = loop {
        match next(&mut modern).await? {
            Ok(_) => continue,
            Err(code) => break code,
        }
    };
    assert_eq!(closed, Some(CloseCode::Unsupported));
    assert!(eventually(T, || k.manager.get(&id).is_ok_and(|s| s.connections == 1)).await);
    k.manager.shutdown_all().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_the_socket_and_shutdown_closes_it() -> anyhow::Result<()> {
    let k = Kernels::new(|_| {})?;
    let server = serve(Arc::clone(&k.manager)).await?;
    let id = k.manager.start(request(None, None)).await?.id;
    let mut stale = connect(&server, &id, Some("s1"), Mode::Legacy).await?;
    let mut ws = connect(&server, &id, Some("s1"), Mode::Legacy).await?;
    // The newer connection with the same session id replaced the older one at once.
    let replaced = loop {
        match next(&mut stale).await? {
            Ok(_) => continue,
            Err(code) => break code,
        }
    };
    assert_eq!(replaced, Some(CloseCode::Normal));
    assert!(eventually(T, || k.manager.get(&id).is_ok_and(|s| s.connections == 1)).await);
    assert_eq!(
        execute(&mut ws, Mode::Legacy, "y = 1; print(y)").await?,
        "1\n"
    );

    // Two concurrent restarts: one restart happens, both requests succeed.
    let (m1, m2) = (Arc::clone(&k.manager), Arc::clone(&k.manager));
    let (id1, id2) = (id.clone(), id.clone());
    let first = tokio::spawn(async move { m1.restart(&id1).await });
    let second = tokio::spawn(async move { m2.restart(&id2).await });
    let mut states = Vec::new();
    let deadline = Instant::now() + T;
    while Instant::now() < deadline && !(first.is_finished() && second.is_finished()) {
        if let Ok(got) = timeout(Duration::from_millis(200), expect_msg(&mut ws)).await
            && let Ok(got) = got
            && got.msg_type() == "status"
        {
            let state = got.content["execution_state"].as_str().unwrap_or_default();
            states.push(state.to_owned());
        }
    }
    first.await??;
    second.await??;
    // Whatever is still in flight.
    while let Ok(Ok(got)) = timeout(Duration::from_millis(500), expect_msg(&mut ws)).await {
        if got.msg_type() == "status" {
            let state = got.content["execution_state"].as_str().unwrap_or_default();
            states.push(state.to_owned());
        }
    }
    // An API restart sends no synthetic status (EG §4.6); the new process reports itself.
    assert!(!states.iter().any(|s| s == "restarting"), "{states:?}");
    assert!(states.iter().any(|s| s == "idle"), "{states:?}");
    let out = execute(&mut ws, Mode::Legacy, "print('y' in globals())").await?;
    assert_eq!(out, "False\n");

    k.manager.shutdown(&id).await?;
    let mut saw_dead = false;
    let code = loop {
        match next(&mut ws).await? {
            Ok(got) => {
                saw_dead |= got.msg_type() == "status" && got.content["execution_state"] == "dead"
            }
            Err(code) => break code,
        }
    };
    assert!(saw_dead);
    assert_eq!(code, Some(CloseCode::Normal));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_session_gets_buffered_output_once() -> anyhow::Result<()> {
    let k = Kernels::new(|_| {})?;
    let server = serve(Arc::clone(&k.manager)).await?;
    let id = k.manager.start(request(None, None)).await?.id;
    let mut ws = connect(&server, &id, Some("resume"), Mode::Legacy).await?;
    let msg_id = send_execute(
        &mut ws,
        Mode::Legacy,
        "import time\nfor i in range(5):\n    print(i, flush=True)\n    time.sleep(0.2)",
    )
    .await?;
    // Leave once the cell is running.
    loop {
        let got = expect_msg(&mut ws).await?;
        if got.parent_id() == msg_id && got.msg_type() == "stream" {
            assert_eq!(got.content["text"], "0\n");
            break;
        }
    }
    ws.close(None).await?;
    drop(ws);
    assert!(eventually(T, || k.manager.get(&id).is_ok_and(|s| s.connections == 0)).await);
    // Let the cell finish while nobody is connected.
    assert!(
        eventually(T, || k
            .manager
            .get(&id)
            .is_ok_and(|s| s.execution_state == "idle"))
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut ws = connect(&server, &id, Some("resume"), Mode::Legacy).await?;
    let mut stdout = String::new();
    loop {
        let got = expect_msg(&mut ws).await?;
        if got.parent_id() != msg_id {
            continue;
        }
        match got.msg_type() {
            "stream" => stdout.push_str(got.content["text"].as_str().unwrap_or_default()),
            "status" if got.content["execution_state"] == "idle" => break,
            _ => {}
        }
    }
    assert_eq!(stdout, "1\n2\n3\n4\n");
    k.manager.shutdown_all().await;
    Ok(())
}

/// A 50 MB display_data arrives whole in both framings, and then the request's idle status; a
/// ping sent while it is being written (the client reads nothing for a while, so the gateway is
/// stuck in the middle of it) is answered before the message's end, and a close from the client
/// gets its reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_message_arrives_whole_and_pings_are_answered_meanwhile() -> anyhow::Result<()> {
    const SIZE: usize = 50_000_000;
    // The default bound of a client's queue (64 MiB, the test config's is 10 MiB).
    let k = Kernels::new(|c| c.buffer_max_bytes = 64 << 20)?;
    let server = serve(Arc::clone(&k.manager)).await?;
    let id = k.manager.start(request(None, None)).await?.id;
    for mode in [Mode::Legacy, Mode::V1] {
        let mut ws = connect(&server, &id, None, mode).await?;
        execute(&mut ws, mode, "from IPython.display import display").await?;
        let msg_id = send_execute(
            &mut ws,
            mode,
            &format!("display({{'text/plain': 'x' * {SIZE}}}, raw=True)"),
        )
        .await?;
        // Up to the busy status; then the socket fills while the client reads nothing.
        loop {
            let got = expect_msg(&mut ws).await?;
            if got.parent_id() == msg_id && got.content["execution_state"] == "busy" {
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(4)).await;
        ws.send(Frame::Ping(b"during".to_vec().into())).await?;
        let mut ponged = false;
        let display = loop {
            let frame = timeout(T, ws.next())
                .await?
                .ok_or_else(|| anyhow::anyhow!("socket closed"))??;
            let content = match frame {
                Frame::Pong(data) => {
                    assert_eq!(&data[..], b"during");
                    ponged = true;
                    continue;
                }
                Frame::Text(text) => {
                    let v: Value = serde_json::from_str(text.as_str())?;
                    if v["msg_type"] != "display_data" {
                        continue;
                    }
                    v["content"].clone()
                }
                Frame::Binary(data) => {
                    let (_, msg) = v1::decode(&data)?;
                    let header: Value = serde_json::from_slice(&msg.header)?;
                    if header["msg_type"] != "display_data" {
                        continue;
                    }
                    serde_json::from_slice(&msg.content)?
                }
                Frame::Close(frame) => {
                    anyhow::bail!("{mode:?}: closed during the display: {frame:?}")
                }
                _ => continue,
            };
            break content;
        };
        assert!(
            ponged,
            "{mode:?}: the pong came only after the 50 MB message"
        );
        let text = display["data"]["text/plain"].as_str().unwrap_or_default();
        assert_eq!(text.len(), SIZE, "{mode:?}");
        assert!(text.bytes().all(|b| b == b'x'), "{mode:?}: content intact");
        // What the kernel publishes after it follows (its verdict came in before).
        let mut after = Vec::new();
        displays_until_idle(&mut ws, &msg_id, &mut after)
            .await?
            .map_err(|code| anyhow::anyhow!("{mode:?}: closed after the display ({code:?})"))?;
        assert!(after.is_empty(), "{mode:?}: one display only");
        // The client closes; the gateway answers with its close frame, then the socket ends.
        ws.close(None).await?;
        let replied = timeout(T, async {
            while let Some(frame) = ws.next().await {
                match frame {
                    Ok(Frame::Close(_)) => return true,
                    Ok(_) => continue,
                    Err(_) => return false,
                }
            }
            false
        })
        .await?;
        assert!(replied, "{mode:?}: no close reply");
    }
    assert!(eventually(T, || k.manager.get(&id).is_ok_and(|s| s.connections == 0)).await);
    k.manager.shutdown_all().await;
    Ok(())
}

/// The `text/plain` of a display_data of request `msg_id`, collected until its idle status
/// (`Err` with the close code when the socket closes first).
async fn displays_until_idle(
    ws: &mut Ws,
    msg_id: &str,
    texts: &mut Vec<String>,
) -> anyhow::Result<Result<(), Option<CloseCode>>> {
    loop {
        let got = match next(ws).await? {
            Ok(got) => got,
            Err(code) => return Ok(Err(code)),
        };
        if got.parent_id() != msg_id {
            continue;
        }
        match got.msg_type() {
            "display_data" => texts.push(
                got.content["data"]["text/plain"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ),
            "status" if got.content["execution_state"] == "idle" => return Ok(Ok(())),
            _ => {}
        }
    }
}

/// A 50 MB display_data that the kernel signs with another key reaches the gateway's iopub
/// socket between two good ones. The gateway starts writing it before its MAC is checked, so a
/// client may get its first fragments, but never its end: the connection is closed (1011) before
/// the last fragment, and the good message after it reaches the session's next connection
/// (when the verdict was in before the bridge took the message, it is dropped there and the
/// connection stays). In both framings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_message_with_a_bad_signature_never_arrives_whole() -> anyhow::Result<()> {
    const SIZE: usize = 50_000_000;
    let k = Kernels::new(|c| c.buffer_max_bytes = 64 << 20)?;
    let server = serve(Arc::clone(&k.manager)).await?;
    let id = k.manager.start(request(None, None)).await?.id;
    let mut closes = 0;
    for mode in [Mode::Legacy, Mode::V1] {
        let session = format!("forged-{mode:?}");
        let mut ws = connect(&server, &id, Some(&session), mode).await?;
        execute(
            &mut ws,
            mode,
            "from IPython.display import display\nfrom jupyter_client.session import Session",
        )
        .await?;
        // Sent on the kernel's own iopub socket, so it reaches the gateway like any other.
        let code = format!(
            "k = get_ipython().kernel\n\
             forger = Session(key=b'not-the-kernel-key', session=k.session.session, username=k.session.username)\n\
             display({{'text/plain': 'before'}}, raw=True)\n\
             forger.send(k.iopub_socket, 'display_data', {{'data': {{'text/plain': 'y' * {SIZE}}}, 'metadata': {{}}, 'transient': {{}}}}, parent=k.get_parent(), ident=b'display_data')\n\
             display({{'text/plain': 'after'}}, raw=True)\n"
        );
        let msg_id = send_execute(&mut ws, mode, &code).await?;
        let mut texts = Vec::new();
        if let Err(code) = displays_until_idle(&mut ws, &msg_id, &mut texts).await? {
            closes += 1;
            assert_eq!(
                code,
                Some(CloseCode::Error),
                "{mode:?}: closed for the forgery"
            );
            drop(ws);
            assert!(eventually(T, || k.manager.get(&id).is_ok_and(|s| s.connections == 0)).await);
            // What was queued behind the forged message is kept for the session's return.
            ws = connect(&server, &id, Some(&session), mode).await?;
            displays_until_idle(&mut ws, &msg_id, &mut texts)
                .await?
                .map_err(|code| anyhow::anyhow!("{mode:?}: closed again ({code:?})"))?;
        }
        assert_eq!(
            texts,
            ["before", "after"],
            "{mode:?}: the forged message never arrived, the good ones around it did, once each"
        );
        // The kernel goes on as before.
        assert_eq!(execute(&mut ws, mode, "print(6 * 7)").await?, "42\n");
        ws.close(None).await?;
    }
    eprintln!("connections closed for the forgery: {closes} of 2");
    k.manager.shutdown_all().await;
    Ok(())
}
