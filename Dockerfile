# syntax=docker/dockerfile:1
# flowguard container image: `docker build -t flowguard .` (docker-compose.yml builds it).
# The same image runs the MITIGATOR simulator for demos (entrypoint mitigator-sim).

# ---- build -------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
# The whole context (see .dockerignore): Cargo.toml may name benches and tests that cargo
# wants to see even for a release build of the binaries. mitigator-sim is a workspace
# crate (crates/mitigator-sim), built with flowguard by --workspace.
COPY . .
RUN cargo build --release --locked --workspace --bins \
 && install -m 0755 target/release/flowguard target/release/mitigator-sim /usr/local/bin/

# ---- run ---------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
# ca-certificates: MITIGATOR's TLS certificate is checked against the system roots.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system flowguard \
 && useradd --system --gid flowguard --home-dir /var/lib/flowguard --shell /usr/sbin/nologin flowguard \
 && install -d -o flowguard -g flowguard -m 0750 /var/lib/flowguard
COPY --from=builder /usr/local/bin/flowguard /usr/local/bin/mitigator-sim /usr/local/bin/
# The bundled configuration layout: flowguard reads /etc/flowguard/collectors/*.toml and
# /etc/flowguard/thresholds/*.toml (plus flowguard.toml if present) when started without
# --config. Mount your own over these directories.
COPY collectors/ /etc/flowguard/collectors/
COPY thresholds/ /etc/flowguard/thresholds/
# Inside a container the API must listen on all interfaces to be scraped; publish the port
# on the host's loopback only (docker-compose.yml does).
ENV FLOWGUARD__API__LISTEN=0.0.0.0:9909
USER flowguard
WORKDIR /var/lib/flowguard
VOLUME ["/var/lib/flowguard"]
# API (/metrics, /healthz, /api/v1), NetFlow/IPFIX, sFlow.
EXPOSE 9909/tcp 2055/udp 6343/udp
ENTRYPOINT ["flowguard", "run"]
