//! Workload identities from the mesh's CA: `strait-control`'s certificate service (in-process, real
//! gRPC) signs CSRs for the SPIFFE ID a bootstrap token allows; two Strait sidecars obtain their
//! certificates (`--ca-address`, the key never leaving the proxy), talk mTLS with them and renew them
//! at half their lifetime under load with no request failing. The CA keeps its root across restarts,
//! refuses a CSR for an identity the token does not allow and an unknown token, and a rotated root
//! stays trusted for its overlap.

#[path = "../support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use strait_control::ca::CertificateAuthority;
use strait_control::ca::tokens::Tokens;
use support::*;
use xds_proto::ca::CertificateRequest;
use xds_proto::ca::certificate_service_client::CertificateServiceClient;
use xds_proto::pb::google::protobuf::Any;

const FRONTEND: &str = "spiffe://cluster.local/ns/default/sa/frontend";
const BACKEND: &str = "spiffe://cluster.local/ns/default/sa/backend";
const FRONTEND_TOKEN: &str = "frontend-token-0123456789";
const BACKEND_TOKEN: &str = "backend-token-0123456789";

/// The certificate service on a free port, for the tokens above.
async fn certificate_service(dir: &std::path::Path) -> (SocketAddr, Arc<CertificateAuthority>) {
    let ca = Arc::new(CertificateAuthority::load_or_create(&dir.join("ca"), "cluster.local").unwrap());
    let tokens =
        Tokens::parse(&format!("{FRONTEND_TOKEN} default frontend\n{BACKEND_TOKEN} default backend  # the server\n"))
            .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let settings = strait_control::CaSettings { listener, ca: ca.clone(), tokens: Arc::new(tokens) };
    tokio::spawn(strait_control::serve_ca(settings, std::future::pending()));
    (addr, ca)
}

/// A CSR (PEM) for `uri`, with its key.
fn csr(uri: &str) -> (String, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
    (params.serialize_request(&key).unwrap().pem().unwrap(), key)
}

async fn ask(addr: SocketAddr, token: &str, csr: String) -> Result<xds_proto::ca::CertificateResponse, tonic::Status> {
    let mut client = CertificateServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let mut request = tonic::Request::new(CertificateRequest { csr, validity_duration: 3600 });
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    client.create_certificate(request).await.map(|r| r.into_inner())
}

#[tokio::test]
async fn the_ca_signs_only_what_the_token_allows_and_keeps_its_root() {
    let dir = TempDir::new("ca");
    let (addr, ca) = certificate_service(&dir.0).await;
    let answer = ask(addr, FRONTEND_TOKEN, csr(FRONTEND).0).await.unwrap();
    assert!(answer.cert_chain[0].contains("BEGIN CERTIFICATE"));
    assert_eq!(answer.trust_bundle, ca.trust_bundle());
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(answer.cert_chain[0].as_bytes())
        .map(|c: rustls::pki_types::CertificateDer| c.to_vec())
        .unwrap();
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
    let lifetime = parsed.validity().not_after.timestamp() - parsed.validity().not_before.timestamp();
    assert_eq!(lifetime, 3600 + 60, "the lifetime asked for (back-dated a minute for clock skew)");
    let sans = parsed.subject_alternative_name().unwrap().unwrap().value.general_names.clone();
    assert_eq!(format!("{sans:?}"), format!("[URI(\"{FRONTEND}\")]"), "the SPIFFE ID and nothing else");

    let refused = ask(addr, FRONTEND_TOKEN, csr(BACKEND).0).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(refused.message().contains("allows only spiffe://cluster.local/ns/default/sa/frontend"), "{refused:?}");
    let unknown = ask(addr, "not-a-token-at-all-xx", csr(FRONTEND).0).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::Unauthenticated);
    let garbage = ask(addr, FRONTEND_TOKEN, "not a csr".into()).await.unwrap_err();
    assert_eq!(garbage.code(), tonic::Code::InvalidArgument);

    // The root survives a restart; a rotation keeps the old root trusted for the overlap.
    let again = CertificateAuthority::load_or_create(&dir.0.join("ca"), "cluster.local").unwrap();
    assert_eq!(again.trust_bundle(), ca.trust_bundle());
    CertificateAuthority::rotate_root(&dir.0.join("ca"), "cluster.local", Duration::from_secs(3600)).unwrap();
    let rotated = CertificateAuthority::load_or_create(&dir.0.join("ca"), "cluster.local").unwrap();
    let bundle = rotated.trust_bundle();
    assert_eq!(bundle.len(), 2, "new root first, the previous one during the overlap");
    assert_ne!(bundle[0], ca.trust_bundle()[0]);
    assert_eq!(bundle[1], ca.trust_bundle()[0]);
}

