//! Two "pods" as network namespaces, each an app with its Strait sidecar, talking through their
//! sidecars over a veth link: the client app calls its sidecar on loopback, the sidecar goes to the
//! other pod's sidecar over mTLS (STRICT), which hands the request to its app on loopback. The app
//! sees the caller's SPIFFE ID; a capture of the link shows TLS and none of the request in clear; a
//! plaintext client on the wire port gets nothing; authorization allows the frontend's `/api/` and
//! denies `/admin` and other identities; both sidecars' certificates are rotated (files replaced,
//! `--watch`) under load with no request failing; an expired certificate is refused with a log line
//! saying so. Needs root, `ip`, `tcpdump`, `curl`, `openssl` (CI has them).

#[path = "../support/pki.rs"]
mod pki;
#[path = "../support/mod.rs"]
mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const SERVER_ID: &str = "spiffe://cluster.local/ns/shop/sa/backend";
/// The server pod's address on the link.
const SERVER_IP: &str = "10.213.0.2";

/// A network namespace, deleted on drop.
struct Pod(String);

impl Pod {
    fn new(name: &str) -> Pod {
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        run(&["ip", "netns", "add", name]);
        run(&["ip", "-n", name, "link", "set", "lo", "up"]);
        Pod(name.to_string())
    }

    /// A command run inside the pod.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(args: &[&str]) {
    let status = Command::new(args[0]).args(&args[1..]).status().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(status.success(), "{args:?} failed");
}

/// A child process killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An app that answers every request with its request headers as JSON.
const ECHO_APP: &str = r#"
import http.server, json
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", 8080), H).serve_forever()
"#;

fn bootstrap(admin: u16, listener: &str, cluster: &str) -> String {
    format!(
        "admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}\nstatic_resources:\n  listeners:\n{listener}  clusters:\n{cluster}"
    )
}

fn hcm(cluster: &str, extra: &str) -> String {
    hcm_with_filters(cluster, extra, "")
}

/// [`hcm`] with HTTP filters (flow-style list items, comma-separated) before the router.
fn hcm_with_filters(cluster: &str, extra: &str, filters: &str) -> String {
    format!(
        r#"      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {cluster}
{extra}          route_config: {{ virtual_hosts: [{{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: {cluster} }} }}] }}] }}
          http_filters: [{filters}{{ name: envoy.filters.http.router, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }}]
"#
    )
}

/// RBAC on the server: nobody reaches `/admin`; only the frontend reaches anything else.
fn authorization() -> String {
    let rbac = "\"@type\": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
    format!(
        "{{ name: deny, typed_config: {{ {rbac}, rules: {{ action: DENY, policies: {{ admin: {{ permissions: [{{ url_path: {{ path: {{ prefix: /admin }} }} }}], principals: [{{ any: true }}] }} }} }} }} }}, \
         {{ name: allow, typed_config: {{ {rbac}, rules: {{ action: ALLOW, policies: {{ frontend: {{ permissions: [{{ any: true }}], principals: [{{ authenticated: {{ principal_name: {{ exact: \"{CLIENT_ID}\" }} }} }}] }} }} }} }} }}, "
    )
}

