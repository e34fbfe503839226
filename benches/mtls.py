#!/usr/bin/env python3
"""What mutual TLS between two sidecars costs, Strait and Envoy in one run.

A client sidecar (plaintext from wrk) sends to a server sidecar over mTLS (ECDSA P-256 certificates
with SPIFFE IDs, TLS 1.3, the peer's SPIFFE ID checked on both sides), which sends to the nginx
upstream. Both sidecars are pinned to core 0 with one worker each; wrk and nginx to core 1. Each
proxy runs the very same bootstraps. Reports, per proxy:
  - keep-alive: requests per sidecar-pair CPU-second (the mTLS connections pooled),
  - new connection per request (`max_requests_per_connection: 1` on the client's cluster): requests
    per pair CPU-second and TLS handshakes per server-sidecar CPU-second,
  - RSS of the server sidecar per 1,000 idle mTLS connections.

  python3 benches/mtls.py [--duration 8] [--only strait,envoy]
"""
import argparse
import os
import socket
import ssl
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402

CLIENT_ID = "spiffe://cluster.local/ns/bench/sa/client"
SERVER_ID = "spiffe://cluster.local/ns/bench/sa/server"


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(work):
    """A CA and two leaves (P-256) with URI SANs, made with the openssl CLI."""
    p = lambda name: os.path.join(work, name)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", p("ca.key"),
            "-out", p("ca.pem"), "-days", "2", "-subj", "/CN=bench CA")
    for name, uri in [("client", CLIENT_ID), ("server", SERVER_ID)]:
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", p(f"{name}.key"),
                "-out", p(f"{name}.csr"), "-subj", f"/CN={name}")
        ext = p(f"{name}.ext")
        open(ext, "w").write(f"subjectAltName=URI:{uri}\nextendedKeyUsage=serverAuth,clientAuth\n")
        openssl("x509", "-req", "-in", p(f"{name}.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"), "-CAcreateserial",
                "-out", p(f"{name}.pem"), "-days", "2", "-extfile", ext)
    return p


def hcm(cluster, extra=""):
    return f"""      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {cluster}
{extra}          route_config: {{ virtual_hosts: [{{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: {cluster} }} }}] }}] }}
          http_filters: [{{ name: envoy.filters.http.router, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }}]
"""


def server_bootstrap(p, admin, port, upstream):
    return f"""admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}
static_resources:
  listeners:
  - name: inbound
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificates: [{{ certificate_chain: {{ filename: {p("server.pem")} }}, private_key: {{ filename: {p("server.key")} }} }}]
            validation_context:
              trusted_ca: {{ filename: {p("ca.pem")} }}
              match_typed_subject_alt_names: [{{ san_type: URI, matcher: {{ exact: "{CLIENT_ID}" }} }}]
{hcm("app")}  clusters:
  - name: app
    load_assignment: {{ cluster_name: app, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream} }} }} }} }}] }}] }}
"""


def client_bootstrap(p, admin, port, server, new_connections):
    per_connection = ""
    if new_connections:
        per_connection = """    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        common_http_protocol_options: { max_requests_per_connection: 1 }
        explicit_http_config: { http_protocol_options: {} }
"""
    return f"""admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}
static_resources:
  listeners:
  - name: outbound
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - {hcm("server").lstrip()}  clusters:
  - name: server
{per_connection}    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          tls_params: {{ tls_maximum_protocol_version: TLSv1_3 }}
          tls_certificates: [{{ certificate_chain: {{ filename: {p("client.pem")} }}, private_key: {{ filename: {p("client.key")} }} }}]
          validation_context:
            trusted_ca: {{ filename: {p("ca.pem")} }}
            match_typed_subject_alt_names: [{{ san_type: URI, matcher: {{ exact: "{SERVER_ID}" }} }}]
    load_assignment: {{ cluster_name: server, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {server} }} }} }} }}] }}] }}
"""


