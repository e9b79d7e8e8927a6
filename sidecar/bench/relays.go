package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/unboundtest"
)

// target is where dnsperf sends queries: the upstream's plain port (the
// direct baseline) or a relay.
type target struct {
	name string
	tool string // program the relay needs; "" for direct
	// doh: the relay forwards over DNS over HTTPS (to the upstream's
	// https-port), not over DNS over TLS.
	doh bool
	// note says how caching was turned off (or why it could not be) and any
	// other setting a reader needs to judge the figures.
	note string
	// cache: the relay runs with its cache on, and is warmed before it is
	// measured (cache.go).
	cache bool
	// start writes the relay's configuration into dir and returns how to run
	// it. nil for the direct baseline.
	start func(u upstreamInfo, t tools, dir string, port int) (argv, env []string, err error)
}

// upstreamInfo is what a relay needs to reach the upstream over verified DoT
// or DoH.
type upstreamInfo struct {
	host       string // DoT
	port       int
	dohHost    string // DoH, at unboundtest.HTTPPath
	dohPort    int
	serverName string
	caFile     string
	checkName  string // a name the upstream serves, for health checks
}

// dohPath is the upstream's DoH endpoint.
const dohPath = unboundtest.HTTPPath

// sidecarPool is dot-sidecar's UPSTREAM_POOL_SIZE here, its default: the
// bound its upstream connections are checked against (poolNote).
const sidecarPool = 2

// dnsdistMaxInFlight is the pipelining depth given to the dnsdist variant,
// on the frontend (so TCP clients' queries are read ahead) and on the
// backend (so they share a DoT connection out of order).
const dnsdistMaxInFlight = 100

func allTargets() []target {
	return append([]target{
		{name: "direct", note: "dnsperf straight to the upstream's plain port: the floor every relay adds to."},
		{name: "dot-sidecar", tool: "dot-sidecar", start: startDotSidecar(false),
			note: "built from this tree; CACHE_SIZE=0 (cache off); UPSTREAM_POOL_SIZE=" + strconv.Itoa(sidecarPool) + " (the default)."},
		{name: "dnsdist", tool: "dnsdist", start: startDnsdist(0, false),
			note: "no packet cache configured (dnsdist caches only when told); outgoing DoT with its defaults (one query per connection at a time)."},
		{name: "dnsdist-pipelined", tool: "dnsdist", start: startDnsdist(dnsdistMaxInFlight, false),
			note: "as dnsdist, with maxInFlight=" + strconv.Itoa(dnsdistMaxInFlight) + " on the listener and the backend (out-of-order pipelining)."},
		{name: "unbound", tool: "unbound", start: startUnboundForwarder(false),
			note: "forward-zone \".\" with forward-tls-upstream; Unbound cannot turn its cache off: cache-max-ttl 0 and cache-max-negative-ttl 0 expire every entry at once, caches at their smallest; its default one thread."},
		{name: "stubby", tool: "stubby", start: startStubby,
			note: "GETDNS_TRANSPORT_TLS only, authentication required; stubby has no cache."},
		{name: "coredns", tool: "coredns", start: startCoreDNS(false),
			note: "forward . tls://… with tls CA and tls_servername; cache plugin not loaded (no cache)."},
		{name: "dot-sidecar-doh", tool: "dot-sidecar", doh: true, start: startDotSidecarDoH,
			note: "as dot-sidecar, with an https:// upstream (POST)."},
		{name: "dnsdist-doh", tool: "dnsdist", doh: true, start: startDnsdistDoH,
			note: "as dnsdist, with outgoing DoH (dohPath, libnghttp2; queries multiplexed over HTTP/2 by its DoH worker)."},
		{name: "coredns-doh", tool: "coredns", doh: true, start: startCoreDNSDoH,
			note: "forward . https://… (path /dns-query, POST, Go's net/http Transport) with tls CA and tls_servername."},
	}, cacheTargets()...)
}

func hostPort(host string, port int) string { return net.JoinHostPort(host, strconv.Itoa(port)) }

// startDotSidecar runs dot-sidecar over DoT with its cache (default size)
// or without (CACHE_SIZE=0).
func startDotSidecar(cache bool) func(upstreamInfo, tools, string, int) ([]string, []string, error) {
	return func(u upstreamInfo, t tools, dir string, port int) ([]string, []string, error) {
		return runDotSidecar("tls://"+hostPort(u.host, u.port)+"#"+u.serverName, u, t, port, cache)
	}
}

