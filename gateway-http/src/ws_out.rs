//! The outgoing half of a channels WebSocket: data frames written straight from a message's
//! parts, with control frames (pong, close, ping) slotted in between frames.
//!
//! tungstenite builds every outgoing message into its own write buffer, so a kernel message was
//! held three times on its way out (as received, as the encoded payload, in tungstenite's
//! buffer). Here the payload is a list of segments that share the received message's memory
//! ([`jupyter_protocol::websocket::WsPayload`]); [`FrameWriter`] puts a frame header in front of
//! them and hands them to the socket with vectored writes, so the gateway holds one copy of a
//! message however large it is. Payloads larger than [`FRAGMENT`] go out as a fragmented
//! message (RFC 6455 §5.4), so a control frame waits for at most one fragment, not for a whole
//! 50 MB message.
//!
//! tungstenite still reads the client's frames (unmasking, reassembly, UTF-8 checks, size limits)
//! and answers pings and closes; it writes those answers into an [`Outbox`] (through
//! [`ControlIo`]), which the writer empties between two frames.
//!
//! A message whose signature is still being checked ([`FrameWriter::push_gated`]) is written up
//! to its last frame, which waits for the [`Verdict`]: when it passes the frame goes out, when it
//! fails the message stops there and nothing queued after it is written
//! ([`FrameWriter::failed`]); the connection is then closed, so no client ever receives the
//! whole of a message that failed its check.
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use jupyter_protocol::Verdict;
use jupyter_protocol::websocket::WsPayload;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::budget::Account;

/// Largest payload sent as one frame; larger ones are fragmented into frames of this size.
pub(crate) const FRAGMENT: usize = 1024 * 1024;
/// Most segments handed to one vectored write (Linux takes up to 1,024).
const MAX_IOV: usize = 128;
/// Frames up to this size (header and payload) are copied behind each other into one buffer
/// instead of being written as segments of their own: a burst of small messages becomes one
/// segment (one copy of a few hundred bytes costs less than the write's per-segment work).
const COALESCE: usize = 2048;

/// Control frames tungstenite wrote (whole frames, in order), waiting for a frame boundary.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    state: Mutex<OutboxState>,
}

#[derive(Debug, Default)]
struct OutboxState {
    bytes: BytesMut,
    /// The writer's task, woken when control bytes arrive.
    waker: Option<Waker>,
}

/// Above this many waiting control bytes the outbox keeps only the newest pong and ping.
const OUTBOX_COMPACT: usize = 1024;

impl Outbox {
    fn push(&self, buf: &[u8]) {
        let mut state = self.state.lock();
        state.bytes.extend_from_slice(buf);
        if state.bytes.len() > OUTBOX_COMPACT {
            // The writer is stuck in the middle of a frame (the client does not read) while the
            // client keeps pinging: answering only the latest ping is what RFC 6455 §5.5.3
            // allows, and it bounds what a client can make the gateway hold this way.
            if let Some(kept) = keep_latest_pong_and_ping(&state.bytes) {
                state.bytes = kept;
            }
        }
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }

    /// What is waiting; registers `cx` for more when nothing is.
    fn take(&self, cx: Option<&mut Context<'_>>) -> Bytes {
        let mut state = self.state.lock();
        if state.bytes.is_empty() {
            if let Some(cx) = cx {
                state.waker = Some(cx.waker().clone());
            }
            return Bytes::new();
        }
        state.bytes.split().freeze()
    }
}

/// `frames` (whole unmasked control frames, as tungstenite writes them) with every pong and ping
/// but the last of each dropped, the rest in order; `None` if they do not parse as such.
fn keep_latest_pong_and_ping(frames: &[u8]) -> Option<BytesMut> {
    const PING: u8 = 0x9;
    const PONG: u8 = 0xA;
    let mut spans = Vec::new();
    let mut at = 0;
    while at < frames.len() {
        let opcode = frames.get(at)? & 0x0F;
        let len = usize::from(*frames.get(at + 1)?);
        // Control frames carry at most 125 bytes, so the length is always the 7-bit form.
        if opcode < 0x8 || len > 125 || at + 2 + len > frames.len() {
            return None;
        }
        spans.push((opcode, at..at + 2 + len));
        at += 2 + len;
    }
    let last = |code: u8| spans.iter().rposition(|(op, _)| *op == code);
    let (last_ping, last_pong) = (last(PING), last(PONG));
    let mut kept = BytesMut::with_capacity(frames.len().min(4 * 127));
    for (i, (opcode, span)) in spans.iter().enumerate() {
        let drop =
            (*opcode == PING && Some(i) != last_ping) || (*opcode == PONG && Some(i) != last_pong);
        if !drop {
            kept.extend_from_slice(frames.get(span.clone())?);
        }
    }
    Some(kept)
}

