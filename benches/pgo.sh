#!/usr/bin/env bash
# Builds the release proxy with profile-guided optimisation (PGO), as the Dockerfile does:
#
#   1. an instrumented build (`-Cprofile-generate`) into target/pgo-generate/;
#   2. a training session: `chaperone sandbox --with-proxy`, the quick start's sandbox
#      and policy, driven with curl over HTTP/1.1 and HTTP/2 through the proxy: gets,
#      lists (Secrets masked), watches, denied deletes, unauthenticated requests;
#   3. the profile merged with rustup's `llvm-profdata` (`rustup component add
#      llvm-tools`);
#   4. the optimised build (`-Cprofile-use`) into target/pgo/.
#
#   bash benches/pgo.sh                 # prints the binary's path: target/pgo/release/chaperone
#   python3 benches/proxy_bench.py --binary target/pgo/release/chaperone
#
# The training is the sandbox's session mix, not the benchmarks' requests, and it never
# sees nginx. Extra cargo flags (e.g. `--locked`) are passed on to both builds. Needs
# curl with HTTP/2 (Debian's has it). About 11 minutes cold on 2 cores: two fat-LTO
# builds and a minute of training.
set -euo pipefail
cd "$(dirname "$0")/.."

root="$PWD"
work="$root/target/pgo-data"
profdata="$work/chaperone.profdata"

llvm_profdata() {
    local sysroot host found
    sysroot="$(rustc --print sysroot)"
    host="$(rustc -vV | sed -n 's/^host: //p')"
    found="$sysroot/lib/rustlib/$host/bin/llvm-profdata"
    if [[ ! -x "$found" ]]; then
        echo "pgo.sh: $found not found; install it with: rustup component add llvm-tools" >&2
        exit 1
    fi
    echo "$found"
}
profdata_tool="$(llvm_profdata)"
command -v curl >/dev/null || { echo "pgo.sh: curl not found" >&2; exit 1; }

rm -rf "$work"
mkdir -p "$work/raw"

echo "--- 1/4 instrumented build (target/pgo-generate)" >&2
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$work/raw" \
    cargo build --release --bin chaperone --target-dir "$root/target/pgo-generate" "$@" >&2

echo "--- 2/4 training: the sandbox and the proxy, driven with curl" >&2
sandbox_dir="$work/sandbox"
config="$work/proxy.yaml"
cat >"$config" <<EOF
listen: [127.0.0.1:0]
admin:
  listen: 127.0.0.1:0
identity:
  issuers:
    - issuer: https://kubernetes.default.svc.cluster.local
      audiences: [chaperone]
      cluster: true
policy:
  file: $root/policies/sandbox.yaml
EOF
"$root/target/pgo-generate/release/chaperone" --log warn sandbox \
    --with-proxy "$config" --dir "$sandbox_dir" --listen 127.0.0.1:0 >"$work/sandbox.out" &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; }
trap cleanup EXIT

proxy=""
for _ in $(seq 1 100); do
    proxy="$(sed -n 's|^chaperone proxy *\(https://[^ ]*\)$|\1|p' "$work/sandbox.out")"
    [[ -n "$proxy" ]] && break
    kill -0 "$pid" 2>/dev/null || { echo "pgo.sh: the sandbox exited" >&2; exit 1; }
    sleep 0.1
done
[[ -n "$proxy" ]] || { echo "pgo.sh: the proxy did not start within 10 s" >&2; exit 1; }
token="$(sed -n 's/^ *token: *//p' "$sandbox_dir/proxy.kubeconfig" | head -1)"
[[ -n "$token" ]] || { echo "pgo.sh: no token in $sandbox_dir/proxy.kubeconfig" >&2; exit 1; }

# The header is read from a file so the token is not on a command line.
headers="$work/headers"
printf 'Authorization: Bearer %s\nAccept: application/json\n' "$token" >"$headers"
chmod 600 "$headers"
drive() { # drive HTTP-VERSION PARALLEL METHOD URL... ; non-2xx answers are part of the mix
    local version="$1" parallel="$2" method="$3"
    shift 3
    curl -sS --no-progress-meter "$version" --parallel --parallel-max "$parallel" --cacert "$sandbox_dir/ca.crt" \
        -H "@$headers" -X "$method" -o /dev/null "$@"
}
api="$proxy/api/v1/namespaces/default"
for version in --http1.1 --http2; do
    drive "$version" 16 GET "$api/pods/nginx?round=[1-20000]"
    drive "$version" 4 GET "$api/pods?limit=500&round=[1-2000]"
    drive "$version" 4 GET "$api/configmaps/app-config?round=[1-2000]"
    drive "$version" 4 GET "$api/secrets?round=[1-1000]"
    drive "$version" 4 GET "$proxy/api/v1/pods?round=[1-1000]"
    drive "$version" 4 DELETE "$api/pods/nginx?round=[1-500]"
    drive "$version" 4 GET "$proxy/api/v1/namespaces/kube-system/secrets?round=[1-500]"
    drive "$version" 8 GET "$api/pods?watch=true&timeoutSeconds=1&round=[1-16]"
    curl -sS --no-progress-meter "$version" --parallel --parallel-max 4 --cacert "$sandbox_dir/ca.crt" \
        -o /dev/null "$api/pods/nginx?round=[1-500]"
done

kill -TERM "$pid"
wait "$pid" || { echo "pgo.sh: the training proxy did not stop cleanly" >&2; exit 1; }
trap - EXIT

echo "--- 3/4 merging the profile" >&2
"$profdata_tool" merge -o "$profdata" "$work"/raw/*.profraw >&2

echo "--- 4/4 optimised build (target/pgo)" >&2
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$profdata" \
    cargo build --release --bin chaperone --target-dir "$root/target/pgo" "$@" >&2
echo "$root/target/pgo/release/chaperone"
