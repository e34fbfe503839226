//! The YAML of a two-sidecar mesh for the TLS and authorization tests: filter chains with an HTTP
//! connection manager, TLS contexts, and [`MeshPki`], the certificates of a client and a server
//! sidecar with the bootstraps that use them.
#![allow(dead_code)]

use crate::pki::{Ca, Leaf};
use crate::support::{Reply, TempDir, static_cluster};
use std::net::SocketAddr;
use std::time::Duration;

pub const TLS_INSPECTOR: &str = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
pub const DOWNSTREAM_TLS: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
pub const UPSTREAM_TLS: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
pub const HCM: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
pub const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";

pub const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/frontend";
pub const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/backend";

/// A filter chain (YAML list item at the `filter_chains` level) with an HTTP connection manager
/// routing everything to `cluster` (or, with `cluster` empty, redirecting to https).
pub fn chain(chain_match: &str, transport_socket: &str, hcm_extra: &str, cluster: &str) -> String {
    chain_with_filters(chain_match, transport_socket, hcm_extra, "", cluster)
}

/// [`chain`] with HTTP filters (YAML list items at the `http_filters` level) before the router.
pub fn chain_with_filters(
    chain_match: &str,
    transport_socket: &str,
    hcm_extra: &str,
    http_filters: &str,
    cluster: &str,
) -> String {
    let action = if cluster.is_empty() {
        "redirect: { https_redirect: true }".to_string()
    } else {
        format!("route: {{ cluster: {cluster} }}")
    };
    format!(
        r#"    - {chain_match}
{transport_socket}      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM}
          stat_prefix: {stat}
{hcm_extra}          route_config:
            virtual_hosts:
            - {{ name: all, domains: ["*"], routes: [ {{ match: {{ prefix: / }}, {action} }} ] }}
          http_filters:
{http_filters}          - {{ name: envoy.filters.http.router, typed_config: {{ "@type": {ROUTER} }} }}
"#,
        stat = if cluster.is_empty() { "redirect" } else { cluster },
    )
}

/// A `DownstreamTlsContext` transport socket (indented for a filter chain).
pub fn server_tls(cert: &(std::path::PathBuf, std::path::PathBuf), alpn: &str, validation: &str) -> String {
    format!(
        r#"      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": {DOWNSTREAM_TLS}
{validation}          common_tls_context:
            alpn_protocols: [{alpn}]
            tls_certificates:
            - {{ certificate_chain: {{ filename: {} }}, private_key: {{ filename: {} }} }}
"#,
        cert.0.display(),
        cert.1.display()
    )
}

pub fn bootstrap(admin: u16, listeners: &str, clusters: &str) -> String {
    format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
{listeners}
  clusters:
{clusters}
"#
    )
}

/// Sends raw bytes and reads what comes back until the proxy closes (or 3 s pass).
pub struct MeshPki {
    pub dir: TempDir,
    pub ca: Ca,
    ca_path: std::path::PathBuf,
    pub client_leaf: Leaf,
    client_cert: (std::path::PathBuf, std::path::PathBuf),
    server_cert: (std::path::PathBuf, std::path::PathBuf),
}

impl MeshPki {
    pub fn new() -> MeshPki {
        let dir = TempDir::new("tls-mesh");
        let ca = Ca::new("cluster.local CA");
        let client_leaf = ca.issue("frontend", &[], &[CLIENT_ID]);
        let client_cert = client_leaf.write(&dir.0, "frontend");
        let server_cert = ca.issue("backend", &["backend.default.svc"], &[SERVER_ID]).write(&dir.0, "backend");
        let ca_path = ca.write(&dir.0, "ca");
        MeshPki { dir, ca, ca_path, client_leaf, client_cert, server_cert }
    }

    /// The server sidecar's `DownstreamTlsContext`: a client certificate required, from the
    /// default namespace.
    pub fn server_tls(&self) -> String {
        let mut tls = server_tls(&self.server_cert, "h2, http/1.1", "          require_client_certificate: true\n");
        tls.push_str(&format!(
            r#"            validation_context:
              trusted_ca: {{ filename: {} }}
              match_typed_subject_alt_names:
              - {{ san_type: URI, matcher: {{ prefix: "spiffe://cluster.local/ns/default/" }} }}
"#,
            self.ca_path.display()
        ));
        tls
    }

    /// The same context as Istio shapes it: the certificate and the trust bundle are named secrets
    /// (`static_resources.secrets` here, SDS in a mesh), the SAN matchers in a combined context.
    pub fn server_tls_from_secrets(&self) -> String {
        format!(
            r#"      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": {DOWNSTREAM_TLS}
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificate_sds_secret_configs: [{{ name: default }}]
            combined_validation_context:
              default_validation_context:
                match_typed_subject_alt_names:
                - {{ san_type: URI, matcher: {{ prefix: "spiffe://cluster.local/ns/default/" }} }}
              validation_context_sds_secret_config: {{ name: ROOTCA }}
"#
        )
    }

    /// `static_resources.secrets` for [`Self::server_tls_from_secrets`].
    pub fn secrets(&self) -> String {
        format!(
            r#"  secrets:
  - name: default
    tls_certificate:
      certificate_chain: {{ filename: {} }}
      private_key: {{ filename: {} }}
  - name: ROOTCA
    validation_context:
      trusted_ca: {{ filename: {} }}
"#,
            self.server_cert.0.display(),
            self.server_cert.1.display(),
            self.ca_path.display()
        )
    }

