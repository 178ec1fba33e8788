#!/usr/bin/env python3
"""Requests per second through `chaperone proxy` with the audit recording on a file vs. discarded.

Issue: "requests per second through the proxy with audit on vs off in the same run
(target: audit costs under 10% of throughput)". The ratio is printed, never failed on.

chaperone has no switch that turns auditing off: every request builds an
`audit.k8s.io/v1` event and queues it for the local sink (`audit.file`, default `-` =
standard output). So the two configurations, started side by side in one run, are:

* `file`: `audit: {file: <tmp>/audit.jsonl, maxFiles: 100}`, every other audit key at its
  default (fsync: interval, maxSize: 100Mi, queue: 10000, overflow: block) - the recording
  on disk as deployed (maxFiles is raised only so that every event of the run is kept and
  can be counted);
* `discard`: `audit: {file: "-"}` with the proxy's standard output on /dev/null - the event
  is still built, serialised and written (a write(2) to /dev/null), but nothing is stored
  and nothing is synced. This is the closest to "off" the proxy allows.
  (`file: /dev/null` is NOT used: the recorder fsyncs its file, which fails with EINVAL on
  /dev/null, so events count as write failures; and rotation would rename /dev/null.)

`--variants` can add `file-nosync` (the file with `fsync: never`), which separates the
cost of syncing from the cost of writing.

The upstream is nginx (TLS, HTTP/2, `return 200` of a fixed 2 KB Pod at
`GET /api/v1/namespaces/default/pods/p`, requiring the proxy's bearer token), or, if nginx
is not installed (`apt-get install -y nginx-light`), a threaded Python HTTPS server (then
likely the bottleneck: the script says so). The load is `wrk` (`apt-get install -y wrk`):
a fixed number of keep-alive TLS connections with `Authorization: Bearer <ES256 token>`,
for a bounded duration per run; the runs alternate between the variants (file, discard,
discard, file, ...) after a short warm-up of each; the cost is the median of the ratios of
runs made next to each other (run i of `file` / run i of `discard`). A run during which
other processes of the (shared) machine took CPU is marked `*`. One run against nginx
directly shows what the upstream alone can do. Exits 1 if a request failed or an audit
event is missing.

    cargo build --release --bin chaperone
    python3 benches/audit_cost.py                       # 3 runs x 10 s per variant
    python3 benches/audit_cost.py --variants file,discard,file-nosync
"""

import argparse
import glob
import http.client
import http.server
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402

POD_PATH, POD, POD_JSON = bc.POD_PATH, bc.POD, bc.POD_JSON
VERSION_JSON, UNAUTHORIZED_JSON, NOT_FOUND_JSON = bc.VERSION_JSON, bc.UNAUTHORIZED_JSON, bc.NOT_FOUND_JSON
nginx_literal, median = bc.nginx_literal, bc.median

VARIANTS = {
    "file": "audit.file: <tmp>/audit.jsonl (fsync interval, maxSize 100Mi: defaults)",
    "discard": 'audit.file: "-" with the proxy\'s stdout on /dev/null',
    "file-nosync": "audit.file: <tmp>/audit.jsonl, fsync: never",
}


# --------------------------------------------------------------------------- upstreams

