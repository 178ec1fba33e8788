"""Shared harness for the process-level benchmarks (mask_memory.py, audit_cost.py,
proxy_bench.py).

Python 3 standard library plus /usr/bin/openssl and the chaperone release binary.
Everything listens on 127.0.0.1 only, lives in one temporary directory, and every
process started here is stopped by `Procs.stop_all()` (the scripts call it in `finally`).

What it provides:

* `Pki`: a CA, server certificates for IP:127.0.0.1, an EC P-256 (ES256) token key,
  its JWKS file and ES256 JWTs, all made with the openssl CLI.
* `write_proxy_config()`: a `chaperone proxy` config trusting that key as the issuer
  `https://bench.local` (audience `chaperone`) through `jwksFile`, an upstream kubeconfig,
  a policy and an audit section.
* `Procs`: starts processes in their own process group and kills them on exit.
* `proc_status()`: VmRSS / VmHWM of a pid, in KiB.
* `POD` / `POD_JSON` at `POD_PATH`: the small Pod the latency and throughput runs GET, and
  the fixed JSON bodies an nginx upstream returns (`nginx_literal()` quotes them).
* `run_wrk()`: one bounded `wrk` run, parsed.
"""

import base64
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

OPENSSL = "/usr/bin/openssl"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BINARY = os.path.join(REPO, "target", "release", "chaperone")

ISSUER = "https://bench.local"
AUDIENCE = "chaperone"
SUBJECT = "bench"
KID = "bench-es256"

MASK_MARKER_B64 = base64.b64encode(b"chaperone:masked").decode()  # Y2hhcGVyb25lOm1hc2tlZA==

POD_PATH = "/api/v1/namespaces/default/pods/p"

POD = {
    "kind": "Pod", "apiVersion": "v1",
    "metadata": {
        "name": "p", "namespace": "default", "uid": "5f0c2a8e-3c1d-4e2b-9a7f-0d1e2f3a4b5c",
        "resourceVersion": "123456", "creationTimestamp": "2026-11-25T10:00:00Z",
        "labels": {"app.kubernetes.io/name": "web", "pod-template-hash": "6d4cf56db6"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-6d4cf56db6",
                             "uid": "0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d", "controller": True,
                             "blockOwnerDeletion": True}],
    },
    "spec": {
        "containers": [{
            "name": "web", "image": "nginx:1.27", "imagePullPolicy": "IfNotPresent",
            "ports": [{"containerPort": 80, "protocol": "TCP"}],
            "env": [{"name": "LOG_LEVEL", "value": "info"}],
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                          "limits": {"memory": "128Mi"}},
            "volumeMounts": [{"name": "kube-api-access-x7k2p", "readOnly": True,
                              "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
            "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
        }],
        "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default", "nodeName": "node-1", "schedulerName": "default-scheduler",
        "volumes": [{"name": "kube-api-access-x7k2p", "projected": {"sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}],
    },
    "status": {
        "phase": "Running", "hostIP": "10.0.0.11", "podIP": "10.244.1.23", "qosClass": "Burstable",
        "startTime": "2026-11-25T10:00:01Z",
        "conditions": [{"type": t, "status": "True", "lastTransitionTime": "2026-11-25T10:00:05Z"}
                       for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")],
        "containerStatuses": [{"name": "web", "ready": True, "restartCount": 0, "started": True,
                               "image": "docker.io/library/nginx:1.27",
                               "imageID": "docker.io/library/nginx@sha256:" + "ab" * 32,
                               "containerID": "containerd://" + "cd" * 32,
                               "state": {"running": {"startedAt": "2026-11-25T10:00:04Z"}}}],
    },
}
POD_JSON = json.dumps(POD, separators=(",", ":"))
VERSION_JSON = json.dumps({"major": "1", "minor": "33", "gitVersion": "v1.33.0-bench"})
UNAUTHORIZED_JSON = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                "reason": "Unauthorized", "code": 401})
NOT_FOUND_JSON = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                             "reason": "NotFound", "code": 404})


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def nginx_http_common(tmp, name):
    """The `http` settings every nginx here shares: no access log, its temporary files
    under `tmp/NAME-temp`, keep-alive connections that outlast any run, and TLS 1.3 on
    both sides (nginx before 1.23.4, Debian 12's 1.22 among them, offers only up to
    TLS 1.2 unless told; the API server, client-go and chaperone all speak TLS 1.3)."""
    temp = os.path.join(tmp, f"{name}-temp")
    return f"""    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    ssl_protocols TLSv1.2 TLSv1.3;
    proxy_ssl_protocols TLSv1.2 TLSv1.3;
"""