    /// The server sidecar: mTLS on `port` (STRICT; PERMISSIVE adds a plaintext chain, and takes its
    /// certificates from secrets), XFCC set for the app.
    pub fn inbound(&self, admin: u16, port: u16, app: SocketAddr, permissive: bool) -> String {
        self.inbound_with_filters(admin, port, app, permissive, "")
    }

    /// [`Self::inbound`] with HTTP filters ahead of the router.
    pub fn inbound_with_filters(
        &self,
        admin: u16,
        port: u16,
        app: SocketAddr,
        permissive: bool,
        http_filters: &str,
    ) -> String {
        let log = self.dir.0.join(format!("access-{port}.log"));
        let xfcc = format!(
            "          forward_client_cert_details: SANITIZE_SET\n          set_current_client_cert_details: {{ subject: true, uri: true, dns: true }}\n          access_log:\n          - name: log\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: {}\n              log_format: {{ text_format_source: {{ inline_string: \"%DOWNSTREAM_PEER_URI_SAN% %REQUESTED_SERVER_NAME% %DOWNSTREAM_TLS_VERSION% %RESPONSE_CODE%\\n\" }} }}\n",
            log.display()
        );
        let xfcc = xfcc.as_str();
        let mut chains = if permissive {
            chain_with_filters(
                "filter_chain_match: { transport_protocol: tls }",
                &self.server_tls_from_secrets(),
                xfcc,
                http_filters,
                "app",
            ) + &chain_with_filters(
                "filter_chain_match: { transport_protocol: raw_buffer }",
                "",
                xfcc,
                http_filters,
                "app",
            )
        } else {
            chain_with_filters("filter_chain_match: {}", &self.server_tls(), xfcc, http_filters, "app")
        };
        if permissive {
            chains = format!(
                "    listener_filters:\n    - {{ name: envoy.filters.listener.tls_inspector, typed_config: {{ \"@type\": {TLS_INSPECTOR} }} }}\n    filter_chains:\n{chains}"
            );
        } else {
            chains = format!("    filter_chains:\n{chains}");
        }
        let listener = format!(
            "  - name: inbound\n    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}\n{chains}"
        );
        let bootstrap = bootstrap(admin, &listener, &static_cluster("app", &[app], ""));
        if permissive { bootstrap + &self.secrets() } else { bootstrap }
    }

    /// A cluster's `UpstreamTlsContext`: our client certificate, the server's SPIFFE ID expected.
    /// TLS 1.3 is named as Istio names it: Envoy's client default stops at 1.2, and Strait speaks
    /// 1.2 only where a context allows it.
    pub fn upstream_tls(&self, expected_id: &str) -> String {
        format!(
            r#"    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": {UPSTREAM_TLS}
        sni: backend.default.svc
        common_tls_context:
          tls_params: {{ tls_maximum_protocol_version: TLSv1_3 }}
          tls_certificates:
          - {{ certificate_chain: {{ filename: {} }}, private_key: {{ filename: {} }} }}
          validation_context:
            trusted_ca: {{ filename: {} }}
            match_typed_subject_alt_names:
            - {{ san_type: URI, matcher: {{ exact: "{expected_id}" }} }}
"#,
            self.client_cert.0.display(),
            self.client_cert.1.display(),
            self.ca_path.display()
        )
    }

    /// The client sidecar: plaintext from the app on `port`, mTLS to `server`; `/impostor` goes to a
    /// cluster that expects another SPIFFE ID.
    pub fn outbound(&self, admin: u16, port: u16, server: SocketAddr) -> String {
        let listener = format!(
            "  - name: outbound\n    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}\n    filter_chains:\n{}",
            chain("filter_chain_match: {}", "", "", "backend").replace(
                "routes: [ { match: { prefix: / }, route: { cluster: backend } } ]",
                "routes: [ { match: { prefix: /impostor }, route: { cluster: impostor } }, { match: { prefix: / }, route: { cluster: backend } } ]"
            )
        );
        let clusters = static_cluster("backend", &[server], &self.upstream_tls(SERVER_ID))
            + &static_cluster("impostor", &[server], &self.upstream_tls("spiffe://cluster.local/ns/default/sa/other"));
        bootstrap(admin, &listener, &clusters)
    }

    /// What the app behind the server sidecar sees in `x-forwarded-client-cert` for the client.
    pub fn expected_xfcc(&self) -> String {
        format!(
            "By={SERVER_ID};Hash={};Subject=\"O=Strait tests,CN=frontend\";URI={CLIENT_ID}",
            self.client_leaf.sha256()
        )
    }
}

/// The first line of a file, once it is written.
pub async fn wait_for_line(path: &std::path::Path) -> String {
    for _ in 0..100 {
        if let Some(line) = std::fs::read_to_string(path).ok().and_then(|t| t.lines().next().map(str::to_string)) {
            return line;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("nothing logged in {}", path.display());
}

/// The `x-forwarded-client-cert` the echo app saw.
pub fn seen_xfcc(reply: &Reply) -> String {
    reply.json()["headers"]["x-forwarded-client-cert"].as_str().unwrap_or_default().to_string()
}
