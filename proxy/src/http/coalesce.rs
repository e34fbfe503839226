//! Writes of a multiplexed (HTTP/2) connection put off until the tasks already woken have run, so
//! the frames of the responses they finish go out in one write, as Envoy's end-of-loop writes do.
//!
//! A stream's response is finished by its own task, which wakes the connection's task to write it.
//! When that task was already queued (for the request bytes it had to read, say), it would write
//! each response as it found it, one write per response or two. Waiting one pass of the queue
//! lets the other streams' tasks add theirs first. Measured with 50 gRPC clients of 10 streams
//! each: a quarter fewer downstream writes and about 3% less CPU per request; with one request
//! at a time it costs nothing measurable (the queue is empty and the task runs again at once).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream whose first write after each flush waits for one pass of the scheduler's queue (when
/// `multiplexed`; otherwise every write goes straight through).
pub struct Coalescing<S> {
    inner: S,
    multiplexed: bool,
    /// The current batch has already waited its turn.
    waited: bool,
}

impl<S> Coalescing<S> {
    pub fn new(inner: S, multiplexed: bool) -> Self {
        Coalescing { inner, multiplexed, waited: false }
    }

    /// Whether to write now; otherwise the task is queued again behind those already woken.
    fn ready(&mut self, cx: &mut Context<'_>) -> bool {
        if self.waited || !self.multiplexed {
            return true;
        }
        self.waited = true;
        cx.waker().wake_by_ref();
        false
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalescing<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalescing<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.ready(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.ready(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let flushed = Pin::new(&mut this.inner).poll_flush(cx);
        if flushed.is_ready() {
            this.waited = false;
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncWriteExt;

    /// What happened, in order: the writes that reached the socket and the other tasks' steps.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<String>>>);

    impl Log {
        fn push(&self, entry: impl Into<String>) {
            self.0.lock().unwrap().push(entry.into());
        }
        fn entries(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }

    /// A socket that takes every write at once and logs it.
    struct Socket(Log);

    impl AsyncWrite for Socket {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.0.push(format!("write {}", String::from_utf8_lossy(buf)));
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn each_batch_waits_for_the_tasks_woken_before_it_then_goes_out_whole() {
        let log = Log::default();
        let connection = tokio::spawn({
            let log = log.clone();
            async move {
                let mut stream = Coalescing::new(Socket(log.clone()), true);
                stream.write_all(b"a").await.unwrap();
                stream.write_all(b"b").await.unwrap();
                stream.flush().await.unwrap();
                log.push("flushed");
                let woken_later = tokio::spawn({
                    let log = log.clone();
                    async move { log.push("a stream woken after the flush") }
                });
                stream.write_all(b"c").await.unwrap();
                woken_later.await.unwrap();
            }
        });
        // Queued behind the connection's task, yet it runs before the first write goes out.
        let stream = tokio::spawn({
            let log = log.clone();
            async move { log.push("a stream woken with the connection") }
        });
        connection.await.unwrap();
        stream.await.unwrap();
        assert_eq!(
            log.entries(),
            [
                "a stream woken with the connection",
                "write a",
                "write b",
                "flushed",
                "a stream woken after the flush",
                "write c"
            ]
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_http1_connections_writes_go_out_at_once() {
        let log = Log::default();
        let connection = tokio::spawn({
            let log = log.clone();
            async move { Coalescing::new(Socket(log), false).write_all(b"a").await.unwrap() }
        });
        let stream = tokio::spawn({
            let log = log.clone();
            async move { log.push("a task woken after the connection's") }
        });
        connection.await.unwrap();
        stream.await.unwrap();
        assert_eq!(log.entries(), ["write a", "a task woken after the connection's"]);
    }
}