/// The stream tungstenite runs on: reads come from the socket's read half, writes (only ever
/// control frames: tungstenite never sends data here) go to the [`Outbox`].
#[derive(Debug)]
pub(crate) struct ControlIo<R> {
    read: R,
    outbox: Arc<Outbox>,
}

impl<R> ControlIo<R> {
    pub(crate) fn new(read: R, outbox: Arc<Outbox>) -> ControlIo<R> {
        ControlIo { read, outbox }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for ControlIo<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().read).poll_read(cx, buf)
    }
}

impl<R: Unpin> AsyncWrite for ControlIo<R> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.outbox.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Writes data frames from payload segments and the [`Outbox`]'s control frames to the socket.
///
/// [`FrameWriter::push_gated`] only queues (it never waits); [`FrameWriter::progress`] writes. What is
/// queued and not yet taken by the socket is charged to the connection's [`Account`].
#[derive(Debug)]
pub(crate) struct FrameWriter<W> {
    inner: W,
    /// Frame headers are written here and split off (one allocation for many frames).
    headers: BytesMut,
    /// Small frames copied behind each other, not yet in `segments`.
    staging: BytesMut,
    /// The bytes to write, oldest first; no segment is empty.
    segments: VecDeque<Bytes>,
    /// The queued frames (a staged batch of small frames counts as one), oldest first.
    frames: VecDeque<Unit>,
    /// Messages whose last frame has been queued (`push` calls, less what `abandon` dropped).
    finished: u64,
    /// Messages whose last frame the socket has taken.
    delivered: u64,
    /// Whether the oldest frame is partly written (a control frame must wait for its end).
    midframe: bool,
    /// Bytes in `segments`.
    queued: usize,
    /// Written but not flushed.
    unflushed: bool,
    /// Written since [`FrameWriter::poll_write_out`] last said so (a write can end in a pending
    /// flush, and the call that completes the flush has written nothing itself).
    unreported: bool,
    /// Queued frames that wait for a verdict.
    gates: usize,
    /// Once a message's verdict failed: how many messages go out whole (see
    /// [`FrameWriter::failed`]).
    failed: Option<u64>,
    /// Whether [`FrameWriter::progress`] has yet to report `failed`.
    failure_unseen: bool,
    outbox: Arc<Outbox>,
    account: Account,
}

/// One queued frame, or one segment of staged small frames.
#[derive(Debug, Clone)]
struct Unit {
    /// Segments still to write.
    segments: usize,
    /// [`FrameWriter::delivered`] once this unit is written.
    done: u64,
    /// The verdict this frame (the last of its message) waits for; `None` once it passed.
    gate: Option<Verdict>,
}

impl<W> Drop for FrameWriter<W> {
    fn drop(&mut self) {
        self.account.release(self.queued);
    }
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub(crate) fn new(inner: W, outbox: Arc<Outbox>, account: Account) -> FrameWriter<W> {
        FrameWriter {
            inner,
            headers: BytesMut::new(),
            staging: BytesMut::new(),
            segments: VecDeque::new(),
            frames: VecDeque::new(),
            finished: 0,
            delivered: 0,
            midframe: false,
            queued: 0,
            unflushed: false,
            unreported: false,
            gates: 0,
            failed: None,
            failure_unseen: false,
            outbox,
            account,
        }
    }

    /// Bytes queued and not yet taken by the socket.
    pub(crate) fn queued(&self) -> usize {
        self.queued + self.staging.len()
    }

