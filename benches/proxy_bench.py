#!/usr/bin/env python3
"""chaperone proxy against nginx: added latency, saturation, large Lists, watches, memory.

Issue 9, whose targets are printed next to each figure (never asserted; the script exits 1
only if a request failed, a check of the responses failed, or a tool is missing):

* `latency`: the same GET of a small Pod (bench_common.POD, ~2 KB) three ways in one run:
  `direct` to the upstream nginx; through `nginx-proxy`, a second nginx acting as a plain
  TLS reverse proxy (`proxy_pass https://` with an upstream keep-alive pool, the caller's
  Authorization passed through, no buffering: the baseline of a proxy that does nothing);
  through `chaperone` with identity (an ES256 JWT checked against a JWKS file), a policy
  (allow `get pods` in `default`) and the audit recording on a JSONL file (defaults).
  Load: `oha` at a fixed rate (`-q 1000`) with its coordinated-omission correction
  (`--latency-correction`), over a fixed number of HTTP/1.1 keep-alive TLS connections;
  `--runs` runs of `--duration` seconds per path, alternating the order. p50/p99/p99.9 are
  the medians over the runs; "added" is path minus direct. Targets: chaperone adds under
  100 us at p50 and under 500 us at p99. Latency and saturation also show the CPU time the
  server answering on each path used per request. `--relay` adds a fourth path, the floor
  under any proxy: `tcp-relay`, nginx's `stream` module copying bytes between the caller
  and the upstream with TLS end to end (no HTTP, no cryptography of its own), so what it
  adds is what a process more on the path costs on this host.
* `saturation`: `wrk` (fixed threads and connections) at full speed, runs alternating
  nginx-proxy and chaperone (nginx-proxy, chaperone, chaperone, nginx-proxy, ...), and one
  run directly; the ratio is the median of the ratios of neighbouring runs. Target:
  chaperone / nginx-proxy >= 1.0. Each run's CPU per process, as a share of one core,
  shows how nginx-proxy's workers split the connections (fastest when one serves them
  all). chaperone's peak RSS meanwhile is "RSS under load".
* `lists`: a ~50 MB `kind: List` of ConfigMaps (`GET /api/v1/configmaps`; nothing to mask)
  and of Secrets (`GET /api/v1/secrets`; masked), static files served by the upstream
  nginx, fetched whole with curl (HTTP/1.1) directly, through nginx-proxy and through
  chaperone, `--fetches` times each, alternating. MB/s = the file's size (10^6 bytes) /
  curl's time_total, median. Checked: the ConfigMaps come through chaperone byte for byte;
  every Secret value comes back as base64("chaperone:masked") and none in clear. Targets:
  ConfigMaps through chaperone >= nginx-proxy's MB/s; Secrets >= 500 MB/s. Unbuffered,
  nginx relays at most `proxy_buffer_size` bytes at a time (default one page, 4 KB);
  `--proxy-buffer-size 64k` makes nginx-proxy a faster streaming baseline.
* `watches`: `--watches` (1,000) concurrent watches of pods through a second chaperone
  (its `maxStreamsPerCaller` raised to that many: one caller holds them all), held `--watch-seconds`; the upstream is this script's `watch-upstream` mode (Python
  asyncio, TLS, HTTP/1.1 only, chunked; an ADDED event at the start, then MODIFIED and
  BOOKMARK in turn every `--watch-interval` seconds on each stream). Clients: asyncio,
  HTTP/1.1 over TLS. With an HTTP/1.1 upstream every watch is its own upstream connection
  (chaperone speaks HTTP/2 upstream only when the API server offers it). chaperone's RSS is
  sampled while they are held: "steady" = the end within a few % of right after opening.
* `memory`: chaperone's RSS idle (ready, ~10 requests, then settled) - target < 15 MB -
  and under load (its peak RSS over latency and saturation) - target < 40 MB.

Every server listens on 127.0.0.1 only; the files live in one temporary directory; all
processes started are stopped on exit; the chaperone binary runs from a private copy.
The machine is shared (2 cores): the load driver, nginx and the proxy compete for them,
and the CPU time other processes took is printed.

    cargo build --release --bin chaperone
    apt-get install -y wrk nginx-light curl     # and libnginx-mod-stream for --relay
    cargo install oha --locked                    # or: --oha /path/to/oha
    python3 benches/proxy_bench.py                # everything (about 4.5 minutes)
    python3 benches/proxy_bench.py --only latency,saturation --duration 5 --runs 1
    python3 benches/proxy_bench.py --only watches --watches 200 --watch-seconds 10
"""

import argparse
import asyncio
import hashlib
import json
import os
import resource
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
import mask_memory  # noqa: E402  (its Secret generator)

SECTIONS = ("latency", "saturation", "lists", "watches", "memory")
PATHS = ("direct", "nginx-proxy", "chaperone")
RELAY = "tcp-relay"  # --relay: the floor, a relay copying bytes with TLS end to end
STREAM_MODULES = ("/usr/lib/nginx/modules/ngx_stream_module.so",
                  "/usr/share/nginx/modules/ngx_stream_module.so")
CONFIGMAPS_PATH = "/api/v1/configmaps"
SECRETS_PATH = "/api/v1/secrets"
WATCH_PATH = "/api/v1/namespaces/default/pods"
MARKER = bc.MASK_MARKER_B64.encode()
CANARY_B64 = mask_memory.CANARY_B64  # every original Secret value starts with it
MiB = 1024  # KiB per MiB (proc_status gives KiB)

TARGET_ADDED_P50_US = 100
TARGET_ADDED_P99_US = 500
TARGET_SECRETS_MBPS = 500
TARGET_IDLE_MB = 15
TARGET_LOAD_MB = 40


# --------------------------------------------------------------------------- fixtures

def configmap_item(i):
    """A ConfigMap of ~3 KB: application settings, an nginx snippet, feature flags."""
    app = f"svc-{i % 211:03d}"
    ns = f"team-{i % 17:02d}"
    props = "\n".join([
        f"server.port={8000 + i % 1000}",
        f"spring.application.name={app}",
        "management.endpoints.web.exposure.include=health,info,prometheus",
        f"logging.level.root={'INFO' if i % 3 else 'DEBUG'}",
        "logging.pattern.console=%d{ISO8601} %-5level [%thread] %logger{36} - %msg%n",
        f"cache.ttl.seconds={60 + i % 600}",
        f"http.client.max-connections={20 + i % 80}",
        f"downstream.orders.url=http://orders.{ns}.svc.cluster.local:8080/v2",
        f"downstream.catalog.url=http://catalog.{ns}.svc.cluster.local:8080/v1",
        f"feature.rollout.percentage={i % 100}",
        "jvm.gc=G1 jvm.heap.max=768m jvm.heap.min=256m",
    ]) + "\n"
    nginx = (
        "server {\n  listen 8080;\n  server_name _;\n  location /healthz { return 200 'ok'; }\n"
        f"  location / {{\n    proxy_pass http://127.0.0.1:{9000 + i % 100};\n"
        "    proxy_read_timeout 30s;\n    proxy_set_header X-Request-Id $request_id;\n  }\n"
        "  gzip on;\n  gzip_types application/json text/plain;\n}\n"
    )
    flags = json.dumps({"flags": [{"name": f"flag-{k}", "enabled": (i + k) % 2 == 0,
                                   "rollout": (i * k) % 100} for k in range(12)]})
    meta = {
        "name": f"{app}-config-{i:06d}", "namespace": ns,
        "uid": f"{i:08x}-2b7c-4d1e-8f3a-{(i * 2654435761) % (1 << 48):012x}",
        "resourceVersion": str(3000000 + i), "creationTimestamp": "2026-11-25T10:00:00Z",
        "labels": {"app.kubernetes.io/name": app, "app.kubernetes.io/part-of": "shop",
                   "app.kubernetes.io/managed-by": "helm", "environment": "production"},
        "annotations": {"meta.helm.sh/release-name": app, "meta.helm.sh/release-namespace": ns},
        "managedFields": [{"manager": "helm", "operation": "Update", "apiVersion": "v1",
                           "time": "2026-11-25T10:00:00Z", "fieldsType": "FieldsV1",
                           "fieldsV1": {"f:data": {".": {}, "f:application.properties": {},
                                                   "f:nginx.conf": {}, "f:features.json": {}},
                                        "f:metadata": {"f:labels": {".": {}}}}}],
    }
    return json.dumps({"kind": "ConfigMap", "apiVersion": "v1", "metadata": meta,
                       "data": {"application.properties": props, "nginx.conf": nginx,
                                "features.json": flags}}, separators=(",", ":")).encode()