/// Runs `strait-proxy` in a pod (`--watch`: replaced certificate files are taken up), its log in
/// `log`, and waits for its admin `/ready` (polled from inside the pod).
fn sidecar(pod: &Pod, config: &std::path::Path, admin: u16, log: &std::path::Path) -> Running {
    let log = std::fs::File::create(log).unwrap();
    let child = pod
        .command(BIN)
        .arg("-c")
        .arg(config)
        .args(["-l", "info", "--watch"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let running = Running(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = pod
            .command("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://127.0.0.1:{admin}/ready")])
            .output()
            .unwrap();
        if ready.stdout == b"200" {
            return running;
        }
        assert!(Instant::now() < deadline, "the sidecar in {} did not become ready", pod.0);
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_pods_talk_through_their_sidecars_over_mutual_tls() {
    let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if !is_root {
        assert!(!in_ci(), "CI=true: this test needs root (network namespaces)");
        eprintln!("\n*** SKIPPING: network namespaces need root; this test runs in CI ***\n");
        return;
    }
    let (Some(_), Some(_), Some(_)) = (require_tool("ip"), require_tool("tcpdump"), require_tool("curl")) else {
        return;
    };
    let dir = TempDir::new("pods");
    let ca = pki::Ca::new("cluster.local CA");
    let ca_path = ca.write(&dir.0, "ca");
    let (client_cert, client_key) = ca.issue("frontend", &[], &[CLIENT_ID]).write(&dir.0, "frontend");
    let (server_cert, server_key) = ca.issue("backend", &[], &[SERVER_ID]).write(&dir.0, "backend");
    let other = ca.issue("other", &[], &["spiffe://cluster.local/ns/shop/sa/other"]).write(&dir.0, "other");
    let expired = ca.issue_expired("frontend", &[CLIENT_ID]).write(&dir.0, "expired");

    let tag = std::process::id() % 100_000;
    let (client_pod, server_pod) = (Pod::new(&format!("strait-a-{tag}")), Pod::new(&format!("strait-b-{tag}")));
    let (veth_a, veth_b) = (format!("sa{tag}"), format!("sb{tag}"));
    run(&["ip", "link", "add", &veth_a, "type", "veth", "peer", "name", &veth_b]);
    run(&["ip", "link", "set", &veth_a, "netns", &client_pod.0]);
    run(&["ip", "link", "set", &veth_b, "netns", &server_pod.0]);
    run(&["ip", "-n", &client_pod.0, "addr", "add", "10.213.0.1/24", "dev", &veth_a]);
    run(&["ip", "-n", &server_pod.0, "addr", "add", &format!("{SERVER_IP}/24"), "dev", &veth_b]);
    run(&["ip", "-n", &client_pod.0, "link", "set", &veth_a, "up"]);
    run(&["ip", "-n", &server_pod.0, "link", "set", &veth_b, "up"]);

    // The server pod: its app on loopback, its sidecar STRICT on the link.
    let _app = Running(server_pod.command("python3").args(["-c", ECHO_APP]).spawn().unwrap());
    let inbound_tls = format!(
        r#"      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificates: [{{ certificate_chain: {{ filename: {} }}, private_key: {{ filename: {} }} }}]
            validation_context:
              trusted_ca: {{ filename: {} }}
              match_typed_subject_alt_names: [{{ san_type: URI, matcher: {{ prefix: "spiffe://cluster.local/ns/shop/" }} }}]
"#,
        server_cert.display(),
        server_key.display(),
        ca_path.display()
    );
    let xfcc = "          forward_client_cert_details: SANITIZE_SET\n          set_current_client_cert_details: { uri: true }\n";
    let inbound = format!(
        "  - name: inbound\n    address: {{ socket_address: {{ address: {SERVER_IP}, port_value: 15006 }} }}\n    filter_chains:\n    - filter_chain_match: {{}}\n{inbound_tls}{}",
        hcm_with_filters("app", xfcc, &authorization())
    );
    let app_cluster = "  - name: app\n    load_assignment: { cluster_name: app, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 8080 } } } }] }] }\n";
    let server_config = write_file(&dir.0, "server.yaml", &bootstrap(15000, &inbound, app_cluster));
    let server_log = dir.0.join("server.log");
    let _server = sidecar(&server_pod, &server_config, 15000, &server_log);

    // The client pod: its sidecar on loopback, mTLS to the server pod's sidecar.
    let outbound = format!(
        "  - name: outbound\n    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 15001 }} }}\n    filter_chains:\n    - filter_chain_match: {{}}\n{}",
        hcm("backend", "")
    );
    let backend = format!(
        r#"  - name: backend
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          tls_certificates: [{{ certificate_chain: {{ filename: {} }}, private_key: {{ filename: {} }} }}]
          validation_context:
            trusted_ca: {{ filename: {} }}
            match_typed_subject_alt_names: [{{ san_type: URI, matcher: {{ exact: "{SERVER_ID}" }} }}]
    load_assignment: {{ cluster_name: backend, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: {SERVER_IP}, port_value: 15006 }} }} }} }}] }}] }}
