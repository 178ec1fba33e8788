#!/usr/bin/env python3
"""Peak resident memory of `chaperone proxy` while it streams and masks a large SecretList.

Target (issue: "Peak resident memory of the proxy while streaming a 200 MB List through
it"): the proxy's peak RSS stays under 32 MiB, whatever the List's size. Two sizes are
measured (default 50 MB and 200 MB, MB = 10^6 bytes).

For each size, in a fresh temporary directory and with fresh processes:

* an upstream: this script's `upstream` mode, a Python HTTPS server (its own process, so
  the proxy's memory is the proxy's alone) serving `GET /api/v1/namespaces/default/secrets`
  as a `SecretList` generated on the fly and sent with `Transfer-Encoding: chunked`
  (`application/json`): Secrets of ~3.4 KB each with labels, annotations (including
  `kubectl.kubernetes.io/last-applied-configuration`, which repeats the data),
  `managedFields` and four base64 `data` values, until the body reaches the size (the
  first 2048 Secrets are generated, later ones repeat them in turn, so that Python is not
  the bottleneck: `--distinct-items 0` generates every one); also `/version` and
  `/openid/v1/jwks`. It requires the proxy's bearer token.
* the proxy: `chaperone proxy` with its own TLS certificate, an issuer
  `https://bench.local` whose ES256 key is read from a `jwksFile`, a policy allowing
  `list secrets` in `default` to every user (checked with `chaperone policy check`), the
  upstream through a kubeconfig, and the audit recording in a file.
* a client (this process) that streams the List through the proxy with an ES256 token and
  discards it, counting the masked marker `Y2hhcGVyb25lOm1hc2tlZA==` (must be 4 per item)
  and the base64 prefix every original value starts with (must be 0), then the same List
  directly from the upstream (the throughput baseline; there the prefix must appear);
  `--repeat` times in turn (default 3).

Memory: `VmRSS` of the proxy after startup and one request through it (`/version`, so the
upstream connection and the token are set up) is the baseline; `VmHWM` (the kernel's peak
RSS of the process) after the transfers is the peak. Throughput: the List's size (bytes
the upstream sent, in 10^6) over the seconds from sending the request to the last byte
received, median of the repeats. Through the proxy the client receives about 30% of the
bytes (the values are masked), so "direct" is the upstream and client speed, not an upper
bound for the proxy. Exits 1 if any peak reaches the limit, or if a masking check fails.

    cargo build --release --bin chaperone
    python3 benches/mask_memory.py                # 50 MB and 200 MB
    python3 benches/mask_memory.py --sizes 10     # a quick run
"""

import argparse
import base64
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
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402

SECRETS_PATH = "/api/v1/namespaces/default/secrets"
CANARY = b"BENCHSECRET:"  # 12 bytes: every original value's base64 starts the same
CANARY_B64 = base64.b64encode(CANARY)  # QkVOQ0hTRUNSRVQ6
MARKER = bc.MASK_MARKER_B64.encode()
# data keys and the length of random bytes after the canary in each value
DATA_KEYS = (("username", 12), ("password", 24), ("config.json", 200), ("tls.key", 420))


# --------------------------------------------------------------------------- upstream

