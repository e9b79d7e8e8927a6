package corednstest

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// TTL is the TTL of every record served, and the SOA's negative TTL: 5
// seconds, the kubernetes plugin's default.
const TTL = 5

// Log formats of the log plugin, one per transport, parsed back by Queries:
// "dns udp 192.0.2.10 A kubernetes.default.svc.cluster.local. NOERROR".
const (
	logPrefix = "corednstest-query"
	logFormat = logPrefix + " %s {proto} {remote} {type} {name} {rcode}"
)

// zoneFile is one zone's master file, served by the file plugin.
type zoneFile struct {
	origin string // fully qualified
	path   string
}

// writeZones writes the cluster domain, the reverse zones and the extra
// zones into dir.
func (s *Server) writeZones() ([]zoneFile, error) {
	d := s.Domain
	nsName := "ns.dns." + d
	soa := func(origin string) []string {
		return []string{
			fmt.Sprintf("%s %d IN SOA %s hostmaster.%s 1 7200 1800 86400 %d", origin, TTL, nsName, d, TTL),
			fmt.Sprintf("%s %d IN NS %s", origin, TTL, nsName),
		}
	}
	cluster := soa(d)
	cluster = append(cluster, rr(nsName, "A", s.dnsServiceIP().String()))
	v4, v6 := soa("in-addr.arpa."), soa("ip6.arpa.")
	for _, sv := range s.Services {
		if sv.IPv4.IsValid() {
			cluster = append(cluster, rr(sv.FQDN, "A", sv.IPv4.String()))
			v4 = append(v4, rr(ReverseName(sv.IPv4), "PTR", sv.FQDN))
		}
		if sv.IPv6.IsValid() {
			cluster = append(cluster, rr(sv.FQDN, "AAAA", sv.IPv6.String()))
			v6 = append(v6, rr(ReverseName(sv.IPv6), "PTR", sv.FQDN))
		}
	}
	zones := []struct {
		origin  string
		records []string
	}{{d, cluster}, {"in-addr.arpa.", v4}, {"ip6.arpa.", v6}}
	for _, z := range s.opts.Zones {
		origin := fqdn(z.Origin)
		recs := soa(origin)
		for _, r := range z.Records {
			recs = append(recs, r)
		}
		zones = append(zones, struct {
			origin  string
			records []string
		}{origin, recs})
	}
	var files []zoneFile
	for _, z := range zones {
		f := zoneFile{origin: z.origin, path: filepath.Join(s.Dir, "db."+strings.TrimSuffix(z.origin, "."))}
		if err := os.WriteFile(f.path, []byte(strings.Join(z.records, "\n")+"\n"), 0o644); err != nil {
			return nil, fmt.Errorf("writing zone %s: %w", z.origin, err)
		}
		files = append(files, f)
	}
	return files, nil
}

func rr(name, typ, data string) string { return fmt.Sprintf("%s %d IN %s %s", name, TTL, typ, data) }

// dnsServiceIP is the address the NS record names: the server's own when it
// is IPv4, else kube-dns's usual Service IP.
func (s *Server) dnsServiceIP() netip.Addr {
	if a, err := netip.ParseAddr(s.opts.Address); err == nil && a.Is4() {
		return a
	}
	return netip.MustParseAddr("10.96.0.10")
}

// corefile renders the Corefile: for each transport, one server block for
// the zones the cluster's resolver answers from its own data, one for
// SlowZone, and a catch-all for the root that answers REFUSED, so that a
// name that should never have reached the cluster's resolver is logged
// and refused rather than answered.
func (s *Server) corefile(files []zoneFile, port, tlsPort int, certFile, keyFile string) string {
	var b strings.Builder
	var keys []string
	for _, f := range files {
		keys = append(keys, f.origin)
	}
	block := func(scheme string, port int, zones []string, tls bool, body ...string) {
		for i, z := range zones {
			if i > 0 {
				b.WriteString(" ")
			}
			fmt.Fprintf(&b, "%s%s:%d", scheme, z, port)
		}
		b.WriteString(" {\n")
		lines := []string{"bind " + s.opts.Address, "errors"}
		transport := "dns"
		if tls {
			transport = "tls"
			lines = append(lines, fmt.Sprintf("tls %s %s", certFile, keyFile))
		}
		lines = append(lines, fmt.Sprintf("log . %q", fmt.Sprintf(logFormat, transport)))
		for _, l := range append(lines, body...) {
			b.WriteString("\t" + l + "\n")
		}
		b.WriteString("}\n")
	}
	var fileLines []string
	for _, f := range files {
		fileLines = append(fileLines, fmt.Sprintf("file %s %s", f.path, f.origin))
	}
	refuse := []string{"template ANY ANY {", "\trcode REFUSED", "}"}
	slow := []string{"erratic {", fmt.Sprintf("\tdelay 1 %s", s.opts.SlowDelay), "}"}
	for _, tr := range []struct {
		scheme string
		port   int
		tls    bool
	}{{"", port, false}, {"tls://", tlsPort, true}} {
		block(tr.scheme, tr.port, keys, tr.tls, fileLines...)
		if s.opts.SlowDelay > 0 {
			block(tr.scheme, tr.port, []string{s.SlowZone}, tr.tls, slow...)
		}
		block(tr.scheme, tr.port, []string{"."}, tr.tls, refuse...)
	}
	return b.String()
}

func fqdn(name string) string {
	if strings.HasSuffix(name, ".") {
		return name
	}
	return name + "."
}

// ReverseName is the PTR owner name of an address:
// "1.0.96.10.in-addr.arpa." for 10.96.0.1.
func ReverseName(a netip.Addr) string {
	var b strings.Builder
	if a.Is4() {
		o := a.As4()
		fmt.Fprintf(&b, "%d.%d.%d.%d.in-addr.arpa.", o[3], o[2], o[1], o[0])
		return b.String()
	}
	o := a.As16()
	for i := len(o) - 1; i >= 0; i-- {
		fmt.Fprintf(&b, "%x.%x.", o[i]&0xf, o[i]>>4)
	}
	b.WriteString("ip6.arpa.")
	return b.String()
}
