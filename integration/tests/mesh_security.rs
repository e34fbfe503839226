//! The mesh YAML's security objects, as an Istio user writes them, served by `strait-control` to two
//! Strait sidecars over ADS: a service with `traffic_policy.tls: ISTIO_MUTUAL`, a listener under a
//! STRICT PeerAuthentication, and AuthorizationPolicies (an ALLOW for the frontend's GETs under
//! `/api/`, a DENY for `/admin`). The sidecars get their certificates from the mesh CA; what reaches
//! the app and what is refused is what Istio's semantics say.

#[path = "../support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use strait_control::ca::CertificateAuthority;
use strait_control::ca::tokens::Tokens;
use support::*;

const FRONTEND: &str = "spiffe://cluster.local/ns/default/sa/frontend";
const BACKEND: &str = "spiffe://cluster.local/ns/default/sa/backend";

#[tokio::test]
async fn istio_shaped_policies_secure_the_mesh() {
    let dir = TempDir::new("mesh-security");
    let ca = Arc::new(CertificateAuthority::load_or_create(&dir.0.join("ca"), "cluster.local").unwrap());
    let tokens =
        Tokens::parse("frontend-token-0123456789 default frontend\nbackend-token-0123456789 default backend\n")
            .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ca_addr = listener.local_addr().unwrap();
    tokio::spawn(strait_control::serve_ca(
        strait_control::CaSettings { listener, ca, tokens: Arc::new(tokens) },
        std::future::pending(),
    ));
    let app = echo("app").await;
    let (outbound, inbound) = (free_port(), free_port());
    let mesh = format!(
        r#"
listeners:
- {{ name: outbound, port: {outbound}, nodes: [frontend] }}
- {{ name: inbound, port: {inbound}, nodes: [backend] }}
services:
- name: backend
  endpoints: ['127.0.0.1:{inbound}']
  traffic_policy: {{ tls: {{ mode: ISTIO_MUTUAL, subject_alt_names: ["{BACKEND}"] }} }}
- {{ name: app, endpoints: ['{app}'] }}
routes:
- {{ name: out, listener: outbound, hosts: ["*"], to: [{{ service: backend }}] }}
- {{ name: in, listener: inbound, hosts: ["*"], to: [{{ service: app }}] }}
peer_authentications:
- {{ name: strict, listener: inbound, mtls: {{ mode: STRICT }} }}
authorization_policies:
- name: frontend-reads-api
  listener: inbound
  action: ALLOW
  rules:
  - from: [{{ source: {{ principals: ["cluster.local/ns/default/sa/frontend"] }} }}]
    to: [{{ operation: {{ methods: [GET], paths: ["/api/*"] }} }}]
- name: no-admin
  listener: inbound
  action: DENY
  rules:
  - to: [{{ operation: {{ paths: ["/api/admin*"] }} }}]
"#
    );
    write_file(&dir.0, "mesh.yaml", &mesh);
    let xds: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let _control = control_plane(&dir.0, xds).await;
    let sidecar = |cluster: &str, id: &str, token: &str| {
        let token_file = write_file(&dir.0, &format!("{cluster}.token"), token).display().to_string();
        let admin = free_port();
        let args = ["--ca-address", &format!("http://{ca_addr}"), "--ca-token-file", &token_file, "--spiffe-id", id]
            .map(String::from);
        (peer_bootstrap(xds, cluster, admin), admin, args)
    };
    let (yaml, admin, args) = sidecar("backend", BACKEND, "backend-token-0123456789");
    let _backend = Proxy::start_with(&yaml, admin, &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let (yaml, admin, args) = sidecar("frontend", FRONTEND, "frontend-token-0123456789");
    let _frontend = Proxy::start_with(&yaml, admin, &args.iter().map(String::as_str).collect::<Vec<_>>()).await;

    let call = |method: &'static str, path: &str| {
        let url = format!("http://127.0.0.1:{outbound}{path}");
        async move {
            let request = http::Request::builder().method(method).uri(url).body(Default::default()).unwrap();
            send(&http1_client(), request).await
        }
    };
    let reply = call("GET", "/api/items").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let xfcc = reply.json()["headers"]["x-forwarded-client-cert"].as_str().unwrap_or_default().to_string();
    assert!(xfcc.starts_with(&format!("By={BACKEND};")) && xfcc.ends_with(&format!("URI={FRONTEND}")), "{xfcc}");
    for (method, path, why) in [
        ("GET", "/api/admin/users", "DENY wins over ALLOW"),
        ("POST", "/api/items", "only GET is allowed"),
        ("GET", "/other", "no ALLOW rule matches"),
    ] {
        let reply = call(method, path).await;
        assert_eq!((reply.status, reply.body.as_str()), (403, "RBAC: access denied"), "{method} {path}: {why}");
    }
    // STRICT: the inbound listener takes no plaintext.
    let plain = get_text(&format!("http://127.0.0.1:{inbound}/api/items")).await;
    assert!(plain.is_err(), "plaintext refused: {plain:?}");
}