/// A sidecar bootstrap whose TLS names the agent's secrets `default` and `ROOTCA`: an inbound mTLS
/// listener to `app`, or an outbound plaintext listener to `upstream` over mTLS expecting `peer_id`.
fn sidecar(admin: u16, port: u16, inbound: bool, target: SocketAddr, peer_id: &str) -> String {
    // The server sidecar authorizes: nobody reaches /admin, only the frontend reaches the rest.
    let rbac = "\"@type\": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
    let authorization = format!(
        "          - {{ name: deny, typed_config: {{ {rbac}, rules: {{ action: DENY, policies: {{ admin: {{ permissions: [{{ url_path: {{ path: {{ prefix: /admin }} }} }}], principals: [{{ any: true }}] }} }} }} }} }}\n\
         \x20         - {{ name: allow, typed_config: {{ {rbac}, rules: {{ action: ALLOW, policies: {{ peer: {{ permissions: [{{ any: true }}], principals: [{{ authenticated: {{ principal_name: {{ exact: \"{peer_id}\" }} }} }}] }} }} }} }} }}\n"
    );
    let filters = if inbound { authorization.as_str() } else { "" };
    let hcm = |cluster: &str, extra: &str| {
        format!(
            r#"      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {cluster}
{extra}          route_config:
            virtual_hosts: [{{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: {cluster} }} }}] }}]
          http_filters:
{filters}          - {{ name: envoy.filters.http.router, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }}
"#
        )
    };
    let validation = format!(
        r#"            combined_validation_context:
              default_validation_context:
                match_typed_subject_alt_names: [{{ san_type: URI, matcher: {{ exact: "{peer_id}" }} }}]
              validation_context_sds_secret_config: {{ name: ROOTCA }}
"#
    );
    let (chain, cluster_tls) = if inbound {
        let tls = format!(
            r#"      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificate_sds_secret_configs: [{{ name: default }}]
{validation}"#
        );
        let xfcc = "          forward_client_cert_details: SANITIZE_SET\n          set_current_client_cert_details: { uri: true }\n";
        (format!("    - filter_chain_match: {{}}\n{tls}{}", hcm("local", xfcc)), String::new())
    } else {
        let tls = format!(
            r#"    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          tls_params: {{ tls_maximum_protocol_version: TLSv1_3 }}
          tls_certificate_sds_secret_configs: [{{ name: default }}]
{}"#,
            validation.replace("            ", "          ")
        );
        (format!("    - filter_chain_match: {{}}\n{}", hcm("local", "")), tls)
    };
    format!(
        r#"
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}
static_resources:
  listeners:
  - name: main
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
{chain}  clusters:
{}"#,
        static_cluster("local", &[target], &cluster_tls)
    )
}