def remove_or_keep(tmp, keep):
    """Removes a run's temporary directory, or says where it is with `--keep`."""
    if keep:
        log(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


_GIVEN_PORTS = set()


def free_port():
    """A port that was free on 127.0.0.1 a moment ago (the caller binds it soon after),
    and never one this process gave out before: a port closed at once may be the next
    one the kernel picks, and two servers started side by side would then share it."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port


def log_tail(path, lines=20):
    """The last `lines` of a log file, for an error saying why a process ended."""
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as e:
        return f"(no log: {e})"


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def openssl(*args, input=None):
    return subprocess.run(
        [OPENSSL, *args], input=input, check=True, capture_output=True, timeout=60
    ).stdout


def _der_len(data, i):
    """Reads a DER length at data[i]; returns (length, index after it)."""
    first = data[i]
    if first < 0x80:
        return first, i + 1
    n = first & 0x7F
    return int.from_bytes(data[i + 1:i + 1 + n], "big"), i + 1 + n


def ecdsa_der_to_raw(der, size=32):
    """ECDSA-Sig-Value (SEQUENCE { INTEGER r, INTEGER s }) -> r || s, as JWS wants."""
    if der[0] != 0x30:
        raise ValueError("not a DER SEQUENCE")
    _, i = _der_len(der, 1)
    out = b""
    for _ in range(2):
        if der[i] != 0x02:
            raise ValueError("not a DER INTEGER")
        n, i = _der_len(der, i + 1)
        value = der[i:i + n].lstrip(b"\x00")
        i += n
        out += value.rjust(size, b"\x00")
    return out


class Pki:
    """A CA, server certificates, and the ES256 key tokens are signed with."""

    def __init__(self, directory):
        self.dir = directory
        self.ca_crt = os.path.join(directory, "ca.crt")
        self.ca_key = os.path.join(directory, "ca.key")
        self.token_key = os.path.join(directory, "token.key")
        self.jwks = os.path.join(directory, "jwks.json")
        openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", self.ca_key, "-out", self.ca_crt, "-days", "2",
            "-subj", "/CN=chaperone bench CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-out", self.token_key)
        spki = openssl("pkey", "-in", self.token_key, "-pubout", "-outform", "DER")
        point = spki[-65:]  # the uncompressed point 04 || x || y ends the SPKI
        if point[0] != 0x04:
            raise RuntimeError("unexpected EC public key encoding")
        self.jwk = {
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": KID,
            "x": b64url(point[1:33]), "y": b64url(point[33:65]),
        }
        with open(self.jwks, "w") as f:
            json.dump({"keys": [self.jwk]}, f)

    def server_cert(self, name):
        """Issues <name>.crt / <name>.key for IP:127.0.0.1 and localhost."""
        crt = os.path.join(self.dir, name + ".crt")
        key = os.path.join(self.dir, name + ".key")
        openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", key, "-out", crt, "-days", "2",
            "-subj", "/CN=" + name, "-CA", self.ca_crt, "-CAkey", self.ca_key,
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-addext", "basicConstraints=critical,CA:FALSE",
            "-addext", "keyUsage=critical,digitalSignature",
            "-addext", "extendedKeyUsage=serverAuth",
        )
        return crt, key

    def token(self, lifetime=3 * 3600):
        """An ES256 JWT from ISSUER for AUDIENCE, subject SUBJECT."""
        now = int(time.time())
        header = {"alg": "ES256", "typ": "JWT", "kid": KID}
        claims = {"iss": ISSUER, "aud": [AUDIENCE], "sub": SUBJECT,
                  "iat": now, "nbf": now - 5, "exp": now + lifetime}
        signing_input = (
            b64url(json.dumps(header, separators=(",", ":")).encode()) + "."
            + b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        der = openssl("dgst", "-sha256", "-sign", self.token_key, input=signing_input.encode())
        return signing_input + "." + b64url(ecdsa_der_to_raw(der))


def write_kubeconfig(path, server, ca_crt, token):
    """A single-context kubeconfig (JSON is YAML) for the upstream."""
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "bench",
        "clusters": [{"name": "upstream", "cluster": {
            "server": server, "certificate-authority": ca_crt}}],
        "users": [{"name": "proxy", "user": {"token": token}}],
        "contexts": [{"name": "bench", "context": {"cluster": "upstream", "user": "proxy"}}],
    }
    with open(path, "w") as f:
        json.dump(config, f, indent=1)


def write_policy(path, name, rules, namespaces=("default",)):
    """A policy (JSON is YAML); rules: [(rule name, resource, [verbs])] for every user, in
    `namespaces` (`"<cluster>"`: lists and watches across all namespaces)."""
    doc = {
        "apiVersion": "chaperone.dev/v1alpha1", "kind": "Policy",
        "metadata": {"name": name},
        "spec": {"rules": [
            {"name": rule, "subjects": {"users": ["*"]}, "apiGroups": [""],
             "resources": [resource], "verbs": verbs, "namespaces": list(namespaces),
             "action": "allow"}
            for rule, resource, verbs in rules
        ]},
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)


def check_policy(binary, path):
    out = subprocess.run([binary, "policy", "check", path], capture_output=True,
                         text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"chaperone policy check {path} failed:\n{out.stdout}{out.stderr}")


def write_proxy_config(path, *, listen, admin, cert, key, jwks, policy, kubeconfig, audit,
                       extra=None):
    """A `chaperone proxy` config; `audit` is the audit section as a dict, `extra` more
    top-level keys."""
    config = {
        "listen": [f"127.0.0.1:{listen}"],
        "tls": {"certFile": cert, "keyFile": key},
        "admin": {"listen": f"127.0.0.1:{admin}"},
        "identity": {"issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE],
                                  "jwksFile": jwks}]},
        "policy": {"file": policy},
        "upstream": {"kubeconfig": {"path": kubeconfig}},
        "audit": audit,
        **(extra or {}),
    }
    with open(path, "w") as f:
        json.dump(config, f, indent=1)


def nginx_literal(text):
    """`text` quoted for an nginx `return` directive."""
    if any(c in text for c in "'\\$"):
        raise ValueError("text for an nginx return must not hold ' \\ or $")
    return "'" + text + "'"


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def run_wrk(port, token, duration, procs, *, threads=1, connections=16, path=POD_PATH):
    """One `wrk` run against https://127.0.0.1:port<path>; returns its parsed figures and the
    CPU seconds other processes of the machine took meanwhile (`others`)."""
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s",
           "--timeout", "5s", "--latency", "-H", f"Authorization: Bearer {token}",
           "-H", "Accept: application/json", f"https://127.0.0.1:{port}{path}"]
    with OthersCpu(procs) as cpu:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout

    def grab(pattern, default=None, cast=float):
        m = re.search(pattern, out, re.M)
        return cast(m.group(1)) if m else default

    requests = grab(r"^\s*(\d+) requests in", cast=int)
    if requests is None:
        raise RuntimeError(f"could not parse wrk output:\n{out}")
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": grab(r"^Requests/sec:\s+([\d.]+)"),
        "requests": requests,
        "non2xx": grab(r"Non-2xx or 3xx responses: (\d+)", 0, int),
        "socket_errors": sum(int(x) for x in socket_errors.groups()) if socket_errors else 0,
        "p50": grab(r"^\s+50%\s+(\S+)", cast=str),
        "p99": grab(r"^\s+99%\s+(\S+)", cast=str),
        "others": cpu.others,
        "seconds": duration,
    }


class CpuWatch:
    """CPU time of the whole machine vs. this script and its reaped children, over a run.

    The machine is shared (2 cores): `others` is the CPU time that processes not started
    by the benchmark used meanwhile; when it is large the figures are skewed. Read it
    after every child has been stopped and reaped (`Procs.stop_all()`).
    """

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample():
        return time.monotonic(), _machine_busy(), _own_cpu()

    def summary(self):
        t0, busy0, ours0 = self.start
        t1, busy1, ours1 = self._sample()
        busy, ours = busy1 - busy0, ours1 - ours0
        cores = os.cpu_count() or 1
        return (f"{t1 - t0:.1f} s wall; {busy:.1f} CPU-s busy of {cores * (t1 - t0):.1f} ({cores} cores):"
                f" the benchmark's processes {ours:.1f}, others {max(busy - ours, 0):.1f}")


def _machine_busy():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest is counted in user)
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _group_cpu(pgids):
    """CPU seconds used so far by the live processes of the given process groups."""
    return sum(_group_cpu_split(pgids))


def _group_cpu_split(pgids):
    """(user, system) CPU seconds used so far by the live processes of the given process
    groups: `utime` and `stime` of /proc/PID/stat."""
    per = group_cpu_by_process(pgids)
    return sum(u for u, _ in per.values()), sum(s for _, s in per.values())


def group_cpu_by_process(pgids):
    """{pid: (user, system) CPU seconds so far} of the live processes of the given process
    groups (an nginx's master and each of its workers apart)."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rindex(")") + 2:].split()  # fields[0] is field 3, state
        if int(fields[2]) in pgids:  # pgrp
            out[int(entry)] = (int(fields[11]) / tick, int(fields[12]) / tick)  # utime, stime
    return out


def _own_cpu():
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class OthersCpu:
    """Context manager: CPU seconds used by processes foreign to the benchmark meanwhile.

    Ours are this script, its reaped children (wrk) and the process groups of `procs`.
    """

    def __init__(self, procs):
        self.procs = procs
        self.others = None

    def _sample(self):
        pgids = {p.pid for p in self.procs.procs}
        return _machine_busy(), _group_cpu(pgids) + _own_cpu()

    def __enter__(self):
        self.start = self._sample()
        return self

    def __exit__(self, *exc):
        busy, ours = self._sample()
        self.others = max(0.0, (busy - self.start[0]) - (ours - self.start[1]))
        return False


def proc_status(pid):
    """{'VmRSS': KiB, 'VmHWM': KiB} from /proc/<pid>/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            field, _, value = line.partition(":")
            if field in ("VmRSS", "VmHWM"):
                out[field] = int(value.split()[0])
    return out


def wait_http(url, timeout=30.0, proc=None):
    """Waits until `url` (plain HTTP) answers 200."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception as e:  # not up yet
            last = e
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready after {timeout}s: {last}")


def wait_tcp(port, timeout=30.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"127.0.0.1:{port} not listening after {timeout}s")


def scrape_metric(admin_port, prefix):
    """Sum of the /metrics samples whose line starts with `prefix`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(prefix):
            total += float(line.rsplit(" ", 1)[1])
    return total


def stop_on_signals():
    """SIGTERM and SIGHUP unwind like Ctrl-C, so the `finally` that stops the processes runs."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)


class Procs:
    """Processes started for a run, each in its own process group, stopped on exit."""

    def __init__(self):
        self.procs = []

    def start(self, argv, **kwargs):
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def stop(self, proc, timeout=10.0):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=timeout)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self):
        for proc in reversed(list(self.procs)):
            try:
                self.stop(proc)
            except Exception as e:  # keep stopping the others
                log(f"could not stop pid {proc.pid}: {e}")


def describe_binary(binary):
    """The binary's build time and the repository's HEAD (the work tree may differ)."""
    built = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(os.stat(binary).st_mtime))
    try:
        head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        head = "?"
    return f"{binary} built {built}, repository HEAD {head or '?'}"


def copy_binary(binary, directory):
    """Runs a private copy, so a concurrent `cargo build` cannot swap it mid-run."""
    if not os.access(binary, os.X_OK):
        raise SystemExit(f"{binary} not found: build it with `cargo build --release --bin chaperone`")
    dest = os.path.join(directory, "chaperone")
    shutil.copy2(binary, dest)
    return dest
