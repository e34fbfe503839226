//! Bad input: every file in `integration/bad-configs/` is rejected with a message naming the field,
//! unsupported fields warn (or fail with `--strict`), and malformed requests get 400/431 with the
//! connection closed while everything else keeps serving.

#[path = "../support/mod.rs"]
mod support;

use std::process::Command;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[test]
fn every_broken_config_is_rejected_naming_the_field() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../integration/bad-configs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text.lines().next().and_then(|l| l.strip_prefix("# expect: ")).expect("first line: # expect: ...");
        let out = Command::new(BIN).arg("validate").arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", path.display());
        assert!(stderr.contains(expect), "{}:\nexpected: {expect}\ngot: {stderr}", path.display());
        // Starting the proxy on it fails the same way, before anything is bound.
        let out = Command::new(BIN).arg("-c").arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", path.display());
        assert!(String::from_utf8_lossy(&out.stderr).contains(expect), "{}", path.display());
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} broken configs");
}

const UNSUPPORTED: &str = r#"
static_resources:
  clusters:
  - name: c
    metadata: { filter_metadata: { team: { owner: payments } } }
    load_assignment:
      cluster_name: c
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 9 } } } }] }]
"#;

#[test]
fn unsupported_fields_warn_or_fail_in_strict_mode() {
    let dir = TempDir::new("strict");
    let path = write_file(&dir.0, "b.yaml", UNSUPPORTED);
    let lenient = Command::new(BIN).arg("validate").arg(&path).output().unwrap();
    assert!(lenient.status.success());
    let warning = String::from_utf8_lossy(&lenient.stderr);
    assert!(warning.contains("static_resources.clusters[0].metadata"), "{warning}");
    assert!(warning.contains("not supported"), "{warning}");
    let strict = Command::new(BIN).args(["validate", "--strict"]).arg(&path).output().unwrap();
    assert_eq!(strict.status.code(), Some(1));
    let err = String::from_utf8_lossy(&strict.stderr);
    assert!(err.contains("static_resources.clusters[0].metadata: is not supported by Strait (--strict)"), "{err}");
}

/// Sends raw bytes and returns everything the proxy answers until it closes the connection.
async fn raw_exchange(port: u16, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the connection was not closed after {:?}", String::from_utf8_lossy(bytes));
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_and_nothing_else_is_affected() {
    let a = echo("a").await;
    let (admin, port) = (free_port(), free_port());
    let routes = "            virtual_hosts: [{ name: v, domains: [\"*\"], routes: [{ match: { prefix: / }, route: { cluster: a } }] }]";
    let hcm = "          max_request_headers_kb: 8\n";
    let _proxy = Proxy::start(&http_bootstrap(admin, port, hcm, routes, &static_cluster("a", &[a], "")), admin).await;
    // A healthy keep-alive connection opened before the bad ones must keep working.
    let client = http1_client();
    assert_eq!(get(&client, &format!("http://127.0.0.1:{port}/"), &[]).await.status, 200);

    let cases: &[(&str, &[u8], &str)] = &[
        ("bad request line", b"GET\r\n\r\n", "HTTP/1.1 400"),
        ("bad version", b"GET / HTTP/9.9\r\nhost: a\r\n\r\n", "HTTP/1.1 400"),
        (
            "conflicting content-lengths",
            b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\nabcde",
            "HTTP/1.1 400",
        ),
        ("obs-fold", b"GET / HTTP/1.1\r\nhost: a\r\nx-folded: one\r\n two\r\n\r\n", "HTTP/1.1 400"),
        ("bad header name", b"GET / HTTP/1.1\r\nhost: a\r\nbad header: x\r\n\r\n", "HTTP/1.1 400"),
        ("bad chunk size", b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\nZZ\r\n", ""),
        ("invalid HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n\x00\x00\x00\x09\x00\x00\x00\x00\x00", ""),
    ];
    for (what, bytes, expect) in cases {
        let answer = raw_exchange(port, bytes).await;
        assert!(answer.starts_with(expect), "{what}: got {answer:?}");
    }
    // Content-Length with Transfer-Encoding: RFC 9112 6.3 lets a server reject it or let
    // Transfer-Encoding win and close the connection. Strait does the latter, so no smuggled second
    // request can follow on that connection and the upstream never sees both headers.
    let answer = raw_exchange(
        port,
        b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: a\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("connection: close"), "CL+TE: {answer:?}");
    assert!(!answer.contains("content-length\":") && !answer.contains("/smuggled"), "CL+TE: {answer:?}");
    let big = format!("GET / HTTP/1.1\r\nhost: a\r\nx-big: {}\r\n\r\n", "a".repeat(16 * 1024));
    let answer = raw_exchange(port, big.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "oversize headers: {answer:?}");
    // A request without a host: 400.
    let answer = raw_exchange(port, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 400") || answer.starts_with("HTTP/1.1 400"), "no host: {answer:?}");

    // The earlier keep-alive connection and new ones still work.
    assert_eq!(get(&client, &format!("http://127.0.0.1:{port}/"), &[]).await.service(), "a");
    assert_eq!(get(&http1_client(), &format!("http://127.0.0.1:{port}/"), &[]).await.service(), "a");
}
