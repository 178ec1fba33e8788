#!/usr/bin/env python3
"""Where a request's time goes inside `chaperone proxy` at a fixed rate, from its system calls.

`proxy_bench.py` measures the latency chaperone adds from the client's side; this splits
it. oha sends the same GET as proxy_bench.py's latency section at a fixed rate while
`perf record` takes the runtime thread's `recvfrom`, `writev`, `epoll_wait` and `futex`
tracepoints (timestamps to the microsecond, no ptrace stops). Per request:

* inbound: from the caller's request read (`recvfrom` returns) to the upstream write
  (`writev` begins): TLS, HTTP/1.1 parsing, request attributes, identity, policy, header
  screening, the HTTP/2 request's encoding and encryption;
* upstream: from that write to the answer read (`recvfrom` returns): the write itself,
  the upstream's work and the wake-up of the runtime's thread;
* outbound: from the answer read to the caller's write (`writev` begins): HTTP/2
  decoding, the audit event queued, HTTP/1.1 encoding and TLS;
* caller write: the `writev` to the caller;
* after: from that write to the thread's next system call: what the runtime does once
  the answer is out (the audit writer task serialising the event, then waking the
  recording's thread with a `futex`).

The first three are on the request's path; "after" is not, but a request that arrives
meanwhile waits for it. Requests overlap now and then (two read before one HTTP/2 write
carries both): each interval is then counted once, from the later of the two, so the
counts differ a little.

    cargo build --release --bin chaperone
    python3 benches/timeline.py                  # 1,000 req/s for 3 s
    python3 benches/timeline.py --rate 200 --seconds 5

Needs perf with tracepoint access (root, or kernel.perf_event_paranoid <= -1), oha and
nginx, as proxy_bench.py.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402
import proxy_bench as pb  # noqa: E402

EVENTS = ("sys_enter_recvfrom", "sys_exit_recvfrom", "sys_enter_writev", "sys_exit_writev",
          "sys_enter_epoll_wait", "sys_exit_epoll_wait", "sys_enter_futex")


def upstream_fds(pid, port):
    """The proxy's file descriptors connected to 127.0.0.1:port (its upstream connections)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if int(cols[2].rsplit(":", 1)[1], 16) == port:
                        inodes.add(cols[9])
        except OSError:
            continue
    fds = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        m = re.fullmatch(r"socket:\[(\d+)\]", target)
        if m and m.group(1) in inodes:
            fds.add(int(fd))
    return fds


def parse(script_output, tid):
    """[(microseconds, event, fd or None)] of one thread, in order."""
    out = []
    line_re = re.compile(r"\s*(\d+)\s+([\d.]+):\s+syscalls:(\w+):\s*(.*)")
    for line in script_output.splitlines():
        m = line_re.match(line)
        if not m or int(m.group(1)) != tid:
            continue
        fd = re.search(r"fd: 0x([0-9a-f]+)", m.group(4))
        out.append((float(m.group(2)) * 1e6, m.group(3), int(fd.group(1), 16) if fd else None))
    return out


def split(events, upstream):
    """The per-request intervals (lists of microseconds) named in the module's docstring."""
    spans = {"inbound": [], "upstream": [], "outbound": [], "caller write": [], "after": []}
    read_from = None  # the fd of the last recvfrom begun
    caller_read = upstream_write = upstream_read = caller_write = None
    for i, (t, name, fd) in enumerate(events):
        if name == "sys_enter_recvfrom":
            read_from = fd
        elif name == "sys_exit_recvfrom":
            if read_from in upstream:
                if upstream_write is not None:
                    spans["upstream"].append(t - upstream_write)
                    upstream_write = None
                upstream_read = t
            else:
                caller_read = t
        elif name == "sys_enter_writev":
            if fd in upstream:
                if caller_read is not None:
                    spans["inbound"].append(t - caller_read)
                    caller_read = None
                upstream_write = t
            else:
                if upstream_read is not None:
                    spans["outbound"].append(t - upstream_read)
                    upstream_read = None
                caller_write = t
        elif name == "sys_exit_writev" and caller_write is not None:
            spans["caller write"].append(t - caller_write)
            caller_write = None
            if i + 1 < len(events):
                spans["after"].append(events[i + 1][0] - t)
    return spans


