//! The HTTP edge: what a request may look like before any route sees it.
//!
//! The work is split between the connection and this middleware. The connection (see
//! [`crate::server`]) bounds the head in hyper's read buffer, times out heads that do not arrive,
//! caps connections per client address, and follows each raw HTTP/1 head with a [`HeadScanner`],
//! because hyper quietly normalises the two framings the edge must refuse: it drops a
//! `Content-Length` sent beside `Transfer-Encoding`, and a second `Content-Length` equal to the
//! first. What the scanner saw reaches this middleware as a [`HeadFraming`] extension.
//!
//! The middleware [`edge`] then refuses, with the gateway's JSON errors and `Connection: close`:
//! a head larger than `max_head_bytes` (431; hyper's buffer cannot be set below 8 KiB, so smaller
//! limits are enforced here), ambiguous framing (400), a declared `Content-Length` beyond
//! `max_body_bytes` (413, before a byte of the body is read). It gives the body a read timeout:
//! a pause longer than `body_timeout` ends the request with 408. A request whose body was not
//! read to its end gets `Connection: close` on its response, so the unread rest is never taken
//! for the next request's head.
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderValue, StatusCode, Version};
use hyper::body::{Frame, SizeHint};
use tokio::time::Sleep;

use crate::Error;
use crate::config::HttpLimits;

/// The framing fields of one raw HTTP/1 request head, as the connection read them (before hyper
/// merged or dropped any).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HeadFraming {
    /// How many `Content-Length` fields the head had.
    pub(crate) content_lengths: u16,
    /// Whether it had a `Transfer-Encoding` field.
    pub(crate) transfer_encoding: bool,
}

impl HeadFraming {
    /// Packed into a `u32` (0 = nothing recorded), so a connection can hand it over atomically.
    pub(crate) fn pack(self) -> u32 {
        1 << 31 | u32::from(self.transfer_encoding) << 16 | u32::from(self.content_lengths)
    }

    /// The inverse of [`HeadFraming::pack`]; `None` for 0.
    pub(crate) fn unpack(packed: u32) -> Option<HeadFraming> {
        (packed & 1 << 31 != 0).then_some(HeadFraming {
            content_lengths: (packed & 0xffff) as u16,
            transfer_encoding: packed & 1 << 16 != 0,
        })
    }
}

/// Where a [`HeadScanner`] is within the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// In the request line (or the blank lines a client may send before it).
    RequestLine,
    /// In a field name, at `name_len` bytes.
    Name,
    /// In a field value.
    Value,
    /// Past the blank line that ends the head.
    Done,
    /// The connection speaks HTTP/2 (its preface came instead of a request line).
    Http2,
}

/// The longest field name the scanner needs to recognise (`transfer-encoding`).
const NAME_MAX: usize = 17;

/// Follows one raw HTTP/1 request head, byte by byte as it is read, and counts the fields that
/// decide how its body is framed. It only looks for line ends and colons; it is not a parser and
/// needs none: hyper refuses a malformed head itself.
#[derive(Debug, Clone)]
pub(crate) struct HeadScanner {
    state: Scan,
    /// The request line's first bytes (to recognise the HTTP/2 preface).
    line_start: [u8; 4],
    /// Bytes of the current line so far (request line: all of them; field: the name's).
    line_len: usize,
    name: [u8; NAME_MAX],
    framing: HeadFraming,
    /// Bytes fed since the head began.
    seen: usize,
}

impl Default for HeadScanner {
    fn default() -> HeadScanner {
        HeadScanner {
            state: Scan::RequestLine,
            line_start: [0; 4],
            line_len: 0,
            name: [0; NAME_MAX],
            framing: HeadFraming::default(),
            seen: 0,
        }
    }
}

impl HeadScanner {
    /// Ready for the next head (an HTTP/2 connection stays one).
    pub(crate) fn reset(&mut self) {
        if self.state != Scan::Http2 {
            *self = HeadScanner::default();
        }
    }

    /// Whether the scanner still wants bytes (the head is not complete yet).
    pub(crate) fn wants_bytes(&self) -> bool {
        matches!(self.state, Scan::RequestLine | Scan::Name | Scan::Value)
    }

    /// Whether part of a head arrived but not all of it.
    pub(crate) fn is_partial(&self) -> bool {
        self.seen > 0 && self.wants_bytes()
    }

    /// Whether the connection turned out to speak HTTP/2.
    #[cfg(test)]
    fn is_http2(&self) -> bool {
        self.state == Scan::Http2
    }

