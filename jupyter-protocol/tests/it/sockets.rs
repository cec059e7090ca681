//! The socket unit against in-process ZeroMQ peers: verification, replay, iopub buffering,
//! heartbeat rebuild and connect timeouts.
use std::time::Duration;

use bytes::Bytes;
use jupyter_protocol::sockets::{Heartbeat, IopubSubscription, SessionChannels};
use jupyter_protocol::{
    Channel, ConnectionInfo, Error, Header, IopubItem, Message, SignatureScheme, Signer,
    SocketOptions,
};
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

use crate::support::connection_info;

const TIMEOUT: Duration = Duration::from_secs(10);

fn signer(info: &ConnectionInfo) -> Signer {
    Signer::new(SignatureScheme::HmacSha256, info.key.as_bytes())
}

fn msg(msg_type: &str, n: u64) -> Message {
    Message::new(
        &Header::new(msg_type, "kernel", "k"),
        &serde_json::json!({ "n": n }),
    )
}

fn zmq(frames: Vec<Bytes>) -> ZmqMessage {
    ZmqMessage::try_from(frames).expect("frames")
}

fn n_of(msg: &Message) -> u64 {
    msg.parse_content::<serde_json::Value>().expect("content")["n"]
        .as_u64()
        .expect("n")
}

/// Publishes probes until `sub` receives one, then drains whatever probes are still coming.
async fn until_live(
    publisher: &mut zeromq::PubSocket,
    sub: &mut IopubSubscription,
    sign: &Signer,
) -> anyhow::Result<()> {
    loop {
        publisher
            .send(zmq(sign.encode(&[], &msg("probe", 0))))
            .await?;
        if let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_millis(50), sub.messages.recv()).await
        {
            break;
        }
    }
    while let Ok(Some(_)) =
        tokio::time::timeout(Duration::from_millis(100), sub.messages.recv()).await
    {}
    Ok(())
}

async fn bind<S: Socket>(
    socket: &mut S,
    info: &ConnectionInfo,
    channel: Channel,
) -> anyhow::Result<()> {
    socket.bind(&info.endpoint(channel)).await?;
    Ok(())
}

#[tokio::test]
async fn replies_are_verified_and_replays_dropped() -> anyhow::Result<()> {
    let info = connection_info()?;
    let mut shell = zeromq::RouterSocket::new();
    let mut control = zeromq::RouterSocket::new();
    let mut stdin = zeromq::RouterSocket::new();
    bind(&mut shell, &info, Channel::Shell).await?;
    bind(&mut control, &info, Channel::Control).await?;
    bind(&mut stdin, &info, Channel::Stdin).await?;
    let mut session =
        SessionChannels::connect(&info, "session-a", &SocketOptions::default()).await?;
    assert_eq!(session.sender.session_id(), "session-a");

    session
        .sender
        .send(Channel::Shell, msg("kernel_info_request", 0))
        .await?;
    let request = tokio::time::timeout(TIMEOUT, shell.recv())
        .await??
        .into_vec();
    // The ROUTER sees the session id as the DEALER's identity, and a valid signature.
    assert_eq!(&request[0][..], b"session-a");
    let (ids, _) = jupyter_protocol::Verifier::new(signer(&info)).decode(request, usize::MAX)?;

    let good = signer(&info).encode(&ids, &msg("kernel_info_reply", 1));
    shell.send(zmq(good.clone())).await?;
    shell.send(zmq(good)).await?; // replay
    let forged = Signer::new(SignatureScheme::HmacSha256, b"wrong").encode(&ids, &msg("x", 2));
    shell.send(zmq(forged)).await?;
    let mut malformed = ids.clone();
    malformed.push(Bytes::from_static(b"no delimiter"));
    shell.send(zmq(malformed)).await?;
    control
        .send(zmq(signer(&info).encode(&ids, &msg("interrupt_reply", 3))))
        .await?;

    let mut got = Vec::new();
    for _ in 0..2 {
        let (channel, reply) = tokio::time::timeout(TIMEOUT, session.replies.recv())
            .await?
            .expect("open");
        got.push((channel, n_of(&reply)));
    }
    got.sort_by_key(|(_, n)| *n);
    assert_eq!(got, vec![(Channel::Shell, 1), (Channel::Control, 3)]);
    // Nothing else arrives: the replay, the forgery and the malformed frames were dropped.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), session.replies.recv())
            .await
            .is_err()
    );

    assert!(
        session
            .sender
            .send(Channel::Iopub, msg("x", 0))
            .await
            .is_err()
    );
    Ok(())
}

