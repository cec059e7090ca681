//! The client memory budget on the real binary: four kernels flood output to four WebSocket
//! clients that do not read, while a fifth client runs cells on its own kernel. The gateway's
//! resident memory (VmRSS) is sampled throughout and after everything is gone.
use std::time::Duration;

use anyhow::{Context as _, Result};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::tungstenite::Message as Frame;

use crate::support::{Gateway, GatewayConfig, Impl, built_binary};

const MIB: u64 = 1 << 20;
/// The budget and share the gateway runs with here.
const BUDGET: u64 = 32 * MIB;
const SHARE: u64 = 8 * MIB;
/// What the gateway may hold beyond the budget at its peak (documented in the README's
/// "Memory" paragraph): one message in flight per connection in its three forms (the kernel's
/// message, its WebSocket encoding, tungstenite's frame buffer), the allocator's slack, and the
/// runtime's and sockets' own buffers.
const PEAK_ALLOWANCE: u64 = 96 * MIB;
/// How far above its starting point the gateway's RSS may stay once everything is gone.
const AFTER_ALLOWANCE: u64 = 24 * MIB;
/// Bound on anything that should happen promptly (a hang fails; nothing is timed).
const T: Duration = Duration::from_secs(30);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The gateway's resident set, from /proc.
fn rss(pid: i32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

/// One request with `Connection: close`: the status and the body as JSON (`Null` when empty).
async fn http(port: u16, method: &'static str, path: String, body: Value) -> Result<(u16, Value)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let mut raw = Vec::new();
    timeout(T, stream.read_to_end(&mut raw)).await??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no response head")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

async fn start_kernel(port: u16) -> Result<String> {
    let (status, model) = http(
        port,
        "POST",
        "/api/kernels".to_owned(),
        json!({"name": "tk"}),
    )
    .await?;
    anyhow::ensure!(status == 201, "start: {status} {model}");
    Ok(model["id"].as_str().unwrap_or_default().to_owned())
}

async fn connect(port: u16, id: &str, session: &str) -> Result<Ws> {
    let url = format!("ws://127.0.0.1:{port}/api/kernels/{id}/channels?session_id={session}");
    let (ws, _) = timeout(T, tokio_tungstenite::connect_async(url)).await??;
    Ok(ws)
}

/// Sends an execute_request in the legacy JSON framing; returns its msg_id.
async fn send_execute(ws: &mut Ws, code: &str) -> Result<String> {
    let msg_id = uuid::Uuid::new_v4().to_string();
    let frame = json!({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "session": "s", "username": "u",
                   "date": "2026-01-01T00:00:00Z", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": false, "store_history": false, "user_expressions": {},
                    "allow_stdin": false}});
    ws.send(Frame::text(frame.to_string())).await?;
    Ok(msg_id)
}

/// Runs `code` and waits for its execute_reply, within [`T`].
async fn round_trip(ws: &mut Ws, code: &str) -> Result<Duration> {
    let began = Instant::now();
    let msg_id = send_execute(ws, code).await?;
    timeout(T, async {
        while let Some(frame) = ws.next().await {
            if let Frame::Text(text) = frame? {
                let v: Value = serde_json::from_str(text.as_str())?;
                if v["msg_type"] == "execute_reply"
                    && v["parent_header"]["msg_id"] == msg_id.as_str()
                {
                    return Ok(());
                }
            }
        }
        anyhow::bail!("socket closed")
    })
    .await??;
    Ok(began.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_slow_clients_stay_within_the_client_memory_budget() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let spec = dir.path().join("kernels/tk");
    std::fs::create_dir_all(&spec)?;
    let kernel = built_binary("test-kernel")?;
    std::fs::write(
        spec.join("kernel.json"),
        json!({"argv": [kernel, "-f", "{connection_file}"], "display_name": "Test kernel",
               "language": "test", "metadata": {"process_proxy": {"class_name":
               "enterprise_gateway.services.processproxies.processproxy.LocalProcessProxy"}}})
        .to_string(),
    )?;
    let config = GatewayConfig {
        jupyter_path: vec![dir.path().to_owned()],
        args: vec![
            format!("--client_memory_budget={BUDGET}"),
            format!("--client_memory_share={SHARE}"),
            "--default_kernel_name=tk".to_owned(),
        ],
        ..GatewayConfig::default()
    };
    let mut gateway = Gateway::start(Impl::Ours, &config)?;
    let (port, pid) = (gateway.port, gateway.proc.pid());

    // Warm up: a kernel and a client that keep running cells throughout.
    let probe_id = start_kernel(port).await?;
    let mut probe = connect(port, &probe_id, "probe").await?;
    for _ in 0..5 {
        round_trip(&mut probe, "echo warm").await?;
    }
    let before = rss(pid)?;

    // Four kernels, each with a client that reads nothing, each printing 1 MB outputs.
    let mut flooded = Vec::new();
    for n in 0..4 {
        let id = start_kernel(port).await?;
        let mut ws = connect(port, &id, &format!("slow{n}")).await?;
        send_execute(&mut ws, &"display 1000000\n".repeat(120)).await?;
        flooded.push((id, ws));
    }

    // Meanwhile the probe's cells go on, and the gateway's memory is sampled.
    let flood_began = Instant::now();
    let mut peak = before;
    let mut slowest_trip = Duration::ZERO;
    let evictions = |log: &str| log.matches("a client holds too much memory").count();
    while evictions(&gateway.proc.log_text()) < 4 {
        anyhow::ensure!(
            flood_began.elapsed() < T * 4,
            "not all four slow clients were disconnected; log tail:\n{}",
            gateway.proc.log_tail(40)
        );
        slowest_trip = slowest_trip.max(round_trip(&mut probe, "echo ping").await?);
        peak = peak.max(rss(pid)?);
        sleep(Duration::from_millis(100)).await;
    }
    let evicted_after = flood_began.elapsed();

    // The client disconnected last reads again (within the 10 s its close frame is offered):
    // it finds what was already on its way, then the reason.
    let log = gateway.proc.log_text();
    let last = log
        .lines()
        .rev()
        .find(|l| l.contains("nothing is kept for its return"))
        .and_then(|l| l.split("session_id=").nth(1)?.split_whitespace().next())
        .map(str::to_owned)
        .context("no eviction line names a session")?;
    let (_, reader) = flooded
        .iter_mut()
        .enumerate()
        .find(|(n, _)| format!("slow{n}") == last)
        .map(|(_, pair)| pair)
        .with_context(|| format!("no client {last}"))?;
    let close = timeout(T, async {
        while let Some(frame) = reader.next().await {
            if let Frame::Close(frame) = frame? {
                return Ok(frame);
            }
        }
        anyhow::bail!("the socket ended without a close frame")
    })
    .await??
    .context("a close frame without a code")?;
    assert_eq!(u16::from(close.code), 1008, "{close:?}");
    assert!(close.reason.starts_with("client too slow: "), "{close:?}");
    assert!(close.reason.contains("MiB queued"), "{close:?}");

    for _ in 0..20 {
        slowest_trip = slowest_trip.max(round_trip(&mut probe, "echo ping").await?);
        peak = peak.max(rss(pid)?);
        sleep(Duration::from_millis(100)).await;
    }

    // Everything goes: the slow clients, their kernels, the probe.
    for (id, ws) in flooded {
        drop(ws);
        let (status, body) =
            http(port, "DELETE", format!("/api/kernels/{id}"), Value::Null).await?;
        assert_eq!(status, 204, "{body}");
    }
    drop(probe);
    let (status, body) = http(
        port,
        "DELETE",
        format!("/api/kernels/{probe_id}"),
        Value::Null,
    )
    .await?;
    assert_eq!(status, 204, "{body}");
    // Memory goes back as the allocator returns it; give it a few seconds.
    let settle = Instant::now();
    let mut after = rss(pid)?;
    while after > before + AFTER_ALLOWANCE && settle.elapsed() < T {
        sleep(Duration::from_millis(500)).await;
        after = rss(pid)?;
    }
    println!(
        "gateway RSS: before {:.1} MiB, peak {:.1} MiB, after {:.1} MiB (budget {} MiB, share {} MiB); \
         all four slow clients disconnected {evicted_after:?} into the flood; slowest probe round trip {slowest_trip:?}",
        before as f64 / MIB as f64,
        peak as f64 / MIB as f64,
        after as f64 / MIB as f64,
        BUDGET / MIB,
        SHARE / MIB,
    );
    assert!(
        peak <= before + BUDGET + PEAK_ALLOWANCE,
        "peak RSS {} MiB over {} MiB + the budget + the allowance",
        peak / MIB,
        before / MIB
    );
    assert!(
        after <= before + AFTER_ALLOWANCE,
        "RSS {} MiB once everything was gone, from {} MiB before",
        after / MIB,
        before / MIB
    );
    gateway.proc.mark_passed();
    Ok(())
}