func startDotSidecarDoH(u upstreamInfo, t tools, dir string, port int) ([]string, []string, error) {
	return runDotSidecar("https://"+hostPort(u.dohHost, u.dohPort)+dohPath+"#"+u.serverName, u, t, port, false)
}

func runDotSidecar(entry string, u upstreamInfo, t tools, port int, cache bool) ([]string, []string, error) {
	adminPort, err := freePort()
	if err != nil {
		return nil, nil, err
	}
	env := []string{
		"UPSTREAMS=" + entry,
		"TLS_CA_FILE=" + u.caFile,
		"BIND_ADDRESS=127.0.0.1",
		"BIND_PORT=" + strconv.Itoa(port),
		"ADMIN_ADDRESS=" + hostPort("127.0.0.1", adminPort),
		"UPSTREAM_POOL_SIZE=" + strconv.Itoa(sidecarPool),
		"LOG_LEVEL=warn",
		// The lame-duck pause matters in a pod, not here; it only slows stops.
		"SHUTDOWN_LAMEDUCK=0s",
	}
	if !cache {
		env = append(env, "CACHE_SIZE=0")
	}
	return []string{t["dot-sidecar"]}, env, nil
}

// startDnsdist runs dnsdist, with a packet cache of that many entries when
// cache is set.
func startDnsdist(maxInFlight int, cache bool) func(upstreamInfo, tools, string, int) ([]string, []string, error) {
	return func(u upstreamInfo, t tools, dir string, port int) ([]string, []string, error) {
		var local, backend string
		if maxInFlight > 0 {
			local = fmt.Sprintf(", {maxInFlight=%d}", maxInFlight)
			backend = fmt.Sprintf(", maxInFlight=%d", maxInFlight)
		}
		return runDnsdist(u, t, dir, port, local, hostPort(u.host, u.port), backend, cache)
	}
}

// startDnsdistDoH is dnsdist with outgoing DNS over HTTPS: dohPath on the
// backend makes its TLS connection an HTTP/2 one.
func startDnsdistDoH(u upstreamInfo, t tools, dir string, port int) ([]string, []string, error) {
	return runDnsdist(u, t, dir, port, "", hostPort(u.dohHost, u.dohPort), fmt.Sprintf(", dohPath=%q", dohPath), false)
}

func runDnsdist(u upstreamInfo, t tools, dir string, port int, local, upstream, backend string, cache bool) ([]string, []string, error) {
	// The default health check asks for a.root-servers.net; ask for a name
	// the upstream serves so "up" means "answers our data".
	conf := fmt.Sprintf(`setSecurityPollSuffix("")
setLocal(%q%s)
setACL({"127.0.0.0/8"})
newServer({address=%q, tls="openssl", subjectName=%q, caStore=%q, validateCertificates=true, checkName=%q, checkType="A"%s})
`, hostPort("127.0.0.1", port), local, upstream, u.serverName, u.caFile, u.checkName, backend)
	if cache {
		conf += dnsdistPacketCache
	}
	path := filepath.Join(dir, "dnsdist.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, nil, err
	}
	return []string{t["dnsdist"], "--supervised", "--disable-syslog", "-C", path}, nil, nil
}

// startUnboundForwarder runs an Unbound forwarder, its caches at their
// smallest unless cache is set, then at their defaults.
func startUnboundForwarder(cache bool) func(upstreamInfo, tools, string, int) ([]string, []string, error) {
	return func(u upstreamInfo, t tools, dir string, port int) ([]string, []string, error) {
		return unboundForwarder(u, t, dir, port, cache)
	}
}

