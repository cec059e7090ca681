//! The heartbeat's ZMTP handshake, read byte by byte by a hand-written peer.
//!
//! Apache Toree's JeroMQ heartbeat throws a NullPointerException, over and over, on a connection
//! whose READY command has no `Identity` property; libzmq's REQ always sends one. These tests play
//! the kernel's side of ZMTP 3.0 by hand, so they see exactly what the heartbeat announces, and
//! check that every connection (the first, and the one rebuilt after a timed-out ping) names a
//! non-empty identity of its own.
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use jupyter_protocol::sockets::Heartbeat;
use jupyter_protocol::{Channel, SocketOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::connection_info;

const TIMEOUT: Duration = Duration::from_secs(10);

/// The 64-byte ZMTP 3.0 greeting of a NULL-mechanism peer.
fn greeting(as_server: bool) -> [u8; 64] {
    let mut g = [0u8; 64];
    g[0] = 0xff;
    g[9] = 0x7f;
    g[10] = 3;
    g[11] = 0;
    g[12..16].copy_from_slice(b"NULL");
    g[32] = u8::from(as_server);
    g
}

/// One ZMTP frame: whether it is a command, whether more frames follow, and its body.
struct Frame {
    command: bool,
    more: bool,
    body: Vec<u8>,
}

async fn read_frame(conn: &mut TcpStream) -> anyhow::Result<Frame> {
    let flags = conn.read_u8().await?;
    let size = if flags & 0x02 != 0 {
        usize::try_from(conn.read_u64().await?)?
    } else {
        usize::from(conn.read_u8().await?)
    };
    let mut body = vec![0; size];
    conn.read_exact(&mut body).await?;
    Ok(Frame {
        command: flags & 0x04 != 0,
        more: flags & 0x01 != 0,
        body,
    })
}

async fn write_frame(conn: &mut TcpStream, more: bool, body: &[u8]) -> anyhow::Result<()> {
    let size = u8::try_from(body.len()).context("test frames are short")?;
    conn.write_all(&[u8::from(more), size]).await?;
    conn.write_all(body).await?;
    Ok(())
}

/// The properties of a READY command body (`name-size name (prop-name-size prop-name
/// value-size value)*`), or an error when it is something else.
fn ready_properties(body: &[u8]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let name_len = usize::from(*body.first().context("empty command")?);
    ensure!(
        body.get(1..=name_len) == Some(b"READY".as_slice()),
        "not a READY command: {body:?}"
    );
    let mut rest = &body[1 + name_len..];
    let mut props = Vec::new();
    while let Some((&len, tail)) = rest.split_first() {
        let (name, tail) = tail
            .split_at_checked(usize::from(len))
            .context("short property name")?;
        let (size, tail) = tail.split_at_checked(4).context("short value size")?;
        let size = usize::try_from(u32::from_be_bytes(size.try_into()?))?;
        let (value, tail) = tail.split_at_checked(size).context("short value")?;
        props.push((String::from_utf8(name.to_vec())?, value.to_vec()));
        rest = tail;
    }
    Ok(props)
}

/// Accepts one heartbeat connection as a REP kernel would: greeting, READY both ways. Returns the
/// connection and the identity the client announced (an error when it announced none).
///
/// Connections closed before a greeting are skipped: the transport probes the port with a bare
/// TCP connect before each real one.
async fn accept_heartbeat(listener: &TcpListener) -> anyhow::Result<(TcpStream, Vec<u8>)> {
    let mut theirs = [0u8; 64];
    let mut conn = loop {
        let (mut conn, _) = listener.accept().await?;
        // A probe may be gone before our greeting is written; that is not a failure either.
        let _ = conn.write_all(&greeting(true)).await;
        if conn.read_exact(&mut theirs).await.is_ok() {
            break conn;
        }
    };
    ensure!(
        theirs[0] == 0xff && theirs[9] == 0x7f,
        "not a ZMTP greeting"
    );
    ensure!(&theirs[12..16] == b"NULL", "not the NULL mechanism");
    let ready = read_frame(&mut conn).await?;
    ensure!(ready.command, "expected the READY command first");
    let props = ready_properties(&ready.body)?;
    let socket_type = props.iter().find(|(name, _)| name == "Socket-Type");
    ensure!(
        socket_type.is_some_and(|(_, v)| v == b"DEALER" || v == b"REQ"),
        "socket type {socket_type:?}"
    );
    let Some((_, identity)) = props.iter().find(|(name, _)| name == "Identity") else {
        bail!("the READY command announces no Identity: {props:?}");
    };
    let identity = identity.clone();
    // Our READY: `5 READY 11 Socket-Type 0 0 0 3 REP`.
    let mut body = vec![5];
    body.extend_from_slice(b"READY");
    body.push(11);
    body.extend_from_slice(b"Socket-Type");
    body.extend_from_slice(&3u32.to_be_bytes());
    body.extend_from_slice(b"REP");
    conn.write_all(&[0x04, u8::try_from(body.len())?]).await?;
    conn.write_all(&body).await?;
    Ok((conn, identity))
}

/// Reads one request (delimiter, then payload) and, when `answer`, echoes it as REP does.
async fn serve_ping(conn: &mut TcpStream, answer: bool) -> anyhow::Result<()> {
    let mut frames = Vec::new();
    loop {
        let frame = read_frame(conn).await?;
        ensure!(!frame.command, "unexpected command after the handshake");
        let more = frame.more;
        frames.push(frame.body);
        if !more {
            break;
        }
    }
    ensure!(
        frames == [b"".to_vec(), b"ping".to_vec()],
        "request frames {frames:?}"
    );
    if answer {
        write_frame(conn, true, b"").await?;
        write_frame(conn, false, b"ping").await?;
    }
    Ok(())
}

#[tokio::test]
async fn every_heartbeat_connection_announces_its_own_identity() -> anyhow::Result<()> {
    let info = connection_info()?;
    let endpoint = info.endpoint(Channel::Heartbeat);
    let listener = TcpListener::bind(("127.0.0.1", info.hb_port)).await?;
    let kernel = tokio::spawn(async move {
        // First connection: two answered pings, then one left unanswered (a busy kernel).
        let (mut first, first_id) = accept_heartbeat(&listener).await?;
        serve_ping(&mut first, true).await?;
        serve_ping(&mut first, true).await?;
        serve_ping(&mut first, false).await?;
        // The rebuilt connection, while the first is still open on this side.
        let (mut second, second_id) = accept_heartbeat(&listener).await?;
        serve_ping(&mut second, true).await?;
        drop(first);
        anyhow::Ok((first_id, second_id))
    });

    let mut hb = Heartbeat::new(&info, &SocketOptions::default());
    if let Err(err) = hb.ping(TIMEOUT).await {
        let kernel = tokio::time::timeout(TIMEOUT, kernel).await??;
        bail!("first ping: {err}; the kernel side: {kernel:?}");
    }
    hb.ping(TIMEOUT).await.context("second ping")?;
    let err = hb
        .ping(Duration::from_millis(300))
        .await
        .expect_err("the kernel does not answer the third ping");
    assert!(err.to_string().contains(&endpoint), "{err}");
    hb.ping(TIMEOUT)
        .await
        .context("ping over the rebuilt socket")?;

    let (first_id, second_id) = tokio::time::timeout(TIMEOUT, kernel).await???;
    assert!(!first_id.is_empty(), "an empty identity");
    assert!(!second_id.is_empty(), "an empty identity");
    assert_ne!(
        first_id, second_id,
        "the rebuilt socket reuses the old identity"
    );
    Ok(())
}

#[tokio::test]
async fn a_peer_that_drops_the_connection_is_reconnected() -> anyhow::Result<()> {
    let info = connection_info()?;
    let listener = TcpListener::bind(("127.0.0.1", info.hb_port)).await?;
    let kernel = tokio::spawn(async move {
        let (first, _) = accept_heartbeat(&listener).await?;
        // The kernel closes the connection before any ping (a restarted JVM, say).
        drop(first);
        let (mut second, _) = accept_heartbeat(&listener).await?;
        serve_ping(&mut second, true).await?;
        anyhow::Ok(())
    });
    let mut hb = Heartbeat::new(&info, &SocketOptions::default());
    // The first ping may fail on the closed connection; a later one must get through.
    let mut answered = false;
    for _ in 0..5 {
        if hb.ping(Duration::from_secs(2)).await.is_ok() {
            answered = true;
            break;
        }
    }
    assert!(
        answered,
        "no ping answered after the peer closed its connection"
    );
    tokio::time::timeout(TIMEOUT, kernel).await???;
    Ok(())
}
