//! Which HTTP version a downstream connection speaks when the codec is AUTO: the HTTP/2 preface
//! peeked from a plaintext socket, or (TLS without ALPN) read and handed back to the codec.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The HTTP/2 connection preface a prior-knowledge client opens with.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// True when the connection opens with the HTTP/2 preface. The bytes are peeked, not read, so the
/// chosen codec reads the connection from its first byte with a buffer of its own (no rewind copy).
pub async fn opens_with_http2_preface(stream: &TcpStream) -> bool {
    let mut buf = [0u8; HTTP2_PREFACE.len()];
    loop {
        let n = match stream.peek(&mut buf).await {
            Ok(n) => n,
            Err(_) => return false,
        };
        if n == 0 || buf[..n] != HTTP2_PREFACE[..n] {
            return false;
        }
        if n == HTTP2_PREFACE.len() {
            return true;
        }
        // Part of the preface so far: the socket stays readable, so wait a moment for the rest.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Reads from `stream` until its first bytes show whether it is the HTTP/2 preface; the bytes read
/// are given back by the returned [`Prefixed`] stream.
pub async fn read_http2_preface<S: AsyncRead + Unpin>(mut stream: S) -> (bool, Prefixed<S>) {
    let mut buf = Vec::with_capacity(HTTP2_PREFACE.len());
    let mut chunk = [0u8; HTTP2_PREFACE.len()];
    let h2 = loop {
        let wanted = HTTP2_PREFACE.len() - buf.len();
        match stream.read(&mut chunk[..wanted]).await {
            Ok(0) | Err(_) => break false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf[..] != HTTP2_PREFACE[..buf.len()] {
            break false;
        }
        if buf.len() == HTTP2_PREFACE.len() {
            break true;
        }
    };
    (h2, Prefixed { prefix: buf, at: 0, inner: stream })
}

/// A stream whose first bytes were already read: they are returned again before the rest.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(inner: S) -> Self {
        Prefixed { prefix: Vec::new(), at: 0, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = (self.prefix.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            if self.at == self.prefix.len() {
                self.prefix = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn the_bytes_read_to_detect_come_back_first() {
        for (sent, h2) in
            [(&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nrest"[..], true), (&b"GET / HTTP/1.1\r\n\r\n"[..], false)]
        {
            let (mut client, server) = tokio::io::duplex(64);
            client.write_all(sent).await.unwrap();
            drop(client);
            let (is_h2, mut stream) = read_http2_preface(server).await;
            assert_eq!(is_h2, h2);
            let mut all = Vec::new();
            stream.read_to_end(&mut all).await.unwrap();
            assert_eq!(all, sent);
        }
    }
}
