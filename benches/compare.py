#!/usr/bin/env python3
"""Strait against a direct connection, Envoy, nginx and HAProxy, in one run on this machine, and
on HTTP/1.1 and HTTP/2 against the floor of any proxy built as it is (hyper-floor: hyper and tokio,
forwarding and nothing else).

Each proxy is pinned to core 0 with one worker; the load generator and the upstream (nginx) share
core 1. Every proxy runs the equivalent config (Strait and Envoy the very same Envoy bootstrap).
Reports requests/s, p50/p99 latency, proxy CPU microseconds per request, requests per proxy
CPU-second and RSS, then Strait's ratios to each peer. Absolute numbers on a shared 2-core machine
are noise; the ratios from one run are the result. Latency at a fixed rate is measured last, in
rounds with the targets taking turns, and the median round reported.

  python3 benches/compare.py [--duration 10] [--latency-rounds 3] [--only strait,envoy] [--out bench-results]
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PROXY_CORE, LOAD_CORE = "0", "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render(name, out_dir, ports):
    text = open(os.path.join(HERE, "peers", name)).read()
    for key, value in ports.items():
        text = text.replace("{" + key + "}", str(value))
    path = os.path.join(out_dir, name)
    open(path, "w").write(text)
    return path


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def tree(pid):
    """pid and all its descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, IndexError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_times(pids):
    """The user and the kernel CPU seconds the processes have used so far."""
    user = kernel = 0.0
    for p in pids:
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            user += int(fields[11]) / CLK_TCK
            kernel += int(fields[12]) / CLK_TCK
        except OSError:
            pass
    return user, kernel


def cpu_seconds(pids):
    return sum(cpu_times(pids))


def rss_mb(pids):
    total = 0
    for p in pids:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def pinned(core, cmd):
    return ["taskset", "-c", core] + cmd


class Target:
    def __init__(self, name, cmd, http, http2, tcp, ready_port=None):
        self.name, self.cmd, self.http, self.http2, self.tcp = name, cmd, http, http2, tcp
        self.ready_port = ready_port or http
        self.proc = None

    def start(self, log_dir):
        if self.cmd:
            log = open(os.path.join(log_dir, f"{self.name}.log"), "w")
            self.proc = subprocess.Popen(pinned(PROXY_CORE, self.cmd), stdout=log, stderr=subprocess.STDOUT)
            wait_port(self.ready_port)
            wait_port(self.http)
            time.sleep(0.5)

    def pids(self):
        return tree(self.proc.pid) if self.proc else []

    def stop(self):
        if self.proc:
            for p in reversed(self.pids()):
                try:
                    os.kill(p, 9)
                except OSError:
                    pass
            self.proc.wait()


def run_load(cmd):
    return subprocess.run(pinned(LOAD_CORE, cmd), capture_output=True, text=True, check=False).stdout


def requests_in(wrk_output):
    return int(re.search(r"(\d+) requests in", wrk_output).group(1))


def wrk(target, duration):
    out = run_load(["wrk", "-t1", "-c50", f"-d{duration}s", "--latency", f"http://127.0.0.1:{target.http}/"])
    requests = requests_in(out)
    errors = sum(int(x) for x in re.findall(r"(?:Non-2xx or 3xx responses|errors): .*?(\d+)", out))
    lat = dict(re.findall(r"\s+(50|99)%\s+([\d.]+\w+)", out))
    return {"requests": requests, "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": to_ms(lat.get("50")), "p99": to_ms(lat.get("99")), "errors": errors}


def to_ms(text):
    if not text:
        return None
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def h2load(target, duration, extra, path="/", port=None, log_dir=None):
    log = os.path.join(log_dir, "h2load.log")
    if os.path.exists(log):
        os.remove(log)
    port = port or target.http2
    out = run_load(["h2load", "-t1", f"-D{duration}", f"--log-file={log}"] + extra + [f"http://127.0.0.1:{port}{path}"])
    m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    if not m:
        raise RuntimeError(f"h2load failed against {target.name}:\n{out}")
    done, ok = int(m.group(2)), int(m.group(3))
    statuses = re.search(r"status codes: (\d+) 2xx", out)
    ok_2xx = int(statuses.group(1)) if statuses else 0
    times = sorted(int(line.split("\t")[2]) for line in open(log) if line.count("\t") >= 2)
    pct = lambda q: times[min(len(times) - 1, int(q * len(times)))] / 1000 if times else None
    return {"requests": done, "rps": done / duration, "p50": pct(0.50), "p99": pct(0.99),
            "errors": done - min(ok, ok_2xx)}


