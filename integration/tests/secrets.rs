//! Certificates over SDS: a server sidecar configured over ADS whose TLS listener names its
//! certificate and trust bundle as secrets (`sds_config: { ads: {} }`, Istio's shape). The proxy asks
//! for them by name, serves once they arrive, and a pushed new certificate is used by new
//! connections while established ones keep working, under load, with no request failing. A listener
//! waits (warms) for a secret it names that has not come yet; a malformed secret is NACKed and the
//! running certificate stays.

#[path = "../support/pki.rs"]
mod pki;
#[path = "../support/mod.rs"]
mod support;

use pki::{Ca, Leaf, TlsClient, tls_get};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use strait_control::resources::Resources;
use support::*;
use tokio::sync::watch;
use xds_proto::Format;
use xds_proto::pb::envoy::config::cluster::v3::Cluster;
use xds_proto::pb::envoy::config::listener::v3::Listener;
use xds_proto::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use xds_proto::pb::google::protobuf::Any;
use xds_proto::type_url;

const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/frontend";
const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/backend";

fn any<T: prost::Message + prost::Name + Default>(yaml: &str) -> Any {
    let message: T = xds_proto::parse_document(yaml, Format::Yaml).unwrap_or_else(|e| panic!("{e}: {yaml}"));
    Any { type_url: T::type_url(), value: prost::Message::encode_to_vec(&message) }
}

/// An mTLS listener on `port` whose certificate is the secret `cert` and trust bundle `ROOTCA`.
fn listener(name: &str, port: u16, cert: &str) -> Any {
    any::<Listener>(&format!(
        r#"
name: {name}
address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
filter_chains:
- transport_socket:
    name: envoy.transport_sockets.tls
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
      require_client_certificate: true
      common_tls_context:
        tls_certificate_sds_secret_configs: [{{ name: {cert}, sds_config: {{ ads: {{}}, resource_api_version: V3 }} }}]
        combined_validation_context:
          default_validation_context:
            match_typed_subject_alt_names: [{{ san_type: URI, matcher: {{ prefix: "spiffe://cluster.local/" }} }}]
          validation_context_sds_secret_config: {{ name: ROOTCA, sds_config: {{ ads: {{}}, resource_api_version: V3 }} }}
  filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: {name}
      route_config:
        virtual_hosts: [{{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: app }} }}] }}]
      http_filters:
      - {{ name: envoy.filters.http.router, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }}
"#
    ))
}

fn cert_secret(name: &str, leaf: &Leaf) -> Any {
    any::<Secret>(&format!(
        "name: {name}\ntls_certificate:\n  certificate_chain: {{ inline_string: {:?} }}\n  private_key: {{ inline_string: {:?} }}\n",
        leaf.cert_pem, leaf.key_pem
    ))
}

fn roots(ca: &Ca) -> Any {
    any::<Secret>(&format!("name: ROOTCA\nvalidation_context:\n  trusted_ca: {{ inline_string: {:?} }}\n", ca.pem))
}

