//! One accepted connection: inspected for a TLS ClientHello when the listener needs it, matched to
//! a filter chain, admitted by the chain's connection rate limits, TLS terminated when the chain
//! says so (the peer's certificate verified and kept), then served by the chain's HTTP connection
//! manager or TCP proxy.

use super::{ListenerConfig, ListenerKind, chains};
use crate::http::proxy::Downstream;
use crate::http::server::DownstreamStream;
use crate::snapshot::SharedSnapshot;
use crate::telemetry::ListenerStats;
use crate::tls::identity::{ConnectionTls, PeerCertificate};
use crate::tls::inspect::{Transport, inspect};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// How long a TLS handshake may take once the chain is chosen, unless the chain says.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection fresh from `accept`, with the listener config it was accepted under.
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub listener: String,
    pub config: Arc<ListenerConfig>,
    pub stats: Arc<ListenerStats>,
    pub shared: SharedSnapshot,
    pub stop: CancellationToken,
}

/// Serves a connection to its end.
pub async fn serve(a: Accepted) {
    let transport = if a.config.inspect_tls {
        tokio::select! {
            seen = Box::pin(inspect(&a.stream, a.config.inspect_timeout)) => match seen {
                Some(transport) => transport,
                None => return,
            },
            _ = a.stop.cancelled() => return,
        }
    } else {
        Transport::Raw
    };
    // The connection's own local address (a listener on 0.0.0.0 accepts for every address).
    let local = a.stream.local_addr().unwrap_or(a.local);
    let facts = chains::ConnectionFacts { local, peer: a.peer, transport: &transport };
    let Some(index) = chains::select(&a.config.chains, a.config.has_default_chain, &facts) else {
        a.stats.no_filter_chain_match.increment(1);
        tracing::debug!(listener = %a.listener, peer = %a.peer, transport = transport.name(), "no filter chain matches");
        return;
    };
    let chain = &a.config.chains[index];
    // Over a connection rate limit: closed at once.
    if !chain.connection_limits.iter().all(|limit| limit.admit()) {
        return;
    }
    let mut downstream = Downstream {
        peer: a.peer,
        listener: a.listener,
        chain: index,
        chain_name: chain.name.clone(),
        tls: None,
        local,
    };
    let stream = match &chain.tls {
        None => DownstreamStream::Plain(a.stream),
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
            // Boxed, as the inspection and the TLS TCP proxy below: a plaintext connection's task
            // does not carry room for their state.
            let handshake = Box::pin(tokio::time::timeout(
                chain.handshake_timeout.unwrap_or(HANDSHAKE_TIMEOUT),
                acceptor.accept(a.stream),
            ));
            let stream = match handshake.await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    handshake_failed(&a.stats, &downstream, &e);
                    return;
                }
                Err(_) => {
                    a.stats.ssl_connection_error.increment(1);
                    tracing::debug!(peer = %a.peer, "TLS handshake timed out");
                    return;
                }
            };
            a.stats.ssl_handshake.increment(1);
            let session = stream.get_ref().1;
            let peer_cert = session.peer_certificates().and_then(|certs| certs.first()).map(PeerCertificate::new);
            downstream.tls = Some(Box::new(ConnectionTls {
                server_name: session.server_name().map(str::to_string),
                peer: peer_cert.and_then(Result::ok),
                local_uris: tls.local_uris.clone(),
                // As Envoy prints it (`%DOWNSTREAM_TLS_VERSION%`).
                version: match session.protocol_version() {
                    Some(rustls::ProtocolVersion::TLSv1_3) => Some("TLSv1.3"),
                    Some(rustls::ProtocolVersion::TLSv1_2) => Some("TLSv1.2"),
                    _ => None,
                },
            }));
            DownstreamStream::Tls(Box::new(stream))
        }
    };
    // Network authorization: once per connection, the peer (and its certificate) known.
    if !chain.authorization.is_empty() {
        let facts = crate::policy::rbac::Facts {
            peer: downstream.peer,
            client: downstream.peer.ip(),
            local,
            tls: downstream.tls.as_deref(),
            request: None,
        };
        if !chain.authorization.iter().all(|f| f.rbac.allows(&facts, &f.stats)) {
            let principal = downstream.tls.as_ref().and_then(|t| t.peer.as_ref()).and_then(|p| p.spiffe_id());
            tracing::debug!(listener = %downstream.listener, peer = %downstream.peer, principal, "RBAC: connection denied");
            return;
        }
    }
    match &chain.kind {
        ListenerKind::Http(hcm) => crate::http::server::serve(stream, downstream, hcm.clone(), a.shared, a.stop).await,
        ListenerKind::Tcp(tcp) => match stream {
            DownstreamStream::Plain(s) => crate::tcp::serve(s, a.peer, tcp.clone(), a.shared, a.stop).await,
            DownstreamStream::Tls(s) => Box::pin(crate::tcp::serve(s, a.peer, tcp.clone(), a.shared, a.stop)).await,
        },
    }
}

/// Counts and logs a failed handshake; a refused peer certificate is worth a warning.
fn handshake_failed(stats: &ListenerStats, downstream: &Downstream, e: &std::io::Error) {
    stats.ssl_connection_error.increment(1);
    let tls_error = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls_error {
        Some(rustls::Error::InvalidCertificate(reason)) => {
            let san = match reason {
                rustls::CertificateError::Other(other) => other.0.downcast_ref::<crate::tls::SanMismatch>(),
                _ => None,
            };
            match san {
                Some(mismatch) => {
                    stats.ssl_fail_verify_san.increment(1);
                    tracing::warn!(
                        listener = %downstream.listener, peer = %downstream.peer, reason = %mismatch,
                        "TLS handshake refused: the client certificate's identity is not allowed"
                    );
                }
                None => {
                    stats.ssl_fail_verify_error.increment(1);
                    tracing::warn!(
                        listener = %downstream.listener, peer = %downstream.peer, error = %e,
                        "TLS handshake refused: the client certificate is not accepted"
                    );
                }
            }
        }
        Some(rustls::Error::NoCertificatesPresented) => {
            stats.ssl_fail_verify_no_cert.increment(1);
            tracing::warn!(
                listener = %downstream.listener, peer = %downstream.peer,
                "TLS handshake refused: the client presented no certificate and one is required"
            );
        }
        _ => {
            tracing::debug!(listener = %downstream.listener, peer = %downstream.peer, error = %e, "TLS handshake failed")
        }
    }
}