def start_nginx(procs, tmp, crt, key, token):
    """nginx on 127.0.0.1 (TLS, HTTP/2 and 1.1), one worker; returns its port."""
    port = bc.free_port()
    temp = os.path.join(tmp, "nginx-temp")
    os.makedirs(temp)
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
{bc.nginx_http_common(tmp, "nginx")}    default_type application/json;
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {crt};
        ssl_certificate_key {key};
        location = {POD_PATH} {{
            if ($http_authorization != "Bearer {token}") {{ return 401 {nginx_literal(UNAUTHORIZED_JSON)}; }}
            return 200 {nginx_literal(POD_JSON)};
        }}
        location = /version {{ return 200 {nginx_literal(VERSION_JSON)}; }}
        location / {{ return 404 {nginx_literal(NOT_FOUND_JSON)}; }}
    }}
}}
""")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = procs.start([nginx, "-p", tmp, "-e", f"{tmp}/nginx-error.log", "-c", conf],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bc.wait_tcp(port, proc=proc)
    return port


class ThreadedUpstream(http.server.ThreadingHTTPServer):
    daemon_threads = True


def run_python_upstream(args):
    """Internal mode: the fallback upstream, a threaded Python HTTPS server."""
    with open(args.token_file) as f:
        token = f.read().strip()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are separate writes

        def log_message(self, *a):
            pass

        def do_GET(self):
            if self.path == "/version":
                code, body = 200, VERSION_JSON
            elif self.path != POD_PATH:
                code, body = 404, NOT_FOUND_JSON
            elif self.headers.get("Authorization") != f"Bearer {token}":
                code, body = 401, UNAUTHORIZED_JSON
            else:
                code, body = 200, POD_JSON
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadedUpstream(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(f"READY {server.server_address[1]}", flush=True)
    threading.Timer(args.lifetime, lambda: os._exit(0)).start()
    server.serve_forever()


def start_python_upstream(procs, tmp, crt, key, token_file, lifetime):
    proc = procs.start([sys.executable, os.path.abspath(__file__), "upstream", "--cert", crt,
                        "--key", key, "--token-file", token_file, "--lifetime", str(lifetime)],
                       stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        raise RuntimeError(f"python upstream did not start: {line!r}")
    return int(line.split()[1])


# --------------------------------------------------------------------------- load

def wrk(port, token, args, duration, procs):
    """Runs wrk against https://127.0.0.1:port; returns its parsed figures, and the CPU
    seconds other processes of the machine took meanwhile (`others`)."""
    return bc.run_wrk(port, token, duration, procs, threads=args.threads,
                      connections=args.connections)


def get_once(port, ca, token):
    ctx = ssl.create_default_context(cafile=ca)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.request("GET", POD_PATH, headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status != 200 or json.loads(body) != POD:
        raise RuntimeError(f"GET {POD_PATH} on :{port}: {resp.status} {body[:300]!r}")


def start_proxy(procs, tmp, variant, binary, pki, kubeconfig, policy):
    vdir = os.path.join(tmp, variant)
    os.makedirs(vdir)
    crt, key = pki.server_cert(f"proxy-{variant}")
    audit_file = os.path.join(vdir, "audit.jsonl")
    if variant == "discard":
        audit = {"file": "-"}
    else:
        # maxFiles only so that every event of the run is kept and can be counted
        audit = {"file": audit_file, "maxFiles": 100}
        if variant == "file-nosync":
            audit["fsync"] = "never"
    port, admin = bc.free_port(), bc.free_port()
    config = os.path.join(vdir, "chaperone.yaml")
    bc.write_proxy_config(config, listen=port, admin=admin, cert=crt, key=key, jwks=pki.jwks,
                          policy=policy, kubeconfig=kubeconfig, audit=audit)
    with open(os.path.join(vdir, "proxy.log"), "w") as logf:
        proc = procs.start([binary, "proxy", "--config", config],
                           stdout=subprocess.DEVNULL if variant == "discard" else logf,
                           stderr=logf)
    bc.wait_http(f"http://127.0.0.1:{admin}/readyz", proc=proc)
    return {"variant": variant, "proc": proc, "port": port, "admin": admin,
            "audit": audit_file if variant != "discard" else None, "runs": []}


def count_lines(pattern):
    total = 0
    for path in glob.glob(pattern):
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                total += chunk.count(b"\n")
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Modes: (default) run the benchmark; `upstream` is internal.")
    sub = parser.add_subparsers(dest="mode")
    up = sub.add_parser("upstream", help="internal: the fallback Python HTTPS upstream")
    up.add_argument("--cert", required=True)
    up.add_argument("--key", required=True)
    up.add_argument("--token-file", required=True)
    up.add_argument("--lifetime", type=float, default=600, help="exit after this many seconds")
    parser.add_argument("--variants", default="file,discard",
                        help="comma-separated, from: " + ", ".join(VARIANTS) + " (default: file,discard)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per run (default: 10)")
    parser.add_argument("--runs", type=int, default=3, help="runs per variant, alternating (default: 3)")
    parser.add_argument("--disturbed", type=float, default=0.05,
                        help="flag a run (*) when other processes took more than this share of the"
                             " machine's CPU time during it (default: 0.05; the kernel's writeback"
                             " of the audit file counts as other processes)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds per variant (default: 2)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default: 16)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default: 1)")
    parser.add_argument("--upstream", choices=["auto", "nginx", "python"], default="auto",
                        help="auto: nginx if installed, else the threaded Python server")
    parser.add_argument("--no-direct", action="store_true",
                        help="skip the run straight against the upstream")
    parser.add_argument("--binary", default=bc.DEFAULT_BINARY,
                        help="the chaperone binary (default: target/release/chaperone)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    if args.mode == "upstream":
        return run_python_upstream(args)

    if not (1 <= args.duration <= 300 and 1 <= args.runs <= 20 and 1 <= args.warmup <= 60
            and 1 <= args.connections <= 1000):
        parser.error("bounds: --duration 1..300, --runs 1..20, --warmup 1..60, --connections 1..1000")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            parser.error(f"unknown variant {v!r}")
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found: apt-get install -y wrk")
    kind = args.upstream
    if kind == "auto":
        kind = "nginx" if (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")) else "python"

    bc.stop_on_signals()
    cpu = bc.CpuWatch()
    procs = bc.Procs()
    tmp = tempfile.mkdtemp(prefix="chaperone-audit-")
    failures = []
    try:
        binary = bc.copy_binary(args.binary, tmp)
        pki = bc.Pki(tmp)
        up_crt, up_key = pki.server_cert("upstream")
        upstream_token = bc.b64url(os.urandom(24))
        token_file = os.path.join(tmp, "upstream.token")
        with open(token_file, "w") as f:
            f.write(upstream_token)
        caller = pki.token()
        budget = (args.duration + 30) * (args.runs * len(variants) + 1) + 300
        if kind == "nginx":
            up_port = start_nginx(procs, tmp, up_crt, up_key, upstream_token)
        else:
            up_port = start_python_upstream(procs, tmp, up_crt, up_key, token_file, budget)
        kubeconfig = os.path.join(tmp, "upstream.kubeconfig")
        bc.write_kubeconfig(kubeconfig, f"https://127.0.0.1:{up_port}", pki.ca_crt, upstream_token)
        policy = os.path.join(tmp, "policy.yaml")
        bc.write_policy(policy, "bench-audit-cost", [("get-pods", "pods", ["get"])])
        bc.check_policy(binary, policy)

        proxies = [start_proxy(procs, tmp, v, binary, pki, kubeconfig, policy) for v in variants]
        for p in proxies:
            get_once(p["port"], pki.ca_crt, caller)
            bc.log(f"warm-up {p['variant']} ({args.warmup} s)")
            p["warmup"] = wrk(p["port"], caller, args, args.warmup, procs)
        direct = None
        if not args.no_direct:
            get_once(up_port, pki.ca_crt, upstream_token)
            bc.log(f"direct to {kind} ({args.duration} s)")
            direct = wrk(up_port, upstream_token, args, args.duration, procs)
        for run in range(args.runs):
            order = proxies if run % 2 == 0 else proxies[::-1]
            for p in order:
                bc.log(f"run {run + 1}/{args.runs}: {p['variant']} ({args.duration} s)")
                p["runs"].append(wrk(p["port"], caller, args, args.duration, procs))

        for p in proxies:
            p["requests_total"] = bc.scrape_metric(p["admin"], "chaperone_requests_total")
            p["dropped"] = bc.scrape_metric(p["admin"], "chaperone_audit_events_dropped_total")
            p["write_failures"] = bc.scrape_metric(p["admin"], "chaperone_audit_write_failures_total")
            procs.stop(p["proc"])  # SIGTERM: the recorder drains and syncs
            p["events"] = count_lines(p["audit"] + "*") if p["audit"] else None
    finally:
        procs.stop_all()
        bc.remove_or_keep(tmp, args.keep)

    print(f"chaperone proxy, GET {POD_PATH} ({len(POD_JSON)} B Pod) from {kind}; wrk -t{args.threads}"
          f" -c{args.connections}, {args.runs} x {args.duration} s per variant, alternating; 2 cores")
    if kind == "python":
        print("note: the upstream is the threaded Python server (nginx is not installed): it is"
              " likely the bottleneck")

    def is_disturbed(r):
        return r["others"] > args.disturbed * (os.cpu_count() or 1) * r["seconds"]

    def run_text(r):
        return f"{r['rps']:.0f}" + ("*" if is_disturbed(r) else "")

    print(f"{'variant':<12} {'runs (req/s)':<26} {'median':>7} {'mean':>7} {'p50':>8} {'p99':>8}  audit")
    for p in proxies:
        rates = [r["rps"] for r in p["runs"]]
        p["median"] = median(rates)
        p["mean"] = sum(rates) / len(rates)
        last = p["runs"][-1]
        print(f"{p['variant']:<12} {' '.join(run_text(r) for r in p['runs']):<26} {p['median']:>7.0f}"
              f" {p['mean']:>7.0f} {last['p50']:>8} {last['p99']:>8}  {VARIANTS[p['variant']]}")
    if direct:
        print(f"{'direct':<12} {run_text(direct):<26} {direct['rps']:>7.0f} {direct['rps']:>7.0f}"
              f" {direct['p50']:>8} {direct['p99']:>8}  {kind} alone, no proxy")
    base = next((p for p in proxies if p["variant"] == "discard"), None)
    for p in proxies:
        if base is not None and p is not base:
            # Run i of each variant ran next to run i of discard (the order alternates, with
            # discard in the middle), so their ratio is the least affected by drift.
            pairs = [a["rps"] / b["rps"] for a, b in zip(p["runs"], base["runs"])]
            ratio = median(pairs)
            print(f"{p['variant']} / discard = {ratio:.3f} (median of the run-by-run ratios"
                  f" {' '.join(f'{x:.3f}' for x in pairs)}; ratio of the medians"
                  f" {p['median'] / base['median']:.3f}): audit to the file costs"
                  f" {100 * (1 - ratio):.1f}% of the throughput (target < 10%)")
    disturbed = [r for p in proxies for r in p["runs"]] + ([direct] if direct else [])
    disturbed = [r for r in disturbed if is_disturbed(r)]
    if disturbed:
        taken = ", ".join(f"{r['others']:.1f}" for r in disturbed)
        print(f"  * other processes took more than {100 * args.disturbed:g}% of the CPU time during the"
              f" run ({taken} CPU-s): the machine was not quiet; repeat the benchmark")
    for p in proxies:
        sent = sum(r["requests"] for r in p["runs"] + [p["warmup"]]) + 1
        errors = sum(r["non2xx"] + r["socket_errors"] for r in p["runs"] + [p["warmup"]])
        events = "" if p["events"] is None else f", {p['events']} events in the recording"
        print(f"  {p['variant']}: {sent} requests completed by the clients, chaperone_requests_total"
              f" {p['requests_total']:.0f}{events}, dropped {p['dropped']:.0f}, write failures"
              f" {p['write_failures']:.0f}, non-2xx/socket errors {errors}")
        if errors:
            failures.append(f"{p['variant']}: {errors} failed requests")
        if p["dropped"] or p["write_failures"]:
            failures.append(f"{p['variant']}: audit dropped {p['dropped']:.0f},"
                            f" failed {p['write_failures']:.0f}")
        if p["events"] is not None and p["events"] < p["requests_total"]:
            failures.append(f"{p['variant']}: {p['events']} audit events for"
                            f" {p['requests_total']:.0f} requests")
    if direct and direct["non2xx"] + direct["socket_errors"]:
        failures.append(f"direct: {direct['non2xx'] + direct['socket_errors']} failed requests")
    print(f"  machine: {cpu.summary()}")
    print(f"  binary: {bc.describe_binary(args.binary)}")
    for f in failures:
        print("FAIL: " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