def secret_item(gen, i):
    """mask_memory's ~3.4 KB Secret (four base64 values, last-applied annotation), with the
    `kind` and `apiVersion` an item of a `kind: List` carries."""
    item = gen.item(i)
    assert item.startswith(b"{")
    return b'{"kind":"Secret","apiVersion":"v1",' + item[1:]


def write_list(path, size, item):
    """Writes a `kind: List` of about `size` bytes, items from item(i); returns the count."""
    with open(path, "wb") as f:
        head = b'{"kind":"List","apiVersion":"v1","metadata":{"resourceVersion":"4000000"},"items":['
        f.write(head)
        total, i = len(head), 0
        while total < size:
            piece = (b"," if i else b"") + item(i)
            f.write(piece)
            total += len(piece)
            i += 1
        f.write(b"]}\n")
    return i


# --------------------------------------------------------------------------- servers

def nginx_common(tmp, name):
    temp = os.path.join(tmp, f"{name}-temp")
    os.makedirs(temp, exist_ok=True)
    return f"""daemon off;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}-error.log warn;
events {{ worker_connections 4096; }}
"""


def run_nginx(procs, tmp, name, text, port):
    conf = os.path.join(tmp, f"{name}.conf")
    with open(conf, "w") as f:
        f.write(text)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = procs.start([nginx, "-p", tmp, "-e", f"{tmp}/{name}-error.log", "-c", conf],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bc.wait_tcp(port, proc=proc)
    return proc


def add_upstream_token_length(parser):
    """`--upstream-token-length N`, shared with instructions.py."""
    def length(text):
        n = int(text)
        if not 8 <= n <= 8000:
            raise argparse.ArgumentTypeError("must be between 8 and 8000")
        return n
    parser.add_argument("--upstream-token-length", type=length, default=32, metavar="N",
                        help="characters of the proxy's own bearer token upstream (default: 32; "
                             "a projected service-account token is about 1000); in "
                             "proxy_bench.py the direct and nginx-proxy paths present it too")


def make_upstream_token(length):
    """The proxy's own credential: `length` random base64url characters (32 by default;
    a projected service-account token, what chaperone holds in a cluster, is a JWT of
    about 1,000)."""
    return bc.b64url(os.urandom(length))[:length]


def pod_setup(procs, tmp, policy_name, token_length=32):
    """The one-Pod setup of instructions.py and timeline.py: a PKI, a caller token, the
    upstream nginx (its `www` empty), a kubeconfig for it with its own token, and a policy
    allowing `get pods`. Returns (pki, caller token, upstream port, kubeconfig, policy)."""
    os.chmod(tmp, 0o711)
    pki = bc.Pki(tmp)
    caller = pki.token()
    upstream_token = make_upstream_token(token_length)
    www = os.path.join(tmp, "www")
    os.makedirs(www)
    up_crt, up_key = pki.server_cert("upstream")
    up_port, _ = start_upstream_nginx(procs, tmp, up_crt, up_key, upstream_token, www)
    kubeconfig = os.path.join(tmp, "upstream.kubeconfig")
    bc.write_kubeconfig(kubeconfig, f"https://127.0.0.1:{up_port}", pki.ca_crt, upstream_token)
    policy = os.path.join(tmp, "policy.yaml")
    bc.write_policy(policy, policy_name, [("get-pods", "pods", ["get"])])
    return pki, caller, up_port, kubeconfig, policy


def start_upstream_nginx(procs, tmp, crt, key, token, www):
    """The stand-in API server: nginx, one worker, TLS with HTTP/2 and 1.1, requiring the
    proxy's token: the Pod, /version, and the two List files under `www`."""
    port = bc.free_port()
    lit = bc.nginx_literal
    text = nginx_common(tmp, "upstream") + "worker_processes 1;\n" + f"""http {{
{bc.nginx_http_common(tmp, "upstream")}    default_type application/json;
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {crt};
        ssl_certificate_key {key};
        root {www};
        location = /version {{ return 200 {lit(bc.VERSION_JSON)}; }}
        location = {bc.POD_PATH} {{
            if ($http_authorization != "Bearer {token}") {{ return 401 {lit(bc.UNAUTHORIZED_JSON)}; }}
            return 200 {lit(bc.POD_JSON)};
        }}
        location = {CONFIGMAPS_PATH} {{
            if ($http_authorization != "Bearer {token}") {{ return 401 {lit(bc.UNAUTHORIZED_JSON)}; }}
        }}
        location = {SECRETS_PATH} {{
            if ($http_authorization != "Bearer {token}") {{ return 401 {lit(bc.UNAUTHORIZED_JSON)}; }}
        }}
        location / {{ return 404 {lit(bc.NOT_FOUND_JSON)}; }}
    }}
}}
"""
    proc = run_nginx(procs, tmp, "upstream", text, port)
    return port, proc


def start_nginx_proxy(procs, tmp, crt, key, ca, up_port, workers, buffer_size=None):
    """A plain TLS reverse proxy: nginx passing everything (Authorization included) to the
    upstream over HTTPS/1.1 with a keep-alive pool, verifying its certificate, unbuffered
    (as a Kubernetes API proxy must be, for watches)."""
    port = bc.free_port()
    buffers = "" if not buffer_size else (
        f"\n            proxy_buffer_size {buffer_size};\n            proxy_buffers 4 {buffer_size};"
        f"\n            proxy_busy_buffers_size {buffer_size};")
    text = nginx_common(tmp, "nginx-proxy") + f"worker_processes {workers};\n" + f"""http {{
{bc.nginx_http_common(tmp, "nginx-proxy")}    upstream api {{
        server 127.0.0.1:{up_port};
        keepalive 64;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {crt};
        ssl_certificate_key {key};
        location / {{
            proxy_pass https://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
            proxy_ssl_server_name on;
            proxy_ssl_session_reuse on;
            proxy_buffering off;
            proxy_request_buffering off;{buffers}
            proxy_read_timeout 3600s;
        }}
    }}
}}
"""
    proc = run_nginx(procs, tmp, "nginx-proxy", text, port)
    return port, proc


def stream_module():
    """nginx's `stream` module, which Debian builds as a module of its own (package
    libnginx-mod-stream); None when it is not installed."""
    return next((m for m in STREAM_MODULES if os.path.exists(m)), None)


def start_tcp_relay(procs, tmp, up_port, workers, module):
    """The floor under any proxy: nginx's `stream` module copying bytes between the caller
    and the upstream, TLS end to end (the caller's handshake is with the upstream), no
    HTTP and no cryptography of its own. What it adds over direct is two more processes
    woken per request and a copy each way: what every proxy on the path pays at least."""
    port = bc.free_port()
    text = f"load_module {module};\n" + nginx_common(tmp, RELAY) + f"""worker_processes {workers};
stream {{
    server {{
        listen 127.0.0.1:{port};
        proxy_pass 127.0.0.1:{up_port};
        proxy_timeout 3600s;
        tcp_nodelay on;
    }}
}}
"""
    proc = run_nginx(procs, tmp, RELAY, text, port)
    return port, proc


def start_chaperone(procs, tmp, name, binary, pki, kubeconfig, policy, extra=None):
    """`chaperone proxy` with identity, the policy and the audit recording on a file;
    `extra`: more top-level config keys."""
    d = os.path.join(tmp, name)
    os.makedirs(d)
    crt, key = pki.server_cert(name)
    port, admin = bc.free_port(), bc.free_port()
    config = os.path.join(d, "chaperone.yaml")
    audit = os.path.join(d, "audit.jsonl")
    bc.write_proxy_config(config, listen=port, admin=admin, cert=crt, key=key, jwks=pki.jwks,
                          policy=policy, kubeconfig=kubeconfig, audit={"file": audit},
                          extra=extra)
    log = os.path.join(d, "proxy.log")
    logf = open(log, "w")
    proc = procs.start([binary, "proxy", "--config", config], stdout=logf, stderr=logf)
    logf.close()
    try:
        bc.wait_http(f"http://127.0.0.1:{admin}/readyz", proc=proc)
    except RuntimeError as e:
        raise RuntimeError(f"{name}: {e}; its log ends:\n{bc.log_tail(log)}") from None
    return {"proc": proc, "port": port, "admin": admin, "dir": d, "audit": audit}


# --------------------------------------------------------------------------- watch upstream

def run_watch_upstream(args):
    """Internal mode: an asyncio HTTPS/1.1 server holding pod watches open."""
    with open(args.token_file) as f:
        token = f.read().strip()
    stats = {"streams": 0, "open": 0, "events": 0, "requests": 0}
    pod = json.loads(bc.POD_JSON)

    def event(kind, rv):
        if kind == "BOOKMARK":
            obj = {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": str(rv)}}
        else:
            pod["metadata"]["resourceVersion"] = str(rv)
            obj = pod
        line = json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n"
        return b"%x\r\n%s\r\n" % (len(line), line)

    def simple(code, doc):
        body = json.dumps(doc).encode()
        return (f"HTTP/1.1 {code} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    async def handle(reader, writer):
        try:
            while True:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 600)
                lines = head.decode("latin-1").split("\r\n")
                target = lines[0].split(" ")[1]
                headers = {}
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
                stats["requests"] += 1
                url = urllib.parse.urlsplit(target)
                query = urllib.parse.parse_qs(url.query)
                if url.path == "/version":
                    writer.write(simple(200, json.loads(bc.VERSION_JSON)))
                elif headers.get("authorization") != f"Bearer {token}":
                    writer.write(simple(401, json.loads(bc.UNAUTHORIZED_JSON)))
                elif url.path == "/bench/stats":
                    writer.write(simple(200, stats))
                elif url.path == WATCH_PATH and query.get("watch") == ["true"]:
                    break
                else:
                    writer.write(simple(404, json.loads(bc.NOT_FOUND_JSON)))
                await writer.drain()
            # the watch: held until the client goes or the server's lifetime ends
            stats["streams"] += 1
            stats["open"] += 1
            try:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n" + event("ADDED", 123456))
                await writer.drain()
                stats["events"] += 1
                rv = 123457
                while True:
                    await asyncio.sleep(args.interval)
                    writer.write(event("MODIFIED" if rv % 2 else "BOOKMARK", rv))
                    await writer.drain()
                    stats["events"] += 1
                    rv += 1
            finally:
                stats["open"] -= 1
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, OSError,
                IndexError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def main():
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.cert, args.key)
        ctx.set_alpn_protocols(["http/1.1"])
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx, backlog=2048)
        print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
        await asyncio.sleep(args.lifetime)  # bounded: the harness kills it before

    raise_nofile()
    asyncio.run(main())