    /// Follows `bytes`; the framing once they complete the head (the bytes after it are left
    /// alone: they are body or the next request).
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Option<HeadFraming> {
        for &byte in bytes {
            if !self.wants_bytes() {
                return None;
            }
            self.seen = self.seen.saturating_add(1);
            match (self.state, byte) {
                (Scan::RequestLine, b'\n') if self.line_len == 0 => {}
                (Scan::RequestLine, b'\n') => {
                    if self.line_start == *b"PRI " {
                        self.state = Scan::Http2;
                        return None;
                    }
                    self.start_field();
                }
                (Scan::RequestLine, b'\r') => {}
                (Scan::RequestLine, _) => {
                    if let Some(slot) = self.line_start.get_mut(self.line_len) {
                        *slot = byte;
                    }
                    self.line_len = self.line_len.saturating_add(1);
                }
                // A line with nothing before its end: the blank line that ends the head.
                (Scan::Name, b'\n') if self.line_len == 0 => {
                    self.state = Scan::Done;
                    return Some(self.framing);
                }
                (Scan::Name, b'\r') if self.line_len == 0 => {}
                // A line without a colon: hyper refuses the head, nothing to count.
                (Scan::Name, b'\n') => self.start_field(),
                (Scan::Name, b':') => {
                    self.count_field();
                    self.state = Scan::Value;
                }
                (Scan::Name, _) => {
                    if let Some(slot) = self.name.get_mut(self.line_len) {
                        *slot = byte;
                    }
                    self.line_len = self.line_len.saturating_add(1);
                }
                (Scan::Value, b'\n') => self.start_field(),
                (Scan::Value, _) => {}
                (Scan::Done | Scan::Http2, _) => return None,
            }
        }
        None
    }

    fn start_field(&mut self) {
        self.state = Scan::Name;
        self.line_len = 0;
    }

    fn count_field(&mut self) {
        let name = self.name.get(..self.line_len).unwrap_or_default();
        if name.eq_ignore_ascii_case(b"content-length") {
            self.framing.content_lengths = self.framing.content_lengths.saturating_add(1);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.framing.transfer_encoding = true;
        }
    }
}

/// The edge middleware (see the module docs); its state is the configured limits.
pub(crate) async fn edge(
    State(limits): State<HttpLimits>,
    request: Request,
    next: Next,
) -> Response {
    let version = request.version();
    if let Err(error) = check_head(&request, &limits) {
        return refuse(error, version);
    }
    let progress = Arc::new(BodyProgress::default());
    let request = request.map(|body| {
        Body::new(TimedBody::new(
            body,
            limits.body_timeout,
            Arc::clone(&progress),
        ))
    });
    let mut response = next.run(request).await;
    if progress.timed_out.load(Ordering::Acquire) {
        return refuse(Error::RequestTimeout(BodyTimedOut.to_string()), version);
    }
    if !progress.finished.load(Ordering::Acquire)
        && response.status() != StatusCode::SWITCHING_PROTOCOLS
    {
        tracing::debug!(
            status = response.status().as_u16(),
            "request body not read to its end: closing the connection after the response"
        );
        close(&mut response, version);
    }
    response
}

/// The answer to a request refused at the edge: the error, and the connection closed after it.
fn refuse(error: Error, version: Version) -> Response {
    let mut response = error.into_response();
    close(&mut response, version);
    response
}

/// Asks hyper to close an HTTP/1 connection after `response` (HTTP/2 has no such header).
fn close(response: &mut Response, version: Version) {
    if version <= Version::HTTP_11 {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
}

/// Everything that can be decided from the head alone.
fn check_head(request: &Request, limits: &HttpLimits) -> Result<(), Error> {
    if head_len_lower_bound(request) > limits.max_head_bytes {
        return Err(Error::HeaderFieldsTooLarge);
    }
    let headers = request.headers();
    let raw = request
        .extensions()
        .get::<HeadFraming>()
        .copied()
        .unwrap_or_default();
    // hyper hides what `raw` counts; requests that did not come through our connection (HTTP/2,
    // an embedding server) still show it in their headers.
    let lengths = headers.get_all(CONTENT_LENGTH).iter().count();
    let lengths = lengths.max(usize::from(raw.content_lengths));
    let chunked = raw.transfer_encoding || headers.contains_key(TRANSFER_ENCODING);
    if lengths > 1 {
        return Err(bad_request("more than one Content-Length header"));
    }
    if lengths == 1 && chunked {
        return Err(bad_request(
            "both Content-Length and Transfer-Encoding headers",
        ));
    }
    if let Some(value) = headers.get(CONTENT_LENGTH) {
        let length = parse_length(value.as_bytes())
            .ok_or_else(|| bad_request("Content-Length is not a number"))?;
        if length > limits.max_body_bytes as u64 {
            tracing::debug!(
                length,
                limit = limits.max_body_bytes,
                "declared body too large"
            );
            return Err(Error::PayloadTooLarge);
        }
    }
    Ok(())
}

fn bad_request(message: &str) -> Error {
    Error::BadRequest {
        message: message.to_owned(),
    }
}

/// Decimal digits only (no sign, no spaces, no list), as HTTP defines `Content-Length`.
fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |sum, &byte| {
        byte.is_ascii_digit()
            .then(|| sum.checked_mul(10)?.checked_add(u64::from(byte - b'0')))
            .flatten()
    })
}