def idle_mtls_connections(p, port, count=1000):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(p("ca.pem"))
    ctx.load_cert_chain(p("client.pem"), p("client.key"))
    return compare.idle_connections(None, count, lambda: ctx.wrap_socket(socket.create_connection(("127.0.0.1", port))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--only", default="strait,envoy")
    ap.add_argument("--strait", default=os.path.join(compare.ROOT, "target", "release", "strait-proxy"))
    args = ap.parse_args()
    wanted = args.only.split(",")
    work = tempfile.mkdtemp(prefix="strait-mtls-")
    os.chmod(work, 0o755)
    p = make_pki(work)
    ports = {k: compare.free_port() for k in ["UP_H1", "UP_H2"]}
    ports["DIR"] = work
    upstream = subprocess.Popen(compare.pinned(compare.LOAD_CORE, [
        "nginx", "-c", compare.render("upstream-nginx.conf", work, ports), "-p", work, "-g", "daemon off;"]),
        stderr=subprocess.DEVNULL)
    compare.wait_port(ports["UP_H1"])
    commands = {
        "strait": lambda config: [args.strait, "-c", config, "--concurrency", "1", "-l", "error"],
        "envoy": lambda config: ["envoy", "-c", config, "--concurrency", "1", "-l", "error",
                                 "--base-id", str(os.getpid() + compare.free_port())],
    }
    results = {}
    try:
        for name in [n for n in commands if n in wanted]:
            for mode in ["keep-alive", "new connection per request"]:
                server_port, client_port = compare.free_port(), compare.free_port()
                server_cfg = os.path.join(work, f"{name}-server.yaml")
                client_cfg = os.path.join(work, f"{name}-client.yaml")
                open(server_cfg, "w").write(server_bootstrap(p, compare.free_port(), server_port, ports["UP_H1"]))
                open(client_cfg, "w").write(client_bootstrap(p, compare.free_port(), client_port, server_port,
                                                             mode != "keep-alive"))
                server = compare.Target(f"{name}-server", commands[name](server_cfg), server_port, server_port, server_port)
                client = compare.Target(f"{name}-client", commands[name](client_cfg), client_port, client_port, client_port)
                server.start(work)
                client.start(work)
                try:
                    compare.run_load(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{client_port}/"])
                    before = (compare.cpu_seconds(client.pids()), compare.cpu_seconds(server.pids()))
                    r = compare.wrk(client, args.duration)
                    cpu_client = compare.cpu_seconds(client.pids()) - before[0]
                    cpu_server = compare.cpu_seconds(server.pids()) - before[1]
                    r["per_pair_cpu_s"] = r["requests"] / (cpu_client + cpu_server)
                    r["per_server_cpu_s"] = r["requests"] / cpu_server
                    if mode == "keep-alive":
                        base = compare.rss_mb(server.pids())
                        socks = idle_mtls_connections(p, server_port)
                        r["rss_per_1000"] = compare.rss_mb(server.pids()) - base
                        r["rss_idle"] = base
                        for s in socks:
                            s.close()
                    results[(name, mode)] = r
                    print(f"{name:6} {mode:27} {r['rps']:>9,.0f} req/s  {r['per_pair_cpu_s']:>8,.0f} req per pair CPU-s  "
                          f"{r['per_server_cpu_s']:>8,.0f} per server CPU-s  p99 {r['p99']} ms  errors {r['errors']}"
                          + (f"  server RSS {r['rss_idle']:.1f} MB + {r['rss_per_1000']:.1f} MB per 1,000 mTLS conns"
                             if "rss_per_1000" in r else ""), flush=True)
                finally:
                    client.stop()
                    server.stop()
    finally:
        # SIGTERM: nginx's master stops its workers too (after SIGKILL they would linger).
        upstream.terminate()
        upstream.wait()
    lines = ["", "| mTLS between two sidecars | strait | envoy | strait / envoy |", "|---|---|---|---|"]
    def row(label, mode, key, fmt="{:,.0f}"):
        s, e = results.get(("strait", mode), {}).get(key), results.get(("envoy", mode), {}).get(key)
        ratio = f"{s / e:.2f}x" if s and e else "-"
        lines.append(f"| {label} | {fmt.format(s) if s else '-'} | {fmt.format(e) if e else '-'} | {ratio} |")
    row("keep-alive: requests per sidecar-pair CPU-second", "keep-alive", "per_pair_cpu_s")
    row("new connection per request: requests per pair CPU-second", "new connection per request", "per_pair_cpu_s")
    row("handshakes per server-sidecar CPU-second", "new connection per request", "per_server_cpu_s")
    row("server sidecar RSS per 1,000 idle mTLS connections (MB)", "keep-alive", "rss_per_1000", "{:.1f}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