def tcp_stream(target, size_mb):
    out = run_load(["curl", "-s", "-o", "/dev/null", "-w", "%{speed_download} %{size_download}",
                    f"http://127.0.0.1:{target.tcp}/big"])
    speed, size = out.split()
    return {"requests": 1, "rps": None, "mb_per_s": float(speed) / 1e6, "bytes": int(size), "p50": None, "p99": None, "errors": 0}


def idle_connections(target, count=1000, connect=None, one_by_one=False):
    """`count` keep-alive connections that each made one request, then sat idle a moment: all
    requests in flight together (a burst), or each answered before the next connection opens."""
    connect = connect or (lambda: socket.create_connection(("127.0.0.1", target.http)))

    def answered(s):
        s.settimeout(10)
        data = b""
        while b"hello from upstream!" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk

    socks = []
    for _ in range(count):
        s = connect()
        s.sendall(b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n")
        if one_by_one:
            answered(s)
        socks.append(s)
    if not one_by_one:
        for s in socks:
            answered(s)
    time.sleep(2)  # idle connections: measured once they have sat idle a moment
    return socks


def fresh_rss_with_idle_connections(target, work, one_by_one):
    """RSS of a freshly started target (one request served) holding 1,000 idle keep-alive
    connections, so that what the load tests left behind does not count."""
    target.stop()
    target.start(work)
    run_load(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{target.http}/"])
    socks = idle_connections(target, one_by_one=one_by_one)
    rss = rss_mb(target.pids())
    for s in socks:
        s.close()
    return rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rate", type=int, default=5000, help="offered rate (req/s) for the fixed-rate latency test")
    ap.add_argument("--latency-rounds", type=int, default=3,
                    help="fixed-rate rounds per target, alternating between targets; the median round is reported")
    ap.add_argument("--only", default="direct,hyper-floor,strait,envoy,nginx,haproxy")
    ap.add_argument("--strait", default=os.path.join(ROOT, "target", "release", "strait-proxy"))
    ap.add_argument("--floor", default=os.path.join(ROOT, "target", "release", "hyper-floor"),
                    help="the bare hyper proxy (benches/src/bin/hyper_floor.rs): keep-alive, HTTP/2 and fixed-rate tests")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-results"))
    args = ap.parse_args()
    wanted = args.only.split(",")
    for tool in ["wrk", "h2load", "nginx", "curl", "taskset"] + [t for t in ("envoy", "haproxy") if t in wanted]:
        if not shutil.which(tool):
            sys.exit(f"missing tool: {tool} (see benches/run)")
    if "strait" in wanted and not os.path.exists(args.strait):
        sys.exit(f"build Strait first: cargo build --release -p strait-proxy ({args.strait} not found)")
    if "hyper-floor" in wanted and not os.path.exists(args.floor):
        sys.exit(f"build the floor first: cargo build --release -p strait-benches --bin hyper-floor ({args.floor} not found)")

    work = tempfile.mkdtemp(prefix="strait-bench-")
    os.chmod(work, 0o755)  # nginx workers run as nobody and serve /big from here
    ports = {k: free_port() for k in ["UP_H1", "UP_H2", "HTTP", "HTTP2", "TCP", "ADMIN"]}
    ports["DIR"] = work
    with open(os.path.join(work, "big"), "wb") as f:
        f.truncate(1 << 30)
    grpc_body = os.path.join(work, "grpc.bin")
    open(grpc_body, "wb").write(b"\x00\x00\x00\x00\x14" + b"x" * 20)

    upstream = subprocess.Popen(pinned(LOAD_CORE, ["nginx", "-c", render("upstream-nginx.conf", work, ports), "-p", work,
                                                   "-g", "daemon off;"]), stderr=subprocess.DEVNULL)
    wait_port(ports["UP_H1"])
    bootstrap = render("bootstrap.yaml", work, ports)
    targets = {
        "direct": Target("direct", None, ports["UP_H1"], ports["UP_H2"], ports["UP_H1"]),
        "hyper-floor": Target("hyper-floor", [args.floor, f"127.0.0.1:{ports['HTTP']}", f"127.0.0.1:{ports['UP_H1']}"],
                              ports["HTTP"], ports["HTTP"], None),
        "strait": Target("strait", [args.strait, "-c", bootstrap, "--concurrency", "1", "-l", "error"],
                         ports["HTTP"], ports["HTTP"], ports["TCP"]),
        "envoy": Target("envoy", ["envoy", "-c", bootstrap, "--concurrency", "1", "-l", "error", "--base-id",
                                  str(os.getpid())], ports["HTTP"], ports["HTTP"], ports["TCP"]),
        "nginx": Target("nginx", ["nginx", "-c", render("proxy-nginx.conf", work, ports), "-p", work, "-g", "daemon off;"],
                        ports["HTTP"], ports["HTTP2"], ports["TCP"]),
        "haproxy": Target("haproxy", ["haproxy", "-f", render("haproxy.cfg", work, ports), "-db"],
                          ports["HTTP"], ports["HTTP2"], ports["TCP"]),
    }
    tests = [
        ("http1 keep-alive (wrk, 50 conns)", lambda t: wrk(t, args.duration)),
        ("http2 (h2load, 50 conns x 10 streams)", lambda t: h2load(t, args.duration, ["-c50", "-m10"], log_dir=work)),
        ("grpc unary (h2load, 50 conns x 10 streams)", lambda t: h2load(
            t, args.duration, ["-c50", "-m10", "-d", grpc_body, "-H", "content-type: application/grpc", "-H", "te: trailers"],
            path="/bench.Echo/Unary", log_dir=work)),
        ("tcp stream (1 GiB download)", lambda t: tcp_stream(t, 1024)),
    ]
    # Latency at a fixed rate swings from one run to the next more than between the proxies, so it
    # is measured in rounds after the rest, the targets taking turns, and the median round counts.
    fixed_label = f"http1 at a fixed {args.rate} req/s (h2load --h1)"
    fixed_rate = lambda t: h2load(t, args.duration, ["--h1", "-c50", f"--rps={max(1, args.rate // 50)}"],
                                  port=t.http, log_dir=work)
    labels = [label for label, _ in tests]
    labels.insert(3, fixed_label)
    results = {}
    try:
        for name in [n for n in ["direct", "hyper-floor", "strait", "envoy", "nginx", "haproxy"] if n in wanted]:
            t = targets[name]
            try:
                t.start(work)
            except RuntimeError as e:
                print(f"{name}: did not start ({e}); see its log in {work}", flush=True)
                t.stop()
                continue
            row = {}
            if name == "hyper-floor":
                # What a bare hyper proxy costs, on plain HTTP/1.1 and HTTP/2 (it has no gRPC or TCP).
                for label, fn in tests[:2]:
                    row[label] = measured(t, fn)
                    print(f"{name:8} {label}: {fmt_row(row[label])}", flush=True)
                results[name] = row
                t.stop()
                continue
            if t.proc:
                # Idle RSS after one request has warmed up the path.
                run_load(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{t.http}/"])
                time.sleep(0.3)
                row["rss_idle_mb"] = rss_mb(t.pids())
            for label, fn in tests:
                row[label] = measured(t, fn)
                print(f"{name:8} {label}: {fmt_row(row[label])}", flush=True)
            if t.proc:
                row["rss_1000_conns_in_turn_mb"] = fresh_rss_with_idle_connections(t, work, one_by_one=True)
                row["rss_1000_conns_burst_mb"] = fresh_rss_with_idle_connections(t, work, one_by_one=False)
                print(f"{name:8} memory: idle {fmt(row['rss_idle_mb'], ' MB')}, 1,000 idle conns opened in turn "
                      f"{fmt(row['rss_1000_conns_in_turn_mb'], ' MB')}, after a burst of 1,000 "
                      f"{fmt(row['rss_1000_conns_burst_mb'], ' MB')}", flush=True)
            results[name] = row
            t.stop()
        started = list(results)
        for round_number in range(args.latency_rounds):
            for name in started if round_number % 2 == 0 else started[::-1]:
                t = targets[name]
                t.start(work)
                warm_up(t)
                r = measured(t, fixed_rate)
                t.stop()
                results[name].setdefault("fixed_rate_rounds", []).append(r)
                print(f"{name:8} {fixed_label}, round {round_number + 1}: {fmt_row(r)}", flush=True)
        for row in results.values():
            rounds = sorted(row.get("fixed_rate_rounds", []), key=lambda r: r["p99"] or 0)
            if rounds:
                row[fixed_label] = dict(rounds[len(rounds) // 2], p99_rounds=[r["p99"] for r in rounds])
    finally:
        for t in targets.values():
            t.stop()
        # SIGTERM: nginx's master stops its workers too (after SIGKILL they would linger).
        upstream.terminate()
        upstream.wait()
    report = render_report(results, labels, args)
    print(report)
    os.makedirs(args.out, exist_ok=True)
    open(os.path.join(args.out, "latest.md"), "w").write(report)
    json.dump(results, open(os.path.join(args.out, "latest.json"), "w"), indent=2)
    shutil.rmtree(work, ignore_errors=True)


def warm_up(target):
    """A second of load before a measured run: connections open and pools fill, as in a running proxy."""
    run_load(["wrk", "-t1", "-c50", "-d1s", f"http://127.0.0.1:{target.http}/"])


def measured(t, fn):
    """Runs one test on target `t`, with the proxy's CPU per request and RSS."""
    before = cpu_times(t.pids())
    r = fn(t)
    after = cpu_times(t.pids())
    cpu, kernel = sum(after) - sum(before), after[1] - before[1]
    if t.proc and r["requests"]:
        r["cpu_us_per_req"] = cpu / r["requests"] * 1e6 if r.get("rps") is not None else None
        r["kernel_us_per_req"] = kernel / r["requests"] * 1e6 if r.get("rps") is not None else None
        r["req_per_cpu_s"] = r["requests"] / cpu if cpu > 0 and r.get("rps") is not None else None
        if "mb_per_s" in r:
            r["cpu_s_per_gib"] = cpu / (r["bytes"] / (1 << 30))
        r["rss_mb"] = rss_mb(t.pids())
    return r


def fmt(v, unit="", digits=1):
    return "-" if v is None else f"{v:,.{digits}f}{unit}"


def fmt_row(r):
    if "mb_per_s" in r:
        return f"{fmt(r['mb_per_s'], ' MB/s')}, proxy CPU {fmt(r.get('cpu_s_per_gib'), ' s/GiB', 2)}"
    return (f"{fmt(r['rps'], ' req/s', 0)}, p50 {fmt(r['p50'], ' ms', 2)}, p99 {fmt(r['p99'], ' ms', 2)}, "
            f"CPU {fmt(r.get('cpu_us_per_req'), ' us/req')} ({fmt(r.get('kernel_us_per_req'), ' in the kernel')}), errors {r['errors']}")


def render_report(results, labels, args):
    lines = [f"# Strait vs peers ({args.duration}s per test; proxies on core {PROXY_CORE}, load+upstream on core {LOAD_CORE})", ""]
    for label in labels:
        lines += [f"## {label}", "", "| target | req/s | p50 ms | p99 ms | proxy CPU us/req | of which kernel | req per CPU-s | RSS MB | errors |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, row in results.items():
            r = row.get(label)
            if not r:
                continue
            if "mb_per_s" in r:
                lines.append(f"| {name} | {fmt(r['mb_per_s'], ' MB/s')} | - | - | {fmt(r.get('cpu_s_per_gib'), ' CPU-s/GiB', 2)} | - | - | {fmt(r.get('rss_mb'))} | {r['errors']} |")
            else:
                lines.append(f"| {name} | {fmt(r['rps'], '', 0)} | {fmt(r['p50'], '', 2)} | {fmt(r['p99'], '', 2)} | "
                             f"{fmt(r.get('cpu_us_per_req'))} | {fmt(r.get('kernel_us_per_req'))} | {fmt(r.get('req_per_cpu_s'), '', 0)} | "
                             f"{fmt(r.get('rss_mb'))} | {r['errors']} |")
        rounds = {name: row[label]["p99_rounds"] for name, row in results.items() if "p99_rounds" in row.get(label, {})}
        if rounds:
            lines += ["", f"The median of {args.latency_rounds} rounds, the targets taking turns; p99 ms in each round: "
                      + "; ".join(f"{name} {', '.join(fmt(p, '', 2) for p in p99s)}" for name, p99s in rounds.items())]
        lines.append("")
    lines += ["## memory (each column a fresh start)", "",
              "| target | idle RSS MB | 1,000 idle keep-alive conns, opened in turn, MB | 1,000 idle keep-alive conns after their requests came at once, MB |",
              "|---|---|---|---|"]
    for name, row in results.items():
        if "rss_idle_mb" in row:
            lines.append(f"| {name} | {fmt(row['rss_idle_mb'])} | {fmt(row.get('rss_1000_conns_in_turn_mb'))} | "
                         f"{fmt(row.get('rss_1000_conns_burst_mb'))} |")
    s = results.get("strait")
    if s:
        lines += ["", "## Strait's ratios", "", "| test | vs | Strait's requests per proxy CPU-second, ratio | p99 ratio (lower is better) |", "|---|---|---|---|"]
        for label in labels:
            mine = s.get(label, {})
            for peer in ["hyper-floor", "envoy", "nginx", "haproxy"]:
                theirs = results.get(peer, {}).get(label)
                if not theirs or not mine:
                    continue
                if "mb_per_s" in mine:
                    cpu_ratio = (theirs.get("cpu_s_per_gib") or 0) / mine["cpu_s_per_gib"] if mine.get("cpu_s_per_gib") else None
                    lines.append(f"| {label} | {peer} | {fmt(cpu_ratio, 'x', 2)} (CPU per GiB) | - |")
                    continue
                eff = mine.get("req_per_cpu_s") / theirs["req_per_cpu_s"] if mine.get("req_per_cpu_s") and theirs.get("req_per_cpu_s") else None
                p99 = mine["p99"] / theirs["p99"] if mine.get("p99") and theirs.get("p99") else None
                lines.append(f"| {label} | {peer} | {fmt(eff, 'x', 2)} | {fmt(p99, 'x', 2)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