/// The fewest bytes the request's head can have taken on the wire: request line and fields with
/// no optional whitespace and bare line feeds. Never more than the real size, so a head within
/// the limit is never refused.
fn head_len_lower_bound(request: &Request) -> usize {
    let target = request
        .uri()
        .path_and_query()
        .map_or(1, |target| target.as_str().len());
    let request_line = request.method().as_str().len() + 1 + target + 1 + "HTTP/1.1".len() + 1;
    request
        .headers()
        .iter()
        .fold(request_line + 1, |sum, (name, value)| {
            sum.saturating_add(name.as_str().len() + 1 + value.len() + 1)
        })
}

/// How far a request's body got, shared between [`TimedBody`] and the middleware.
#[derive(Debug, Default)]
struct BodyProgress {
    /// The body was read to its end (or there was none).
    finished: AtomicBool,
    /// The body stopped arriving for longer than the body timeout.
    timed_out: AtomicBool,
}

/// A request body stopped arriving for longer than the body timeout.
#[derive(Debug, thiserror::Error)]
#[error("the request body stopped arriving")]
pub(crate) struct BodyTimedOut;

/// A request body with a read timeout per pause, that records how far it was read.
struct TimedBody {
    inner: Body,
    /// Zero: no timeout.
    timeout: Duration,
    /// Armed while the body is waited for.
    pause: Option<Pin<Box<Sleep>>>,
    progress: Arc<BodyProgress>,
}

impl TimedBody {
    fn new(inner: Body, timeout: Duration, progress: Arc<BodyProgress>) -> TimedBody {
        use hyper::body::Body as _;
        if inner.is_end_stream() {
            progress.finished.store(true, Ordering::Release);
        }
        TimedBody {
            inner,
            timeout,
            pause: None,
            progress,
        }
    }
}

