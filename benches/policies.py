#!/usr/bin/env python3
"""What request policies cost when they do nothing, Strait and Envoy in one run.

Each proxy runs the comparison's bootstrap twice: as it is, and with a route timeout, a retry policy
(5xx and resets, 2 retries, a per-try timeout) and a local rate limit (a bucket too big to run out,
enabled and enforced for every request) on the HTTP/1.1 route. HTTP/1.1 keep-alive load (wrk, 50
connections) with no failures; the proxy pinned to core 0, load and upstream on core 1. Reports
requests per proxy CPU-second with and without the policies and the cost. Three estimates of the
cost:
- side by side: the two configs run at the same time, two processes sharing core 0, each under its
  own wrk; whatever the machine does to one it does to the other (the median over the rounds);
- alternating, best rounds: the two configs one after the other, the best round of each;
- alternating, median of pairs: each round's two back-to-back runs as a pair.
On a shared VM one config alone ranges by 10-15% from one run to the next, so the side-by-side
figure is the steadiest.

  python3 benches/policies.py [--duration 8] [--rounds 3] [--only strait,envoy]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (the comparison's helpers: ports, pinning, wrk, CPU accounting)

POLICIES_ROUTE = ("route: { cluster: upstream_h1, timeout: 5s, retry_policy: "
                  "{ retry_on: '5xx,reset', num_retries: 2, per_try_timeout: 2s } }")
RATE_LIMIT_FILTER = """          http_filters:
          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: bench_limit
              token_bucket: { max_tokens: 1000000000, tokens_per_fill: 1000000000, fill_interval: 1s }
              filter_enabled: { default_value: { numerator: 100 } }
              filter_enforced: { default_value: { numerator: 100 } }
"""


def with_policies(text):
    """The comparison's bootstrap with the policies on its HTTP/1.1 route."""
    out = text.replace("route: { cluster: upstream_h1 }", POLICIES_ROUTE, 1)
    out = out.replace("          http_filters:\n", RATE_LIMIT_FILTER, 1)
    assert out.count("retry_policy") == 1 and out.count("LocalRateLimit") == 1, "the bootstrap changed shape"
    return out


def measure(name, cmd, ports, work, duration):
    target = compare.Target(name, cmd, ports["HTTP"], ports["HTTP"], ports["TCP"])
    target.start(work)
    try:
        compare.warm_up(target)
        r = compare.measured(target, lambda t: compare.wrk(t, duration))
        r.setdefault("req_per_cpu_s", None)  # no requests answered: no figure
        return r
    finally:
        target.stop()


