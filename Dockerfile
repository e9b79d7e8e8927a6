# dot-sidecar image: one image for the sidecar, its iptables init step and its
# check init container (entrypoint.sh dispatches). Build from the repository
# root:
#   docker build --build-arg VERSION=0.1.0 -t ghcr.io/dot-sidecar/dot-sidecar:0.1.0 .
# Base images are pinned by exact version tag; bump them deliberately.

FROM golang:1.26.8-bookworm AS build
ARG VERSION=dev
WORKDIR /src
# Modules first, so that source edits reuse the download layer.
COPY go.mod go.sum ./
RUN go mod download
COPY sidecar/ sidecar/
# Static (no libc), reproducible paths, stripped, version stamped. The same
# command runs outside a container (iptables/dockerfile_test.go runs it).
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/dot-sidecar ./sidecar

FROM debian:12.12-slim
ARG VERSION=dev
LABEL org.opencontainers.image.title="dot-sidecar" \
      org.opencontainers.image.description="Encrypts a Kubernetes pod's DNS: DNS-over-TLS sidecar with an iptables init step" \
      org.opencontainers.image.version="${VERSION}"
# iptables ships both backends (xtables-nft-multi and xtables-legacy-multi);
# iproute2's ip puts the node-level mode's address on lo (dns-redirect.sh
# node-apply); ca-certificates verifies public DoT upstreams. dash, sed and
# grep for the scripts are already in the base.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
COPY --from=build /out/dot-sidecar /usr/local/bin/dot-sidecar
COPY --chmod=0755 entrypoint.sh /opt/dot-sidecar/entrypoint.sh
COPY --chmod=0755 iptables/dns-redirect.sh /opt/dot-sidecar/iptables/dns-redirect.sh
# Numeric, so runAsNonRoot can verify it; equal to dns-redirect.sh's default
# SIDECAR_UID, whose traffic the redirect exempts. The iptables init containers
# (per pod, and the node-level mode's) override it to root with NET_ADMIN and
# NET_RAW.
USER 10053:10053
EXPOSE 5053/udp 5053/tcp 9253
ENTRYPOINT ["/opt/dot-sidecar/entrypoint.sh"]
