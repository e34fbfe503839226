//! TLS: an edge gateway with filter chains chosen by SNI (exact and wildcard names, a certificate
//! each, ALPN as configured, a plaintext chain that redirects to https), and mutual TLS between two
//! sidecars (a client proxy presenting a SPIFFE certificate, a server proxy requiring one and
//! checking its SAN; the upstream app sees the client's SPIFFE ID in `x-forwarded-client-cert`).
//! Bad peers are refused and counted: plaintext on a STRICT port, garbage, a certificate from
//! another CA, an expired one, one with the wrong SPIFFE ID; PERMISSIVE takes both on one port.

#[path = "../support/mesh.rs"]
mod mesh;
#[path = "../support/pki.rs"]
mod pki;
#[path = "../support/mod.rs"]
mod support;

use mesh::*;
use pki::{Ca, TlsClient, tls_get};
use std::net::SocketAddr;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut out)).await;
    out
}

#[tokio::test]
async fn an_edge_gateway_picks_chain_and_certificate_by_sni() {
    let dir = TempDir::new("tls-gateway");
    let ca = Ca::new("Strait test CA");
    let api = ca.issue("api", &["api.example.com"], &[]).write(&dir.0, "api");
    let wild = ca.issue("wildcard", &["*.example.com"], &[]).write(&dir.0, "wild");
    let (api_up, wild_up) = (echo("api").await, echo("wild").await);
    let (admin, port) = (free_port(), free_port());
    let listener = format!(
        r#"  - name: gateway
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    listener_filters:
    - {{ name: envoy.filters.listener.tls_inspector, typed_config: {{ "@type": {TLS_INSPECTOR} }} }}
    filter_chains:
{}{}{}"#,
        chain(
            "filter_chain_match: { server_names: [api.example.com] }",
            &server_tls(&api, "h2, http/1.1", ""),
            "",
            "api"
        ),
        chain("filter_chain_match: { server_names: ['*.example.com'] }", &server_tls(&wild, "", ""), "", "wild"),
        chain("filter_chain_match: { transport_protocol: raw_buffer }", "", "", ""),
    );
    let clusters = static_cluster("api", &[api_up], "") + &static_cluster("wild", &[wild_up], "");
    let proxy = Proxy::start(&bootstrap(admin, &listener, &clusters), admin).await;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let leaf_der = |leaf: &(std::path::PathBuf, std::path::PathBuf)| {
        let pem = std::fs::read(&leaf.0).unwrap();
        rustls::pki_types::pem::PemObject::from_pem_slice(&pem).map(|c: rustls::pki_types::CertificateDer| c.to_vec())
    };

    // The exact name: its chain, its certificate, HTTP/2 by ALPN.
    let client = TlsClient { ca_pem: Some(&ca.pem), sni: "api.example.com", alpn: &["h2", "http/1.1"], identity: None };
    let reply = tls_get(addr, &client, "/").await.unwrap();
    assert_eq!((reply.status, reply.version), (200, http::Version::HTTP_2));
    assert!(reply.body.contains("\"service\":\"api\""), "{}", reply.body);
    assert_eq!(reply.server_cert, leaf_der(&api).unwrap());
    assert!(reply.body.contains("\"x-forwarded-proto\":\"https\""), "TLS is https upstream: {}", reply.body);

    // A name under the wildcard: the wildcard chain; no ALPN configured there, so HTTP/1.1.
    let client = TlsClient { sni: "shop.example.com", ..client };
    let reply = tls_get(addr, &client, "/").await.unwrap();
    assert_eq!((reply.status, reply.version), (200, http::Version::HTTP_11));
    assert!(reply.body.contains("\"service\":\"wild\""), "{}", reply.body);
    assert_eq!(reply.server_cert, leaf_der(&wild).unwrap());

    // No chain for another name: the connection is closed and counted.
    let other = TlsClient { sni: "other.org", ..client };
    let err = tls_get(addr, &other, "/").await.unwrap_err();
    assert!(err.starts_with("handshake"), "{err}");
    assert_eq!(proxy.stat("envoy_listener_no_filter_chain_match").await, 1.0);

    // Plaintext on the same port: the raw_buffer chain redirects to https.
    let reply = get(&http1_client(), &format!("http://127.0.0.1:{port}/a?b=1"), &[("host", "api.example.com")]).await;
    assert_eq!(reply.status, 301);
    assert_eq!(reply.header("location"), Some("https://api.example.com/a?b=1"));

    // Garbage that looks like a TLS record: closed, and the gateway keeps serving.
    let garbage = raw_exchange(addr, b"\x16\x03\x01\x00\x05hello-not-tls").await;
    assert!(!String::from_utf8_lossy(&garbage).contains("HTTP/1.1 200"));
    assert_eq!(tls_get(addr, &client, "/").await.unwrap().status, 200);
    assert!(proxy.stat("envoy_listener_ssl_handshake").await >= 2.0);
}