fn resources(items: Vec<(&'static str, &str, Any)>) -> Arc<Resources> {
    Arc::new(Resources::new(items.into_iter().map(|(t, n, a)| (t, n.to_string(), a)).collect()))
}

/// The in-process control plane: ADS from whatever is in the watch channel.
async fn ads_server(initial: Arc<Resources>) -> (watch::Sender<Arc<Resources>>, SocketAddr) {
    let (tx, rx) = watch::channel(initial);
    let (_stop_tx, stop) = watch::channel(false);
    std::mem::forget(_stop_tx);
    let ads = strait_control::ads::Ads::new(rx, stop);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .serve_with_incoming(ads.into_service(), tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (tx, addr)
}

/// The server certificate a new connection is shown (DER).
async fn served_cert(addr: SocketAddr, client: &TlsClient<'_>) -> Result<Vec<u8>, String> {
    tls_get(addr, client, "/").await.map(|r| r.server_cert)
}

#[tokio::test]
async fn certificates_come_over_sds_and_rotate_under_load_without_failures() {
    let ca = Ca::new("cluster.local CA");
    let (v1, v2) = (ca.issue("backend", &["backend"], &[SERVER_ID]), ca.issue("backend", &["backend"], &[SERVER_ID]));
    let client_leaf = ca.issue("frontend", &[], &[CLIENT_ID]);
    let app = echo("app").await;
    let port = free_port();
    let cluster = any::<Cluster>(&format!(
        "name: app\nconnect_timeout: 1s\nload_assignment: {{ cluster_name: app, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }} }}] }}] }}",
        app.port()
    ));
    let config = |cert: &Leaf, extra: Vec<(&'static str, &'static str, Any)>| {
        let mut items = vec![
            (type_url::CLUSTER, "app", cluster.clone()),
            (type_url::LISTENER, "inbound", listener("inbound", port, "server-cert")),
            (type_url::SECRET, "server-cert", cert_secret("server-cert", cert)),
            (type_url::SECRET, "ROOTCA", roots(&ca)),
        ];
        items.extend(extra);
        resources(items)
    };
    let (push, xds) = ads_server(config(&v1, vec![])).await;
    let admin = free_port();
    let proxy = Proxy::start(&ads_bootstrap("sds-test", admin, xds, "GRPC"), admin).await;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let client = TlsClient { ca_pem: Some(&ca.pem), sni: "backend", alpn: &["http/1.1"], identity: Some(&client_leaf) };
    assert_eq!(served_cert(addr, &client).await.unwrap(), v1.der, "the certificate from SDS");

    // A connection opened before the rotation, kept alive across it.
    let mut kept = KeptAlive::open(addr, &client).await;
    assert_eq!(kept.get().await, 200);

    // Load: new connections back to back, from 4 clients, while the certificate rotates.
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop_at = Instant::now() + Duration::from_secs(3);
    let mut load = Vec::new();
    for _ in 0..4 {
        let (ok, failed, ca_pem, leaf) = (ok.clone(), failed.clone(), ca.pem.clone(), client_leaf.clone());
        load.push(tokio::spawn(async move {
            let client =
                TlsClient { ca_pem: Some(&ca_pem), sni: "backend", alpn: &["http/1.1"], identity: Some(&leaf) };
            while Instant::now() < stop_at {
                match tls_get(addr, &client, "/").await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    push.send(config(&v2, vec![])).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_cert(addr, &client).await.unwrap() != v2.der {
        assert!(Instant::now() < deadline, "the rotated certificate was not taken up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for task in load {
        task.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("rotation under load: {ok} requests on new connections, {failed} failed");
    assert!(ok > 50, "the load ran ({ok} requests)");
    assert_eq!(failed, 0, "no request failed across the rotation");
    assert_eq!(kept.get().await, 200, "a connection from before the rotation keeps working");

    // A listener naming a secret that has not come: it waits, unbound, while the rest serves.
    let port2 = free_port();
    let addr2: SocketAddr = ([127, 0, 0, 1], port2).into();
    let warming = vec![(type_url::LISTENER, "inbound2", listener("inbound2", port2, "late-cert"))];
    push.send(config(&v2, warming.clone())).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(tokio::net::TcpStream::connect(addr2).await.is_err(), "not bound before its secret");
    assert_eq!(served_cert(addr, &client).await.unwrap(), v2.der);
    let mut arrived = warming;
    arrived.push((type_url::SECRET, "late-cert", cert_secret("late-cert", &v1)));
    push.send(config(&v2, arrived.clone())).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_cert(addr2, &client).await.ok() != Some(v1.der.clone()) {
        assert!(Instant::now() < deadline, "the warmed listener did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A malformed secret: NACKed, naming it; the running certificates stay.
    let malformed = any::<Secret>(
        "name: server-cert\ntls_certificate: { certificate_chain: { inline_string: nope }, private_key: { inline_string: nope } }",
    );
    let mut items: Vec<_> = arrived.into_iter().collect();
    items.extend([
        (type_url::CLUSTER, "app", cluster.clone()),
        (type_url::LISTENER, "inbound", listener("inbound", port, "server-cert")),
        (type_url::SECRET, "ROOTCA", roots(&ca)),
        (type_url::SECRET, "server-cert", malformed),
    ]);
    push.send(resources(items)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let dump = proxy.admin_text("/config_dump").await;
        if dump.contains("Secret 'server-cert'") {
            assert!(dump.contains("no PEM certificate"), "the NACK says what is wrong");
            assert!(dump.contains("[redacted]") && !dump.contains("PRIVATE KEY"), "private keys are not dumped");
            break;
        }
        assert!(Instant::now() < deadline, "the malformed secret was not NACKed:\n{dump}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served_cert(addr, &client).await.unwrap(), v2.der, "the last good certificate serves on");
}

/// One TLS connection kept open for several requests.
struct KeptAlive {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
}

impl KeptAlive {
    async fn open(addr: SocketAddr, client: &TlsClient<'_>) -> KeptAlive {
        let tls = pki::connect(addr, client).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        KeptAlive { sender }
    }

    /// The status of one more request on the connection (0 if the connection failed), its body read
    /// to the end as a client that keeps the connection must: dropped unread, it could leave the
    /// connection closed by hyper when the body came after the head.
    async fn get(&mut self) -> u16 {
        use http_body_util::BodyExt;
        let sender = &mut self.sender;
        if sender.ready().await.is_err() {
            return 0;
        }
        let req = http::Request::get("/").header("host", "backend").body(http_body_util::Empty::new()).unwrap();
        match sender.send_request(req).await {
            Ok(response) => {
                let status = response.status().as_u16();
                match response.into_body().collect().await {
                    Ok(_) => status,
                    Err(_) => 0,
                }
            }
            Err(_) => 0,
        }
    }
}
