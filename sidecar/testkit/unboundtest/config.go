package unboundtest

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// makeRecords builds n names in zone. Addresses come from the ranges reserved
// for benchmarking and documentation (RFC 2544's 198.18.0.0/15, RFC 3849's
// 2001:db8::/32), so no answer can be mistaken for a real host.
func makeRecords(zone string, n int) []Record {
	recs := make([]Record, n)
	for i := range recs {
		k := i + 1
		recs[i] = Record{
			Name: "name" + strconv.Itoa(k) + "." + zone,
			A:    net.IPv4(198, 18+byte(k>>16&1), byte(k>>8), byte(k)).To4(),
			AAAA: net.ParseIP(fmt.Sprintf("2001:db8::%x:%x", k>>16, k&0xffff)),
			TXT:  "unboundtest " + strconv.Itoa(k),
		}
	}
	return recs
}

// config renders unbound.conf. Caching does not matter (local data is
// answered before the cache), so it is left at its defaults.
func (s *Server) config(dotPort, plainPort, httpsPort int, extraDoT []int) string {
	o := s.opts
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, "\t"+format+"\n", args...) }
	b.WriteString("server:\n")
	line("verbosity: 1")
	line("num-threads: %d", o.Threads)
	line("interface: %s@%d", o.Address, dotPort)
	if o.Plain {
		line("interface: %s@%d", o.Address, plainPort)
	}
	for _, p := range extraDoT {
		line("interface: %s@%d", o.Address, p)
	}
	if httpsPort != 0 {
		// Only the interface on https-port speaks DoH, over HTTP/2 with
		// TLS, at the one endpoint.
		line("interface: %s@%d", o.Address, httpsPort)
		for _, a := range s.ExtraHTTPSAddrs {
			line("interface: %s", strings.Replace(a, ":", "@", 1))
		}
		line("https-port: %d", httpsPort)
		line("http-endpoint: %q", HTTPPath)
		line("http-notls-downstream: no")
	}
	// Only interfaces on tls-port (or a tls-additional-port) speak TLS; the
	// plain port stays plain.
	line("tls-port: %d", dotPort)
	for _, p := range extraDoT {
		line("tls-additional-port: %d", p)
	}
	line("tls-service-key: %q", s.Dir+"/key.pem")
	line("tls-service-pem: %q", s.Dir+"/cert.pem")
	line("interface-automatic: no")
	// Reuseport would let two instances bind the same port and split the
	// traffic silently; a clash must fail instead.
	line("so-reuseport: no")
	line("do-ip4: yes")
	line("do-ip6: yes")
	line("do-udp: yes")
	line("do-tcp: yes")
	line("chroot: \"\"")
	line("username: \"\"")
	line("directory: %q", s.Dir)
	line("pidfile: %q", s.Dir+"/unbound.pid")
	line("use-syslog: no")
	line("do-daemonize: no")
	line("access-control: 0.0.0.0/0 allow")
	line("access-control: ::/0 allow")
	line("do-not-query-localhost: yes")
	line("module-config: \"iterator\"")
	line("incoming-num-tcp: %d", o.IncomingNumTCP)
	line("extended-statistics: yes")
	line("statistics-cumulative: yes")
	// Nothing is ever resolved recursively: unknown names get NXDOMAIN at
	// once, which also keeps relays' health checks from timing out.
	line("local-zone: \".\" static")
	line("local-zone: %q static", o.Zone)
	line("local-data: %q", o.Zone+" 3600 IN SOA ns."+o.Zone+" hostmaster."+o.Zone+" 1 3600 600 86400 60")
	line("local-data: %q", o.Zone+" 3600 IN NS ns."+o.Zone)
	for _, r := range s.Names {
		line("local-data: %q", r.Name+" 3600 IN A "+r.A.String())
		line("local-data: %q", r.Name+" 3600 IN AAAA "+r.AAAA.String())
		line("local-data: '%s 3600 IN TXT \"%s\"'", r.Name, r.TXT)
	}
	if o.LogQueries {
		line("log-queries: yes")
	}
	for _, l := range o.ExtraConfig {
		line("%s", l)
	}
	for _, l := range o.Clauses {
		b.WriteString(l + "\n")
	}
	b.WriteString("remote-control:\n")
	line("control-enable: yes")
	line("control-interface: %q", s.controlSocket())
	return b.String()
}

func (s *Server) controlSocket() string { return s.Dir + "/control.sock" }
