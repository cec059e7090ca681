//! An output queue in front of each accepted connection.
//!
//! tungstenite keeps a whole outgoing WebSocket message in one buffer and, after each partial
//! write to the socket, shifts the unsent rest to the front of it. A socket takes a few MiB per
//! write, so a 50 MB display_data was shifted some twenty times (hundreds of MB of copying,
//! growing with the square of the message size). [`QueuedWriter`] takes what the socket could not
//! (up to a bound) into its own queue, which it consumes from the front without moving anything,
//! so the layer above sees its writes complete at once and shifts nothing.
//!
//! Bytes always leave in the order they were written; a caller's `flush` returns only when the
//! queue is empty and the socket flushed. Past the bound, writes wait like a full socket would.
//! What the queue holds is charged to the connection's [`Account`] of the client memory budget.
//! Vectored writes are not queued (see [`QueuedWriter::poll_write_vectored`]).
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::budget::Account;

/// How much a connection may hold beyond what its socket accepted.
pub(crate) const QUEUE_LIMIT: usize = 16 * 1024 * 1024;

/// A stream whose writes are queued when the socket is full (see the module docs).
#[derive(Debug)]
pub(crate) struct QueuedWriter<S> {
    inner: S,
    /// Accepted but not yet written, oldest first.
    queue: BytesMut,
    limit: usize,
    /// Charged with the queue's length.
    account: Option<Account>,
}

impl<S> QueuedWriter<S> {
    /// Wraps `inner`, holding at most `limit` unsent bytes, charged to `account`.
    pub(crate) fn new(inner: S, limit: usize, account: Option<Account>) -> QueuedWriter<S> {
        QueuedWriter {
            inner,
            queue: BytesMut::new(),
            limit,
            account,
        }
    }
}

impl<S> Drop for QueuedWriter<S> {
    fn drop(&mut self) {
        if let Some(account) = &self.account {
            account.release(self.queue.len());
        }
    }
}

impl<S: AsyncWrite + Unpin> QueuedWriter<S> {
    /// Writes queued bytes until none are left (`Ready(Ok)`) or the socket is full (`Pending`,
    /// with the task registered for the socket's readiness).
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.queue.is_empty() {
            let written = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.queue))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.queue.advance(written);
            if let Some(account) = &self.account {
                account.release(written);
            }
        }
        if self.queue.capacity() > self.limit {
            // Do not keep a large message's worth of memory for an idle connection.
            self.queue = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Queues as much of `buf` as the bound allows; `Pending` when nothing fits (the drain that
    /// found the socket full registered the task).
    fn enqueue(&mut self, buf: &[u8]) -> Poll<io::Result<usize>> {
        let take = buf.len().min(self.limit.saturating_sub(self.queue.len()));
        if take == 0 && !buf.is_empty() {
            return Poll::Pending;
        }
        self.queue
            .extend_from_slice(buf.get(..take).unwrap_or_default());
        if let Some(account) = &self.account {
            account.charge(take);
        }
        Poll::Ready(Ok(take))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for QueuedWriter<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for QueuedWriter<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Older bytes first: while some remain queued, new ones can only join the queue.
        if let Poll::Ready(Err(err)) = this.poll_drain(cx) {
            return Poll::Ready(Err(err));
        }
        if !this.queue.is_empty() {
            return this.enqueue(buf);
        }
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(written)) if written == 0 || written == buf.len() => {
                Poll::Ready(Ok(written))
            }
            Poll::Ready(Ok(written)) => {
                let rest = buf.get(written..).unwrap_or_default();
                match this.enqueue(rest) {
                    Poll::Ready(Ok(queued)) => Poll::Ready(Ok(written + queued)),
                    _ => Poll::Ready(Ok(written)),
                }
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            // The socket is full (and will wake the task): take what fits in the queue.
            Poll::Pending => this.enqueue(buf),
        }
    }

    /// Vectored writes are the WebSocket frame writer's ([`crate::ws_out`]), which keeps its own
    /// segments until the socket takes them: they pass straight through (behind whatever is
    /// still queued), and a full socket makes them wait instead of being copied into the queue.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// Writes `chunks` through a queue (bounded by `limit`) over a pipe holding `pipe` bytes
    /// while a reader drains the other end, and checks what arrived.
    async fn check(chunks: Vec<Vec<u8>>, pipe: usize, limit: usize) {
        let expected: Vec<u8> = chunks.concat();
        let (near, mut far) = tokio::io::duplex(pipe);
        let mut writer = QueuedWriter::new(near, limit, None);
        let total = expected.len();
        let reader = tokio::spawn(async move {
            let mut got = Vec::with_capacity(total);
            let mut buf = vec![0u8; 4096];
            while got.len() < total {
                let n = far.read(&mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                got.extend_from_slice(buf.get(..n).unwrap_or_default());
            }
            got
        });
        for chunk in &chunks {
            writer.write_all(chunk).await.expect("write");
            assert!(
                writer.queue.len() <= limit,
                "the queue stays within its bound"
            );
        }
        writer.flush().await.expect("flush");
        assert!(writer.queue.is_empty(), "flush empties the queue");
        let got = reader.await.expect("reader");
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes arrive whole and in order");
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[tokio::test]
    async fn bytes_arrive_in_order_whatever_the_sizes() {
        // One message much larger than the pipe and the bound; many small ones; a mix.
        check(vec![pattern(1 << 20, 1)], 4096, 64 * 1024).await;
        check(
            (0..500).map(|i| pattern(37 + i % 11, i as u8)).collect(),
            256,
            1024,
        )
        .await;
        check(
            vec![
                pattern(10, 1),
                pattern(300_000, 2),
                pattern(5, 3),
                pattern(70_000, 4),
            ],
            8192,
            100_000,
        )
        .await;
        // A socket that takes everything: nothing is ever queued.
        check(vec![pattern(1000, 9); 20], 1 << 20, 16).await;
    }

    #[tokio::test]
    async fn a_full_queue_makes_writers_wait_for_the_socket() {
        let (near, mut far) = tokio::io::duplex(1024);
        let mut writer = QueuedWriter::new(near, 4096, None);
        // The pipe takes 1 KiB and the queue 4 KiB; the rest must wait for the reader.
        let big = pattern(64 * 1024, 7);
        let write = writer.write_all(&big);
        let blocked = tokio::time::timeout(std::time::Duration::from_millis(100), write).await;
        assert!(
            blocked.is_err(),
            "the write waited instead of queueing without bound"
        );
        assert_eq!(writer.queue.len(), 4096);
        let mut first = vec![0u8; 1024];
        far.read_exact(&mut first).await.expect("read");
        assert!(first == big.get(..1024).unwrap_or_default());
    }

    #[tokio::test]
    async fn the_queue_is_charged_to_its_account_until_sent_or_dropped() {
        let budget = crate::budget::MemoryBudget::unbounded();
        let account = budget.open();
        let (near, mut far) = tokio::io::duplex(1024);
        let mut writer = QueuedWriter::new(near, 1 << 20, Some(account.clone()));
        writer.write_all(&pattern(10_000, 3)).await.expect("write");
        assert_eq!(account.held(), writer.queue.len());
        assert!(account.held() >= 10_000 - 1024);
        // The pipe held 1 KiB; once read, the next write drains the queue into it.
        let mut got = vec![0u8; 1024];
        far.read_exact(&mut got).await.expect("read");
        writer.write_all(b"x").await.expect("write");
        assert_eq!(account.held(), writer.queue.len());
        drop(writer);
        assert_eq!((account.held(), budget.used()), (0, 0));
    }
}