def raise_nofile(want=65536):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --------------------------------------------------------------------------- load drivers

def find_oha(explicit):
    """--oha if given (None if it is not executable), else the first oha found."""
    if explicit:
        return explicit if os.path.isfile(explicit) and os.access(explicit, os.X_OK) else None
    for c in (shutil.which("oha"), os.path.expanduser("~/.cargo/bin/oha"), "/tmp/oha/bin/oha"):
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def run_oha(oha, port, token, duration, rate, connections, ca, procs):
    """One oha run at a fixed rate with the coordinated-omission correction (latency counted
    from when each request was due, not from when it could be sent); latencies in us.
    `-w`: requests in flight at the deadline are waited for, not counted as aborted."""
    cmd = [oha, "--no-tui", "--output-format", "json", "-z", f"{duration}s", "-w",
           "-q", str(rate), "--latency-correction", "-c", str(connections), "--cacert", ca,
           "-H", f"Authorization: Bearer {token}", "-H", "Accept: application/json",
           f"https://127.0.0.1:{port}{bc.POD_PATH}"]
    with bc.OthersCpu(procs) as cpu:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    try:
        doc = json.loads(out.stdout)
    except ValueError:
        raise RuntimeError(f"oha output is not JSON (exit {out.returncode}):"
                           f" {out.stdout[:500]} {out.stderr[:500]}")
    pct = doc["latencyPercentiles"]
    codes = {int(k): v for k, v in doc.get("statusCodeDistribution", {}).items()}
    errors = sum(doc.get("errorDistribution", {}).values())
    return {
        "p50": pct["p50"] * 1e6, "p99": pct["p99"] * 1e6, "p99.9": pct["p99.9"] * 1e6,
        "rps": doc["summary"]["requestsPerSec"], "ok": codes.get(200, 0),
        "bad": sum(v for k, v in codes.items() if k != 200) + errors,
        "errors": doc.get("errorDistribution", {}), "codes": codes,
        "others": cpu.others, "seconds": duration,
    }