    /// How many of the pushed messages the socket has taken whole (counting from the first
    /// `push`; a message dropped by [`FrameWriter::abandon`] is not counted).
    pub(crate) fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Once a message's verdict failed, how many of the pushed messages will have gone out whole
    /// when what is still queued is written: that message and everything queued after it were
    /// dropped, and nothing more is written but what came before.
    pub(crate) fn failed(&self) -> Option<u64> {
        self.failed
    }

    /// [`FrameWriter::push_gated`] without a verdict.
    #[cfg(test)]
    fn push(&mut self, payload: WsPayload) {
        self.push_gated(payload, None);
    }

    /// Queues a message: one frame, or fragments of [`FRAGMENT`] bytes when it is larger. Text
    /// is cut at character boundaries, so each fragment is UTF-8 on its own too. When `gate` is
    /// given and still pending, the message's last frame waits for it; the frames before it are
    /// written meanwhile.
    pub(crate) fn push_gated(&mut self, payload: WsPayload, gate: Option<Verdict>) {
        if self.failed.is_some() {
            // Nothing more goes out; the caller takes it back as not delivered.
            return;
        }
        let gate = gate.filter(|verdict| verdict.outcome() != Some(true));
        let total = payload.len();
        let opcode = if payload.text { 0x1 } else { 0x2 };
        if total <= FRAGMENT {
            self.frame(true, opcode, total, payload.segments, gate);
            return;
        }
        let mut rest: VecDeque<Bytes> = payload.segments.into();
        let mut left = total;
        let mut first = true;
        while left > 0 {
            let mut want = left.min(FRAGMENT);
            let mut parts = Vec::new();
            let mut len = 0;
            while len < want {
                let Some(mut segment) = rest.pop_front() else {
                    break;
                };
                let room = want - len;
                if segment.len() > room {
                    let mut cut = room;
                    if payload.text {
                        // Back to the start of a character (at most 3 continuation bytes).
                        while cut > 0 && segment.get(cut).is_some_and(|b| b & 0xC0 == 0x80) {
                            cut -= 1;
                        }
                        if cut == 0 && len == 0 {
                            // Cannot happen with valid UTF-8 and a fragment of 1 MiB; keep going.
                            cut = room;
                        }
                    }
                    let tail = segment.split_off(cut);
                    rest.push_front(tail);
                    if cut == 0 {
                        want = len;
                        break;
                    }
                }
                len += segment.len();
                parts.push(segment);
            }
            left -= len;
            let fin = left == 0;
            let gate = if fin { gate.clone() } else { None };
            self.frame(fin, if first { opcode } else { 0x0 }, len, parts, gate);
            first = false;
        }
    }

    /// Queues one frame with `payload` (whose segments sum to `len`), waiting for `gate`.
    fn frame(
        &mut self,
        fin: bool,
        opcode: u8,
        len: usize,
        payload: Vec<Bytes>,
        gate: Option<Verdict>,
    ) {
        // A gated frame is a unit of its own, never staged with others.
        let small = len + 10 <= COALESCE && gate.is_none();
        let headers = if small {
            &mut self.staging
        } else {
            self.seal();
            &mut self.headers
        };
        headers.reserve(10);
        headers.put_u8(if fin { 0x80 } else { 0 } | opcode);
        if len < 126 {
            headers.put_u8(len as u8);
        } else if let Ok(short) = u16::try_from(len) {
            headers.put_u8(126);
            headers.put_u16(short);
        } else {
            headers.put_u8(127);
            headers.put_u64(len as u64);
        }
        if small {
            for segment in &payload {
                self.staging.extend_from_slice(segment);
            }
            self.finished += u64::from(fin);
            return;
        }
        let header = headers.split().freeze();
        let count = 1 + payload.iter().filter(|s| !s.is_empty()).count();
        self.queued += header.len() + len;
        self.account.charge(header.len() + len);
        self.segments.push_back(header);
        self.segments
            .extend(payload.into_iter().filter(|s| !s.is_empty()));
        self.finished += u64::from(fin);
        self.gates += usize::from(gate.is_some());
        self.frames.push_back(Unit {
            segments: count,
            done: self.finished,
            gate,
        });
    }

