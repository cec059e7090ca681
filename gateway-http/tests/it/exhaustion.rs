//! Trying to exhaust the gateway, over real sockets: a thousand silent connections and two
//! hundred half-sent requests while a normal client lists kernels and starts one; the cap on
//! open connections; a kernel whose relaunches keep failing.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gateway_http::KernelManager;
use gateway_http::config::{HttpLimits, RestartBackoff};
use http::StatusCode;
use resource_managers::Registry;
use resource_managers::local::{LocalConfig, LocalResourceManager};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

use crate::support::{self, Served};
use crate::ws::{Mode, connect, execute, next};

/// The bound on anything that should happen promptly (not a speed assertion: a hang fails).
const T: Duration = Duration::from_secs(30);

/// Raises this process's soft open-file limit to the hard one: the test holds both ends of
/// every connection.
fn raise_open_files() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// A response read off a raw connection.
#[derive(Debug)]
struct Reply {
    status: u16,
    body: Value,
}

/// Reads one response; `None` when the connection closed before a response began.
async fn read_reply(stream: &mut TcpStream) -> anyhow::Result<Option<Reply>> {
    Ok(test_support::http::read_reply(stream, T)
        .await?
        .map(|reply| Reply {
            status: reply.status,
            body: serde_json::from_str(&reply.body).unwrap_or(Value::Null),
        }))
}

/// Sends a request on a kept-alive connection and reads its answer, within [`T`].
async fn request(
    stream: &mut TcpStream,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Reply> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let headers = "Content-Type: application/json\r\n";
    let reply = timeout(
        T,
        test_support::http::exchange(stream, method, path, headers, &body),
    )
    .await??;
    Ok(Reply {
        status: reply.status,
        body: serde_json::from_str(&reply.body).unwrap_or(Value::Null),
    })
}

