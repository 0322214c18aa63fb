//! HTTP/2 responses that end in the same turn of the worker leave in one TLS write.
//!
//! h2 writes a connection's pending frames each time its connection task is polled, and it
//! flushes the socket once per DATA frame (a payload of 256 bytes or more is written from its
//! own buffer, not copied, so the frame before it must go first). Under `h2load -c 32 -m 10`
//! that was one TLS record and one socket write for every response (2.0 writes per request,
//! the other one the backend's; HAProxy: 1.15), even when ten responses of one connection
//! were ready in the same turn.
//!
//! [`Batched`] sits between h2 and TLS. Writes are copied into a buffer; the first flush of a
//! batch does not write but wakes the connection's task and answers `Ready`, so the tasks
//! already queued on the worker (other streams whose backends answered in the same batch of
//! events) run first and add their frames. The buffer goes out, as one write, at the next read
//! of the connection (h2 reads on every poll of its connection, and the wake makes that poll
//! happen), at shutdown, or as soon as it holds [`BATCH`] bytes. Large writes skip the
//! buffer. The cost: one copy of each small write and one more poll of the connection per
//! batch.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// At most this much is held back; a write at least this large goes straight through.
const BATCH: usize = 16 * 1024;

/// What a batch's buffer starts with (most batches of small responses fit).
const FIRST: usize = 4 * 1024;

/// An HTTP/2 connection's TLS stream, its small writes batched per turn of the worker.
pub struct Batched<T> {
    inner: T,
    buf: Vec<u8>,
    /// How much of `buf` the socket has already taken.
    sent: usize,
    /// A flush was asked for and deferred: the next read sends the buffer.
    due: bool,
}

impl<T> Batched<T> {
    pub fn new(inner: T) -> Self {
        Batched {
            inner,
            buf: Vec::new(),
            sent: 0,
            due: false,
        }
    }

    fn held(&self) -> usize {
        self.buf.len() - self.sent
    }

    /// Room for `len` more bytes: a new batch's buffer is allocated once, not grown.
    fn hold(&mut self, len: usize) {
        if self.buf.capacity() == 0 {
            self.buf.reserve(FIRST.max(len));
        }
    }
}

