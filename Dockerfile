# dot-sidecar image: one image for the sidecar, its iptables init step and its
# check init container (entrypoint.sh dispatches). Build from the repository
# root, with Docker (BuildKit or the legacy builder), Podman or Buildah:
#   docker build --build-arg VERSION=0.1.0 -t ghcr.io/dot-sidecar/dot-sidecar:0.1.0 .
# The base images are exact version tags; bump them deliberately. To pin them
# by digest without editing this file, pass them as build arguments:
#   --build-arg GO_IMAGE=golang:1.26.8-bookworm@sha256:<digest>
#   --build-arg BASE_IMAGE=debian:12.12-slim@sha256:<digest>
# Only Dockerfile syntax every builder reads is used (no COPY --chmod, no
# heredocs, no RUN --mount); sidecar/e2e/image holds this file to that.
ARG GO_IMAGE=golang:1.26.8-bookworm
ARG BASE_IMAGE=debian:12.12-slim

FROM ${GO_IMAGE} AS build
ARG VERSION=dev
WORKDIR /src
# Modules first, in a layer of their own that source edits reuse. Only the
# modules the binary is built from (go list -deps ./sidecar): go.mod also
# requires modules only the tests use (Kubernetes API types, kustomize), which
# the image never downloads. sidecar/e2e/image keeps this list in step.
COPY go.mod go.sum ./
RUN go mod download \
      github.com/beorn7/perks \
      github.com/caarlos0/env/v9 \
      github.com/cespare/xxhash/v2 \
      github.com/hashicorp/go-cleanhttp \
      github.com/hashicorp/go-retryablehttp \
      github.com/maypok86/otter/v2 \
      github.com/miekg/dns \
      github.com/munnerz/goautoneg \
      github.com/prometheus/client_golang \
      github.com/prometheus/client_model \
      github.com/prometheus/common \
      github.com/prometheus/procfs \
      github.com/sethvargo/go-retry \
      golang.org/x/net \
      golang.org/x/sys \
      google.golang.org/protobuf
COPY sidecar/ sidecar/
# Static (no libc), reproducible paths, stripped, version stamped: the release
# build of sidecar/testkit/bintest, which the end-to-end tests run too.
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/dot-sidecar ./sidecar
# The scripts, made executable here whatever modes the checkout gave them
# (COPY --chmod would need BuildKit), reach the final stage in one COPY.
COPY entrypoint.sh /out/opt/dot-sidecar/entrypoint.sh
COPY iptables/dns-redirect.sh /out/opt/dot-sidecar/iptables/dns-redirect.sh
RUN chmod 0755 /out/opt/dot-sidecar/entrypoint.sh /out/opt/dot-sidecar/iptables/dns-redirect.sh

FROM ${BASE_IMAGE}
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
COPY --from=build /out/opt/dot-sidecar/ /opt/dot-sidecar/
# Numeric, so runAsNonRoot can verify it; equal to dns-redirect.sh's default
# SIDECAR_UID, whose traffic the redirect exempts. The iptables init containers
# (per pod, and the node-level mode's) override it to root with NET_ADMIN and
# NET_RAW.
USER 10053:10053
EXPOSE 5053/udp 5053/tcp 9253
ENTRYPOINT ["/opt/dot-sidecar/entrypoint.sh"]