#[tokio::test]
async fn iopub_drain_counts_drops_when_consumer_is_slow() -> anyhow::Result<()> {
    let info = connection_info()?;
    let mut publisher = zeromq::PubSocket::new();
    bind(&mut publisher, &info, Channel::Iopub).await?;
    let opts = SocketOptions {
        iopub_capacity: 10,
        ..SocketOptions::default()
    };
    let mut sub = IopubSubscription::connect(&info, &opts).await?;
    let sign = signer(&info);
    until_live(&mut publisher, &mut sub, &sign).await?;
    let before = sub.dropped();
    for n in 1..=50 {
        publisher
            .send(zmq(
                sign.encode(&[Bytes::from_static(b"topic")], &msg("stream", n))
            ))
            .await?;
    }
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while sub.dropped() - before < 40 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sub.dropped() - before, 40, "the 40 newest were dropped");
    let mut kept = Vec::new();
    while let Ok(item) = sub.messages.try_recv() {
        kept.push(n_of(item.checked().expect("small messages are verified")));
    }
    assert_eq!(
        kept,
        (1..=10).collect::<Vec<_>>(),
        "the oldest ten were kept in order"
    );
    Ok(())
}

/// What an item is, for comparing: its kind, the message's `n`, and for a settled one whether
/// its verdict passed.
fn shape(item: &IopubItem) -> (&'static str, u64, Option<bool>) {
    match item {
        IopubItem::Verified(msg) => ("verified", n_of(msg), None),
        IopubItem::Unverified(pending) => (
            "unverified",
            n_of(pending.message()),
            pending.verdict().and_then(|v| v.outcome()),
        ),
        IopubItem::Settled(settled) => (
            "settled",
            n_of(settled.message()),
            settled.verdict().and_then(|v| v.outcome()),
        ),
    }
}

fn large(msg_type: &str, n: u64, len: usize) -> Message {
    Message::new(
        &Header::new(msg_type, "kernel", "k"),
        &serde_json::json!({ "n": n, "data": "z".repeat(len) }),
    )
}

#[tokio::test]
async fn large_iopub_messages_are_handed_on_before_their_verdict_which_follows()
-> anyhow::Result<()> {
    let info = connection_info()?;
    let mut publisher = zeromq::PubSocket::new();
    bind(&mut publisher, &info, Channel::Iopub).await?;
    let opts = SocketOptions {
        verify_aside_above: Some(1 << 20),
        ..SocketOptions::default()
    };
    let mut sub = IopubSubscription::connect(&info, &opts).await?;
    let sign = signer(&info);
    until_live(&mut publisher, &mut sub, &sign).await?;
    let good = sign.encode(&[], &large("display_data", 1, 3 << 20));
    let forged = Signer::new(SignatureScheme::HmacSha256, b"wrong")
        .encode(&[], &large("display_data", 2, 3 << 20));
    publisher.send(zmq(good.clone())).await?;
    publisher.send(zmq(forged)).await?;
    publisher.send(zmq(good)).await?; // a replay of the good one
    publisher
        .send(zmq(sign.encode(&[], &msg("stream", 3))))
        .await?;
    let mut got = Vec::new();
    while got.last().map(|(kind, n, _)| (*kind, *n)) != Some(("verified", 3)) {
        let item = tokio::time::timeout(TIMEOUT, sub.messages.recv())
            .await?
            .expect("open");
        if let IopubItem::Unverified(pending) = &item {
            // Handed on first: the check is not done yet, or it is the verdict still to come.
            assert!(item.checked().is_none());
            assert!(pending.verdict().is_some());
        }
        // The verdict is in whenever its Settled item arrives.
        got.push(shape(&item));
    }
    // Unverified items carry the verdict, which may be in by the time the item is looked at.
    let kinds: Vec<(&str, u64)> = got.iter().map(|(kind, n, _)| (*kind, *n)).collect();
    assert_eq!(
        kinds,
        vec![
            ("unverified", 1),
            ("settled", 1),
            ("unverified", 2),
            ("settled", 2),
            ("verified", 3)
        ],
        "the replay was dropped before it was handed on"
    );
    assert_eq!(got[1].2, Some(true), "the good one passed");
    assert_eq!(got[3].2, Some(false), "the forged one failed");
    Ok(())
}