#[tokio::test]
async fn sidecars_get_certificates_from_the_ca_and_renew_them_under_load() {
    let dir = TempDir::new("identity");
    let (ca_addr, _ca) = certificate_service(&dir.0).await;
    let token_file = |name: &str, token: &str| write_file(&dir.0, name, token).display().to_string();
    let (frontend_token, backend_token) =
        (token_file("frontend.token", FRONTEND_TOKEN), token_file("backend.token", BACKEND_TOKEN));
    let ca_url = format!("http://{ca_addr}");
    let app = echo("backend-app").await;

    let (server_admin, server_port) = (free_port(), free_port());
    let server_addr: SocketAddr = ([127, 0, 0, 1], server_port).into();
    let args = |token: &str, id: &str| {
        vec![
            "--ca-address".to_string(),
            ca_url.clone(),
            "--ca-token-file".into(),
            token.to_string(),
            "--spiffe-id".into(),
            id.to_string(),
            "--certificate-lifetime".into(),
            "4s".into(),
        ]
    };
    let server_args = args(&backend_token, BACKEND);
    let server_args: Vec<&str> = server_args.iter().map(String::as_str).collect();
    let server =
        Proxy::start_with(&sidecar(server_admin, server_port, true, app, FRONTEND), server_admin, &server_args).await;
    let (client_admin, client_port) = (free_port(), free_port());
    let client_args = args(&frontend_token, FRONTEND);
    let client_args: Vec<&str> = client_args.iter().map(String::as_str).collect();
    let client =
        Proxy::start_with(&sidecar(client_admin, client_port, false, server_addr, BACKEND), client_admin, &client_args)
            .await;

    let url = format!("http://127.0.0.1:{client_port}/");
    let reply = get(&http1_client(), &url, &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let xfcc = reply.json()["headers"]["x-forwarded-client-cert"].as_str().unwrap_or_default().to_string();
    assert!(xfcc.starts_with(&format!("By={BACKEND};Hash=")) && xfcc.ends_with(&format!(";URI={FRONTEND}")), "{xfcc}");

    // 4 s certificates, renewed every ~2 s: 7 s of load crosses several renewals on both sides.
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop_at = Instant::now() + Duration::from_secs(7);
    let mut load = Vec::new();
    for _ in 0..4 {
        let (ok, failed, url) = (ok.clone(), failed.clone(), url.clone());
        load.push(tokio::spawn(async move {
            let client = http1_client();
            while Instant::now() < stop_at {
                let request = http::Request::get(&url).body(http_body_util::Full::new(bytes::Bytes::new())).unwrap();
                match client.request(request).await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for task in load {
        task.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("renewals under load: {ok} requests, {failed} failed");
    assert!(ok > 100, "the load ran ({ok})");
    assert_eq!(failed, 0, "no request failed across the renewals");
    // Both renewed (at ~2 s, ~4 s, ~6 s), and the client sidecar reconnected with its new certificate.
    for (who, proxy) in [("server", &server), ("client", &client)] {
        let renewals = proxy.stat("strait_workload_certificate_renewals_total").await;
        assert!(renewals >= 2.0, "{who}: {renewals} renewals");
    }
    let handshakes = server.stat("envoy_listener_ssl_handshake").await;
    assert!(handshakes >= 2.0, "the client sidecar reconnected with the renewed certificates ({handshakes})");
    let reply = get(&http1_client(), &url, &[]).await;
    assert_eq!(reply.status, 200);
}

/// `strait-control`'s ADS serving `items` and, to streams that present a bootstrap token, their
/// workload certificates over SDS.
async fn sds_server(ca: Arc<CertificateAuthority>, items: Vec<(&'static str, String, Any)>) -> SocketAddr {
    let tokens =
        Tokens::parse(&format!("{FRONTEND_TOKEN} default frontend\n{BACKEND_TOKEN} default backend\n")).unwrap();
    let issuer =
        strait_control::ca::sds::SdsIssuer { ca, tokens: Arc::new(tokens), lifetime: Duration::from_secs(3600) };
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(strait_control::resources::Resources::new(items)));
    std::mem::forget(tx);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    std::mem::forget(stop_tx);
    let ads = strait_control::ads::Ads::new(rx, stop).with_sds(issuer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .serve_with_incoming(ads.into_service(), tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

/// An Envoy sidecar as Istio runs one: the sidecar's listener and cluster come over ADS (LDS, CDS)
/// from a control plane serving them and, for the stream's bootstrap token, the secrets `default`
/// and `ROOTCA` (SDS). (Envoy 1.40 crashes on a static cluster whose TLS takes SDS secrets over
/// ADS: its clusters must come over CDS.)
async fn envoy_sidecar(sidecar: String, admin: u16, ca: Arc<CertificateAuthority>, token: &str) -> Envoy {
    Envoy::start(&sds_fed_bootstrap(sidecar, admin, ca, token).await, admin).await.unwrap()
}

/// The bootstrap of a sidecar fed over ADS, certificates included (SDS), from a control plane
/// serving `sidecar`'s listeners and clusters: for Envoy, or for Strait (which can also make its
/// own key instead).
async fn sds_fed_bootstrap(sidecar: String, admin: u16, ca: Arc<CertificateAuthority>, token: &str) -> String {
    let sds = "sds_config: { ads: {}, resource_api_version: V3 }";
    let sidecar = sidecar
        .replace("{ name: default }", &format!("{{ name: default, {sds} }}"))
        .replace("{ name: ROOTCA }", &format!("{{ name: ROOTCA, {sds} }}"));
    let parsed: xds_proto::Bootstrap = xds_proto::parse_document(&sidecar, xds_proto::Format::Yaml).unwrap();
    let resources = parsed.static_resources.unwrap_or_default();
    let pack = |type_url: &'static str, name: &str, value: Vec<u8>| {
        (type_url, name.to_string(), Any { type_url: type_url.to_string(), value })
    };
    let mut items = Vec::new();
    for l in &resources.listeners {
        items.push(pack(xds_proto::type_url::LISTENER, &l.name, prost::Message::encode_to_vec(l)));
    }
    for c in &resources.clusters {
        items.push(pack(xds_proto::type_url::CLUSTER, &c.name, prost::Message::encode_to_vec(c)));
    }
    let xds = sds_server(ca, items).await;
    // The shared ADS bootstrap, its stream carrying the workload's bootstrap token.
    let bootstrap = ads_bootstrap("sidecar", admin, xds, "GRPC");
    let plain = "grpc_services: [{ envoy_grpc: { cluster_name: xds } }]";
    assert!(bootstrap.contains(plain), "the ADS bootstrap changed shape");
    let with_token = format!(
        "grpc_services: [{{ envoy_grpc: {{ cluster_name: xds }}, initial_metadata: [{{ key: authorization, value: \"Bearer {token}\" }}] }}]"
    );
    bootstrap.replace(plain, &with_token)
}

/// Sidecars fed their certificates by `strait-control`: Envoys over SDS, a Strait server over SDS
/// too, a Strait client through its own CSR: Envoy client -> Strait server and Strait client ->
/// Envoy server both talk mTLS, the app sees the caller's SPIFFE ID the same way from either server,
/// and authorization agrees.
#[tokio::test]
async fn envoy_fed_over_sds_and_strait_talk_mutual_tls_both_ways() {
    if require_tool("envoy").is_none() {
        return;
    }
    let dir = TempDir::new("identity-envoy");
    let (ca_addr, ca) = certificate_service(&dir.0).await;
    let frontend_token = write_file(&dir.0, "frontend.token", FRONTEND_TOKEN).display().to_string();
    let app = echo("backend-app").await;
    let agent = |token: &str, id: &str| {
        ["--ca-address", &format!("http://{ca_addr}"), "--ca-token-file", token, "--spiffe-id", id]
            .map(String::from)
            .to_vec()
    };

    // Envoy (SDS, frontend) -> Strait (fed over SDS too, backend).
    let (strait_server_admin, strait_server_port) = (free_port(), free_port());
    let strait_server_addr: SocketAddr = ([127, 0, 0, 1], strait_server_port).into();
    let yaml = sidecar(strait_server_admin, strait_server_port, true, app, FRONTEND);
    let yaml = sds_fed_bootstrap(yaml, strait_server_admin, ca.clone(), BACKEND_TOKEN).await;
    let _strait_server = Proxy::start(&yaml, strait_server_admin).await;
    let (envoy_client_admin, envoy_client_port) = (free_port(), free_port());
    let yaml = sidecar(envoy_client_admin, envoy_client_port, false, strait_server_addr, BACKEND);
    let _envoy_client = envoy_sidecar(yaml, envoy_client_admin, ca.clone(), FRONTEND_TOKEN).await;

    // Strait (its own CSR, frontend) -> Envoy (SDS, backend).
    let (envoy_server_admin, envoy_server_port) = (free_port(), free_port());
    let envoy_server_addr: SocketAddr = ([127, 0, 0, 1], envoy_server_port).into();
    let yaml = sidecar(envoy_server_admin, envoy_server_port, true, app, FRONTEND);
    let _envoy_server = envoy_sidecar(yaml, envoy_server_admin, ca.clone(), BACKEND_TOKEN).await;
    let (strait_client_admin, strait_client_port) = (free_port(), free_port());
    let args = agent(&frontend_token, FRONTEND);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _strait_client = Proxy::start_with(
        &sidecar(strait_client_admin, strait_client_port, false, envoy_server_addr, BACKEND),
        strait_client_admin,
        &args,
    )
    .await;

    let shape = |reply: &Reply| {
        assert_eq!(reply.status, 200, "{}", reply.body);
        let xfcc = reply.json()["headers"]["x-forwarded-client-cert"].as_str().unwrap_or_default().to_string();
        assert!(
            xfcc.starts_with(&format!("By={BACKEND};Hash=")) && xfcc.ends_with(&format!(";URI={FRONTEND}")),
            "{xfcc}"
        );
    };
    // Envoy may still be fetching its secrets (its listener warms until they come): retry a moment.
    let mut via_envoy = get(&http1_client(), &format!("http://127.0.0.1:{envoy_client_port}/"), &[]).await;
    for _ in 0..50 {
        if via_envoy.status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        via_envoy = get(&http1_client(), &format!("http://127.0.0.1:{envoy_client_port}/"), &[]).await;
    }
    shape(&via_envoy);
    shape(&get(&http1_client(), &format!("http://127.0.0.1:{strait_client_port}/"), &[]).await);

    // Authorization agrees: each server sidecar refuses /admin to the same caller.
    for port in [envoy_client_port, strait_client_port] {
        let refused = get(&http1_client(), &format!("http://127.0.0.1:{port}/admin/users"), &[]).await;
        assert_eq!((refused.status, refused.body.as_str()), (403, "RBAC: access denied"), "via port {port}");
    }
}