    /// Moves the staged small frames into `segments`, as one segment (a partial write of it
    /// counts as the middle of a frame, so control frames wait for its end).
    fn seal(&mut self) {
        if self.staging.is_empty() {
            return;
        }
        let staged = self.staging.split().freeze();
        self.queued += staged.len();
        self.account.charge(staged.len());
        self.segments.push_back(staged);
        self.frames.push_back(Unit {
            segments: 1,
            done: self.finished,
            gate: None,
        });
    }

    /// Drops every queued frame that has not started (the connection is closing: nothing may
    /// follow the close frame). A partly written frame stays, so the framing stays valid.
    ///
    /// Returns how many messages [`FrameWriter::delivered`] will count once what stays is
    /// written: the pushed messages from there on were dropped (a message whose first fragments
    /// went out but not its last is among them), and the caller may send them elsewhere.
    pub(crate) fn abandon(&mut self) -> u64 {
        self.staging.clear();
        self.truncate_frames(usize::from(self.midframe));
        self.finished
    }

    /// Keeps the first `units` queued frames and drops the rest (none of them started).
    fn truncate_frames(&mut self, units: usize) {
        let units = units.min(self.frames.len());
        let keep: usize = self
            .frames
            .iter()
            .take(units)
            .map(|unit| unit.segments)
            .sum();
        let dropped: usize = self.segments.iter().skip(keep).map(Bytes::len).sum();
        self.segments.truncate(keep);
        self.frames.truncate(units);
        self.gates = self
            .frames
            .iter()
            .filter(|unit| unit.gate.is_some())
            .count();
        self.queued -= dropped;
        self.account.release(dropped);
        self.finished = self.frames.back().map_or(self.delivered, |unit| unit.done);
    }

    /// How many queued segments may be written now: those before the first frame whose verdict
    /// is pending (with `cx` registered for it). A failed verdict drops its frame and everything
    /// after it.
    fn writable(&mut self, cx: &mut Context<'_>) -> usize {
        if self.gates == 0 {
            return self.segments.len();
        }
        let mut segments = 0;
        let mut index = 0;
        while index < self.frames.len() {
            let Some(unit) = self.frames.get_mut(index) else {
                break;
            };
            if let Some(gate) = &unit.gate {
                match gate.poll_outcome(cx) {
                    Poll::Ready(true) => {
                        unit.gate = None;
                        self.gates -= 1;
                    }
                    Poll::Ready(false) => {
                        self.truncate_frames(index);
                        self.failed = Some(self.finished);
                        self.failure_unseen = true;
                        return segments;
                    }
                    Poll::Pending => return segments,
                }
            }
            segments += unit.segments;
            if self.gates == 0 || segments >= MAX_IOV {
                return if self.gates == 0 {
                    self.segments.len()
                } else {
                    segments
                };
            }
            index += 1;
        }
        segments
    }

