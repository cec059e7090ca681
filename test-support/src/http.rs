//! Raw HTTP/1.1 for tests that must see the bytes a server sends: the status, the head, a
//! `Content-Length` or chunked body, what follows the response and whether the server then
//! closes. No HTTP client crate in between, so a hostile or malformed exchange is what is sent.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// A response as read off the connection.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The status line and header lines, lowercased.
    pub head: String,
    /// The body, by its `Content-Length` (none: empty).
    pub body: String,
    /// Bytes after the response (a server that closes must send none).
    pub after: Vec<u8>,
    /// The server closed the connection after the response (only looked at by [`linger`]).
    pub closed: bool,
}

impl Reply {
    /// The body as JSON, or as a JSON string when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|_| serde_json::Value::String(self.body.clone()))
    }

    /// A header's value (names compare lowercased).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim())
        })
    }
}

/// Reads one response whose every read must come within `hang`. `None` when the connection
/// closed before the first byte; an error when it closed partway or went silent.
pub async fn read_reply<S: AsyncRead + Unpin>(
    stream: &mut S,
    hang: Duration,
) -> anyhow::Result<Option<Reply>> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = tokio::time::timeout(hang, stream.read(&mut chunk))
            .await
            .context("no response")??;
        if n == 0 {
            ensure!(
                buffer.is_empty(),
                "connection closed inside the response head ({} bytes: {:?})",
                buffer.len(),
                String::from_utf8_lossy(&buffer)
            );
            return Ok(None);
        }
        buffer.extend_from_slice(chunk.get(..n).unwrap_or_default());
    };
    let head = String::from_utf8_lossy(buffer.get(..head_end).unwrap_or_default()).to_lowercase();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .context("no status")?
        .parse()
        .with_context(|| format!("no status in {head:?}"))?;
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:").map(str::trim))
        .unwrap_or("0")
        .parse()?;
    while buffer.len() < head_end + length {
        let n = tokio::time::timeout(hang, stream.read(&mut chunk))
            .await
            .context("the body did not arrive")??;
        ensure!(n > 0, "connection closed inside the body");
        buffer.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
    let body = String::from_utf8_lossy(buffer.get(head_end..head_end + length).unwrap_or_default())
        .into_owned();
    let after = buffer.split_off(head_end + length);
    Ok(Some(Reply {
        status,
        head,
        body,
        after,
        closed: false,
    }))
}

/// Reads on after `reply` for up to `within`: what else arrives goes to `after`, and an end of
/// the stream (or a reset) sets `closed`.
pub async fn linger<S: AsyncRead + Unpin>(stream: &mut S, reply: &mut Reply, within: Duration) {
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return,
            Ok(Ok(0)) | Ok(Err(_)) => {
                reply.closed = true;
                return;
            }
            Ok(Ok(n)) => reply
                .after
                .extend_from_slice(chunk.get(..n).unwrap_or_default()),
        }
    }
}

/// Sends one request (`headers` as `Name: value\r\n` lines, a `Content-Length` always) on an
/// open connection and reads its response, each read within 30 s.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> anyhow::Result<Reply> {
    let length = body.len();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Content-Length: {length}\r\n\r\n{body}"
    );
    stream.write_all(request.as_bytes()).await?;
    read_reply(stream, Duration::from_secs(30))
        .await?
        .context("connection closed before the response")
}

/// A complete response, as bytes read to the end of the connection.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header lines, names lowercased, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON (`Null` when it is empty or not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Parses a whole response (head, then a plain or chunked body up to the end of `raw`).
pub fn parse_response(raw: &[u8]) -> anyhow::Result<Response> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("response has no end of headers")?;
    let head = String::from_utf8_lossy(raw.get(..split).unwrap_or_default()).into_owned();
    let rest = raw.get(split + 4..).unwrap_or_default();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().context("empty response")?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .context("status line has no code")?
        .parse()
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// The body of a chunked transfer encoding (extensions ignored, trailers dropped).
pub fn dechunk(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_chunked_bodies() {
        let plain = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi").unwrap();
        assert_eq!((plain.status, plain.text().as_str()), (200, "hi"));
        let chunked = parse_response(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((chunked.status, chunked.text().as_str()), (404, "abcde"));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(dechunk(b"zz\r\n").is_err());
    }

    #[tokio::test]
    async fn a_reply_its_rest_and_the_close() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        server
            .write_all(
                b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 4\r\nX-A: b\r\n\r\n{}  extra",
            )
            .await
            .unwrap();
        drop(server);
        let mut reply = read_reply(&mut client, Duration::from_secs(5))
            .await
            .unwrap()
            .expect("a reply");
        assert_eq!(reply.status, 408);
        assert_eq!(reply.json(), serde_json::json!({}));
        assert_eq!(reply.header("x-a"), Some("b"));
        linger(&mut client, &mut reply, Duration::from_secs(5)).await;
        assert!(reply.closed);
        assert_eq!(reply.after, b"extra");
        let (mut client, server) = tokio::io::duplex(64);
        drop(server);
        assert!(
            read_reply(&mut client, Duration::from_secs(5))
                .await
                .unwrap()
                .is_none()
        );
    }
}