def curl_fetch(port, token, path, ca, out="/dev/null", timeout=120):
    """GETs path with curl over HTTP/1.1; returns (status, bytes received, seconds)."""
    cmd = ["curl", "-sS", "--http1.1", "--cacert", ca, "-H", f"Authorization: Bearer {token}",
           "-H", "Accept: application/json", "--max-time", str(timeout), "-o", out,
           "-w", "%{http_code} %{size_download} %{time_total}", f"https://127.0.0.1:{port}{path}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 10)
    code, size, secs = r.stdout.split()
    return int(code), int(size), float(secs)


def tool_versions(oha):
    """One line naming the versions of the tools used."""
    def first_line(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return None
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    parts = [first_line([nginx, "-v"]), first_line(["wrk", "-v"]),
             first_line([oha, "--version"]) if oha else None, first_line(["curl", "--version"]),
             f"Python {sys.version.split()[0]}"]
    return "; ".join(" ".join(p.replace("nginx version: ", "").split()[:2]) for p in parts if p)


def get_ok(port, token, path, ca, n=1):
    for _ in range(n):
        code, size, _ = curl_fetch(port, token, path, ca, timeout=10)
        if code != 200:
            raise RuntimeError(f"GET {path} on :{port} answered {code}")


class RssSampler:
    """Samples a pid's VmRSS in a thread; `peak` is the highest seen (KiB)."""

    def __init__(self, pid, interval=0.2):
        self.pid, self.interval, self.peak = pid, interval, 0
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop_flag.is_set():
            try:
                self.peak = max(self.peak, bc.proc_status(self.pid)["VmRSS"])
            except OSError:
                return
            self.stop_flag.wait(self.interval)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        self.thread.join(5)
        return False


# --------------------------------------------------------------------------- the bench

# What the "CPU us/req" column of latency and saturation means.
CPU_PER_REQUEST = ("CPU us/req: CPU time of the server answering on the path - the upstream nginx"
                   " for direct, the proxy alone otherwise - per request, median of the runs")


class Bench:
    """What the sections share: the temporary directory, the PKI, tokens, processes."""

    def __init__(self, args, tmp, procs):
        self.args, self.tmp, self.procs = args, tmp, procs
        self.report = []      # lines printed at the end
        self.failures = []
        self.binary = bc.copy_binary(args.binary, tmp)
        self.pki = bc.Pki(tmp)
        self.ca = self.pki.ca_crt
        self.caller = self.pki.token()  # the ES256 JWT callers present to chaperone
        # The proxy's own credential (the direct and nginx-proxy paths present it too).
        self.upstream_token = make_upstream_token(args.upstream_token_length)
        self.token_file = os.path.join(tmp, "upstream.token")
        with open(self.token_file, "w") as f:
            f.write(self.upstream_token)
        self.ports = {}
        self.server = {}  # path -> the process (group) that answers on it
        self.chaperone = None
        self.idle = None
        self.load_peak = None
        self.lists_peak = None
        self.watch_memory = None
        self.latency_paths = PATHS + ((RELAY,) if args.relay and "latency" in args.only else ())

    def say(self, line=""):
        self.report.append(line)

    def token_for(self, path):
        """direct, nginx-proxy and the relay take the upstream's token; chaperone the
        caller's JWT."""
        return self.caller if path == "chaperone" else self.upstream_token

    def cpu_of(self, path):
        """CPU seconds used so far by the server answering on `path` (all its processes)."""
        return bc._group_cpu({self.server[path].pid})

    def disturbed(self, run):
        return run["others"] > self.args.disturbed * (os.cpu_count() or 1) * run["seconds"]

    def say_disturbed(self, runs):
        """The footnote for the runs marked * (other processes took too much CPU)."""
        disturbed = [x for p in runs for x in runs[p] if self.disturbed(x)]
        if disturbed:
            taken = ", ".join(f"{x['others']:.1f}" for x in disturbed)
            self.say(f"  * other processes took more than {100 * self.args.disturbed:g}% of the CPU"
                     f" during the run ({taken} CPU-s)")

    def start_main(self, need_lists):
        """Upstream nginx, nginx-proxy and chaperone in front of it; chaperone's idle RSS."""
        args, tmp = self.args, self.tmp
        www = os.path.join(tmp, "www")
        os.makedirs(os.path.join(www, "api", "v1"))
        # nginx's workers (user nobody when started as root) must reach the List files
        for d in (tmp, www, os.path.join(www, "api"), os.path.join(www, "api", "v1")):
            os.chmod(d, 0o711)
        self.lists = {}
        if need_lists:
            size = int(args.list_mb * 1_000_000)
            t0 = time.monotonic()
            cm = os.path.join(www, CONFIGMAPS_PATH.lstrip("/"))
            sec = os.path.join(www, SECRETS_PATH.lstrip("/"))
            gen = mask_memory.SecretListGenerator(size, distinct=0)
            self.lists["configmaps"] = {"path": CONFIGMAPS_PATH, "file": cm,
                                        "items": write_list(cm, size, configmap_item)}
            self.lists["secrets"] = {"path": SECRETS_PATH, "file": sec,
                                     "items": write_list(sec, size, lambda i: secret_item(gen, i))}
            for v in self.lists.values():
                v["bytes"] = os.path.getsize(v["file"])
                os.chmod(v["file"], 0o644)
            bc.log(f"wrote the Lists ({time.monotonic() - t0:.1f} s)")
        up_crt, up_key = self.pki.server_cert("upstream")
        self.ports["direct"], self.server["direct"] = start_upstream_nginx(
            self.procs, tmp, up_crt, up_key, self.upstream_token, www)
        px_crt, px_key = self.pki.server_cert("nginx-proxy")
        self.ports["nginx-proxy"], self.server["nginx-proxy"] = start_nginx_proxy(
            self.procs, tmp, px_crt, px_key, self.ca, self.ports["direct"], args.proxy_workers,
            args.proxy_buffer_size)
        if RELAY in self.latency_paths:
            self.ports[RELAY], self.server[RELAY] = start_tcp_relay(
                self.procs, tmp, self.ports["direct"], args.proxy_workers, stream_module())
        kubeconfig = os.path.join(tmp, "upstream.kubeconfig")
        bc.write_kubeconfig(kubeconfig, f"https://127.0.0.1:{self.ports['direct']}", self.ca,
                            self.upstream_token)
        policy = os.path.join(tmp, "policy.yaml")
        bc.write_policy(policy, "bench-proxy", [("get-pods", "pods", ["get"]),
                                                ("list-configmaps", "configmaps", ["list"]),
                                                ("list-secrets", "secrets", ["list"])],
                        namespaces=["default", "<cluster>"])
        bc.check_policy(self.binary, policy)
        self.chaperone = start_chaperone(self.procs, tmp, "proxy-main", self.binary, self.pki,
                                         kubeconfig, policy)
        self.ports["chaperone"] = self.chaperone["port"]
        self.server["chaperone"] = self.chaperone["proc"]
        for path in self.latency_paths:
            get_ok(self.ports[path], self.token_for(path), bc.POD_PATH, self.ca,
                   n=10 if path == "chaperone" else 1)
        time.sleep(args.settle)
        self.idle = bc.proc_status(self.chaperone["proc"].pid)
        self.idle_requests = 10


# --------------------------------------------------------------------------- sections

def section_latency(b):
    args = b.args
    oha = find_oha(args.oha)
    b.say(f"== latency: GET {bc.POD_PATH} ({len(bc.POD_JSON)} B), oha -q {args.rate}"
          f" --latency-correction -c {args.connections} (HTTP/1.1 over TLS),"
          f" {args.runs} x {args.duration} s per path, alternating")
    if not oha:
        b.failures.append("latency: oha not found (cargo install oha --locked, or --oha PATH)")
        b.say("  skipped: oha not found")
        return
    paths = b.latency_paths
    runs = {p: [] for p in paths}
    for p in paths:
        bc.log(f"latency warm-up {p} (2 s)")
        w = run_oha(oha, b.ports[p], b.token_for(p), 2, args.rate, args.connections, b.ca, b.procs)
        if w["bad"]:
            b.failures.append(f"latency warm-up {p}: {w['bad']} failed requests {w['codes']} {w['errors']}")
    for r in range(args.runs):
        for p in (paths if r % 2 == 0 else paths[::-1]):
            bc.log(f"latency run {r + 1}/{args.runs}: {p} ({args.duration} s)")
            cpu0 = b.cpu_of(p)
            res = run_oha(oha, b.ports[p], b.token_for(p), args.duration, args.rate,
                          args.connections, b.ca, b.procs)
            res["cpu_us"] = 1e6 * (b.cpu_of(p) - cpu0) / max(res["ok"] + res["bad"], 1)
            runs[p].append(res)
            if res["bad"]:
                b.failures.append(f"latency {p}: {res['bad']} failed requests {res['codes']} {res['errors']}")
    med = {p: {q: bc.median([x[q] for x in runs[p]]) for q in ("p50", "p99", "p99.9", "rps")}
           for p in paths}

    def mark(x):
        return "*" if b.disturbed(x) else ""

    b.say(f"  {'path':<12} {'p50 us':>8} {'p99 us':>8} {'p99.9 us':>9} {'req/s':>7} {'CPU us/req':>10}"
          f"  runs p50/p99/p99.9 (us)")
    for p in paths:
        m = med[p]
        cpu = bc.median([x["cpu_us"] for x in runs[p]])
        per = "  ".join(f"{x['p50']:.0f}/{x['p99']:.0f}/{x['p99.9']:.0f}{mark(x)}" for x in runs[p])
        b.say(f"  {p:<12} {m['p50']:>8.0f} {m['p99']:>8.0f} {m['p99.9']:>9.0f} {m['rps']:>7.0f}"
              f" {cpu:>10.0f}  {per}")

    b.say(f"  ({CPU_PER_REQUEST})")

    def diff(a, c):
        return "  ".join(f"{q} {med[a][q] - med[c][q]:+.0f}" for q in ("p50", "p99", "p99.9"))

    b.say(f"  added by nginx-proxy (vs direct), us: {diff('nginx-proxy', 'direct')}")
    b.say(f"  added by chaperone   (vs direct), us: {diff('chaperone', 'direct')}")
    b.say(f"  chaperone - nginx-proxy, us:          {diff('chaperone', 'nginx-proxy')}")
    if RELAY in paths:
        b.say(f"  added by tcp-relay (vs direct), us:   {diff(RELAY, 'direct')}"
              "  (the floor: bytes copied, TLS end to end)")
    a50 = med["chaperone"]["p50"] - med["direct"]["p50"]
    a99 = med["chaperone"]["p99"] - med["direct"]["p99"]
    b.say(f"  target: chaperone adds p50 < {TARGET_ADDED_P50_US} us: {a50:.0f} us"
          f" ({'met' if a50 < TARGET_ADDED_P50_US else 'NOT met'}); p99 < {TARGET_ADDED_P99_US} us:"
          f" {a99:.0f} us ({'met' if a99 < TARGET_ADDED_P99_US else 'NOT met'})")
    b.say_disturbed(runs)
    ok = {p: sum(x["ok"] for x in runs[p]) for p in paths}
    b.say("  responses 200: " + ", ".join(f"{p} {ok[p]}" for p in paths)
          + "; other statuses/errors: " + ", ".join(f"{p} {sum(x['bad'] for x in runs[p])}" for p in paths))


def section_saturation(b):
    args = b.args
    b.say(f"== saturation: wrk -t{args.threads} -c{args.connections} (HTTP/1.1 over TLS), {args.runs} x"
          f" {args.duration} s per proxy alternating, 1 run direct; nginx-proxy has"
          f" {args.proxy_workers} worker(s), chaperone"
          f" {os.environ.get('CHAPERONE_WORKERS', '1')} thread(s) (CHAPERONE_WORKERS)")
    if not shutil.which("wrk"):
        b.failures.append("saturation: wrk not found (apt-get install -y wrk)")
        b.say("  skipped: wrk not found")
        return
    pid = b.chaperone["proc"].pid

    def one(p, seconds):
        group = {b.server[p].pid}
        upstream = {b.server["direct"].pid}
        before, up_before = bc.group_cpu_by_process(group), bc._group_cpu(upstream)
        wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        r = bc.run_wrk(b.ports[p], b.token_for(p), seconds, b.procs, threads=args.threads,
                       connections=args.connections)
        wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        after, up_after = bc.group_cpu_by_process(group), bc._group_cpu(upstream)
        n = max(r["requests"], 1)
        # The rest of the machine's CPU per request: the load driver's and (through a
        # proxy) the upstream's, which a proxy's way of talking to them can change.
        r["wrk_us"] = 1e6 * (wrk_after.ru_utime + wrk_after.ru_stime
                             - wrk_before.ru_utime - wrk_before.ru_stime) / n
        r["upstream_us"] = 1e6 * (up_after - up_before) / n if p != "direct" else 0.0
        used = {pid: tuple(a - b for a, b in zip(after[pid], before.get(pid, (0, 0))))
                for pid in after}
        r["user_us"] = 1e6 * sum(u for u, _ in used.values()) / n
        r["sys_us"] = 1e6 * sum(s for _, s in used.values()) / n
        r["cpu_us"] = r["user_us"] + r["sys_us"]
        # Each process's share of one core, busiest first (nginx-proxy: its workers; the
        # master takes nothing): how nginx's workers split the connections decides its speed.
        r["shares"] = sorted((100 * (u + s) / seconds for pid, (u, s) in used.items()
                              if pid != b.server[p].pid or len(used) == 1), reverse=True)
        if r["non2xx"] or r["socket_errors"]:
            b.failures.append(f"saturation {p}: {r['non2xx']} non-2xx, {r['socket_errors']} socket errors")
        return r

    runs = {p: [] for p in PATHS}
    with RssSampler(pid) as sampler:
        for p in PATHS:
            bc.log(f"saturation warm-up {p} (2 s)")
            one(p, 2)
        bc.log(f"saturation direct ({args.duration} s)")
        runs["direct"].append(one("direct", args.duration))
        for r in range(args.runs):
            for p in (("nginx-proxy", "chaperone") if r % 2 == 0 else ("chaperone", "nginx-proxy")):
                bc.log(f"saturation run {r + 1}/{args.runs}: {p} ({args.duration} s)")
                runs[p].append(one(p, args.duration))
    status = bc.proc_status(pid)
    # VmHWM can miss a peak (the kernel updates it lazily): the samples complete it
    b.load_peak = {"hwm": status["VmHWM"], "sampled": sampler.peak, "rss_after": status["VmRSS"],
                   "peak": max(status["VmHWM"], sampler.peak)}

    def text(x):
        return f"{x['rps']:.0f}" + ("*" if b.disturbed(x) else "")

    b.say(f"  {'path':<12} {'median req/s':>12} {'CPU us/req':>10} {'user/kernel':>11}"
          f"  {'runs':<28} p50 / p99 (last run)")
    for p in PATHS:
        rs = runs[p]
        rps, cpu = bc.median([x["rps"] for x in rs]), bc.median([x["cpu_us"] for x in rs])
        user, kernel = bc.median([x["user_us"] for x in rs]), bc.median([x["sys_us"] for x in rs])
        b.say(f"  {p:<12} {rps:>12.0f} {cpu:>10.1f} {f'{user:.1f}/{kernel:.1f}':>11}"
              f"  {' '.join(text(x) for x in rs):<28} {rs[-1]['p50']} / {rs[-1]['p99']}")
    b.say(f"  ({CPU_PER_REQUEST}; user/kernel: its utime and stime, which include the loopback"
          " TCP work done on a send)")
    b.say("  the rest of the machine's CPU per request (median): " + ", ".join(
        f"{p}: wrk {bc.median([x['wrk_us'] for x in runs[p]]):.1f}"
        + (f" + upstream {bc.median([x['upstream_us'] for x in runs[p]]):.1f}" if p != "direct" else "")
        + " us" for p in PATHS))
    for p, what in (("nginx-proxy", "its workers'"), ("chaperone", "the process's")):
        b.say(f"  {p}: {what} CPU, % of one core, by run: "
              + ", ".join("+".join(f"{s:.0f}" for s in x["shares"]) + f" ({x['rps'] / 1000:.1f} k)"
                          for x in runs[p]))
    pairs = [c["rps"] / n["rps"] for c, n in zip(runs["chaperone"], runs["nginx-proxy"])]
    ratio = bc.median(pairs)
    b.say(f"  chaperone / nginx-proxy = {ratio:.3f} (median of the run-by-run ratios"
          f" {' '.join(f'{x:.3f}' for x in pairs)}); target >= 1.0: {'met' if ratio >= 1.0 else 'NOT met'}")
    # nginx-proxy's speed depends on how its workers split the connections: the pairs by
    # that, so a ratio can be read against the mode it met.
    modes = {}
    for pair, n in zip(pairs, runs["nginx-proxy"]):
        s = n["shares"] + [0.0]
        mode = "one worker busy" if s[1] < 0.25 * s[0] else "workers split"
        modes.setdefault(mode, []).append(pair)
    b.say("  by nginx-proxy's mode: " + "; ".join(
        f"{mode}: {' '.join(f'{x:.3f}' for x in xs)}" for mode, xs in sorted(modes.items())))
    med = {p: bc.median([x["rps"] for x in runs[p]]) for p in PATHS}
    b.say(f"  chaperone / direct = {med['chaperone'] / med['direct']:.3f},"
          f" nginx-proxy / direct = {med['nginx-proxy'] / med['direct']:.3f}")
    total = sum(x["requests"] for p in PATHS for x in runs[p])
    b.say(f"  {total} requests, non-2xx {sum(x['non2xx'] for p in PATHS for x in runs[p])},"
          f" socket errors {sum(x['socket_errors'] for p in PATHS for x in runs[p])};"
          f" chaperone RSS: peak sampled {b.load_peak['sampled'] / MiB:.1f} MiB,"
          f" VmHWM {b.load_peak['hwm'] / MiB:.1f} MiB, after {b.load_peak['rss_after'] / MiB:.1f} MiB")
    b.say_disturbed(runs)


def scan_file(path, patterns):
    counts = dict.fromkeys(patterns, 0)
    tails = dict.fromkeys(patterns, b"")
    with open(path, "rb") as f:
        for data in iter(lambda: f.read(1 << 20), b""):
            for name, pat in patterns.items():
                keep = len(pat) - 1
                counts[name] += data.count(pat) + (tails[name] + data[:keep]).count(pat)
                tails[name] = (tails[name] + data[-keep:])[-keep:]
    return counts


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for data in iter(lambda: f.read(1 << 20), b""):
            h.update(data)
    return h.hexdigest()


def section_lists(b):
    args = b.args
    b.say(f"== lists: ~{args.list_mb:g} MB `kind: List` files from nginx, curl --http1.1 -o /dev/null,"
          f" {args.fetches} fetches per path alternating; MB/s = file size (10^6 B) / time_total;"
          f" nginx-proxy unbuffered, proxy_buffer_size {args.proxy_buffer_size or 'default (4k)'}")
    if not shutil.which("curl"):
        b.failures.append("lists: curl not found")
        b.say("  skipped: curl not found")
        return
    results = {}
    for name, lst in b.lists.items():
        times = {p: [] for p in PATHS}
        received = {p: set() for p in PATHS}
        # CPU seconds per path of the upstream nginx, the proxy and curl, over all fetches
        cpu = {p: [0.0, 0.0, 0.0] for p in PATHS}
        for i in range(args.fetches):
            for p in (PATHS if i % 2 == 0 else PATHS[::-1]):
                up0, px0 = b.cpu_of("direct"), (b.cpu_of(p) if p != "direct" else 0.0)
                ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                code, size, secs = curl_fetch(b.ports[p], b.token_for(p), lst["path"], b.ca)
                ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu[p][0] += b.cpu_of("direct") - up0
                cpu[p][1] += (b.cpu_of(p) - px0) if p != "direct" else 0.0
                cpu[p][2] += (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
                if code != 200:
                    b.failures.append(f"lists {name} {p}: status {code}")
                    continue
                times[p].append(secs)
                received[p].add(size)
        bc.log(f"lists {name}: " + ", ".join(f"{p} {bc.median(times[p]):.3f} s" for p in PATHS if times[p]))
        results[name] = {"times": times, "received": received, "cpu": cpu}
        # checks, through chaperone, on one more (untimed) fetch kept in a file
        out = os.path.join(b.tmp, f"{name}.through-chaperone")
        code, size, _ = curl_fetch(b.ports["chaperone"], b.caller, lst["path"], b.ca, out=out)
        if name == "configmaps":
            same = code == 200 and sha256(out) == sha256(lst["file"])
            results[name]["check"] = "byte for byte as served" if same else "DIFFERENT from the file"
            if not same:
                b.failures.append("lists configmaps: chaperone's body differs from the file")
        else:
            applied = b'"kubectl.kubernetes.io/last-applied-configuration":"chaperone:masked"'
            c = scan_file(out, {"marker": MARKER, "canary": CANARY_B64, "uid": b'"uid":"',
                                "applied": applied})
            want = lst["items"] * len(mask_memory.DATA_KEYS)
            results[name]["check"] = (f"{c['uid']} items, {c['marker']} values masked (expected {want}),"
                                      f" {c['canary']} in clear, {c['applied']} last-applied masked")
            if code != 200 or c["uid"] != lst["items"] or c["marker"] != want or c["canary"]:
                b.failures.append(f"lists secrets: masking check failed: {results[name]['check']}")
        os.remove(out)
        for p in ("direct", "nginx-proxy") + (("chaperone",) if name == "configmaps" else ()):
            if received[p] and received[p] != {lst["bytes"]}:
                b.failures.append(f"lists {name} {p}: received {sorted(received[p])} B, not {lst['bytes']}")
    status = bc.proc_status(b.chaperone["proc"].pid)
    b.lists_peak = status["VmHWM"]

    b.say(f"  {'List':<11} {'items':>6} {'MB':>6}  {'direct':>8} {'nginx-proxy':>11} {'chaperone':>9}"
          f"  MB/s (median); seconds per fetch via chaperone")
    for name, lst in b.lists.items():
        t = results[name]["times"]
        mbps = {p: lst["bytes"] / 1e6 / bc.median(t[p]) if t[p] else 0.0 for p in PATHS}
        results[name]["mbps"] = mbps
        b.say(f"  {name:<11} {lst['items']:>6} {lst['bytes'] / 1e6:>6.1f}  {mbps['direct']:>8.0f}"
              f" {mbps['nginx-proxy']:>11.0f} {mbps['chaperone']:>9.0f}"
              f"  {' '.join(f'{x:.3f}' for x in t['chaperone'])}")
    for name, lst in b.lists.items():
        m = results[name]["mbps"]
        got = sorted(results[name]["received"]["chaperone"])
        ratio_n = m["chaperone"] / m["nginx-proxy"] if m["nginx-proxy"] else 0
        ratio_d = m["chaperone"] / m["direct"] if m["direct"] else 0
        if name == "configmaps":
            verdict = f"target >= nginx-proxy: {'met' if ratio_n >= 1.0 else 'NOT met'}"
        else:
            verdict = (f"target >= {TARGET_SECRETS_MBPS} MB/s: "
                       f"{'met' if m['chaperone'] >= TARGET_SECRETS_MBPS else 'NOT met'}")
        b.say(f"  {name}: chaperone / nginx-proxy = {ratio_n:.2f}, chaperone / direct = {ratio_d:.2f};"
              f" {verdict}; the client received {got[0] if got else 0} B through chaperone;"
              f" {results[name]['check']}")
    # Three processes share two cores on every path: what each costs per MB bounds MB/s.
    for name, lst in b.lists.items():
        mb = lst["bytes"] / 1e6 * args.fetches
        c = results[name]["cpu"]
        b.say(f"  {name}: CPU ms per MB (upstream nginx + proxy + curl = all): " + "; ".join(
            f"{p} {1000 * c[p][0] / mb:.2f} + {1000 * c[p][1] / mb:.2f} + {1000 * c[p][2] / mb:.2f}"
            f" = {1000 * sum(c[p]) / mb:.2f}" for p in PATHS))
    b.say(f"  chaperone VmHWM after the Lists {b.lists_peak / MiB:.1f} MiB")


async def hold_watches(b, port, token, n, hold, pid, sample_every):
    """Opens n watches through chaperone, holds them `hold` seconds sampling pid's RSS."""
    ctx = ssl.create_default_context(cafile=b.ca)
    ctx.set_alpn_protocols(["http/1.1"])
    request = (f"GET {WATCH_PATH}?watch=true&allowWatchBookmarks=true&resourceVersion=123456 HTTP/1.1\r\n"
               f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
               f"Accept: application/json\r\nUser-Agent: proxy-bench\r\n\r\n").encode()
    gate = asyncio.Semaphore(64)  # handshakes in flight
    state = [{"events": {}, "opened": False, "ended": None} for _ in range(n)]
    opened = asyncio.Event()
    count = {"opened": 0, "done": 0}

    def settle_one():
        count["done"] += 1
        if count["done"] == n:
            opened.set()

    async def one(i):
        st = state[i]
        writer = None
        try:
            async with gate:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port, ssl=ctx), 30)
                writer.write(request)
                await writer.drain()
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            status = head.split(b" ", 2)[1]
            if status != b"200" or b"chunked" not in head.lower():
                st["ended"] = f"status {status.decode()}"
                settle_one()
                return
            st["opened"] = True
            count["opened"] += 1
            settle_one()
            buf = b""
            while True:
                size_line = await reader.readline()
                if not size_line:
                    st["ended"] = "EOF"
                    return
                size = int(size_line.strip().split(b";")[0], 16)
                if size == 0:
                    st["ended"] = "end of stream"
                    return
                buf += (await reader.readexactly(size + 2))[:-2]
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.strip():
                        kind = json.loads(line)["type"]
                        st["events"][kind] = st["events"].get(kind, 0) + 1
        except asyncio.CancelledError:
            raise
        except Exception as e:  # an early end: recorded, not raised
            st["ended"] = f"{type(e).__name__}: {e}"[:120]
            if not st["opened"]:
                settle_one()
        finally:
            if writer is not None:
                writer.close()

    t0 = time.monotonic()
    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    try:
        await asyncio.wait_for(opened.wait(), 120)
    except asyncio.TimeoutError:
        pass
    open_secs = time.monotonic() - t0
    samples = []
    start = time.monotonic()
    while True:
        elapsed = time.monotonic() - start
        samples.append((elapsed, bc.proc_status(pid)["VmRSS"],
                        sum(1 for s in state if s["opened"] and s["ended"] is None)))
        if elapsed >= hold:
            break
        await asyncio.sleep(min(sample_every, hold - elapsed))
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"state": state, "open_secs": open_secs, "opened": count["opened"], "samples": samples}