    /// Writes what is queued and flushes: `Ready(Ok)` once that is done (or at once when there
    /// was nothing to write), with whether anything was written since the last `Ready`;
    /// `Pending` while the socket is full.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        self.seal();
        loop {
            if !self.midframe {
                let control = self.outbox.take(None);
                if !control.is_empty() {
                    self.queued += control.len();
                    self.account.charge(control.len());
                    self.segments.push_front(control);
                    self.frames.push_front(Unit {
                        segments: 1,
                        done: self.delivered,
                        gate: None,
                    });
                }
            }
            let writable = self.writable(cx);
            if writable == 0 {
                break;
            }
            // A control frame is waiting for the end of the frame being written: write only up
            // to that end (a write that spans frames almost never ends on a boundary).
            let limit = if self.midframe && self.outbox.has_bytes() {
                self.frames
                    .front()
                    .map_or(MAX_IOV, |unit| unit.segments)
                    .min(MAX_IOV)
            } else {
                MAX_IOV
            }
            .min(writable);
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            let mut used = 0;
            for (slot, segment) in slices.iter_mut().take(limit).zip(self.segments.iter()) {
                *slot = IoSlice::new(segment);
                used += 1;
            }
            let written = ready!(
                Pin::new(&mut self.inner)
                    .poll_write_vectored(cx, slices.get(..used).unwrap_or_default())
            )?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(written);
            self.unreported = true;
            self.unflushed = true;
        }
        if self.unflushed {
            ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(std::mem::take(&mut self.unreported)))
    }

    /// Marks `written` bytes from the front as sent.
    fn advance(&mut self, written: usize) {
        let mut left = written;
        while left > 0 {
            let Some(front) = self.segments.front_mut() else {
                break;
            };
            if front.len() > left {
                front.advance(left);
                self.midframe = true;
                break;
            }
            left -= front.len();
            self.segments.pop_front();
            match self.frames.front_mut() {
                Some(unit) if unit.segments > 1 => {
                    unit.segments -= 1;
                    self.midframe = true;
                }
                _ => {
                    if let Some(unit) = self.frames.pop_front() {
                        self.delivered = self.delivered.max(unit.done);
                    }
                    self.midframe = false;
                }
            }
        }
        self.queued -= written;
        self.account.release(written);
    }

    /// Completes when the writer wrote something and everything queued is out (flushed), or
    /// fails with the socket. With nothing to write it waits for control frames, so it can sit in
    /// a `select!` loop beside the reads that make tungstenite queue them.
    /// It also completes once when a verdict failed ([`FrameWriter::failed`]).
    pub(crate) async fn progress(&mut self) -> io::Result<()> {
        poll_fn(|cx| {
            if ready!(self.poll_write_out(cx))? || std::mem::take(&mut self.failure_unseen) {
                return Poll::Ready(Ok(()));
            }
            // Nothing was queued: wait for a control frame (the data side re-enters the loop
            // through its own branch), checking once more after registering.
            if self.outbox.take_peek(cx) {
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        })
        .await
    }

    /// Writes everything queued, control frames included, and flushes (waiting for the verdicts
    /// of gated frames; a failed one ends the writing there).
    pub(crate) async fn finish(&mut self) -> io::Result<()> {
        poll_fn(|cx| {
            ready!(self.poll_write_out(cx))?;
            if self.segments.is_empty() {
                Poll::Ready(Ok(()))
            } else {
                // Only a pending verdict stops the writer with segments left; it wakes us.
                Poll::Pending
            }
        })
        .await
    }
}

impl Outbox {
    /// Whether control bytes are waiting.
    fn has_bytes(&self) -> bool {
        !self.state.lock().bytes.is_empty()
    }