def quantile(xs, q):
    xs = sorted(xs)
    return xs[min(int(len(xs) * q), len(xs) - 1)] if xs else float("nan")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--binary", default=bc.DEFAULT_BINARY)
    p.add_argument("--rate", type=int, default=1000, help="oha's fixed rate, req/s (default: 1000)")
    p.add_argument("--seconds", type=float, default=3, help="seconds recorded (default: 3)")
    p.add_argument("--connections", type=int, default=16, help="oha's connections (default: 16)")
    p.add_argument("--oha", help="path to oha (default: on PATH or ~/.cargo/bin)")
    args = p.parse_args()
    if not os.path.exists(args.binary):
        raise SystemExit(f"{args.binary} not found: cargo build --release --bin chaperone")
    oha = pb.find_oha(args.oha)
    for tool, found in (("perf", shutil.which("perf")), ("oha", oha), ("nginx", shutil.which("nginx"))):
        if not found:
            raise SystemExit(f"{tool} not found")
    bc.stop_on_signals()
    procs = bc.Procs()
    with tempfile.TemporaryDirectory(prefix="chaperone-timeline-") as tmp:
        try:
            measure(args, oha, tmp, procs)
        finally:
            procs.stop_all()


def measure(args, oha, tmp, procs):
    pki, caller, up_port, kubeconfig, policy = pb.pod_setup(procs, tmp, "bench-timeline")
    binary = bc.copy_binary(args.binary, tmp)
    ch = pb.start_chaperone(procs, tmp, "proxy", binary, pki, kubeconfig, policy)
    pid = ch["proc"].pid
    # Warm up; this also opens the upstream connection.
    pb.run_oha(oha, ch["port"], caller, 2, args.rate, args.connections, pki.ca_crt, procs)
    upstream = upstream_fds(pid, up_port)
    if not upstream:
        raise SystemExit("found no connection from the proxy to the upstream")
    data = os.path.join(tmp, "perf.data")
    record = ["perf", "record", "-q", "-p", str(pid), "-o", data]
    for e in EVENTS:
        record += ["-e", f"syscalls:{e}"]
    done = {}

    def run():
        time.sleep(1)
        done["perf"] = subprocess.run(record + ["--", "sleep", str(args.seconds)],
                                      capture_output=True, text=True)

    t = threading.Thread(target=run)
    t.start()
    load = pb.run_oha(oha, ch["port"], caller, args.seconds + 2, args.rate, args.connections,
                      pki.ca_crt, procs)
    t.join()
    if done["perf"].returncode != 0:
        raise SystemExit(f"perf record failed: {done['perf'].stderr.strip()}")
    script = subprocess.run(["perf", "script", "-i", data, "-F", "tid,time,event,trace"],
                            capture_output=True, text=True).stdout
    spans = split(parse(script, pid), upstream)
    print(f"chaperone proxy, GET of a 2090 B Pod at {args.rate} req/s over {args.connections}"
          f" connections (oha), {args.seconds:g} s of the runtime thread's system calls (perf)")
    print(f"  oha: p50 {load['p50']:.0f} us, p99 {load['p99']:.0f} us through chaperone")
    print(f"  {'interval':<14} {'requests':>8} {'p50 us':>7} {'p90 us':>7} {'p99 us':>7}")
    for name, xs in spans.items():
        print(f"  {name:<14} {len(xs):>8} {quantile(xs, 0.5):>7.0f} {quantile(xs, 0.9):>7.0f}"
              f" {quantile(xs, 0.99):>7.0f}")
    print(f"  {bc.describe_binary(args.binary)}")


if __name__ == "__main__":
    main()