/// The certificates of a two-sidecar mesh, written to a directory.
#[tokio::test]
async fn sidecars_talk_mutual_tls_with_spiffe_identities() {
    let pki = MeshPki::new();
    let ca = &pki.ca;
    let app = echo("backend-app").await;
    let (server_admin, server_port) = (free_port(), free_port());
    let server = Proxy::start(&pki.inbound(server_admin, server_port, app, false), server_admin).await;
    let server_addr: SocketAddr = ([127, 0, 0, 1], server_port).into();
    let (client_admin, client_port) = (free_port(), free_port());
    let client = Proxy::start(&pki.outbound(client_admin, client_port, server_addr), client_admin).await;

    // App -> client sidecar -> mTLS -> server sidecar -> app: the app sees who called.
    let reply = get(
        &http1_client(),
        &format!("http://127.0.0.1:{client_port}/hello"),
        &[("x-forwarded-client-cert", "By=forged")],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(seen_xfcc(&reply), pki.expected_xfcc(), "a forged header is replaced by what the connection proves");
    let log = pki.dir.0.join(format!("access-{server_port}.log"));
    let logged = wait_for_line(&log).await;
    assert_eq!(logged, format!("{CLIENT_ID} backend.default.svc TLSv1.3 200"), "the access log names the peer");
    assert_eq!(server.stat("envoy_listener_ssl_handshake").await, 1.0, "one connection, kept alive");

    // The client sidecar checks the server's identity too: a cluster expecting another SPIFFE ID
    // fails to connect (503, a TLS error), as Envoy's.
    let reply = get(&http1_client(), &format!("http://127.0.0.1:{client_port}/impostor"), &[]).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(reply.body.contains("TLS"), "{}", reply.body);
    assert!(client.stat("envoy_cluster_ssl_connection_error").await >= 1.0);

    // STRICT: a plaintext client on the wire port gets nothing.
    let plain = raw_exchange(server_addr, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(!String::from_utf8_lossy(&plain).contains("HTTP/1.1"), "plaintext refused: {plain:?}");

    // A certificate from another CA, an expired one, one with another trust domain, none at all.
    let other_ca = Ca::new("another CA");
    let cases = [
        ("another CA", other_ca.issue("frontend", &[], &[CLIENT_ID]), "envoy_listener_ssl_fail_verify_error"),
        ("expired", ca.issue_expired("frontend", &[CLIENT_ID]), "envoy_listener_ssl_fail_verify_error"),
        (
            "another namespace",
            ca.issue("x", &[], &["spiffe://cluster.local/ns/prod/sa/x"]),
            "envoy_listener_ssl_fail_verify_san",
        ),
        (
            "another trust domain",
            ca.issue("x", &[], &["spiffe://evil.org/ns/default/sa/frontend"]),
            "envoy_listener_ssl_fail_verify_san",
        ),
    ];
    for (what, leaf, counter) in &cases {
        let before = server.stat(counter).await;
        let peer =
            TlsClient { ca_pem: Some(&ca.pem), sni: "backend.default.svc", alpn: &["http/1.1"], identity: Some(leaf) };
        // TLS 1.3 reports a refused client certificate after the client's side of the handshake:
        // the request fails either way.
        assert!(tls_get(server_addr, &peer, "/").await.is_err(), "{what}: refused");
        // The client may see the refusal before the server has counted it.
        settles(&server, counter, before + 1.0, what).await;
    }
    let anonymous = TlsClient { ca_pem: Some(&ca.pem), sni: "backend.default.svc", alpn: &[], identity: None };
    assert!(tls_get(server_addr, &anonymous, "/").await.is_err(), "no client certificate: refused");
    settles(&server, "envoy_listener_ssl_fail_verify_no_cert", 1.0, "no certificate").await;
    let good = TlsClient { identity: Some(&pki.client_leaf), ..anonymous };
    assert_eq!(tls_get(server_addr, &good, "/").await.unwrap().status, 200, "still serving");
}

/// Waits (up to 5 s) for a counter to reach `want`.
async fn settles(proxy: &Proxy, counter: &str, want: f64, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while proxy.stat(counter).await != want {
        assert!(std::time::Instant::now() < deadline, "{what}: {counter} never reached {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn permissive_takes_plaintext_and_mutual_tls_on_one_port() {
    let pki = MeshPki::new();
    let app = echo("backend-app").await;
    let (server_admin, server_port) = (free_port(), free_port());
    let _server = Proxy::start(&pki.inbound(server_admin, server_port, app, true), server_admin).await;
    let server_addr: SocketAddr = ([127, 0, 0, 1], server_port).into();
    let (client_admin, client_port) = (free_port(), free_port());
    let _client = Proxy::start(&pki.outbound(client_admin, client_port, server_addr), client_admin).await;

    let mtls = get(&http1_client(), &format!("http://127.0.0.1:{client_port}/"), &[]).await;
    assert_eq!((mtls.status, seen_xfcc(&mtls)), (200, pki.expected_xfcc()));
    let plain =
        get(&http1_client(), &format!("http://{server_addr}/"), &[("x-forwarded-client-cert", "By=forged")]).await;
    assert_eq!(plain.status, 200, "plaintext on the same port");
    assert_eq!(seen_xfcc(&plain), "", "no certificate, no XFCC: the client's is removed");
}

/// The same sidecar bootstraps on a real Envoy: Envoy as the client sidecar in front of Strait's
/// server sidecar, and Strait's client sidecar in front of Envoy's server sidecar. mTLS works both
/// ways, and the app sees the same `x-forwarded-client-cert` from either server.
#[tokio::test]
async fn envoy_and_strait_sidecars_interoperate_over_mutual_tls() {
    if require_tool("envoy").is_none() {
        return;
    }
    let pki = MeshPki::new();
    let app = echo("backend-app").await;
    let (strait_server_admin, strait_server_port) = (free_port(), free_port());
    let _strait_server =
        Proxy::start(&pki.inbound(strait_server_admin, strait_server_port, app, false), strait_server_admin).await;
    let (envoy_server_admin, envoy_server_port) = (free_port(), free_port());
    let _envoy_server =
        Envoy::start(&pki.inbound(envoy_server_admin, envoy_server_port, app, false), envoy_server_admin)
            .await
            .unwrap();

    let (envoy_client_admin, envoy_client_port) = (free_port(), free_port());
    let strait_server: SocketAddr = ([127, 0, 0, 1], strait_server_port).into();
    let _envoy_client =
        Envoy::start(&pki.outbound(envoy_client_admin, envoy_client_port, strait_server), envoy_client_admin)
            .await
            .unwrap();
    let (strait_client_admin, strait_client_port) = (free_port(), free_port());
    let envoy_server: SocketAddr = ([127, 0, 0, 1], envoy_server_port).into();
    let _strait_client =
        Proxy::start(&pki.outbound(strait_client_admin, strait_client_port, envoy_server), strait_client_admin).await;

    let via_envoy_client = get(&http1_client(), &format!("http://127.0.0.1:{envoy_client_port}/"), &[]).await;
    assert_eq!(via_envoy_client.status, 200, "Envoy -> Strait over mTLS: {}", via_envoy_client.body);
    let via_strait_client = get(&http1_client(), &format!("http://127.0.0.1:{strait_client_port}/"), &[]).await;
    assert_eq!(via_strait_client.status, 200, "Strait -> Envoy over mTLS: {}", via_strait_client.body);
    assert_eq!(seen_xfcc(&via_strait_client), pki.expected_xfcc(), "Envoy's server sidecar sets XFCC as Strait's");
    assert_eq!(seen_xfcc(&via_envoy_client), pki.expected_xfcc());

    // Both clients refuse a server whose SPIFFE ID is not the expected one, with the same status.
    let envoy_refused = get(&http1_client(), &format!("http://127.0.0.1:{envoy_client_port}/impostor"), &[]).await;
    let strait_refused = get(&http1_client(), &format!("http://127.0.0.1:{strait_client_port}/impostor"), &[]).await;
    assert_eq!((envoy_refused.status, strait_refused.status), (503, 503));
    assert_eq!(envoy_refused.header("x-envoy-upstream-service-time"), None);
}

/// With `--watch`, replacing a listener's certificate files is taken up without a restart (new
/// connections get the new certificate), as Envoy reloads watched certificates.
#[tokio::test]
async fn replaced_certificate_files_are_reloaded() {
    let dir = TempDir::new("tls-reload");
    let ca = Ca::new("Strait test CA");
    let first = ca.issue("api", &["api.example.com"], &[]);
    let cert = first.write(&dir.0, "api");
    let app = echo("api").await;
    let (admin, port) = (free_port(), free_port());
    let listener = format!(
        "  - name: gateway\n    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}\n    filter_chains:\n{}",
        chain("filter_chain_match: {}", &server_tls(&cert, "", ""), "", "api")
    );
    let _proxy =
        Proxy::start_with(&bootstrap(admin, &listener, &static_cluster("api", &[app], "")), admin, &["--watch"]).await;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let client = TlsClient { ca_pem: Some(&ca.pem), sni: "api.example.com", alpn: &[], identity: None };
    assert_eq!(tls_get(addr, &client, "/").await.unwrap().server_cert, first.der);

    let second = ca.issue("api", &["api.example.com"], &[]);
    write_file(&dir.0, "api.key", &second.key_pem);
    write_file(&dir.0, "api.crt", &second.cert_pem);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tls_get(addr, &client, "/").await.map(|r| r.server_cert).ok() != Some(second.der.clone()) {
        assert!(std::time::Instant::now() < deadline, "the replaced certificate was not taken up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
