//! Authorization: RBAC on a server sidecar that requires mTLS. An HTTP DENY filter ahead of an
//! ALLOW filter (Istio's "deny wins"): the frontend's SPIFFE ID may GET `/api/`, nobody may reach
//! `/admin`, another workload of the namespace gets 403; `/public` switches the ALLOW filter off
//! (`RBACPerRoute` without rules). A network
//! RBAC filter in front of a TCP proxy lets only the frontend's connections through. The same
//! bootstraps run on a real Envoy, which must decide alike.

#[path = "../support/mesh.rs"]
mod mesh;
#[path = "../support/pki.rs"]
mod pki;
#[path = "../support/mod.rs"]
mod support;

use mesh::*;
use pki::{TlsClient, tls_get};
use std::net::SocketAddr;
use support::*;

const RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const NETWORK_RBAC: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";
const OTHER_ID: &str = "spiffe://cluster.local/ns/default/sa/other";

/// A DENY filter for `/admin`, then an ALLOW filter: the frontend may GET `/api/`.
fn http_filters() -> String {
    format!(
        r#"          - name: deny-admin
            typed_config:
              "@type": {RBAC}
              rules:
                action: DENY
                policies:
                  admin:
                    permissions: [{{ url_path: {{ path: {{ prefix: /admin }} }} }}]
                    principals: [{{ any: true }}]
          - name: allow-frontend
            typed_config:
              "@type": {RBAC}
              rules:
                action: ALLOW
                policies:
                  frontend-reads-api:
                    permissions:
                    - and_rules:
                        rules:
                        - header: {{ name: ":method", string_match: {{ exact: GET }} }}
                        - url_path: {{ path: {{ prefix: /api/ }} }}
                    principals:
                    - authenticated: {{ principal_name: {{ exact: "{CLIENT_ID}" }} }}
"#
    )
}

/// A TLS listener (mTLS required) whose TCP proxy only the frontend may use.
fn tcp_listener_with_rbac(pki: &MeshPki, port: u16) -> String {
    let tls = pki.server_tls();
    format!(
        r#"  - name: tcp-inbound
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filter_chain_match: {{}}
{tls}      filters:
      - name: envoy.filters.network.rbac
        typed_config:
          "@type": {NETWORK_RBAC}
          stat_prefix: "tcp_inbound."
          rules:
            action: ALLOW
            policies:
              frontend:
                permissions: [{{ any: true }}]
                principals: [{{ authenticated: {{ principal_name: {{ exact: "{CLIENT_ID}" }} }} }}]
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp_inbound
          cluster: app
"#
    )
}

/// The statuses (and bodies) a set of requests gets from one server sidecar.
async fn decisions(pki: &MeshPki, http: SocketAddr, tcp: SocketAddr) -> Vec<String> {
    let other = pki.ca.issue("other", &[], &[OTHER_ID]);
    let frontend = TlsClient {
        ca_pem: Some(&pki.ca.pem),
        sni: "backend.default.svc",
        alpn: &["http/1.1"],
        identity: Some(&pki.client_leaf),
    };
    let stranger = TlsClient { identity: Some(&other), ..frontend };
    let mut out = Vec::new();
    for (who, client) in [("frontend", &frontend), ("other", &stranger)] {
        for path in ["/api/items", "/admin/users", "/public"] {
            let seen = match tls_get(http, client, path).await {
                Ok(reply) if reply.status == 403 => format!("{who} {path}: 403 {}", reply.body),
                Ok(reply) => format!("{who} {path}: {}", reply.status),
                Err(e) => format!("{who} {path}: failed {e}"),
            };
            out.push(seen);
        }
        // Through the TCP proxy, the echo app answers whatever path.
        let seen = match tls_get(tcp, client, "/over-tcp").await {
            Ok(reply) => format!("{who} tcp: {}", reply.status),
            Err(_) => format!("{who} tcp: closed"),
        };
        out.push(seen);
    }
    out
}

#[tokio::test]
async fn rbac_allows_and_denies_by_principal_and_path_as_envoy() {
    let pki = MeshPki::new();
    let app = echo("backend-app").await;
    let start = |admin: u16, port: u16, tcp: u16| {
        let yaml = pki.inbound_with_filters(admin, port, app, false, &http_filters()).replace(
            "routes: [ { match: { prefix: / }, route: { cluster: app } } ]",
            &format!(
                "routes: [ {{ match: {{ prefix: /public }}, route: {{ cluster: app }}, \
                 typed_per_filter_config: {{ allow-frontend: {{ \"@type\": {RBAC}PerRoute }} }} }}, \
                 {{ match: {{ prefix: / }}, route: {{ cluster: app }} }} ]"
            ),
        );
        // The TCP listener joins the bootstrap's listeners.
        yaml.replacen("  clusters:\n", &format!("{}  clusters:\n", tcp_listener_with_rbac(&pki, tcp)), 1)
    };
    let (admin, port, tcp) = (free_port(), free_port(), free_port());
    let strait = Proxy::start(&start(admin, port, tcp), admin).await;
    let seen = decisions(&pki, ([127, 0, 0, 1], port).into(), ([127, 0, 0, 1], tcp).into()).await;
    assert_eq!(
        seen,
        [
            "frontend /api/items: 200",
            "frontend /admin/users: 403 RBAC: access denied",
            "frontend /public: 200",
            "frontend tcp: 200",
            "other /api/items: 403 RBAC: access denied",
            "other /admin/users: 403 RBAC: access denied",
            "other /public: 200",
            "other tcp: closed",
        ]
    );
    // Each filter counts what it let through and what it stopped.
    let counters = [
        "envoy_http_rbac_allowed{envoy_http_conn_manager_prefix=\"app\"} 5",
        "envoy_http_rbac_denied{envoy_http_conn_manager_prefix=\"app\"} 3",
        "envoy_rbac_allowed{envoy_rbac_prefix=\"tcp_inbound\"} 1",
        "envoy_rbac_denied{envoy_rbac_prefix=\"tcp_inbound\"} 1",
    ];
    let metrics = strait.admin_text("/stats/prometheus").await;
    for line in counters {
        assert!(metrics.lines().any(|l| l == line), "Strait counts {line}");
    }

    if require_tool("envoy").is_none() {
        return;
    }
    let (admin, port, tcp) = (free_port(), free_port(), free_port());
    let envoy = Envoy::start(&start(admin, port, tcp), admin).await.unwrap();
    let envoy_seen = decisions(&pki, ([127, 0, 0, 1], port).into(), ([127, 0, 0, 1], tcp).into()).await;
    assert_eq!(envoy_seen, seen, "Envoy decides alike");
    let metrics = get_text(&format!("http://{}/stats/prometheus", envoy.admin)).await.unwrap().1;
    for line in counters {
        assert!(metrics.lines().any(|l| l == line), "Envoy counts {line}");
    }
}