def section_watches(b):
    args = b.args
    tmp = os.path.join(b.tmp, "watches")
    os.makedirs(tmp)
    b.say(f"== watches: {args.watches} concurrent watches of pods through chaperone (HTTP/1.1 over TLS"
          f" from asyncio clients), held {args.watch_seconds:g} s; upstream: Python asyncio HTTPS/1.1,"
          f" one event per stream every {args.watch_interval:g} s (one upstream connection per watch)")
    nofile = raise_nofile()
    if nofile < 2 * args.watches + 200:
        b.failures.append(f"watches: open-file limit {nofile} is too low for {args.watches} watches")
        b.say(f"  skipped: RLIMIT_NOFILE {nofile}")
        return
    crt, key = b.pki.server_cert("watch-upstream")
    up = b.procs.start([sys.executable, os.path.abspath(__file__), "watch-upstream", "--cert", crt,
                        "--key", key, "--token-file", b.token_file, "--interval", str(args.watch_interval),
                        "--lifetime", str(args.watch_seconds + 300)],
                       stdout=subprocess.PIPE, text=True)
    line = up.stdout.readline()
    if not line.startswith("READY "):
        raise RuntimeError(f"watch upstream did not start: {line!r}")
    up_port = int(line.split()[1])
    kubeconfig = os.path.join(tmp, "upstream.kubeconfig")
    bc.write_kubeconfig(kubeconfig, f"https://127.0.0.1:{up_port}", b.ca, b.upstream_token)
    policy = os.path.join(tmp, "policy.yaml")
    bc.write_policy(policy, "bench-watches", [("watch-pods", "pods", ["watch", "list", "get"])])
    bc.check_policy(b.binary, policy)
    # One caller holds them all: its bound on open streams (default 100) raised to fit.
    px = start_chaperone(b.procs, tmp, "chaperone-watches", b.binary, b.pki, kubeconfig, policy,
                         extra={"maxStreamsPerCaller": max(args.watches, 1)})
    pid = px["proc"].pid
    get_ok(px["port"], b.caller, "/version", b.ca, n=10)
    time.sleep(args.settle)
    idle = bc.proc_status(pid)["VmRSS"]
    bc.log(f"watches: opening {args.watches} through chaperone, holding {args.watch_seconds:g} s")
    res = asyncio.run(hold_watches(b, px["port"], b.caller, args.watches, args.watch_seconds, pid,
                                   args.watch_sample))
    def upstream_stats():
        return json.loads(subprocess.run(
            ["curl", "-sS", "--cacert", b.ca, "-H", f"Authorization: Bearer {b.upstream_token}",
             f"https://127.0.0.1:{up_port}/bench/stats"], capture_output=True, text=True,
            timeout=30).stdout)

    stats = upstream_stats()
    # the upstream notices a closed stream at its next write: wait two events' time
    linger = max(args.settle, 2 * args.watch_interval + 1)
    time.sleep(linger)
    stats_later = upstream_stats()
    after_close = bc.proc_status(pid)
    b.procs.stop(px["proc"])
    b.procs.stop(up)

    state, samples = res["state"], res["samples"]
    held = [s for s in state if s["opened"]]
    events = sorted(sum(s["events"].values()) for s in held)
    early = [s["ended"] for s in state if s["ended"] is not None]
    rss_open, rss_end = samples[0][1], samples[-1][1]
    drift = (rss_end - rss_open) / rss_open if rss_open else 0
    steady = abs(drift) <= args.steady
    b.watch_memory = {"idle": idle, "open": rss_open, "end": rss_end, "hwm": after_close["VmHWM"]}
    b.say(f"  opened {res['opened']}/{args.watches} in {res['open_secs']:.1f} s; the upstream saw"
          f" {stats['streams']} watch streams ({stats['open']} open when the clients closed,"
          f" {stats_later['open']} {linger:g} s later)")
    b.say(f"  chaperone RSS: idle {idle / MiB:.1f} MiB, after opening {rss_open / MiB:.1f} MiB"
          f" ({(rss_open - idle) / max(res['opened'], 1):.1f} KiB per watch), at the end"
          f" {rss_end / MiB:.1f} MiB ({100 * drift:+.1f}%: {'steady' if steady else 'NOT steady'},"
          f" within {100 * args.steady:g}%), VmHWM {after_close['VmHWM'] / MiB:.1f} MiB,"
          f" {linger:g} s after closing {after_close['VmRSS'] / MiB:.1f} MiB")
    b.say("  RSS samples (s: MiB, watches open): "
          + "  ".join(f"{t:.0f}: {r / MiB:.1f}, {o}" for t, r, o in samples))
    kinds = {}
    for s in held:
        for k, v in s["events"].items():
            kinds[k] = kinds.get(k, 0) + v
    if events:
        b.say(f"  events per watch: min {events[0]}, median {bc.median(events):.0f}, max {events[-1]}"
              f" ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))});"
              f" expected about {1 + int(args.watch_seconds / args.watch_interval)}")
    b.say(f"  watches that ended early or failed: {len(early)}"
          + (f" (e.g. {', '.join(sorted(set(early))[:3])})" if early else ""))
    if early or res["opened"] < args.watches:
        b.failures.append(f"watches: {args.watches - res['opened']} not opened, {len(early)} ended early")
    if stats_later["open"]:
        b.failures.append(f"watches: {stats_later['open']} upstream watch streams still open"
                          f" {linger:g} s after their clients closed")
    if events and events[0] < 1 + int(args.watch_seconds / args.watch_interval) - 2:
        b.failures.append(f"watches: a watch received only {events[0]} events")