#[tokio::test]
async fn heartbeat_is_rebuilt_after_failure() -> anyhow::Result<()> {
    let info = connection_info()?;
    let echo = |info: ConnectionInfo| async move {
        let mut rep = zeromq::RepSocket::new();
        rep.bind(&info.endpoint(Channel::Heartbeat)).await?;
        let task = tokio::spawn(async move {
            while let Ok(ping) = rep.recv().await {
                if rep.send(ping).await.is_err() {
                    break;
                }
            }
        });
        anyhow::Ok(task)
    };
    let server = echo(info.clone()).await?;
    let mut hb = Heartbeat::new(&info, &SocketOptions::default());
    hb.ping(TIMEOUT).await?;
    hb.ping(TIMEOUT).await?;
    server.abort();
    let _ = server.await;
    assert!(hb.ping(Duration::from_millis(300)).await.is_err());
    // A new echo server on the same port: the next ping connects a fresh REQ.
    let _server = echo(info.clone()).await?;
    hb.ping(TIMEOUT).await?;
    Ok(())
}

#[tokio::test]
async fn connects_are_bounded_by_the_timeout() -> anyhow::Result<()> {
    let info = connection_info()?; // nobody listens on these ports
    let opts = SocketOptions {
        connect_timeout: Duration::from_millis(300),
        ..SocketOptions::default()
    };
    let started = tokio::time::Instant::now();
    let err = SessionChannels::connect(&info, "s", &opts)
        .await
        .expect_err("no kernel");
    assert!(matches!(err, Error::ConnectTimeout(_)), "{err}");
    let err = IopubSubscription::connect(&info, &opts)
        .await
        .expect_err("no kernel");
    assert!(matches!(err, Error::ConnectTimeout(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let mut bad = info.clone();
    bad.signature_scheme = "hmac-sha512".into();
    let err = SessionChannels::connect(&bad, "s", &opts)
        .await
        .expect_err("scheme");
    assert!(matches!(err, Error::UnsupportedScheme(_)), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_diverted_subscription_hands_everything_to_its_sink_in_order() -> anyhow::Result<()> {
    let info = connection_info()?;
    let mut publisher = zeromq::PubSocket::new();
    bind(&mut publisher, &info, Channel::Iopub).await?;
    let mut sub = IopubSubscription::connect(&info, &SocketOptions::default()).await?;
    let sign = signer(&info);
    until_live(&mut publisher, &mut sub, &sign).await?;
    // 1..=5 wait in the channel when the sink comes; 6..=10 arrive after.
    for n in 1..=5 {
        publisher
            .send(zmq(sign.encode(&[], &msg("stream", n))))
            .await?;
    }
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while sub.messages.len() < 5 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    sub.divert(Box::new(move |item: IopubItem| {
        if let Some(msg) = item.checked() {
            let _ = tx.send(n_of(msg));
        }
    }));
    for n in 6..=10 {
        publisher
            .send(zmq(sign.encode(&[], &msg("stream", n))))
            .await?;
    }
    let mut got = Vec::new();
    while got.len() < 10 {
        match tokio::time::timeout(TIMEOUT, rx.recv()).await {
            Ok(Some(n)) => got.push(n),
            _ => break,
        }
    }
    assert_eq!(got, (1..=10).collect::<Vec<_>>());
    assert!(
        sub.messages.try_recv().is_err(),
        "nothing is left for the channel"
    );
    Ok(())
}