impl<T: AsyncWrite + Unpin> Batched<T> {
    /// Writes out what is held: `Ready` once all of it is with the inner stream.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = match Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.sent..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            self.sent += n;
        }
        // Nothing is kept between batches: an idle connection holds no buffer.
        self.buf = Vec::new();
        self.sent = 0;
        self.due = false;
        Poll::Ready(Ok(()))
    }

    /// Before writing `len` more bytes: sends what is held if the buffer would grow past
    /// [`BATCH`]. (Not because a flush is due: a flush due in this same poll of the
    /// connection would then send each frame on its own again.)
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<()>> {
        if self.held() > 0 && self.held() + len > BATCH {
            return self.poll_send(cx);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Batched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.due {
            // The batch's turn came: out it goes. Not yet writable: the inner stream wakes
            // this task when it is, and the read goes on meanwhile.
            match this.poll_send(cx) {
                Poll::Ready(Ok(())) => {
                    if let Poll::Ready(Err(e)) = Pin::new(&mut this.inner).poll_flush(cx) {
                        return Poll::Ready(Err(e));
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Batched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_room(cx, data.len()))?;
        if this.held() == 0 && data.len() >= BATCH {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        this.hold(data.len());
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        ready!(this.poll_room(cx, len))?;
        if this.held() == 0 && len >= BATCH {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        this.hold(len);
        for b in bufs {
            this.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.held() == 0 {
            return Pin::new(&mut this.inner).poll_flush(cx);
        }
        if this.due {
            // Already deferred in this poll: the frames join the batch.
            return Poll::Ready(Ok(()));
        }
        // Deferred to the next poll of this task, after what is already queued.
        this.due = true;
        cx.waker().wake_by_ref();
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    use tokio::io::{AsyncReadExt, DuplexStream, duplex};

    use super::*;

    /// Counts the wake-ups of the task that polls the stream.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct Poller {
        wakes: Arc<Wakes>,
        waker: Waker,
    }

    impl Poller {
        fn new() -> Self {
            let wakes = Arc::new(Wakes::default());
            let waker = Waker::from(wakes.clone());
            Poller { wakes, waker }
        }

        fn wakes(&self) -> usize {
            self.wakes.0.load(Ordering::SeqCst)
        }

        fn write(&self, s: &mut Batched<DuplexStream>, data: &[u8]) -> Poll<io::Result<usize>> {
            Pin::new(s).poll_write(&mut Context::from_waker(&self.waker), data)
        }

        /// h2's way: one frame written, then a flush, as for every chained DATA frame.
        fn frame(&self, s: &mut Batched<DuplexStream>, data: &[u8]) {
            let mut cx = Context::from_waker(&self.waker);
            assert!(
                matches!(Pin::new(&mut *s).poll_write(&mut cx, data), Poll::Ready(Ok(n)) if n == data.len())
            );
            assert!(matches!(
                Pin::new(&mut *s).poll_flush(&mut cx),
                Poll::Ready(Ok(()))
            ));
        }

        /// The connection's next poll: h2 reads first (nothing to read here).
        fn read(&self, s: &mut Batched<DuplexStream>) {
            let mut space = [0u8; 64];
            let mut buf = ReadBuf::new(&mut space);
            let polled = Pin::new(s).poll_read(&mut Context::from_waker(&self.waker), &mut buf);
            assert!(polled.is_pending(), "the client sent nothing");
        }
    }

    /// What the other end can read now, without waiting.
    fn readable(peer: &mut DuplexStream) -> Vec<u8> {
        let mut out = Vec::new();
        let mut space = [0u8; 4096];
        loop {
            let mut buf = ReadBuf::new(&mut space);
            match Pin::new(&mut *peer).poll_read(&mut Context::from_waker(Waker::noop()), &mut buf)
            {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    out.extend_from_slice(buf.filled())
                }
                _ => return out,
            }
        }
    }

    #[test]
    fn frames_flushed_in_one_poll_leave_together_at_the_next_poll() {
        let (near, mut peer) = duplex(64 * 1024);
        let mut s = Batched::new(near);
        let p = Poller::new();
        p.frame(&mut s, b"HEADERS+DATA 1;");
        p.frame(&mut s, b"DATA 2;");
        p.frame(&mut s, b"DATA 3;");
        assert!(
            readable(&mut peer).is_empty(),
            "held until the connection's next poll"
        );
        assert_eq!(p.wakes(), 1, "the first flush asks for that poll, once");

        p.read(&mut s);
        assert_eq!(readable(&mut peer), b"HEADERS+DATA 1;DATA 2;DATA 3;");
        assert_eq!(s.buf.capacity(), 0, "an idle connection holds no buffer");

        // The next batch is held back again and asks for its own poll.
        p.frame(&mut s, b"DATA 4;");
        assert!(readable(&mut peer).is_empty());
        assert_eq!(p.wakes(), 2);
        p.read(&mut s);
        assert_eq!(readable(&mut peer), b"DATA 4;");
    }

    #[test]
    fn a_flush_with_nothing_held_costs_no_wake_up() {
        let (near, _peer) = duplex(1024);
        let mut s = Batched::new(near);
        let p = Poller::new();
        let mut cx = Context::from_waker(&p.waker);
        assert!(matches!(
            Pin::new(&mut s).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(p.wakes(), 0);
    }

    #[test]
    fn shutdown_sends_what_is_held_first() {
        let (near, mut peer) = duplex(64 * 1024);
        let mut s = Batched::new(near);
        let p = Poller::new();
        p.frame(&mut s, b"last DATA;");
        p.frame(&mut s, b"GOAWAY");
        let mut cx = Context::from_waker(&p.waker);
        assert!(matches!(
            Pin::new(&mut s).poll_shutdown(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(readable(&mut peer), b"last DATA;GOAWAY");
    }

    #[test]
    fn a_large_write_goes_straight_through() {
        let (near, mut peer) = duplex(256 * 1024);
        let mut s = Batched::new(near);
        let p = Poller::new();
        let big = vec![7u8; BATCH];
        assert!(matches!(p.write(&mut s, &big), Poll::Ready(Ok(n)) if n == BATCH));
        assert_eq!(readable(&mut peer).len(), BATCH, "not held");
        assert_eq!(p.wakes(), 0);
    }

    #[test]
    fn a_client_that_does_not_read_holds_back_at_most_a_batch() {
        // The socket takes 1 KiB and no more: writes are refused once a batch is held.
        let (near, _peer) = duplex(1024);
        let mut s = Batched::new(near);
        let p = Poller::new();
        let chunk = [1u8; 1000];
        let mut taken = 0;
        for _ in 0..100 {
            match p.write(&mut s, &chunk) {
                Poll::Ready(Ok(n)) => taken += n,
                Poll::Pending => break,
                Poll::Ready(Err(e)) => panic!("write failed: {e}"),
            }
        }
        assert!(taken < 100 * chunk.len(), "the writer was never held up");
        assert!(s.held() <= BATCH, "held {} bytes", s.held());
        assert!(taken <= BATCH + 1024 + chunk.len(), "took {taken} bytes");
    }

    #[tokio::test]
    async fn everything_written_arrives_in_order() {
        let (near, mut peer) = duplex(4 * 1024);
        let mut s = Batched::new(near);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            peer.read_to_end(&mut all).await.map(|_| all)
        });
        let mut expected = Vec::new();
        for i in 0..2000u32 {
            let frame = i.to_be_bytes().repeat(1 + (i as usize % 40));
            tokio::io::AsyncWriteExt::write_all(&mut s, &frame)
                .await
                .expect("write");
            tokio::io::AsyncWriteExt::flush(&mut s)
                .await
                .expect("flush");
            expected.extend_from_slice(&frame);
        }
        tokio::io::AsyncWriteExt::shutdown(&mut s)
            .await
            .expect("shutdown");
        let got = reader.await.expect("reader task").expect("read");
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes reordered or lost");
    }
}
