#!/usr/bin/env bash
# Builds the release proxy with profile-guided optimisation (PGO), as the Dockerfile does:
#
#   1. an instrumented build (`-Cprofile-generate`) into target/pgo-generate/;
#   2. a training session: `chaperone sandbox --with-proxy`, the quick start's sandbox
#      and policy, driven with curl over HTTP/1.1 and HTTP/2 through the proxy: gets,
#      lists (Secrets masked), watches, denied deletes, unauthenticated requests; the
#      session's audit trail must show every answer the mix expects, so a policy or
#      seed that drifted cannot silently train the wrong paths;
#   3. the profile merged with rustup's `llvm-profdata` (`rustup component add
#      llvm-tools`);
#   4. the optimised build (`-Cprofile-use`) into target/pgo/.
#
#   bash benches/pgo.sh                 # prints the binary's path: target/pgo/release/chaperone
#   python3 benches/proxy_bench.py --binary target/pgo/release/chaperone
#   bash benches/pgo.sh --check target/debug/chaperone   # only the session, a tenth of it
#
# The training is the sandbox's session mix, not the benchmarks' requests, and it never
# sees nginx. Other arguments (e.g. `--locked`) are passed on to both cargo builds. Needs
# curl with HTTP/2 (Debian's has it). About 11.5 minutes cold on 2 cores: two fat-LTO
# builds and under a minute of training. `.ci/test` runs `--check`.
set -euo pipefail
cd "$(dirname "$0")/.."

root="$PWD"
work="$root/target/pgo-data"

die() {
    echo "pgo.sh: $*" >&2
    exit 1
}

# train BINARY SCALE: the session against BINARY; SCALE 10 is the full mix, 1 a tenth.
train() {
    local binary="$1" scale="$2"
    local sandbox_dir="$work/sandbox" config="$work/proxy.yaml" proxy="" token
    command -v curl >/dev/null || die "curl not found"
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
    "$binary" --log warn sandbox --with-proxy "$config" --dir "$sandbox_dir" \
        --listen 127.0.0.1:0 >"$work/sandbox.out" &
    # Global, so the EXIT trap still sees it wherever the script stops.
    training_pid=$!
    trap 'kill "$training_pid" 2>/dev/null || true' EXIT
    for _ in $(seq 1 300); do
        proxy="$(sed -n 's|^chaperone proxy *\(https://[^ ]*\)$|\1|p' "$work/sandbox.out")"
        [[ -n "$proxy" ]] && break
        kill -0 "$training_pid" 2>/dev/null || die "the sandbox exited (see $work/sandbox.out)"
        sleep 0.1
    done
    [[ -n "$proxy" ]] || die "the proxy did not start within 30 s"
    token="$(sed -n 's/^ *token: *//p' "$sandbox_dir/proxy.kubeconfig" | head -1)"
    [[ -n "$token" ]] || die "no token in $sandbox_dir/proxy.kubeconfig"

    # The header is read from a file so the token is not on a command line.
    local headers="$work/headers"
    (umask 077 && printf 'Authorization: Bearer %s\nAccept: application/json\n' "$token" >"$headers")

    # Requests per HTTP version, by the answer they get (a tenth with --check).
    local gets=$((2000 * scale)) lists=$((200 * scale)) configmaps=$((200 * scale))
    local secrets=$((100 * scale)) everywhere=$((100 * scale)) watches=$((2 * scale))
    local deletes=$((50 * scale)) refused=$((50 * scale)) anonymous=$((50 * scale))
    local api="$proxy/api/v1/namespaces/default" version
    # send HTTP-VERSION PARALLEL METHOD URL [CURL-ARGS...]: curl expands the URL's [1-N]
    # into N requests, PARALLEL at a time over reused connections.
    send() {
        curl --no-progress-meter "$1" --parallel --parallel-max "$2" \
            --cacert "$sandbox_dir/ca.crt" -X "$3" -o /dev/null "$4" "${@:5}"
    }
    for version in --http1.1 --http2; do
        send "$version" 16 GET "$api/pods/nginx?round=[1-$gets]" -H "@$headers"
        send "$version" 4 GET "$api/pods?limit=500&round=[1-$lists]" -H "@$headers"
        send "$version" 4 GET "$api/configmaps/app-config?round=[1-$configmaps]" -H "@$headers"
        send "$version" 4 GET "$api/secrets?round=[1-$secrets]" -H "@$headers"
        send "$version" 4 GET "$proxy/api/v1/pods?round=[1-$everywhere]" -H "@$headers"
        send "$version" 8 GET "$api/pods?watch=true&timeoutSeconds=1&round=[1-$watches]" -H "@$headers"
        send "$version" 4 DELETE "$api/pods/nginx?round=[1-$deletes]" -H "@$headers"
        send "$version" 4 GET "$proxy/api/v1/namespaces/kube-system/secrets?round=[1-$refused]" -H "@$headers"
        send "$version" 4 GET "$api/pods/nginx?round=[1-$anonymous]"
    done

    kill -TERM "$training_pid"
    wait "$training_pid" || die "the training proxy did not stop cleanly"
    trap - EXIT

    # Every request is in the audit trail with the answer the mix expects (a watch has
    # two events, as in the API server's: its start and its end).
    local audit="$sandbox_dir/audit.jsonl" code want got
    for code in 200 403 401; do
        case "$code" in
            200) want=$((2 * (gets + lists + configmaps + secrets + everywhere + 2 * watches))) ;;
            403) want=$((2 * (deletes + refused))) ;;
            401) want=$((2 * anonymous)) ;;
        esac
        got="$(grep -c "\"code\":$code},\"requestReceivedTimestamp\"" "$audit" || true)"
        [[ "$got" == "$want" ]] ||
            die "the training session expected $want answers with code $code, the audit trail has $got ($audit)"
    done
    echo "pgo.sh: training session done: $(wc -l <"$audit") audit events as expected" >&2
}

if [[ "${1:-}" == "--check" ]]; then
    [[ -x "${2:-}" ]] || die "usage: pgo.sh --check BINARY"
    rm -rf "$work" && mkdir -p "$work"
    train "$(realpath "$2")" 1
    exit 0
fi

profdata_tool="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata"
[[ -x "$profdata_tool" ]] || die "$profdata_tool not found; install it with: rustup component add llvm-tools"

rm -rf "$work"
mkdir -p "$work/raw"

echo "--- 1/4 instrumented build (target/pgo-generate)" >&2
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$work/raw" \
    cargo build --release --bin chaperone --target-dir "$root/target/pgo-generate" "$@" >&2

echo "--- 2/4 training: the sandbox and the proxy, driven with curl" >&2
train "$root/target/pgo-generate/release/chaperone" 10

echo "--- 3/4 merging the profile" >&2
"$profdata_tool" merge -o "$work/chaperone.profdata" "$work"/raw/*.profraw >&2

echo "--- 4/4 optimised build (target/pgo)" >&2
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$work/chaperone.profdata" \
    cargo build --release --bin chaperone --target-dir "$root/target/pgo" "$@" >&2
echo "$root/target/pgo/release/chaperone"