    /// Registers `cx` for control bytes; true when some are already waiting.
    fn take_peek(&self, cx: &mut Context<'_>) -> bool {
        let mut state = self.state.lock();
        state.waker = Some(cx.waker().clone());
        !state.bytes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncReadExt as _;
    use tokio::time::timeout;

    fn text(segments: &[&str]) -> WsPayload {
        WsPayload {
            text: true,
            segments: segments
                .iter()
                .map(|s| Bytes::copy_from_slice(s.as_bytes()))
                .collect(),
        }
    }

    /// Parses server frames: (fin, opcode, payload).
    fn frames(mut data: &[u8]) -> Vec<(bool, u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let fin = data[0] & 0x80 != 0;
            let opcode = data[0] & 0x0F;
            let (len, head) = match data[1] {
                126 => (u16::from_be_bytes([data[2], data[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(data[2..10].try_into().expect("8 bytes")) as usize,
                    10,
                ),
                n => (n as usize, 2),
            };
            out.push((fin, opcode, data[head..head + len].to_vec()));
            data = &data[head + len..];
        }
        out
    }

    async fn written(pushes: Vec<WsPayload>, control: &[u8], pipe: usize) -> Vec<u8> {
        let (near, mut far) = tokio::io::duplex(pipe);
        let outbox = Arc::new(Outbox::default());
        let budget = crate::budget::MemoryBudget::unbounded();
        let account = budget.open();
        let mut writer = FrameWriter::new(near, Arc::clone(&outbox), account.clone());
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            far.read_to_end(&mut got).await.expect("read");
            got
        });
        for payload in pushes {
            writer.push(payload);
        }
        if !control.is_empty() {
            outbox.push(control);
        }
        writer.finish().await.expect("finish");
        assert_eq!((writer.queued(), account.held()), (0, 0));
        assert!(writer.staging.capacity() < 1 << 20, "no large buffer kept");
        drop(writer);
        reader.await.expect("reader")
    }

    #[test]
    fn a_client_that_pings_without_reading_gets_only_its_latest_pong() {
        let outbox = Outbox::default();
        let control = |opcode: u8, payload: &[u8]| {
            let mut frame = vec![0x80 | opcode, u8::try_from(payload.len()).expect("short")];
            frame.extend_from_slice(payload);
            frame
        };
        outbox.push(&control(0x9, b""));
        for i in 0..10_000u32 {
            let mut payload = [0u8; 125];
            payload[..4].copy_from_slice(&i.to_be_bytes());
            outbox.push(&control(0xA, &payload));
        }
        let mut last = [0u8; 125];
        last[..4].copy_from_slice(&9_999u32.to_be_bytes());
        let held = outbox.take(None);
        assert!(
            held.len() <= OUTBOX_COMPACT + 127,
            "{} bytes held",
            held.len()
        );
        // Once compacted: the gateway's ping, then the pong to the latest ping only.
        outbox.push(&control(0xA, &last));
        outbox.push(&control(0x8, &[0x03, 0xE8]));
        let mut expected = control(0xA, &last);
        expected.extend(control(0x8, &[0x03, 0xE8]));
        assert_eq!(outbox.take(None), Bytes::from(expected));
        assert_eq!(
            keep_latest_pong_and_ping(&[0x81, 0x01, b'x']),
            None,
            "data frames are never compacted"
        );
        let mut many = Vec::new();
        for _ in 0..20 {
            many.extend(control(0x9, b""));
            many.extend(control(0xA, b"p"));
        }
        many.extend(control(0x8, &[0x03, 0xE8]));
        let mut kept = control(0x9, b"");
        kept.extend(control(0xA, b"p"));
        kept.extend(control(0x8, &[0x03, 0xE8]));
        assert_eq!(
            keep_latest_pong_and_ping(&many).map(BytesMut::freeze),
            Some(Bytes::from(kept))
        );
    }

    #[tokio::test]
    async fn small_messages_are_one_frame_each() {
        let got = written(vec![text(&["{\"a\":", "1}"]), text(&["{}"])], b"", 64).await;
        assert_eq!(
            frames(&got),
            vec![(true, 1, b"{\"a\":1}".to_vec()), (true, 1, b"{}".to_vec())]
        );
    }

    #[tokio::test]
    async fn large_messages_are_fragmented_at_character_boundaries() {
        // 3 MiB of two-byte characters, in segments that do not line up with fragments.
        let body = "é".repeat(3 * FRAGMENT / 2 + 7);
        let (a, b) = body.split_at(1000);
        let got = written(vec![text(&["[\"", a, b, "\"]"])], b"", 1 << 16).await;
        let parsed = frames(&got);
        assert!(parsed.len() >= 3, "{} frames", parsed.len());
        let mut whole = Vec::new();
        for (i, (fin, opcode, payload)) in parsed.iter().enumerate() {
            assert_eq!(*fin, i == parsed.len() - 1);
            assert_eq!(*opcode, if i == 0 { 1 } else { 0 });
            assert!(payload.len() <= FRAGMENT);
            assert!(
                std::str::from_utf8(payload).is_ok(),
                "fragment {i} is UTF-8"
            );
            whole.extend_from_slice(payload);
        }
        assert!(whole == format!("[\"{body}\"]").into_bytes());
    }

    #[tokio::test]
    async fn abandon_counts_the_messages_that_still_go_out_whole() {
        let (near, mut far) = tokio::io::duplex(4096);
        let budget = crate::budget::MemoryBudget::unbounded();
        let account = budget.open();
        let mut writer = FrameWriter::new(near, Arc::new(Outbox::default()), account.clone());
        for small in ["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"] {
            writer.push(text(&[small]));
        }
        writer.push(WsPayload {
            text: false,
            segments: vec![Bytes::from(vec![7u8; 2 * FRAGMENT + 10])],
        });
        writer.push(text(&["{\"d\":4}"]));
        writer.push(text(&["{\"e\":5}"]));
        // The pipe takes 4 KiB: the three small messages and the start of the large one's first
        // fragment.
        let mut cx = Context::from_waker(Waker::noop());
        assert!(writer.poll_write_out(&mut cx).is_pending());
        assert_eq!(writer.delivered(), 3);
        // The first fragment is finished; the large message and the two after it are dropped.
        assert_eq!(writer.abandon(), 3);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            far.read_to_end(&mut got).await.expect("read");
            got
        });
        writer.finish().await.expect("finish");
        assert_eq!(
            (writer.delivered(), writer.queued(), account.held()),
            (3, 0, 0)
        );
        drop(writer);
        let parsed = frames(&reader.await.expect("reader"));
        assert_eq!(parsed.len(), 4, "three small frames and one fragment");
        assert_eq!(
            (parsed[3].0, parsed[3].1, parsed[3].2.len()),
            (false, 2, FRAGMENT)
        );

