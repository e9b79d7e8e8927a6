package config

import (
	"fmt"
	"net/netip"
	"strings"
)

// Route sends the names of one zone to upstreams of its own (ROUTES).
type Route struct {
	// Zone is the zone's name, lower-cased, without its final dot
	// ("cluster.local"). Never the root: that is UPSTREAMS.
	Zone string
	// Upstreams are all encrypted or all plaintext.
	Upstreams []Upstream
}

// Encrypted reports whether the route's upstreams are encrypted (a route is
// never mixed).
func (r Route) Encrypted() bool { return r.Upstreams[0].Scheme.Encrypted() }

// String returns the route in ROUTES syntax.
func (r Route) String() string { return r.Zone + "=" + joinEntries(r.Upstreams) }

func joinEntries(ups []Upstream) string {
	entries := make([]string, len(ups))
	for i, u := range ups {
		entries[i] = u.String()
	}
	return strings.Join(entries, ",")
}

// ParseRoutes parses ROUTES: routes separated by blanks, each
// ZONE=UPSTREAM[,UPSTREAM...], the zone ending at the first '=', the list in
// the entry syntax of UPSTREAMS with plaintext schemes allowed. Which
// plaintext addresses are allowed depends on PLAINTEXT_ALLOWED_CIDRS, so it
// is checked later, with the other settings (checkPlaintext).
func ParseRoutes(s string) ([]Route, error) {
	var routes []Route
	seen := make(map[string]bool)
	for _, field := range strings.Fields(s) {
		zone, list, ok := strings.Cut(field, "=")
		if !ok {
			return nil, fmt.Errorf("route %q: want ZONE=UPSTREAM[,UPSTREAM...]", field)
		}
		r, err := parseRoute(zone, list)
		if err != nil {
			return nil, fmt.Errorf("route %q: %w", field, err)
		}
		if seen[r.Zone] {
			return nil, fmt.Errorf("zone %s is routed twice", r.Zone)
		}
		seen[r.Zone] = true
		routes = append(routes, r)
	}
	return routes, nil
}

func parseRoute(zone, list string) (Route, error) {
	if zone == "" {
		return Route{}, fmt.Errorf("empty zone before '='")
	}
	if zone == "." {
		return Route{}, fmt.Errorf("the root zone is not a route: UPSTREAMS answers every name no route matches")
	}
	z, err := parseZoneName(zone)
	if err != nil {
		return Route{}, err
	}
	if list == "" {
		return Route{}, fmt.Errorf("empty upstream list")
	}
	ups, err := parseUpstreamList(list)
	if err != nil {
		return Route{}, err
	}
	if err := checkNotMixed(ups); err != nil {
		return Route{}, err
	}
	return Route{Zone: z, Upstreams: ups}, nil
}

// checkNotMixed refuses a list of encrypted and plaintext upstreams:
// failing over from one to the other would drop to plaintext.
func checkNotMixed(ups []Upstream) error {
	for _, u := range ups[1:] {
		if u.Scheme.Encrypted() != ups[0].Scheme.Encrypted() {
			return fmt.Errorf("mixes encrypted and plaintext upstreams (%s, %s): failover must never drop to plaintext", ups[0].Name(), u.Name())
		}
	}
	return nil
}

// Values of CLUSTER_DNS other than a list.
const (
	ClusterDNSAuto = "auto"
	ClusterDNSOff  = "off"
)

// ClusterDNS is CLUSTER_DNS: auto, off, or the upstreams of the cluster
// domain.
type ClusterDNS struct {
	// Mode is ClusterDNSAuto, ClusterDNSOff, or "" when Upstreams are given.
	Mode      string
	Upstreams []Upstream
}

func (c ClusterDNS) String() string {
	if c.Mode != "" {
		return c.Mode
	}
	return joinEntries(c.Upstreams)
}