def measure_side_by_side(name, command, configs, work, duration):
    """Runs the configs at the same time on the proxy core, each under its own wrk; returns each
    one's requests per CPU-second."""
    targets = []
    try:
        for i, (ports, config) in enumerate(configs):
            target = compare.Target(f"{name}-{i}", command(config, i), ports["HTTP"], ports["HTTP"], ports["TCP"])
            targets.append(target)
            target.start(work)
        for target in targets:
            compare.warm_up(target)
        before = [compare.cpu_seconds(t.pids()) for t in targets]
        loads = [subprocess.Popen(compare.pinned(compare.LOAD_CORE, [
            "wrk", "-t1", "-c50", f"-d{duration}s", f"http://127.0.0.1:{t.http}/"]), stdout=subprocess.PIPE, text=True)
            for t in targets]
        outputs = [load.communicate()[0] for load in loads]
        cpu = [compare.cpu_seconds(t.pids()) - b for t, b in zip(targets, before)]
        requests = [compare.requests_in(out) for out in outputs]
        return [n / c if c > 0 else None for n, c in zip(requests, cpu)]
    finally:
        for target in targets:
            target.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="strait,envoy")
    ap.add_argument("--strait", default=os.path.join(compare.ROOT, "target", "release", "strait-proxy"))
    args = ap.parse_args()
    wanted = args.only.split(",")
    if "strait" in wanted and not os.path.exists(args.strait):
        sys.exit(f"build Strait first: cargo build --release -p strait-proxy ({args.strait} not found)")
    work = tempfile.mkdtemp(prefix="strait-policies-")
    os.chmod(work, 0o755)
    ports = {k: compare.free_port() for k in ["UP_H1", "UP_H2", "HTTP", "HTTP2", "TCP", "ADMIN"]}
    ports["DIR"] = work
    upstream = subprocess.Popen(compare.pinned(compare.LOAD_CORE, [
        "nginx", "-c", compare.render("upstream-nginx.conf", work, ports), "-p", work, "-g", "daemon off;"]),
        stderr=subprocess.DEVNULL)
    compare.wait_port(ports["UP_H1"])
    plain = compare.render("bootstrap.yaml", work, ports)
    policies = os.path.join(work, "bootstrap-policies.yaml")
    open(policies, "w").write(with_policies(open(plain).read()))
    # The side-by-side run's second process: the same upstream, its own listeners and admin.
    beside_dir = os.path.join(work, "beside")
    os.makedirs(beside_dir)
    beside_ports = dict(ports, **{k: compare.free_port() for k in ["HTTP", "HTTP2", "TCP", "ADMIN"]}, DIR=beside_dir)
    beside = os.path.join(beside_dir, "bootstrap-policies.yaml")
    open(beside, "w").write(with_policies(open(compare.render("bootstrap.yaml", beside_dir, beside_ports)).read()))
    commands = {
        "strait": lambda config, i=0: [args.strait, "-c", config, "--concurrency", "1", "-l", "error"],
        "envoy": lambda config, i=0: ["envoy", "-c", config, "--concurrency", "1", "-l", "error",
                                      "--base-id", str(os.getpid() * 2 + i)],
    }
    side_by_side = {}
    best = {}
    # Each round measures the two configs back to back; the cost within a round is paired against
    # the machine's drift between rounds.
    paired = {}
    try:
        for round_number in range(args.rounds):
            for name in [n for n in commands if n in wanted]:
                for label, config in [("without", plain), ("with", policies)]:
                    r = measure(name, commands[name](config), ports, work, args.duration)
                    print(f"{name:7} {label:8} policies: {r['rps']:,.0f} req/s, {r['req_per_cpu_s'] or 0:,.0f} req per CPU-s, "
                          f"p99 {r['p99']} ms, errors {r['errors']}", flush=True)
                    key = (name, label)
                    if r["req_per_cpu_s"] and r["req_per_cpu_s"] > best.get(key, 0):
                        best[key] = r["req_per_cpu_s"]
                    paired.setdefault(name, []).append(r["req_per_cpu_s"])
                # Which starts first alternates from round to round.
                pair = [(ports, plain), (beside_ports, beside)]
                order = pair if round_number % 2 == 0 else pair[::-1]
                measured = measure_side_by_side(name, commands[name], order, work, args.duration)
                without, with_ = measured if round_number % 2 == 0 else measured[::-1]
                if without and with_:
                    side_by_side.setdefault(name, []).append(1 - with_ / without)
                    print(f"{name:7} side by side: {without:,.0f} req per CPU-s without policies, {with_:,.0f} with, "
                          f"cost {(1 - with_ / without) * 100:.1f}%", flush=True)
    finally:
        # SIGTERM: nginx's master stops its workers too (after SIGKILL they would linger).
        upstream.terminate()
        upstream.wait()
    lines = ["", "| proxy | req per CPU-s without policies (best round) | with timeout + retry policy + rate limit "
             "(best round) | cost, side by side (median) | cost, alternating best rounds | "
             "cost, alternating median of pairs |", "|---|---|---|---|---|---|"]
    for name in [n for n in commands if n in wanted]:
        without, with_ = best.get((name, "without")), best.get((name, "with"))
        cost = f"{(1 - with_ / without) * 100:.1f}%" if without and with_ else "-"
        runs = paired.get(name, [])
        pairs = [1 - runs[i + 1] / runs[i] for i in range(0, len(runs) - 1, 2) if runs[i] and runs[i + 1]]
        median = f"{statistics.median(pairs) * 100:.1f}%" if pairs else "-"
        beside_costs = side_by_side.get(name, [])
        beside_median = f"{statistics.median(beside_costs) * 100:.1f}%" if beside_costs else "-"
        lines.append(f"| {name} | {without or 0:,.0f} | {with_ or 0:,.0f} | {beside_median} | {cost} | {median} |")
    if best.get(("strait", "with")) and best.get(("envoy", "with")):
        lines.append(f"\nWith the policies, Strait does {best[('strait', 'with')] / best[('envoy', 'with')]:.2f}x Envoy's "
                     "requests per CPU-second.")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