        // With nothing in the middle of being written, every message pushed is counted.
        let (near, _far) = tokio::io::duplex(1 << 16);
        let mut writer = FrameWriter::new(near, Arc::new(Outbox::default()), budget.open());
        writer.push(text(&["{}"]));
        writer.finish().await.expect("finish");
        writer.push(text(&["{}"]));
        assert_eq!((writer.delivered(), writer.abandon()), (1, 1));
    }

    /// A socket whose flush is pending once after every write (as the output queue's is while
    /// it still holds bytes).
    struct SlowFlush {
        inner: tokio::io::DuplexStream,
        flush_pending: bool,
    }

    impl AsyncWrite for SlowFlush {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.flush_pending = true;
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            if std::mem::take(&mut self.flush_pending) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn a_write_that_ends_in_a_pending_flush_still_counts_as_progress() {
        let (near, _far) = tokio::io::duplex(1 << 16);
        let account = crate::budget::MemoryBudget::unbounded().open();
        let socket = SlowFlush {
            inner: near,
            flush_pending: false,
        };
        let mut writer = FrameWriter::new(socket, Arc::new(Outbox::default()), account);
        writer.push(text(&["{}"]));
        // Before, the call that completed the flush had written nothing itself and waited for
        // control frames: the bridge then took no further message until something else woke it.
        timeout(Duration::from_secs(5), writer.progress())
            .await
            .expect("progress completes")
            .expect("progress");
        assert_eq!(writer.delivered(), 1);
    }

    /// A binary message of `len` bytes of `byte`.
    fn binary(len: usize, byte: u8) -> WsPayload {
        WsPayload {
            text: false,
            segments: vec![Bytes::from(vec![byte; len])],
        }
    }

    #[tokio::test]
    async fn a_gated_message_waits_before_its_last_fragment_until_its_verdict_passes() {
        let (near, mut far) = tokio::io::duplex(8 * FRAGMENT);
        let outbox = Arc::new(Outbox::default());
        let account = crate::budget::MemoryBudget::unbounded().open();
        let mut writer = FrameWriter::new(near, Arc::clone(&outbox), account.clone());
        let (sender, verdict) = Verdict::pending();
        writer.push(text(&["{\"before\":1}"]));
        // Two full fragments and a last one of 10 bytes (small, yet never staged with others).
        writer.push_gated(binary(2 * FRAGMENT + 10, 7), Some(verdict));
        writer.push(text(&["{\"after\":2}"]));
        timeout(Duration::from_secs(5), writer.progress())
            .await
            .expect("writes up to the gate")
            .expect("progress");
        let mut cx = Context::from_waker(Waker::noop());
        assert!(writer.poll_write_out(&mut cx).is_ready());
        assert_eq!(
            writer.delivered(),
            1,
            "only the message before it is out whole"
        );
        // A pong still goes out while the last fragment waits.
        outbox.push(&[0x8A, 0x01, b'p']);
        timeout(Duration::from_secs(5), writer.progress())
            .await
            .expect("the pong")
            .expect("progress");
        let mut got = vec![0u8; 1 << 16];
        let mut seen = Vec::new();
        while let Ok(Ok(n)) = timeout(Duration::from_millis(200), far.read(&mut got)).await {
            seen.extend_from_slice(&got[..n]);
        }
        let parsed = frames(&seen);
        let shape: Vec<(bool, u8, usize)> =
            parsed.iter().map(|(f, o, p)| (*f, *o, p.len())).collect();
        assert_eq!(
            shape,
            vec![
                (true, 1, 12),
                (false, 2, FRAGMENT),
                (false, 0, FRAGMENT),
                (true, 0xA, 1)
            ]
        );
        sender.send(true);
        timeout(Duration::from_secs(5), writer.finish())
            .await
            .expect("the rest once the verdict passed")
            .expect("finish");
        assert_eq!(
            (writer.delivered(), writer.queued(), account.held()),
            (3, 0, 0)
        );
        assert_eq!(writer.failed(), None);
        drop(writer);
        let mut rest = Vec::new();
        far.read_to_end(&mut rest).await.expect("read");
        let shape: Vec<(bool, u8, usize)> = frames(&rest)
            .iter()
            .map(|(f, o, p)| (*f, *o, p.len()))
            .collect();
        assert_eq!(shape, vec![(true, 0, 10), (true, 1, 11)]);
    }

    #[tokio::test]
    async fn a_failed_verdict_stops_its_message_and_everything_after_it() {
        let (near, mut far) = tokio::io::duplex(8 * FRAGMENT);
        let account = crate::budget::MemoryBudget::unbounded().open();
        let mut writer = FrameWriter::new(near, Arc::new(Outbox::default()), account.clone());
        let (sender, verdict) = Verdict::pending();
        writer.push(text(&["{\"before\":1}"]));
        writer.push_gated(binary(FRAGMENT + 100, 9), Some(verdict));
        writer.push(text(&["{\"after\":2}"]));
        timeout(Duration::from_secs(5), writer.progress())
            .await
            .expect("writes up to the gate")
            .expect("progress");
        sender.send(false);
        // The failure is reported once, by a progress that wrote nothing.
        timeout(Duration::from_secs(5), writer.progress())
            .await
            .expect("reports the failure")
            .expect("progress");
        assert_eq!(
            writer.failed(),
            Some(1),
            "only the message before it goes out whole"
        );
        assert_eq!(account.held(), 0, "what was dropped is released");
        // Nothing pushed later is written.
        writer.push(text(&["{\"later\":3}"]));
        timeout(Duration::from_secs(5), writer.finish())
            .await
            .expect("finish")
            .expect("finish");
        assert_eq!((writer.delivered(), writer.queued()), (1, 0));
        drop(writer);
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.expect("read");
        let shape: Vec<(bool, u8, usize)> = frames(&got)
            .iter()
            .map(|(f, o, p)| (*f, *o, p.len()))
            .collect();
        assert_eq!(shape, vec![(true, 1, 12), (false, 2, FRAGMENT)]);
    }

    #[tokio::test]
    async fn a_verdict_that_passed_before_the_push_gates_nothing_and_abandon_drops_a_waiting_end() {
        let (near, _far) = tokio::io::duplex(8 * FRAGMENT);
        let account = crate::budget::MemoryBudget::unbounded().open();
        let mut writer = FrameWriter::new(near, Arc::new(Outbox::default()), account.clone());
        let (sender, verdict) = Verdict::pending();
        sender.send(true);
        writer.push_gated(binary(FRAGMENT + 1, 1), Some(verdict));
        assert_eq!(writer.gates, 0);
        timeout(Duration::from_secs(5), writer.finish())
            .await
            .expect("finish")
            .expect("finish");
        assert_eq!(writer.delivered(), 1);
        // A message waiting for its verdict when the connection goes is not delivered.
        let (_sender, verdict) = Verdict::pending();
        writer.push_gated(binary(FRAGMENT + 1, 2), Some(verdict));
        timeout(Duration::from_secs(5), writer.progress())
            .await
            .expect("the first fragment")
            .expect("progress");
        assert_eq!(writer.abandon(), 1, "the waiting message is dropped");
        assert_eq!((writer.gates, writer.queued(), account.held()), (0, 0, 0));
    }

    #[tokio::test]
    async fn control_frames_go_between_frames() {
        // A pong queued before the write starts goes first; it never splits a frame.
        let big = WsPayload {
            text: false,
            segments: vec![Bytes::from(vec![7u8; 2 * FRAGMENT + 10])],
        };
        let got = written(vec![big], &[0x8A, 0x01, b'p'], 4096).await;
        let parsed = frames(&got);
        assert_eq!(parsed[0], (true, 0xA, b"p".to_vec()));
        assert_eq!(parsed.len(), 4);
        assert_eq!((parsed[1].1, parsed[3].0), (2, true));
    }
}