func parseClusterDNS(s string) (ClusterDNS, error) {
	s = strings.TrimSpace(s)
	switch strings.ToLower(s) {
	case ClusterDNSAuto, ClusterDNSOff:
		return ClusterDNS{Mode: strings.ToLower(s)}, nil
	}
	if !strings.Contains(s, "://") {
		return ClusterDNS{}, fmt.Errorf("want auto, off, or a list of upstreams such as dns://10.96.0.10")
	}
	ups, err := parseUpstreamList(s)
	if err != nil {
		return ClusterDNS{}, err
	}
	if err := checkNotMixed(ups); err != nil {
		return ClusterDNS{}, err
	}
	return ClusterDNS{Upstreams: ups}, nil
}

// parseZoneName checks a zone or domain name in presentation form (a final
// dot allowed) and returns it lower-cased without the final dot. Labels are
// letters, digits, '-' and '_' (reverse zones are digits, service names
// start with '_'), 1 to 63 bytes; the whole at most 253. The root is the
// caller's to refuse or allow.
func parseZoneName(s string) (string, error) {
	name := strings.ToLower(strings.TrimSuffix(s, "."))
	if name == "" || len(name) > 253 {
		return "", fmt.Errorf("%q is not a domain name", s)
	}
	for label := range strings.SplitSeq(name, ".") {
		if len(label) == 0 || len(label) > 63 {
			return "", fmt.Errorf("%q is not a domain name", s)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", fmt.Errorf("%q is not a domain name", s)
			}
		}
	}
	return name, nil
}

func parseClusterDomain(s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "." {
		return "", fmt.Errorf("the root zone cannot be the cluster domain")
	}
	return parseZoneName(s)
}

// plaintextRanges are the destinations plaintext DNS may go to without
// PLAINTEXT_ALLOWED_CIDRS: addresses that do not leave the host, the link,
// or a private network.
var plaintextRanges = []netip.Prefix{
	netip.MustParsePrefix("127.0.0.0/8"),    // loopback
	netip.MustParsePrefix("::1/128"),        // loopback
	netip.MustParsePrefix("169.254.0.0/16"), // link-local
	netip.MustParsePrefix("fe80::/10"),      // link-local
	netip.MustParsePrefix("10.0.0.0/8"),     // RFC 1918
	netip.MustParsePrefix("172.16.0.0/12"),  // RFC 1918
	netip.MustParsePrefix("192.168.0.0/16"), // RFC 1918
	netip.MustParsePrefix("100.64.0.0/10"),  // RFC 6598 shared address space
	netip.MustParsePrefix("fc00::/7"),       // RFC 4193 unique local
}

// PlaintextAllowed reports whether plaintext DNS may be sent to a: one of
// the ranges above, or one of allowed.
func PlaintextAllowed(a netip.Addr, allowed []netip.Prefix) bool {
	a = a.Unmap()
	for _, p := range plaintextRanges {
		if p.Contains(a) {
			return true
		}
	}
	for _, p := range allowed {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// checkPlaintext refuses plaintext entries to addresses that are not
// allowed.
func checkPlaintext(ups []Upstream, allowed []netip.Prefix) error {
	for _, u := range ups {
		if !u.Scheme.Encrypted() && !PlaintextAllowed(u.Addr.Addr(), allowed) {
			return fmt.Errorf("%s would send queries in plaintext to a public address; plaintext is allowed only to loopback, link-local, private (RFC 1918, RFC 6598, ULA) addresses and PLAINTEXT_ALLOWED_CIDRS", u.Name())
		}
	}
	return nil
}

// parseCIDRList reads PLAINTEXT_ALLOWED_CIDRS.
func parseCIDRList(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for i, p := range strings.Split(s, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			return nil, fmt.Errorf("CIDR %d is empty", i+1)
		}
		pfx, err := netip.ParsePrefix(p)
		if err != nil || pfx.Addr().Zone() != "" {
			return nil, fmt.Errorf("%q is not a CIDR such as 203.0.113.0/24 or 2001:db8::/32", p)
		}
		if pfx.Bits() == 0 {
			return nil, fmt.Errorf("%s allows every address: list the ranges of your resolvers", pfx)
		}
		out = append(out, pfx.Masked())
	}
	return out, nil
}
