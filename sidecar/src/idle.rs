//! Idle detection: an I/O wrapper that stamps (and counts the bytes of) every successful read
//! and write, and a future that completes once nothing has moved for the idle timeout. A
//! connection is served until either it ends or that future completes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// An I/O object that records when bytes last moved, and how many moved each way.
#[derive(Debug)]
pub(crate) struct IdleIo<I> {
    inner: I,
    activity: Arc<Activity>,
}

/// When bytes last moved, in milliseconds since `start`, and how many were read and written.
#[derive(Debug)]
pub(crate) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    read: AtomicU64,
    written: AtomicU64,
}

// === impl IdleIo ===

impl<I> IdleIo<I> {
    pub(crate) fn new(inner: I) -> (Self, Arc<Activity>) {
        let activity = Arc::new(Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            read: AtomicU64::new(0),
            written: AtomicU64::new(0),
        });
        (
            Self {
                inner,
                activity: Arc::clone(&activity),
            },
            activity,
        )
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for IdleIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        if read > 0 {
            self.activity.moved(&self.activity.read, read);
        }
        res
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for IdleIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            self.activity.moved(&self.activity.written, n);
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            self.activity.moved(&self.activity.written, n);
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// === impl Activity ===

impl Activity {
    /// Records `n` bytes moved (nothing when `n` is 0) on `counter`, one of `read`/`written`.
    fn moved(&self, counter: &AtomicU64, n: usize) {
        if n == 0 {
            return;
        }
        counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Bytes read from the wrapped I/O object so far.
    pub(crate) fn bytes_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// Bytes written to the wrapped I/O object so far.
    pub(crate) fn bytes_written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Completes once no bytes have moved for `timeout`.
    pub(crate) async fn expired(self: Arc<Self>, timeout: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = self.start + last + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_future_waits_for_silence_and_activity_postpones_it() {
        let (a, mut b) = tokio::io::duplex(64);
        let (mut io, activity) = IdleIo::new(a);
        let idle = activity.expired(Duration::from_secs(10));
        tokio::pin!(idle);
        tokio::time::sleep(Duration::from_secs(6)).await;
        b.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 1];
        io.read_exact(&mut buf).await.unwrap();
        let start = Instant::now();
        (&mut idle).await;
        // Expired 10 s after the read at t=6, not 10 s after the start.
        assert!(start.elapsed() >= Duration::from_secs(9));
    }

    #[tokio::test]
    async fn bytes_are_counted_each_way() {
        let (a, mut b) = tokio::io::duplex(64);
        let (mut io, activity) = IdleIo::new(a);
        b.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        io.read_exact(&mut buf).await.unwrap();
        io.write_all(b"hi").await.unwrap();
        let n = io
            .write_vectored(&[io::IoSlice::new(b"abc")])
            .await
            .unwrap();
        assert_eq!(
            (activity.bytes_read(), activity.bytes_written()),
            (5, 2 + n as u64)
        );
    }
}