"#,
        client_cert.display(),
        client_key.display(),
        ca_path.display()
    );
    let client_config = write_file(&dir.0, "client.yaml", &bootstrap(15000, &outbound, &backend));
    let _client = sidecar(&client_pod, &client_config, 15000, &dir.0.join("client.log"));

    // Capture the link while the app calls.
    let capture_file = dir.0.join("link.pcap");
    let mut capture = Running(
        server_pod
            .command("tcpdump")
            // Immediate mode: packets are not held in the kernel's ring until a block fills.
            .args(["-i", &veth_b, "--immediate-mode", "-U", "-Z", "root", "-w"])
            .arg(&capture_file)
            .args(["tcp", "port", "15006"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // tcpdump says "listening on ..." once it captures.
    let mut said = String::new();
    let stderr = capture.0.stderr.take().unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stderr), &mut said).unwrap();
    assert!(said.contains("listening"), "tcpdump: {said}");
    let call = client_pod
        .command("curl")
        .args(["-s", "-w", "\n%{http_code}", "-H", "x-secret-marker: do-not-leak", "http://127.0.0.1:15001/orders/42"])
        .output()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // SIGTERM, so tcpdump closes its file cleanly.
    let _ = Command::new("kill").arg(capture.0.id().to_string()).status();
    let _ = capture.0.wait();
    drop(capture);
    let answer = String::from_utf8_lossy(&call.stdout);
    let (body, status) = answer.rsplit_once('\n').unwrap_or(("", ""));
    assert_eq!(status, "200", "the app answered through both sidecars: {answer}");
    let headers: serde_json::Value = serde_json::from_str(body).unwrap();
    let xfcc = headers["x-forwarded-client-cert"].as_str().unwrap_or_default();
    assert!(xfcc.ends_with(&format!("URI={CLIENT_ID}")), "the server's app sees who called: {xfcc}");
    assert_eq!(headers["x-secret-marker"], "do-not-leak");

    let wire = std::fs::read(&capture_file).unwrap();
    let contains = |needle: &[u8]| wire.windows(needle.len()).any(|w| w == needle);
    assert!(wire.len() > 500, "the capture saw the exchange ({} bytes)", wire.len());
    assert!(!contains(b"do-not-leak") && !contains(b"/orders/42"), "nothing of the request in clear on the wire");
    assert!(contains(&[0x16, 0x03]), "a TLS handshake record on the wire");

    // STRICT: plaintext to the wire port gets no HTTP answer.
    let plain = client_pod
        .command("curl")
        .args(["-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://{SERVER_IP}:15006/")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&plain.stdout), "000", "plaintext refused");

    // Authorization by principal and path.
    let via_sidecar = |path: &str| {
        let out = client_pod
            .command("curl")
            .args(["-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://127.0.0.1:15001{path}")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(via_sidecar("/api/items"), "200");
    assert_eq!(via_sidecar("/admin/users"), "403", "nobody reaches /admin");
    let client_pair = (client_cert.clone(), client_key.clone());
    assert_eq!(direct_status(&client_pod, &ca_path, &client_pair, "/api/items"), "200", "the frontend's own mTLS");
    assert_eq!(direct_status(&client_pod, &ca_path, &other, "/api/items"), "403", "another identity is denied");

    // An expired certificate: refused, and the log says why.
    assert_eq!(direct_status(&client_pod, &ca_path, &expired, "/api/items"), "000");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(&server_log).unwrap_or_default();
        if log.contains("TLS handshake refused") && log.contains("expired") {
            break;
        }
        assert!(Instant::now() < deadline, "no log line for the expired certificate:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Rotation under load: both sidecars' certificate files are replaced while the client app
    // sends requests back to back; none fails, and new connections get the new certificates.
    let before = served_serial(&client_pod, &client_pair);
    assert!(before.starts_with("serial="), "openssl reads the served certificate: {before}");
    let load = client_pod
        .command("bash")
        .arg("-c")
        .arg(
            "end=$((SECONDS+5)); ok=0; failed=0; while [ $SECONDS -lt $end ]; do \
             code=$(curl -s -m 5 -o /dev/null -w '%{http_code}' http://127.0.0.1:15001/api/items); \
             if [ \"$code\" = 200 ]; then ok=$((ok+1)); else failed=$((failed+1)); fi; done; echo $ok $failed",
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let new_server = ca.issue("backend", &[], &[SERVER_ID]);
    write_file(&dir.0, "backend.key", &new_server.key_pem);
    write_file(&dir.0, "backend.crt", &new_server.cert_pem);
    let new_client = ca.issue("frontend", &[], &[CLIENT_ID]);
    write_file(&dir.0, "frontend.key", &new_client.key_pem);
    write_file(&dir.0, "frontend.crt", &new_client.cert_pem);
    let counts = String::from_utf8_lossy(&load.wait_with_output().unwrap().stdout).trim().to_string();
    let (ok, failed) = counts.split_once(' ').unwrap_or(("0", "?"));
    println!("rotation under load between the pods: {ok} requests, {failed} failed");
    assert!(ok.parse::<u32>().unwrap_or(0) > 20, "the load ran: {counts}");
    assert_eq!(failed, "0", "no request failed across the rotation");
    let after = served_serial(&client_pod, &client_pair);
    assert_ne!(after, before, "new connections get the new server certificate");
    let reload_log = std::fs::read_to_string(dir.0.join("client.log")).unwrap_or_default();
    assert!(reload_log.contains("certificate file changed"), "the client sidecar reloaded its certificate");
}

/// What a client certificate gets from the server sidecar directly (curl with mTLS from the client
/// pod): the HTTP status, or "000" when the handshake is refused.
fn direct_status(
    pod: &Pod,
    ca: &std::path::Path,
    cert: &(std::path::PathBuf, std::path::PathBuf),
    path: &str,
) -> String {
    let out = pod
        .command("curl")
        .args(["-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", "-k", "--cacert"])
        .arg(ca)
        .arg("--cert")
        .arg(&cert.0)
        .arg("--key")
        .arg(&cert.1)
        .arg(format!("https://{SERVER_IP}:15006{path}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The serial number of the certificate the server sidecar presents to a new connection.
fn served_serial(pod: &Pod, cert: &(std::path::PathBuf, std::path::PathBuf)) -> String {
    let out = pod
        .command("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {SERVER_IP}:15006 -cert {} -key {} </dev/null 2>/dev/null | openssl x509 -noout -serial",
            cert.0.display(),
            cert.1.display()
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