class SecretListGenerator:
    """Yields a SecretList of about `size` bytes in chunks, one item at a time.

    The first `distinct` items are generated and kept; later items repeat them in turn
    (0: every item generated, which limits the upstream to about 140 MB/s here).
    """

    def __init__(self, size, distinct=2048, chunk=64 * 1024):
        self.size = size
        self.distinct = distinct
        self.cache = []
        self.chunk = chunk
        self.pool = os.urandom(1 << 20)
        self.items = 0
        self.bytes = 0

    def value(self, i, k, length):
        off = (i * 7919 + k * 104729) % (len(self.pool) - 2048)
        length += (i * 13 + k * 7) % 24  # lengths vary a little from item to item
        return base64.b64encode(CANARY + self.pool[off:off + length]).decode()

    def item(self, i):
        name = f"bench-secret-{i:07d}"
        data = {key: self.value(i, k, n) for k, (key, n) in enumerate(DATA_KEYS)}
        labels = {"app.kubernetes.io/name": "bench", "app.kubernetes.io/instance": f"bench-{i % 97}",
                  "app.kubernetes.io/part-of": "chaperone-bench", "team": "payments"}
        applied = json.dumps({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": data,
            "metadata": {"name": name, "namespace": "default", "labels": labels,
                         "annotations": {"bench.chaperone.dev/owner": "team-payments"}},
        }, separators=(",", ":")) + "\n"
        fields = {f"f:{key}": {} for key in data}
        fields["."] = {}
        obj = {
            "metadata": {
                "name": name, "namespace": "default",
                "uid": f"{i:08x}-6a1e-4c2b-9f3d-{(i * 2654435761) % (1 << 48):012x}",
                "resourceVersion": str(1000000 + i),
                "creationTimestamp": "2026-11-25T10:00:00Z",
                "labels": labels,
                "annotations": {"bench.chaperone.dev/owner": "team-payments",
                                "kubectl.kubernetes.io/last-applied-configuration": applied},
                "managedFields": [{
                    "manager": "kubectl-client-side-apply", "operation": "Update",
                    "apiVersion": "v1", "time": "2026-11-25T10:00:00Z", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:data": fields, "f:type": {}, "f:metadata": {
                        "f:annotations": {".": {}, "f:bench.chaperone.dev/owner": {},
                                          "f:kubectl.kubernetes.io/last-applied-configuration": {}},
                        "f:labels": {".": {}}}},
                }],
            },
            "data": data,
            "type": "Opaque",
        }
        return json.dumps(obj, separators=(",", ":")).encode()

    def chunks(self):
        head = (b'{"kind":"SecretList","apiVersion":"v1","metadata":{"resourceVersion":"2000000"},'
                b'"items":[')
        buf = [head]
        pending = len(head)
        total = 0
        i = 0
        while total + pending < self.size:
            if not self.distinct:
                item = self.item(i)
            elif i < self.distinct:
                item = self.item(i)
                self.cache.append(item)
            else:
                item = self.cache[i % self.distinct]
            piece = (b"," if i else b"") + item
            buf.append(piece)
            pending += len(piece)
            i += 1
            if pending >= self.chunk:
                out = b"".join(buf)
                total += len(out)
                buf, pending = [], 0
                yield out
        buf.append(b"]}\n")
        out = b"".join(buf)
        total += len(out)
        self.items, self.bytes = i, total
        yield out


class Upstream(http.server.ThreadingHTTPServer):
    daemon_threads = True


def make_handler(size, distinct, token, jwks):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are separate writes

        def log_message(self, *args):
            pass

        def send_json(self, code, doc):
            body = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            path = urllib.parse.urlsplit(self.path).path
            if path == "/version":
                return self.send_json(200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0-bench"})
            if path == "/openid/v1/jwks":
                return self.send_json(200, jwks)
            if self.headers.get("Authorization") != f"Bearer {token}":
                return self.send_json(401, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                            "reason": "Unauthorized", "code": 401})
            if path != SECRETS_PATH:
                return self.send_json(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                            "reason": "NotFound", "code": 404})
            gen = SecretListGenerator(size, distinct)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for chunk in gen.chunks():
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
            print("SERVED " + json.dumps({"items": gen.items, "bytes": gen.bytes}), flush=True)

    return Handler


def run_upstream(args):
    with open(args.jwks) as f:
        jwks = json.load(f)
    with open(args.token_file) as f:
        token = f.read().strip()
    server = Upstream(("127.0.0.1", 0), make_handler(args.size, args.distinct, token, jwks))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols(["http/1.1"])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(f"READY {server.server_address[1]}", flush=True)
    # Bounded: the harness kills it; this is a backstop.
    threading.Timer(args.lifetime, lambda: os._exit(0)).start()
    server.serve_forever()


