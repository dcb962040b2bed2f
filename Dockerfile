# Veneer's image: both binaries, `veneer` (the proxy) and `veneer-cache-node`, on a small Debian
# runtime as a non-root user. The build step is the one .ci/run runs, so CI exercises it.
#   docker build -t veneer .
#   docker run --rm -p 6432:6432 -p 9432:9432 veneer veneer --listen 0.0.0.0:6432 \
#     --metrics-listen 0.0.0.0:9432 --upstream db.example:5432

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p veneer-proxy -p veneer-cache-node \
 && cp target/release/veneer target/release/veneer-cache-node /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin veneer
COPY --from=build /usr/local/bin/veneer /usr/local/bin/veneer-cache-node /usr/local/bin/
COPY examples/demo/healthcheck /usr/local/bin/veneer-healthcheck
USER veneer
# 6432: PostgreSQL clients; 9432: status page, /metrics, /healthz, /readyz; 6380: a cache-node.
EXPOSE 6432 9432 6380
# The proxy's /healthz on its metrics listener; cache-node containers override it with a PING.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["veneer-healthcheck", "http", "127.0.0.1", "9432", "/healthz"]
CMD ["veneer", "--listen", "0.0.0.0:6432", "--metrics-listen", "0.0.0.0:9432"]
