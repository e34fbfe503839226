//! What `envoy.filters.listener.tls_inspector` learns before a filter chain is chosen: whether the
//! connection opens with a TLS ClientHello, and if so its SNI and ALPN. The bytes are peeked, not
//! read, so the chosen chain (TLS termination, or a TCP proxy passing TLS through) gets them all.

use std::time::Duration;
use tokio::net::TcpStream;

/// Envoy's limit on a ClientHello (`max_client_hello_size` default).
const MAX_CLIENT_HELLO: usize = 64 * 1024;
/// A TLS record's content type for a handshake message.
const HANDSHAKE: u8 = 0x16;

/// The transport a connection opened with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Not TLS (`raw_buffer`).
    Raw,
    /// A ClientHello (`tls`), with its SNI and ALPN.
    Tls { server_name: Option<String>, alpn: Vec<String> },
}

impl Transport {
    pub fn name(&self) -> &'static str {
        match self {
            Transport::Raw => "raw_buffer",
            Transport::Tls { .. } => "tls",
        }
    }
}

/// Reads the ClientHello without consuming it. `None`: the peer closed or sent nothing usable
/// within `timeout` (Envoy's `listener_filters_timeout` closes such a connection).
pub async fn inspect(stream: &TcpStream, timeout: Duration) -> Option<Transport> {
    tokio::time::timeout(timeout, peek_hello(stream)).await.ok().flatten()
}

async fn peek_hello(stream: &TcpStream) -> Option<Transport> {
    let mut buf = vec![0u8; 4096];
    let mut seen = 0;
    loop {
        let n = stream.peek(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        if buf[0] != HANDSHAKE {
            return Some(Transport::Raw);
        }
        let mut acceptor = rustls::server::Acceptor::default();
        let mut bytes = &buf[..n];
        while !bytes.is_empty() {
            if acceptor.read_tls(&mut bytes).is_err() {
                return Some(Transport::Raw);
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let hello = accepted.client_hello();
                let server_name = hello.server_name().map(str::to_string);
                let alpn = hello
                    .alpn()
                    .map(|protocols| protocols.map(|p| String::from_utf8_lossy(p).into_owned()).collect())
                    .unwrap_or_default();
                return Some(Transport::Tls { server_name, alpn });
            }
            // Not a ClientHello rustls can read: the plaintext chain (if any) decides.
            Err(_) => return Some(Transport::Raw),
            Ok(None) if n == buf.len() && buf.len() < MAX_CLIENT_HELLO => buf.resize(buf.len() * 2, 0),
            Ok(None) if n == buf.len() => return None,
            Ok(None) => {}
        }
        if n == seen {
            // Part of the hello so far: the socket stays readable, so wait a moment for the rest.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        seen = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_client_hello_gives_its_sni_and_alpn_and_stays_unread() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let roots = rustls::RootCertStore::empty();
            let mut config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("api.example.com").unwrap();
            let _ = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await;
        });
        let (stream, _) = listener.accept().await.unwrap();
        let seen = inspect(&stream, Duration::from_secs(5)).await;
        assert_eq!(
            seen,
            Some(Transport::Tls {
                server_name: Some("api.example.com".into()),
                alpn: vec!["h2".into(), "http/1.1".into()]
            })
        );
        let mut first = [0u8; 1];
        assert_eq!(stream.peek(&mut first).await.unwrap(), 1);
        assert_eq!(first[0], HANDSHAKE, "the hello is still there for the handshake");
        drop(stream);
        client.await.unwrap();

        let plain = tokio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            tcp
        });
        let (stream, _) = listener.accept().await.unwrap();
        assert_eq!(inspect(&stream, Duration::from_secs(5)).await, Some(Transport::Raw));
        drop(plain.await.unwrap());
    }
}