func unboundForwarder(u upstreamInfo, t tools, dir string, port int, cache bool) ([]string, []string, error) {
	caches := []string{
		"  cache-max-ttl: 0",
		"  cache-max-negative-ttl: 0",
		"  msg-cache-size: 0",
		"  rrset-cache-size: 0",
		"  key-cache-size: 0",
		"  neg-cache-size: 0",
	}
	if cache {
		caches = nil
	}
	conf := strings.Join(slices.Concat([]string{
		"server:",
		"  verbosity: 1",
		"  interface: " + fmt.Sprintf("127.0.0.1@%d", port),
		"  so-reuseport: no",
		"  chroot: \"\"",
		"  username: \"\"",
		"  directory: " + strconv.Quote(dir),
		"  pidfile: " + strconv.Quote(filepath.Join(dir, "unbound.pid")),
		"  use-syslog: no",
		"  do-daemonize: no",
		"  access-control: 127.0.0.0/8 allow",
		// The upstream is on loopback.
		"  do-not-query-localhost: no",
		"  module-config: \"iterator\"",
		"  qname-minimisation: no",
		// Unbound serves test. itself (RFC 6761) unless told not to.
		"  local-zone: \"test.\" nodefault",
		"  tls-cert-bundle: " + strconv.Quote(u.caFile),
	}, caches, []string{
		"  prefetch: no",
		"  incoming-num-tcp: 1000",
		"forward-zone:",
		"  name: \".\"",
		fmt.Sprintf("  forward-addr: %s@%d#%s", u.host, u.port, u.serverName),
		"  forward-tls-upstream: yes",
		"",
	}), "\n")
	path := filepath.Join(dir, "unbound.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, nil, err
	}
	bin, err := unconfined(t["unbound"], dir)
	if err != nil {
		return nil, nil, err
	}
	return []string{bin, "-d", "-d", "-c", path}, nil, nil
}

// unconfined returns a program path that no AppArmor profile attaches to.
// Debian's profile for /usr/sbin/unbound confines it to /etc/unbound, so
// where AppArmor is enabled a copy in dir runs instead and can read its
// configuration there (the same binary, so the figures are Unbound's).
func unconfined(bin, dir string) (string, error) {
	if b, err := os.ReadFile("/sys/module/apparmor/parameters/enabled"); err != nil || !strings.HasPrefix(string(b), "Y") {
		return bin, nil
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		return "", fmt.Errorf("copying %s out of AppArmor's reach: %w", bin, err)
	}
	cp := filepath.Join(dir, filepath.Base(bin))
	if err := os.WriteFile(cp, data, 0o755); err != nil {
		return "", fmt.Errorf("copying %s out of AppArmor's reach: %w", bin, err)
	}
	return cp, nil
}

func startStubby(u upstreamInfo, t tools, dir string, port int) ([]string, []string, error) {
	conf := fmt.Sprintf(`resolution_type: GETDNS_RESOLUTION_STUB
dns_transport_list:
  - GETDNS_TRANSPORT_TLS
tls_authentication: GETDNS_AUTHENTICATION_REQUIRED
tls_ca_file: %q
appdata_dir: %q
listen_addresses:
  - 127.0.0.1@%d
upstream_recursive_servers:
  - address_data: %s
    tls_port: %d
    tls_auth_name: %q
`, u.caFile, dir, port, u.host, u.port, u.serverName)
	path := filepath.Join(dir, "stubby.yml")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, nil, err
	}
	return []string{t["stubby"], "-C", path}, nil, nil
}

// startCoreDNS runs CoreDNS's forward plugin over DoT, behind its cache
// plugin (defaults) when cache is set.
func startCoreDNS(cache bool) func(upstreamInfo, tools, string, int) ([]string, []string, error) {
	return func(u upstreamInfo, t tools, dir string, port int) ([]string, []string, error) {
		return runCoreDNS("tls://"+hostPort(u.host, u.port), u, t, dir, port, cache)
	}
}

// startCoreDNSDoH forwards over DNS over HTTPS; CoreDNS's path is always
// /dns-query, which is the upstream's.
func startCoreDNSDoH(u upstreamInfo, t tools, dir string, port int) ([]string, []string, error) {
	return runCoreDNS("https://"+hostPort(u.dohHost, u.dohPort), u, t, dir, port, false)
}

func runCoreDNS(to string, u upstreamInfo, t tools, dir string, port int, cache bool) ([]string, []string, error) {
	plugin := ""
	if cache {
		plugin = "\tcache\n"
	}
	conf := fmt.Sprintf(`.:%d {
	bind 127.0.0.1
%s	forward . %s {
		tls %s
		tls_servername %s
	}
}
`, port, plugin, to, u.caFile, u.serverName)
	path := filepath.Join(dir, "Corefile")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, nil, err
	}
	return []string{t["coredns"], "-conf", path, "-quiet"}, nil, nil
}

// freePort asks the kernel for a loopback port free on TCP and UDP.
func freePort() (int, error) {
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("picking a port: %w", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, uerr := net.ListenPacket("udp", hostPort("127.0.0.1", port))
		_ = l.Close()
		if uerr == nil {
			_ = u.Close()
			return port, nil
		}
	}
	return 0, fmt.Errorf("picking a port: none free on both TCP and UDP")
}
