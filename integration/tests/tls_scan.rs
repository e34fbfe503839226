//! `testssl.sh` (Debian's) against an edge gateway's TLS listener, configured as a user would for
//! browsers (TLS 1.2 allowed, HTTP/2 and HTTP/1.1 by ALPN): no weak protocol or cipher offered, the
//! server's cipher order enforced (Envoy's default), and no finding above LOW.

#[path = "../support/pki.rs"]
mod pki;
#[path = "../support/mod.rs"]
mod support;

use std::process::Command;
use support::*;

#[tokio::test]
async fn testssl_finds_nothing_above_low_on_the_gateway() {
    let Some(testssl) = require_tool("testssl") else { return };
    let dir = TempDir::new("testssl");
    let ca = pki::Ca::new("Strait scan CA");
    // testssl also judges the certificate (the operator's): a public-facing one names its revocation list.
    let leaf = ca.issue_with_crl("localhost", &["localhost", "127.0.0.1"], "http://crl.example.com/ca.crl");
    let (cert, key) = leaf.write(&dir.0, "gateway");
    let ca_path = ca.write(&dir.0, "ca");
    let (admin, port) = (free_port(), free_port());
    let app = echo("app").await;
    let yaml = format!(
        r#"
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}
static_resources:
  listeners:
  - name: gateway
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_params: {{ tls_minimum_protocol_version: TLSv1_2 }}
            tls_certificates:
            - {{ certificate_chain: {{ filename: {} }}, private_key: {{ filename: {} }} }}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: gateway
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{ match: {{ prefix: / }}, route: {{ cluster: app }} }}]
              response_headers_to_add:
              - header: {{ key: strict-transport-security, value: "max-age=31536000" }}
          http_filters:
          - {{ name: envoy.filters.http.router, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }}
  clusters:
{}"#,
        cert.display(),
        key.display(),
        static_cluster("app", &[app], "")
    );
    let _proxy = Proxy::start(&yaml, admin).await;
    let report = dir.0.join("testssl.json");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(testssl)
            .args(["--quiet", "--color", "0", "--warnings", "off", "--nodns", "none", "--add-ca"])
            .arg(&ca_path)
            .arg("--jsonfile")
            .arg(&report)
            .arg(format!("127.0.0.1:{port}"))
            .output()
            .map(|o| (o, std::fs::read_to_string(&report)))
    })
    .await
    .unwrap()
    .expect("run testssl");
    let (output, report) = out;
    let report = report.unwrap_or_else(|e| panic!("no report ({e}): {}", String::from_utf8_lossy(&output.stdout)));
    let findings: Vec<serde_json::Value> = serde_json::from_str(&report).expect("testssl JSON");
    let serious: Vec<String> = findings
        .iter()
        .filter(|f| matches!(f["severity"].as_str(), Some("MEDIUM" | "HIGH" | "CRITICAL")))
        .map(|f| format!("{} [{}]: {}", f["id"], f["severity"], f["finding"]))
        .collect();
    let offered = |id: &str| {
        findings.iter().find(|f| f["id"] == id).and_then(|f| f["finding"].as_str()).unwrap_or("?").to_string()
    };
    println!(
        "testssl: {} findings; TLS1.3 {}, TLS1.2 {}, TLS1.1 {}",
        findings.len(),
        offered("TLS1_3"),
        offered("TLS1_2"),
        offered("TLS1_1")
    );
    let low: Vec<String> =
        findings.iter().filter(|f| f["severity"] == "LOW").map(|f| format!("{}: {}", f["id"], f["finding"])).collect();
    println!("testssl LOW findings:\n{}", low.join("\n"));
    assert!(findings.len() > 20, "testssl ran its checks: {}", String::from_utf8_lossy(&output.stdout));
    assert!(serious.is_empty(), "findings above LOW:\n{}", serious.join("\n"));
    for weak in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        assert!(offered(weak).starts_with("not offered"), "{weak}: {}", offered(weak));
    }
}
