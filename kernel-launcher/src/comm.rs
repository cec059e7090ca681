//! The launcher's communication port (reference §8.7): signals and shutdown for remote kernels.
//!
//! The gateway opens a fresh TCP connection per request, writes one JSON object and closes its
//! side; nothing is read back. [`CommPort`] is that client: [`CommPort::probe`] (`{"signum": 0}`)
//! tells liveness from whether the connection is accepted (refused = the launcher is gone,
//! a timeout = [`CommOutcome::Unknown`], never "dead"); [`CommPort::signal`] and
//! [`CommPort::shutdown`] send `{"signum": N}` and `{"shutdown": 1}`.
//!
//! [`CommRequest::parse`] is the launcher side's reading of one request.
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The connect timeout used unless told otherwise (EG's 5 ms default is too small to be reliable).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What became of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommOutcome {
    /// The launcher accepted the connection and the request was written: it is alive.
    Delivered,
    /// The connection was refused: nothing listens there any more (the launcher is gone).
    Refused,
    /// Timeout or another network error: nothing can be concluded. The text says what happened.
    Unknown(String),
}

/// A launcher's communication port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommPort {
    addr: SocketAddr,
    connect_timeout: Duration,
}

impl CommPort {
    /// The port at `addr`, with a connect (and write) timeout.
    pub fn new(addr: SocketAddr, connect_timeout: Duration) -> CommPort {
        CommPort {
            addr,
            connect_timeout,
        }
    }

    /// Where it is.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Liveness probe: `{"signum": 0}`.
    pub async fn probe(&self) -> CommOutcome {
        self.signal(0).await
    }

    /// Asks the launcher to send signal `signum` to the kernel.
    pub async fn signal(&self, signum: i32) -> CommOutcome {
        self.send(&serde_json::json!({ "signum": signum })).await
    }

    /// Asks the launcher to stop listening (and, for our agent, to stop the kernel).
    pub async fn shutdown(&self) -> CommOutcome {
        self.send(&serde_json::json!({ "shutdown": 1 })).await
    }

    /// Sends one request on a fresh connection, then half-closes it.
    ///
    /// The connection is made and written by a task of its own, so a caller that stops waiting
    /// (a `select!` that took another branch) cannot cut it between the connect and the write:
    /// a launcher would then read an empty request, and the Toree launcher's listener thread
    /// dies on one (its JSON parse throws), leaving later signals unanswered.
    pub async fn send(&self, request: &serde_json::Value) -> CommOutcome {
        let bytes = request.to_string();
        let (addr, timeout) = (self.addr, self.connect_timeout);
        let attempt = tokio::spawn(async move {
            let deliver = async {
                let mut stream = TcpStream::connect(addr).await?;
                stream.write_all(bytes.as_bytes()).await?;
                stream.shutdown().await
            };
            tokio::time::timeout(timeout, deliver).await.ok()
        });
        match attempt.await {
            Ok(result) => self.classify(result),
            Err(err) => {
                CommOutcome::Unknown(format!("{}: the request task failed: {err}", self.addr))
            }
        }
    }

    /// The outcome of one attempt; `None` = timed out.
    fn classify(&self, result: Option<std::io::Result<()>>) -> CommOutcome {
        match result {
            Some(Ok(())) => CommOutcome::Delivered,
            Some(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
                CommOutcome::Refused
            }
            Some(Err(err)) => CommOutcome::Unknown(format!("{}: {err}", self.addr)),
            None => CommOutcome::Unknown(format!(
                "{}: no answer within {:?}",
                self.addr, self.connect_timeout
            )),
        }
    }
}

/// One request as a launcher reads it (both keys may be present).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommRequest {
    /// `signum`: a signal for the kernel (0 = liveness probe).
    pub signum: Option<i32>,
    /// `shutdown`: stop listening (any true value).
    pub shutdown: bool,
}

impl CommRequest {
    /// Parses one request; `None` when it is not a JSON object with usable keys.
    pub fn parse(bytes: &[u8]) -> Option<CommRequest> {
        let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        let object = value.as_object()?;
        let signum = match object.get("signum") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(
                v.as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                    .and_then(|n| i32::try_from(n).ok())?,
            ),
        };
        let shutdown = match object.get("shutdown") {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Bool(b)) => *b,
            Some(serde_json::Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
            Some(serde_json::Value::String(s)) => !s.is_empty(),
            Some(_) => true,
        };
        if signum.is_none() && !shutdown && !object.contains_key("shutdown") {
            return None;
        }
        Some(CommRequest { signum, shutdown })
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    #[test]
    fn requests() {
        let check = |text: &str, expected: Option<CommRequest>| {
            assert_eq!(CommRequest::parse(text.as_bytes()), expected, "{text}");
        };
        let req = |signum, shutdown| Some(CommRequest { signum, shutdown });
        check(r#"{"signum": 0}"#, req(Some(0), false));
        check(r#"{"signum": 2}"#, req(Some(2), false));
        check(r#"{"signum": "15"}"#, req(Some(15), false));
        check(r#"{"shutdown": 1}"#, req(None, true));
        check(r#"{"shutdown": 0}"#, req(None, false));
        check(r#"{"signum": 15, "shutdown": true}"#, req(Some(15), true));
        check(r#"{"signum": 1e99}"#, None);
        check(r#"{"other": 1}"#, None);
        check("[]", None);
        check("garbage", None);
        check("", None);
    }

    #[tokio::test]
    async fn delivered_refused_and_unknown() -> std::io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = CommPort::new(listener.local_addr()?, DEFAULT_CONNECT_TIMEOUT);
        let reader = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await?;
            let mut text = String::new();
            stream.read_to_string(&mut text).await?;
            Ok::<_, std::io::Error>(text)
        });
        assert_eq!(port.signal(2).await, CommOutcome::Delivered);
        let text = reader.await.map_err(std::io::Error::other)??;
        assert_eq!(
            CommRequest::parse(text.as_bytes()),
            Some(CommRequest {
                signum: Some(2),
                shutdown: false
            })
        );

        // Nothing listens on a just-released port.
        let closed = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
        assert_eq!(
            CommPort::new(closed, DEFAULT_CONNECT_TIMEOUT).probe().await,
            CommOutcome::Refused
        );
        // A timeout or another error is "unknown", never "dead".
        assert!(matches!(port.classify(None), CommOutcome::Unknown(_)));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(matches!(
            port.classify(Some(Err(reset))),
            CommOutcome::Unknown(_)
        ));
        Ok(())
    }

    #[tokio::test]
    async fn a_caller_that_stops_waiting_does_not_leave_an_empty_request() -> std::io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = CommPort::new(listener.local_addr()?, DEFAULT_CONNECT_TIMEOUT);
        // The send is polled once (its connect under way), then dropped for another branch.
        tokio::select! {
            biased;
            _ = port.signal(2) => {}
            () = std::future::ready(()) => {}
        }
        let (mut stream, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .map_err(std::io::Error::other)??;
        let mut text = String::new();
        stream.read_to_string(&mut text).await?;
        assert_eq!(
            CommRequest::parse(text.as_bytes()),
            Some(CommRequest {
                signum: Some(2),
                shutdown: false
            }),
            "the launcher read {text:?}"
        );
        Ok(())
    }
}