def section_memory(b):
    b.say("== memory: chaperone RSS (VmRSS; peaks are VmHWM, the kernel's high-water mark)")
    idle = b.idle["VmRSS"] / MiB
    b.say(f"  idle (ready, {b.idle_requests} requests, {b.args.settle:g} s settled): {idle:.1f} MiB"
          f" ({idle * 1.048576:.1f} MB); target < {TARGET_IDLE_MB} MB:"
          f" {'met' if idle * 1.048576 < TARGET_IDLE_MB else 'NOT met'}")
    if b.load_peak:
        peak = b.load_peak["peak"] / MiB
        b.say(f"  under load (peak over latency and saturation: VmHWM, or a higher 0.2 s sample):"
              f" {peak:.1f} MiB ({peak * 1.048576:.1f} MB);"
              f" target < {TARGET_LOAD_MB} MB: {'met' if peak * 1.048576 < TARGET_LOAD_MB else 'NOT met'}")
    else:
        b.say("  under load: not measured (run the saturation section)")
    if b.lists_peak:
        b.say(f"  after streaming the Lists (VmHWM): {b.lists_peak / MiB:.1f} MiB")
    if b.watch_memory:
        w = b.watch_memory
        b.say(f"  {b.args.watches} watches (own process): {w['idle'] / MiB:.1f} MiB idle,"
              f" {w['open'] / MiB:.1f} MiB open, {w['end'] / MiB:.1f} MiB at the end")