impl hyper::body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(pause) = this.pause.as_mut() {
                    pause
                        .as_mut()
                        .reset(tokio::time::Instant::now() + this.timeout);
                }
                if hyper::body::Body::is_end_stream(&this.inner) {
                    this.progress.finished.store(true, Ordering::Release);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.progress.finished.store(true, Ordering::Release);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error))),
            Poll::Pending if this.timeout.is_zero() => Poll::Pending,
            Poll::Pending => {
                let timeout = this.timeout;
                let pause = this
                    .pause
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if pause.as_mut().poll(cx).is_ready() {
                    tracing::debug!(?timeout, "request body stopped arriving");
                    this.progress.timed_out.store(true, Ordering::Release);
                    return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        hyper::body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> SizeHint {
        hyper::body::Body::size_hint(&self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> (Option<HeadFraming>, HeadScanner) {
        let mut scanner = HeadScanner::default();
        let mut result = None;
        for chunk in chunks {
            if let Some(framing) = scanner.feed(chunk) {
                result = Some(framing);
            }
        }
        (result, scanner)
    }

    fn framing(content_lengths: u16, transfer_encoding: bool) -> Option<HeadFraming> {
        Some(HeadFraming {
            content_lengths,
            transfer_encoding,
        })
    }

    #[test]
    fn scanner_counts_framing_fields_across_reads() {
        let cases: &[(&[&[u8]], Option<HeadFraming>)] = &[
            (&[b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"], framing(0, false)),
            (
                &[b"POST /a:b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"],
                framing(1, false),
            ),
            (
                &[b"POST / HTTP/1.1\r\ncontent-length: 5\r\nCONTENT-LENGTH: 5\r\n\r\n"],
                framing(2, false),
            ),
            (
                &[
                    b"POST / HTTP/1.1\r\nContent-Le",
                    b"ngth: 5\r\nTransfer-Encoding",
                    b": chunked\r",
                    b"\n\r",
                    b"\n",
                ],
                framing(1, true),
            ),
            // Bare line feeds, leading blank lines, a value that looks like a field.
            (
                &[b"\r\n\nPUT / HTTP/1.1\nX: content-length: 1\nTransfer-Encoding:chunked\n\n"],
                framing(0, true),
            ),
            // Not complete yet.
            (&[b"GET / HTTP/1.1\r\nHost: x\r\n"], None),
            // The HTTP/2 preface is no HTTP/1 head.
            (&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"], None),
        ];
        for (chunks, expected) in cases {
            let (actual, _) = scan(chunks);
            assert_eq!(actual, *expected, "{chunks:?}");
        }
        let (_, scanner) = scan(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]);
        assert!(scanner.is_http2() && !scanner.is_partial());
        let (_, scanner) = scan(&[b"GET / HTT"]);
        assert!(scanner.is_partial());
        let (_, mut scanner) = scan(&[b"GET / HTTP/1.1\r\n\r\nbody"]);
        assert!(!scanner.is_partial() && !scanner.wants_bytes());
        scanner.reset();
        assert!(!scanner.is_partial() && scanner.wants_bytes());
        assert_eq!(scanner.feed(b"GET / HTTP/1.1\r\n\r\n"), framing(0, false));
    }

    #[test]
    fn framing_packs_and_unpacks() {
        for framing in [
            HeadFraming::default(),
            HeadFraming {
                content_lengths: u16::MAX,
                transfer_encoding: true,
            },
        ] {
            assert_eq!(HeadFraming::unpack(framing.pack()), Some(framing));
        }
        assert_eq!(HeadFraming::unpack(0), None);
    }

    #[test]
    fn lengths_are_digits_only() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"16777216"), Some(16_777_216));
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b" 1",
            b"1,1",
            b"0x10",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_length(bad), None, "{bad:?}");
        }
    }

    /// A body that sends `{` and then nothing more.
    fn stalled_body() -> Body {
        use futures_util::StreamExt as _;
        let first = futures_util::stream::once(async { Ok::<_, std::io::Error>(Bytes::from("{")) });
        Body::from_stream(first.chain(futures_util::stream::pending()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_times_out_in_the_extractor() {
        use axum::extract::FromRequest as _;
        let progress = Arc::new(BodyProgress::default());
        let body = TimedBody::new(
            stalled_body(),
            Duration::from_secs(1),
            Arc::clone(&progress),
        );
        let request = http::Request::post("/")
            .body(Body::new(body))
            .unwrap_or_else(|e| panic!("{e}"));
        let result = super::super::extract::JsonBody::from_request(request, &()).await;
        assert!(
            matches!(result, Err(Error::RequestTimeout(_))),
            "{result:?}"
        );
        assert!(progress.timed_out.load(Ordering::Acquire));
        assert!(!progress.finished.load(Ordering::Acquire));
    }

    #[tokio::test(start_paused = true)]
    async fn the_middleware_answers_408_and_closes_what_it_did_not_read() {
        use axum::routing::post;
        use tower::ServiceExt as _;
        let limits = HttpLimits {
            body_timeout: Duration::from_secs(1),
            ..HttpLimits::default()
        };
        let app = axum::Router::new()
            .route(
                "/read",
                post(|body: Bytes| async move { body.len().to_string() }),
            )
            .route("/ignore", post(|| async { "ignored" }))
            .layer(axum::middleware::from_fn_with_state(limits, edge));
        let send = |path: &str, body: Body| {
            let request = http::Request::post(path)
                .body(body)
                .unwrap_or_else(|e| panic!("{e}"));
            app.clone().oneshot(request)
        };
        let closes = |response: &Response| {
            response
                .headers()
                .get(CONNECTION)
                .is_some_and(|v| v == "close")
        };

        let stalled = send("/read", stalled_body())
            .await
            .unwrap_or_else(|e| match e {});
        assert_eq!(stalled.status(), StatusCode::REQUEST_TIMEOUT);
        assert!(closes(&stalled));
        let read = send("/read", Body::from("{}"))
            .await
            .unwrap_or_else(|e| match e {});
        assert_eq!(read.status(), StatusCode::OK);
        assert!(
            !closes(&read),
            "a body read to its end keeps the connection"
        );
        let ignored = send("/ignore", Body::from("{}"))
            .await
            .unwrap_or_else(|e| match e {});
        assert_eq!(ignored.status(), StatusCode::OK);
        assert!(closes(&ignored), "an unread body closes the connection");
        let empty = send("/ignore", Body::empty())
            .await
            .unwrap_or_else(|e| match e {});
        assert!(!closes(&empty), "no body, nothing left unread");
    }

    #[test]
    fn head_bound_never_exceeds_the_wire_size() {
        let wire = "GET /api?x=1 HTTP/1.1\r\nHost: localhost\r\nX-Long: abc\r\n\r\n";
        let request = http::Request::get("/api?x=1")
            .header("host", "localhost")
            .header("x-long", "abc")
            .body(Body::empty())
            .unwrap_or_else(|e| panic!("{e}"));
        let bound = head_len_lower_bound(&request);
        assert!(bound <= wire.len(), "{bound} > {}", wire.len());
        assert!(bound + 8 >= wire.len(), "{bound} far below {}", wire.len());
    }
}
