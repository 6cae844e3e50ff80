# bpf-registry: multi-stage build (Rust builder -> small Debian runtime).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin bpf-registry

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin bpfreg \
 && mkdir -p /data/artifacts \
 && chown -R bpfreg /data
COPY --from=build /src/target/release/bpf-registry /usr/local/bin/bpf-registry
USER bpfreg
ENV BPF_REGISTRY_HTTP_ADDR=:8084 \
    BPF_REGISTRY_DATA_DIR=/data/artifacts \
    BPF_REGISTRY_LOG_LEVEL=INFO
EXPOSE 8084
VOLUME /data/artifacts
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8084/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/bpf-registry"]
