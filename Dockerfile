# syntax=docker/dockerfile:1
# One image, two binaries: `chaperone` (the proxy and CLI; the entrypoint, which the
# injected sidecar runs as `chaperone proxy --config ...`) and `chaperone-injector`
# (the webhook Deployment overrides the command).
#
#   docker build -t ghcr.io/chaperone-dev/chaperone:0.1.0 .

FROM rust:1-bookworm AS build
# llvm-profdata, which merges the training profile of the profile-guided build.
RUN rustup component add llvm-tools
WORKDIR /src
# Only what the build reads, so edits to docs, manifests or tests keep the layer cache.
# policies/ is the training session's policy (benches/pgo.sh).
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
COPY injector injector
COPY policies policies
# Cache mounts keep the registry and target dir between builds; the binaries are copied
# out of the cached target dir, which is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    # The repository's release profile keeps debug info for profiling benchmarks; the
    # image does not need it (72 MB -> 15 MB for the proxy).
    export CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols \
    # The proxy is built with profile-guided optimisation: an instrumented build, a
    # training session against the sandbox on loopback, the optimised build. 12% fewer
    # instructions per proxied request (benches/README.md). With the profile's fat LTO
    # a cold build takes about 14.5 min on 2 cores (11 for the proxy, 3.4 for the injector).
    && bash benches/pgo.sh --locked \
    && cargo build --release --locked -p chaperone-injector --bin chaperone-injector \
    && mkdir -p /out \
    && cp target/pgo/release/chaperone target/release/chaperone-injector /out/

# glibc and libgcc (for the Rust std runtime), CA certificates, no shell; uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/chaperone /out/chaperone-injector /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/chaperone"]