# --------------------------------------------------------------------------- main

def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Modes: (default) run the benchmark; `watch-upstream` is internal.")
    sub = parser.add_subparsers(dest="mode")
    wu = sub.add_parser("watch-upstream", help="internal: the asyncio HTTPS server holding watches")
    wu.add_argument("--cert", required=True)
    wu.add_argument("--key", required=True)
    wu.add_argument("--token-file", required=True)
    wu.add_argument("--interval", type=float, default=5)
    wu.add_argument("--lifetime", type=float, default=600, help="exit after this many seconds")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help="comma-separated sections, from: " + ", ".join(SECTIONS) + " (default: all)")
    parser.add_argument("--duration", type=int, default=10,
                        help="seconds per load run, latency (oha) and saturation (wrk) (default: 10)")
    parser.add_argument("--runs", type=int, default=3,
                        help="runs per path for latency and saturation, alternating (default: 3)")
    parser.add_argument("--rate", type=int, default=1000, help="oha's fixed rate, req/s (default: 1000)")
    parser.add_argument("--connections", type=int, default=16,
                        help="connections of oha and wrk, the same for every path (default: 16)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default: 1)")
    parser.add_argument("--proxy-workers", default=str(os.cpu_count() or 1),
                        help="nginx-proxy's worker_processes (default: the number of cores;"
                             " chaperone runs one thread unless CHAPERONE_WORKERS is set)")
    parser.add_argument("--proxy-buffer-size",
                        help="nginx-proxy's proxy_buffer_size, the most it relays at a time when"
                             " unbuffered (default: nginx's, one page: 4k)")
    parser.add_argument("--list-mb", type=float, default=50, help="size of each List in MB (default: 50)")
    parser.add_argument("--fetches", type=int, default=5, help="fetches of each List per path (default: 5)")
    parser.add_argument("--watches", type=int, default=1000, help="concurrent watches (default: 1000)")
    parser.add_argument("--watch-seconds", type=float, default=60,
                        help="how long they are held (default: 60)")
    parser.add_argument("--watch-interval", type=float, default=5,
                        help="seconds between events on each watch (default: 5)")
    parser.add_argument("--watch-sample", type=float, default=5, help="RSS sampling period (default: 5 s)")
    parser.add_argument("--steady", type=float, default=0.05,
                        help="steady memory: the end within this share of after-open (default: 0.05)")
    parser.add_argument("--settle", type=float, default=3,
                        help="seconds before an idle RSS reading (default: 3)")
    parser.add_argument("--disturbed", type=float, default=0.05,
                        help="flag a run (*) when other processes took more than this share of the"
                             " machine's CPU during it (default: 0.05)")
    parser.add_argument("--oha", help="the oha binary (default: on PATH, else ~/.cargo/bin/oha, else /tmp/oha/bin/oha)")
    parser.add_argument("--binary", default=bc.DEFAULT_BINARY,
                        help="the chaperone binary (default: target/release/chaperone)")
    add_upstream_token_length(parser)
    parser.add_argument("--relay", action="store_true",
                        help="latency: also measure tcp-relay, nginx's stream module copying bytes with"
                             " TLS end to end (the floor under any proxy; needs libnginx-mod-stream)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    if args.mode == "watch-upstream":
        return run_watch_upstream(args)

    only = [s.strip() for s in args.only.split(",") if s.strip()]
    for s in only:
        if s not in SECTIONS:
            parser.error(f"unknown section {s!r}")
    if not (1 <= args.duration <= 300 and 1 <= args.runs <= 20 and 1 <= args.rate <= 100000
            and 1 <= args.connections <= 1000 and 0 < args.list_mb <= 500 and 1 <= args.fetches <= 50
            and 1 <= args.watches <= 10000 and 1 <= args.watch_seconds <= 1800
            and 0.1 <= args.watch_interval <= 60 and 0.5 <= args.watch_sample <= 60
            and 0 <= args.settle <= 60):
        parser.error("bounds: --duration 1..300, --runs 1..20, --rate 1..100000, --connections 1..1000,"
                     " --list-mb 0..500, --fetches 1..50, --watches 1..10000, --watch-seconds 1..1800,"
                     " --watch-interval 0.1..60, --watch-sample 0.5..60, --settle 0..60")
    main_stack = any(s in only for s in ("latency", "saturation", "lists", "memory"))
    if args.relay and "latency" in only and not stream_module():
        parser.error("--relay needs nginx's stream module (apt-get install libnginx-mod-stream)")
    if main_stack and not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")):
        raise SystemExit("nginx not found: apt-get install -y nginx-light")
    if not shutil.which("curl"):
        raise SystemExit("curl not found: apt-get install -y curl")

    bc.stop_on_signals()
    cpu = bc.CpuWatch()
    procs = bc.Procs()
    tmp = tempfile.mkdtemp(prefix="chaperone-proxy-bench-")
    raise_nofile()
    b = None
    try:
        b = Bench(args, tmp, procs)
        if main_stack:
            b.start_main(need_lists="lists" in only)
        for name, fn in (("latency", section_latency), ("saturation", section_saturation),
                         ("lists", section_lists), ("watches", section_watches)):
            if name in only:
                try:
                    fn(b)
                except Exception as e:
                    b.failures.append(f"{name}: {type(e).__name__}: {e}")
                    b.say(f"  {name} stopped: {type(e).__name__}: {e}")
        if b.chaperone:
            b.requests_total = bc.scrape_metric(b.chaperone["admin"], "chaperone_requests_total")
            b.dropped = bc.scrape_metric(b.chaperone["admin"], "chaperone_audit_events_dropped_total")
        if "memory" in only:
            section_memory(b)
    finally:
        procs.stop_all()
        bc.remove_or_keep(tmp, args.keep)

    print(f"chaperone proxy vs nginx; GET of a {len(bc.POD_JSON)} B Pod, Lists, watches; all on 127.0.0.1;"
          f" {os.cpu_count()} cores shared by the load driver, nginx and the proxy;"
          f" the proxy's upstream token {args.upstream_token_length} characters")
    for line in b.report:
        print(line)
    if b.chaperone:
        print(f"  chaperone (main): chaperone_requests_total {b.requests_total:.0f}, audit events dropped"
              f" {b.dropped:.0f}")
    print(f"  machine: {cpu.summary()}")
    print(f"  binary: {bc.describe_binary(args.binary)}")
    print(f"  tools: {tool_versions(find_oha(args.oha))}")
    for f in b.failures:
        print("FAIL: " + f)
    return 1 if b.failures else 0


if __name__ == "__main__":
    sys.exit(main())
