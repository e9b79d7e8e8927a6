#!/usr/bin/env bash
# Installs what the load harness (go run ./sidecar/bench) runs: dnsperf, the
# peers it compares dot-sidecar with (Unbound, dnsdist, stubby from Debian;
# CoreDNS built with Go), kdig for manual checks and nftables for the
# connection counter; iproute2 and iptables for the lookup count's network
# namespace. Run it once as root on Debian or Ubuntu; it is safe to
# run again.
set -euo pipefail

COREDNS_VERSION=v1.14.7

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (apt-get, and the harness needs root for its nftables counter)" >&2
  exit 1
fi
export PATH="$PATH:/usr/local/go/bin:/usr/sbin:/sbin"

apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  dnsperf unbound dnsdist stubby knot-dnsutils nftables procps ca-certificates iproute2 iptables >/dev/null

# The packages enable system services; the harness starts its own instances
# on ports of its choosing and must not share the machine with idle copies.
for svc in unbound dnsdist stubby; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  elif command -v service >/dev/null 2>&1; then
    service "$svc" stop >/dev/null 2>&1 || true
  fi
done

if ! command -v go >/dev/null 2>&1; then
  echo "setup.sh: Go is needed to build CoreDNS (and the harness itself)" >&2
  exit 1
fi
# CoreDNS from source at a fixed version (it builds with Go 1.26); the binary
# lands in $(go env GOPATH)/bin, where the harness looks for it.
go install "github.com/coredns/coredns@${COREDNS_VERSION}"

gopath_bin="$(go env GOPATH | cut -d: -f1)/bin"
echo "installed: $(dnsperf -h 2>&1 | grep -m1 Version), $(dnsdist --version | head -1)," \
  "$(unbound -V | head -1), $(stubby -V 2>&1 | head -1), $("$gopath_bin/coredns" -version | head -1)"