# --------------------------------------------------------------------------- client

def stream_list(port, ca, token, timeout):
    """GETs the List, discarding it; returns (bytes, seconds, counts)."""
    ctx = ssl.create_default_context(cafile=ca)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=timeout)
    patterns = {"marker": MARKER, "canary": CANARY_B64, "uid": b'"uid":"'}
    counts = dict.fromkeys(patterns, 0)
    tails = dict.fromkeys(patterns, b"")
    total = 0
    start = time.monotonic()
    deadline = start + timeout
    try:
        conn.request("GET", SECRETS_PATH, headers={"Authorization": f"Bearer {token}",
                                                   "Accept": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"GET {SECRETS_PATH} on :{port}: {resp.status} {resp.read(2000)!r}")
        while True:
            data = resp.read1(1 << 20)
            if not data:
                break
            total += len(data)
            for name, pat in patterns.items():
                # matches inside `data`, plus those straddling the previous read: the
                # last len-1 bytes before it and the first len-1 of it hold only those
                keep = len(pat) - 1
                counts[name] += data.count(pat) + (tails[name] + data[:keep]).count(pat)
                tails[name] = (tails[name] + data[-keep:])[-keep:]
            if time.monotonic() > deadline:
                raise RuntimeError(f"transfer not finished after {timeout}s")
    finally:
        conn.close()
    return total, time.monotonic() - start, counts


def small_get(port, ca, token, path):
    ctx = ssl.create_default_context(cafile=ca)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {path}: {resp.status} {body[:500]!r}")
    finally:
        conn.close()


# --------------------------------------------------------------------------- harness

def read_line(proc, prefix, timeout):
    """Reads proc's stdout until a line starting with prefix (bounded by timeout)."""
    result = {}

    def reader():
        for line in proc.stdout:
            if line.startswith(prefix):
                result["line"] = line[len(prefix):].strip()
                return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(timeout)
    if "line" not in result:
        raise RuntimeError(f"no {prefix!r} line from pid {proc.pid} within {timeout}s")
    return result["line"]


def audit_masked_fields(path, timeout=5.0):
    """The masked-fields annotation of the recorded `list secrets` event."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                for line in f:
                    ev = json.loads(line)
                    if ev.get("verb") == "list" and ev.get("stage") == "ResponseComplete":
                        return ev.get("annotations", {}).get("chaperone.dev/masked-fields")
        except FileNotFoundError:
            pass
        time.sleep(0.1)
    return None


def measure(row, args, procs, binary):
    """Fills `row` (size_mb, tmp) with one size's measurements."""
    size_mb, tmp = row["size_mb"], row["tmp"]
    size = int(size_mb * 1_000_000)
    pki = bc.Pki(tmp)
    up_crt, up_key = pki.server_cert("upstream")
    px_crt, px_key = pki.server_cert("proxy")
    upstream_token = base64.urlsafe_b64encode(os.urandom(24)).decode()
    token_file = os.path.join(tmp, "upstream.token")
    with open(token_file, "w") as f:
        f.write(upstream_token)
    caller = pki.token()

    up = procs.start([sys.executable, os.path.abspath(__file__), "upstream", "--size", str(size),
                      "--distinct", str(args.distinct_items),
                      "--cert", up_crt, "--key", up_key, "--jwks", pki.jwks,
                      "--token-file", token_file, "--lifetime", str(4 * args.timeout + 60)],
                     stdout=subprocess.PIPE, text=True)
    up_port = int(read_line(up, "READY ", 30))

    kubeconfig = os.path.join(tmp, "upstream.kubeconfig")
    bc.write_kubeconfig(kubeconfig, f"https://127.0.0.1:{up_port}", pki.ca_crt, upstream_token)
    policy = os.path.join(tmp, "policy.yaml")
    bc.write_policy(policy, "bench-mask-memory", [("list-secrets", "secrets", ["list"])])
    bc.check_policy(binary, policy)
    port, admin = bc.free_port(), bc.free_port()
    audit = os.path.join(tmp, "audit.jsonl")
    config = os.path.join(tmp, "chaperone.yaml")
    bc.write_proxy_config(config, listen=port, admin=admin, cert=px_crt, key=px_key,
                          jwks=pki.jwks, policy=policy, kubeconfig=kubeconfig,
                          audit={"file": audit})
    with open(os.path.join(tmp, "proxy.log"), "w") as logf:
        proxy = procs.start([binary, "proxy", "--config", config], stdout=logf, stderr=logf)
    bc.wait_http(f"http://127.0.0.1:{admin}/readyz", proc=proxy)
    small_get(port, pki.ca_crt, caller, "/version")
    base = bc.proc_status(proxy.pid)
    row["base_rss"] = base["VmRSS"]
    row["startup_hwm"] = base["VmHWM"]

    row.update(proxy=[], direct=[])
    for rep in range(args.repeat):
        n, secs, counts = stream_list(port, pki.ca_crt, caller, args.timeout)
        served = json.loads(read_line(up, "SERVED ", 10))
        row["proxy"].append({"bytes": n, "secs": secs, "counts": counts})
        if rep == 0:
            row.update(items=served["items"], upstream_bytes=served["bytes"],
                       peak_first=bc.proc_status(proxy.pid)["VmHWM"])
        n, secs, counts = stream_list(up_port, pki.ca_crt, upstream_token, args.timeout)
        read_line(up, "SERVED ", 10)
        row["direct"].append({"bytes": n, "secs": secs, "counts": counts})
    after = bc.proc_status(proxy.pid)
    row.update(peak=after["VmHWM"], rss_after=after["VmRSS"],
               masked_fields=audit_masked_fields(audit))

    procs.stop(proxy)
    procs.stop(up)


def check(row):
    """Masking checks for one size; returns a list of failures."""
    items, k = row["items"], len(DATA_KEYS)
    bad = []
    for t in row["proxy"]:
        c = t["counts"]
        if c["uid"] != items:
            bad.append(f"upstream sent {items} items, {c['uid']} came through the proxy")
        if c["marker"] != items * k:
            bad.append(f"masked markers through the proxy: {c['marker']}, expected {items * k}")
        if c["canary"] != 0:
            bad.append(f"{c['canary']} original secret values passed the proxy in clear")
    for t in row["direct"]:
        c = t["counts"]
        if c["uid"] != items or c["canary"] != 2 * items * k:  # data + last-applied
            bad.append(f"direct stream: {c['uid']} items and {c['canary']} original values,"
                       f" expected {items} and {2 * items * k}")
    return bad


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Modes: (default) run the benchmark; `upstream` is internal.")
    sub = parser.add_subparsers(dest="mode")
    up = sub.add_parser("upstream", help="internal: the chunked SecretList HTTPS server")
    up.add_argument("--size", type=int, required=True, help="body size in bytes")
    up.add_argument("--distinct", type=int, default=2048, help="distinct items (0: all)")
    up.add_argument("--cert", required=True)
    up.add_argument("--key", required=True)
    up.add_argument("--jwks", required=True)
    up.add_argument("--token-file", required=True)
    up.add_argument("--lifetime", type=float, default=600, help="exit after this many seconds")
    parser.add_argument("--sizes", default="50,200",
                        help="List sizes in MB (10^6 bytes), comma-separated (default: 50,200)")
    parser.add_argument("--distinct-items", type=int, default=2048,
                        help="distinct Secrets the upstream generates before repeating them in"
                             " turn (default: 2048, ~7 MB); 0: every item generated, slower")
    parser.add_argument("--repeat", type=int, default=3,
                        help="transfers per size, through the proxy and directly in turn; the"
                             " median MB/s is shown, the peak RSS covers them all (default: 3)")
    parser.add_argument("--limit-mib", type=float, default=32,
                        help="fail when a peak RSS reaches this (default: 32 MiB)")
    parser.add_argument("--timeout", type=float, default=120,
                        help="seconds allowed for one transfer (default: 120)")
    parser.add_argument("--binary", default=bc.DEFAULT_BINARY,
                        help="the chaperone binary (default: target/release/chaperone)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directories (configs, proxy.log, audit.jsonl)")
    args = parser.parse_args()
    if args.mode == "upstream":
        return run_upstream(args)

    sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or not all(0 < s <= 2000 for s in sizes) or not (1 <= args.repeat <= 10) \
            or not (0 < args.timeout <= 600):
        parser.error("bounds: --sizes 0..2000 MB, --repeat 1..10, --timeout 0..600 s")
    bc.stop_on_signals()
    cpu = bc.CpuWatch()
    procs = bc.Procs()
    rows, failures = [], []
    bin_dir = tempfile.mkdtemp(prefix="chaperone-bench-bin-")
    try:
        binary = bc.copy_binary(args.binary, bin_dir)
        for size in sizes:
            bc.log(f"streaming {size:g} MB ...")
            row = {"size_mb": size, "tmp": tempfile.mkdtemp(prefix=f"chaperone-mask-{size:g}mb-")}
            rows.append(row)
            measure(row, args, procs, binary)
            for f in check(row):
                failures.append(f"{size:g} MB: {f}")
    finally:
        procs.stop_all()
        shutil.rmtree(bin_dir, ignore_errors=True)
        for row in rows:
            bc.remove_or_keep(row["tmp"], args.keep)

    limit_kib = args.limit_mib * 1024

    def mib(kib):
        return kib / 1024

    def seconds(transfers):
        return " ".join(f"{t['secs']:.2f}" for t in transfers)

    print(f"chaperone proxy streaming a masked SecretList (peak RSS limit {args.limit_mib:g} MiB;"
          " MB/s = the List's size in 10^6 bytes / seconds to receive it)")
    print(f"{'size':>8} {'items':>7} {'baseline RSS':>13} {'peak RSS':>9} {'peak-base':>10}"
          f" {'MB/s proxy':>11} {'MB/s direct':>12}")
    for r in rows:
        r["mbps_proxy"] = median([r["upstream_bytes"] / 1e6 / t["secs"] for t in r["proxy"]])
        r["mbps_direct"] = median([r["upstream_bytes"] / 1e6 / t["secs"] for t in r["direct"]])
        print(f"{r['size_mb']:>5g} MB {r['items']:>7} {mib(r['base_rss']):>9.1f} MiB"
              f" {mib(r['peak']):>5.1f} MiB {mib(r['peak'] - r['base_rss']):>6.1f} MiB"
              f" {r['mbps_proxy']:>11.1f} {r['mbps_direct']:>12.1f}")
        if r["peak"] >= limit_kib:
            failures.append(f"{r['size_mb']:g} MB: peak RSS {mib(r['peak']):.1f} MiB"
                            f" >= {args.limit_mib:g} MiB")
    for r in rows:
        p, d = r["proxy"][0], r["direct"][0]
        print(f"  {r['size_mb']:g} MB: {r['upstream_bytes']} B from the upstream; the client received"
              f" {p['bytes']} B through the proxy (masked), {d['bytes']} B directly;"
              f" {p['counts']['marker']} masked values, {p['counts']['canary']} in clear;"
              f" audit masked-fields {r['masked_fields']}")
        print(f"  {r['size_mb']:g} MB: startup peak {mib(r['startup_hwm']):.1f} MiB, peak after the"
              f" first transfer {mib(r['peak_first']):.1f} MiB, after {args.repeat}"
              f" {mib(r['peak']):.1f} MiB, RSS after {mib(r['rss_after']):.1f} MiB; seconds via proxy"
              f" {seconds(r['proxy'])}, direct {seconds(r['direct'])}")
    print(f"  machine: {cpu.summary()}")
    print(f"  binary: {bc.describe_binary(args.binary)}")
    for f in failures:
        print("FAIL: " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