/// Waits until the peer closes `stream`; how long after `since` that was (and whether an answer
/// came first, with its status).
async fn closed_after(
    mut stream: TcpStream,
    since: Instant,
) -> anyhow::Result<(Duration, Option<u16>)> {
    let answer = timeout(T, read_reply(&mut stream)).await?.ok().flatten();
    if answer.is_some() {
        let mut rest = [0u8; 256];
        while timeout(T, stream.read(&mut rest)).await?.unwrap_or(0) > 0 {}
    }
    Ok((since.elapsed(), answer.map(|r| r.status)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhaustion_e2e_silent_and_half_sent_connections_leave_users_served() -> anyhow::Result<()>
{
    raise_open_files();
    const SILENT: usize = 1000;
    const HALF_SENT: usize = 200;
    // Long enough that the flood is still open when the connection beyond the cap arrives.
    let header_timeout = Duration::from_secs(5);
    let limits = HttpLimits {
        header_timeout,
        // Everything here comes from 127.0.0.1: only the gateway-wide cap applies.
        max_connections_per_client: 0,
        // The normal client's connection, the silent ones and the half-sent ones.
        max_connections: 1 + SILENT + HALF_SENT,
        ..HttpLimits::default()
    };
    let (manager, _dir) = support::ipykernel_manager(|c| c.limits = limits)?;
    let served = Served::with_manager(Arc::clone(&manager), None).await?;
    let addr = served.addr;

    // A user who was there first.
    let mut user = TcpStream::connect(addr).await?;
    let reply = request(&mut user, "GET", "/api", None).await?;
    assert_eq!(reply.status, 200, "{reply:?}");

    // The flood: connections that say nothing, and requests that stop halfway through the head.
    let began = Instant::now();
    let mut silent = Vec::with_capacity(SILENT);
    for _ in 0..SILENT {
        silent.push(TcpStream::connect(addr).await?);
    }
    let mut half = Vec::with_capacity(HALF_SENT);
    for _ in 0..HALF_SENT {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /api/kernels HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
            .await?;
        half.push(stream);
    }
    let flooded = began.elapsed();

    // Beyond the cap: a JSON 503, while the connections already open keep working.
    let mut extra = TcpStream::connect(addr).await?;
    extra
        .write_all(b"GET /api HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await?;
    let refused = timeout(T, read_reply(&mut extra))
        .await??
        .ok_or_else(|| anyhow::anyhow!("the connection beyond the cap got no answer"))?;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.body["reason"], "Service Unavailable", "{refused:?}");
    assert!(
        refused.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("as many connections as it can")),
        "{refused:?}"
    );

    let listed = request(&mut user, "GET", "/api/kernels", None).await?;
    assert_eq!((listed.status, listed.body.clone()), (200, json!([])));
    let started = request(
        &mut user,
        "POST",
        "/api/kernels",
        Some(json!({"name": "python3"})),
    )
    .await?;
    assert_eq!(started.status, 201, "{started:?}");
    let id = started.body["id"].as_str().unwrap_or_default().to_owned();
    let listed = request(&mut user, "GET", "/api/kernels", None).await?;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body[0]["id"], id.as_str(), "{listed:?}");

    // Every silent connection is closed without an answer, every half-sent one answered 408,
    // each within the head deadline (plus slack for a loaded machine).
    let closing: Vec<_> = silent
        .into_iter()
        .map(|s| tokio::spawn(closed_after(s, began)))
        .chain(
            half.into_iter()
                .map(|s| tokio::spawn(closed_after(s, began))),
        )
        .collect();
    let mut slowest = Duration::ZERO;
    let mut answers = std::collections::BTreeMap::<Option<u16>, usize>::new();
    for (n, closing) in closing.into_iter().enumerate() {
        let (after, status) = closing.await??;
        slowest = slowest.max(after);
        *answers.entry(status).or_default() += 1;
        if n < SILENT {
            assert_eq!(status, None, "silent connection {n} got an answer");
        } else {
            assert_eq!(status, Some(408), "half-sent request {n}");
        }
    }
    assert!(
        slowest < header_timeout + flooded + Duration::from_secs(10),
        "the last flood connection closed {slowest:?} after the flood began"
    );
    println!(
        "flood of {SILENT} silent + {HALF_SENT} half-sent connections opened in {flooded:?}; \
         all closed {slowest:?} after the first one opened (header_timeout {header_timeout:?}); answers {answers:?}"
    );

    // The cap is free again: a new client is served.
    let mut late = TcpStream::connect(addr).await?;
    let reply = request(&mut late, "GET", "/api", None).await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    let deleted = request(&mut late, "DELETE", &format!("/api/kernels/{id}"), None).await?;
    assert_eq!(
        deleted.status,
        StatusCode::NO_CONTENT.as_u16(),
        "{deleted:?}"
    );
    served.shutdown().await
}

/// The workspace's test kernel (built beside this test binary).
fn test_kernel() -> PathBuf {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(|dir| dir.join("test-kernel")));
    let fallback = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/test-kernel");
    beside.filter(|p| p.exists()).unwrap_or(fallback)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhaustion_e2e_a_crash_looping_kernel_backs_off_and_says_why() -> anyhow::Result<()> {
    let kernel = test_kernel();
    anyhow::ensure!(
        kernel.exists(),
        "{} is missing: run `cargo build -p tests --bin test-kernel` first",
        kernel.display()
    );
    let dir = tempfile::tempdir()?;
    // Starts once; every later start fails at once with a line in the kernel log.
    let marker = dir.path().join("started-once");
    // Each start also notes when it ran: the relaunch attempts' own times, after their waits.
    let script = r#"date +%s.%N >> "$1.times"
if [ -e "$1" ]; then echo "crash-loop: the GPU went away" >&2; exit 3; fi
touch "$1"; exec "$2" -f "$3""#;
    let specs = dir.path().join("kernels");
    std::fs::create_dir_all(specs.join("flaky"))?;
    let spec = json!({
        "argv": ["/bin/sh", "-c", script, "flaky", marker, kernel, "{connection_file}"],
        "display_name": "Flaky", "language": "test",
        "metadata": {"process_proxy": {"class_name": "local"}}});
    std::fs::write(specs.join("flaky/kernel.json"), serde_json::to_vec(&spec)?)?;
    let backoff = RestartBackoff {
        initial: Duration::from_millis(300),
        max: Duration::from_millis(700),
    };
    let mut config = support::config(vec![specs], dir.path());
    config.default_kernel_name = "flaky".to_owned();
    config.restart_limit = 4;
    config.restart_backoff = backoff;
    let runtime_dir = dir.path().join("runtime");
    std::fs::create_dir_all(&runtime_dir)?;
    let mut registry = Registry::new();
    registry.register(Arc::new(LocalResourceManager::new(LocalConfig {
        runtime_dir: runtime_dir.clone(),
        log_dir: dir.path().join("logs"),
        ip: "127.0.0.1".to_owned(),
        search_path: vec![PathBuf::from("/usr/bin"), PathBuf::from("/bin")],
    })));
    let manager = KernelManager::new(Arc::new(config), registry);
    let id = manager
        .start(crate::manager::request(Some("flaky"), None))
        .await?
        .id;
    let server = crate::ws::serve(Arc::clone(&manager)).await?;
    let mut ws = connect(&server, &id, Some("crash"), Mode::Legacy).await?;
    assert_eq!(execute(&mut ws, Mode::Legacy, "echo up").await?, "up\n");

    // The kernel exits on its own; each relaunch fails at once.
    let _ = crate::ws::send_execute(&mut ws, Mode::Legacy, "exit 9").await?;
    let mut restarting = Vec::new();
    let (dead, close) = loop {
        match next(&mut ws).await? {
            Ok(got) if got.channel == "iopub" && got.msg_type() == "status" => {
                match got.content["execution_state"].as_str() {
                    Some("restarting") => restarting.push(Instant::now()),
                    Some("dead") => {
                        let close = loop {
                            match timeout(T, futures_util::StreamExt::next(&mut ws)).await? {
                                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => {
                                    break frame;
                                }
                                Some(Ok(_)) => continue,
                                _ => break None,
                            }
                        };
                        break (got.content, close);
                    }
                    _ => {}
                }
            }
            Ok(_) => {}
            Err(code) => anyhow::bail!("closed before the dead status: {code:?}"),
        }
    };
    // One `restarting` status per attempt, and one start per attempt after the first one.
    assert_eq!(restarting.len(), 4, "{restarting:?}");
    let times: Vec<f64> = std::fs::read_to_string(dir.path().join("started-once.times"))?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert_eq!(
        times.len(),
        5,
        "the first start and four relaunches: {times:?}"
    );
    // The first relaunch follows the crash at once; each later one waits its turn.
    let gaps: Vec<Duration> = times
        .windows(2)
        .skip(1)
        .map(|w| Duration::from_secs_f64((w[1] - w[0]).max(0.0)))
        .collect();
    for (n, gap) in gaps.iter().enumerate() {
        let attempt = n as u32 + 2;
        assert!(
            *gap >= backoff.delay(attempt),
            "relaunch {attempt} came {gap:?} after the one before, short of its wait of {:?}",
            backoff.delay(attempt)
        );
    }
    println!("gaps between relaunch attempts: {gaps:?}");
    // The reason names the last failure: its exit status and its log line.
    let reason = dead["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("restart limit of 4 reached"), "{reason}");
    assert!(reason.contains("the last relaunch failed"), "{reason}");
    assert!(reason.contains("exit code 3"), "{reason}");
    assert!(reason.contains("crash-loop: the GPU went away"), "{reason}");
    let close = close.ok_or_else(|| anyhow::anyhow!("no close frame"))?;
    assert_eq!(u16::from(close.code), 1001, "{close:?}");
    assert!(
        close
            .reason
            .starts_with("kernel died: restart limit of 4 reached"),
        "{close:?}"
    );
    assert!(close.reason.len() <= 123);
    assert!(manager.get(&id).is_err(), "the dead kernel is gone");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhaustion_e2e_a_tls_handshake_counts_toward_the_head_deadline() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let signed = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    std::fs::write(&cert, signed.cert.pem())?;
    std::fs::write(&key, signed.signing_key.serialize_pem())?;
    let tls = gateway_http::tls::server_config(&cert, &key, None, false)?;
    let header_timeout = Duration::from_secs(2);
    let mut config = support::config(Vec::new(), dir.path());
    config.tls = Some(tls);
    config.limits.header_timeout = header_timeout;
    let served =
        Served::with_manager(KernelManager::new(Arc::new(config), Registry::new()), None).await?;

    // A connection that never starts its handshake is closed at the deadline.
    let silent = TcpStream::connect(served.addr).await?;
    let (after, answer) = closed_after(silent, Instant::now()).await?;
    assert_eq!(answer, None);
    assert!(
        after >= header_timeout - Duration::from_millis(100),
        "{after:?}"
    );

    // A slow handshake does not restart the clock: the head is due 2 s after the accept.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(signed.cert.der().clone())?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let accepted = Instant::now();
    let tcp = TcpStream::connect(served.addr).await?;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut stream = connector
        .connect(rustls::pki_types::ServerName::try_from("localhost")?, tcp)
        .await?;
    let mut buf = [0u8; 64];
    let read = timeout(T, stream.read(&mut buf)).await?;
    let closed = accepted.elapsed();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        closed < header_timeout + Duration::from_millis(1200),
        "closed {closed:?} after the accept: the deadline restarted after the handshake"
    );
    println!(
        "TLS: silent connection closed after {after:?}; after a 1.2 s handshake, closed {closed:?} after accept (header_timeout {header_timeout:?})"
    );
    served.shutdown().await
}
