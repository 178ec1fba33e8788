#!/usr/bin/env python3
"""Instructions (or allocations) per request through `chaperone proxy`, counted by valgrind.

Wall-clock benchmarks on this 2-core shared machine move by 20-40% from run to run;
instruction counts do not (the same binary and inputs give the same count, whatever else
the machine does). So this is the A/B measure for hot-path changes: build, run, compare.

Setup as proxy_bench.py's `chaperone` path: the upstream is nginx over TLS + HTTP/2
serving a 2 KB Pod; chaperone verifies an ES256 JWT against a JWKS file, applies a policy
allowing the GET and records every request to a JSONL file. The client sends `GET
/api/v1/namespaces/default/pods/p` over one keep-alive HTTP/1.1 TLS connection, one
request at a time. chaperone runs under callgrind twice, with N1 and N2 requests; the
difference of the totals divided by N2 - N1 is the cost of one request (startup, the
TLS handshakes and shutdown cancel out). With --annotate, the functions with the most
instructions in the N2 run are listed (their own, or with --inclusive what they call too).

    cargo build --release --bin chaperone
    python3 benches/instructions.py                  # 200 and 1200 requests
    python3 benches/instructions.py --annotate 40
    python3 benches/instructions.py --allocations    # heap blocks and bytes (dhat) instead

Needs valgrind (apt-get install -y valgrind) and nginx (nginx-light).
"""

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402
import proxy_bench as pb  # noqa: E402


def send(port, ca, token, n):
    """`n` GETs on one keep-alive TLS connection; every answer must be 200."""
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=120)
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    for _ in range(n):
        conn.request("GET", bc.POD_PATH, headers=headers)
        rsp = conn.getresponse()
        rsp.read()
        if rsp.status != 200:
            raise SystemExit(f"chaperone answered {rsp.status}")
    conn.close()


def run_once(args, tmp, procs, pki, caller, kubeconfig, policy, n, tag):
    """chaperone under callgrind (or dhat) serving `n` requests; returns (total, out file):
    instructions, or (blocks, bytes) allocated with --allocations."""
    d = os.path.join(tmp, f"proxy-{tag}")
    os.makedirs(d)
    crt, key = pki.server_cert(f"proxy-{tag}")
    port, admin = bc.free_port(), bc.free_port()
    config = os.path.join(d, "chaperone.yaml")
    bc.write_proxy_config(config, listen=port, admin=admin, cert=crt, key=key, jwks=pki.jwks,
                          policy=policy, kubeconfig=kubeconfig,
                          audit={"file": os.path.join(d, "audit.jsonl")})
    if args.allocations:
        out = os.path.join(d, "dhat.json")
        tool = ["valgrind", "--tool=dhat", f"--dhat-out-file={out}"]
    else:
        out = os.path.join(d, "callgrind.out")
        tool = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    log = open(os.path.join(d, "proxy.log"), "w")
    proc = procs.start(tool + [args.binary, "proxy", "--config", config], stdout=log, stderr=log)
    log.close()
    bc.wait_http(f"http://127.0.0.1:{admin}/readyz", timeout=120, proc=proc)
    send(port, pki.ca_crt, caller, n)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    if args.allocations:
        points = json.load(open(out))["pps"]
        return (sum(p["tbk"] for p in points), sum(p["tb"] for p in points)), out
    text = open(out).read()
    m = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    if not m:
        raise SystemExit(f"no totals in {out}")
    return int(m.group(1)), out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--binary", default=bc.DEFAULT_BINARY)
    p.add_argument("--n1", type=int, default=200)
    p.add_argument("--n2", type=int, default=1200)
    p.add_argument("--annotate", type=int, default=0, metavar="N",
                   help="list the N functions with the most instructions")
    p.add_argument("--save", metavar="FILE",
                   help="copy the N2 run's callgrind (or dhat) output here")
    p.add_argument("--inclusive", action="store_true",
                   help="with --annotate: count what functions call, too")
    pb.add_upstream_token_length(p)
    p.add_argument("--allocations", action="store_true",
                   help="count heap allocations (valgrind's dhat) instead of instructions")
    args = p.parse_args()
    if not os.path.exists(args.binary):
        raise SystemExit(f"{args.binary} not found: cargo build --release --bin chaperone")
    bc.stop_on_signals()
    procs = bc.Procs()
    with tempfile.TemporaryDirectory(prefix="chaperone-instructions-") as tmp:
        try:
            measure(args, tmp, procs)
        finally:
            procs.stop_all()


def measure(args, tmp, procs):
    pki, caller, _, kubeconfig, policy = pb.pod_setup(procs, tmp, "bench-instructions",
                                                      args.upstream_token_length)
    i1, _ = run_once(args, tmp, procs, pki, caller, kubeconfig, policy, args.n1, "n1")
    i2, out2 = run_once(args, tmp, procs, pki, caller, kubeconfig, policy, args.n2, "n2")
    if args.save:
        shutil.copyfile(out2, args.save)
    if args.allocations:
        n = args.n2 - args.n1
        print(f"chaperone proxy, GET of a 2090 B Pod over one keep-alive TLS connection, "
              f"audit to a JSONL file, upstream token {args.upstream_token_length} characters; dhat")
        print(f"  {args.n1} requests: {i1[0]:,} blocks, {i1[1]:,} B; "
              f"{args.n2} requests: {i2[0]:,} blocks, {i2[1]:,} B")
        print(f"  per request: {(i2[0] - i1[0]) / n:,.1f} allocations, "
              f"{(i2[1] - i1[1]) / n:,.0f} bytes")
        print(f"  {bc.describe_binary(args.binary)}")
        return
    per = (i2 - i1) / (args.n2 - args.n1)
    print(f"chaperone proxy, GET of a 2090 B Pod over one keep-alive TLS connection, "
          f"audit to a JSONL file, upstream token {args.upstream_token_length} characters; "
          f"callgrind")
    print(f"  {args.n1} requests: {i1:,} instructions; {args.n2} requests: {i2:,}")
    print(f"  per request: {per:,.0f} instructions")
    print(f"  {bc.describe_binary(args.binary)}")
    if args.annotate:
        inclusive = "yes" if args.inclusive else "no"
        ann = subprocess.run(["callgrind_annotate", f"--inclusive={inclusive}", out2],
                             capture_output=True, text=True).stdout
        rows = [l for l in ann.splitlines() if re.match(r"^\s*[\d,]+ \(", l)]
        what = "inclusive" if args.inclusive else "own"
        print(f"  top {args.annotate} functions by {what} instructions "
              f"({args.n2} requests, startup included):")
        for row in rows[:args.annotate]:
            print("   ", row.strip()[:160])


if __name__ == "__main__":
    main()
