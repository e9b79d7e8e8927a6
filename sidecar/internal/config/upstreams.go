package config

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Default ports of the schemes that name none.
const (
	DefaultDoTPort = 853 // tls:// (RFC 7858 §3.1)
	DefaultDoHPort = 443 // https:// (RFC 8484: HTTPS's)
	DefaultDNSPort = 53  // dns:// and tcp://
)

// Scheme is how an upstream is reached.
type Scheme string

// The schemes of upstream entries. Each is one entry of the schemes table,
// with its own target syntax and options; the list syntax is theirs alike.
const (
	// SchemeTLS is DNS over TLS (RFC 7858): verified, encrypted.
	SchemeTLS Scheme = "tls"
	// SchemeHTTPS is DNS over HTTPS (RFC 8484), over HTTP/2: verified and
	// encrypted like tls://, through networks that let only HTTPS out.
	SchemeHTTPS Scheme = "https"
	// SchemeDNS is plain DNS over UDP, retried over TCP when truncated.
	// Plaintext: accepted only in ROUTES and CLUSTER_DNS.
	SchemeDNS Scheme = "dns"
	// SchemeTCP is plain DNS over TCP only. Plaintext, like SchemeDNS.
	SchemeTCP Scheme = "tcp"
)

// Encrypted reports whether queries to the scheme travel encrypted.
func (s Scheme) Encrypted() bool { return schemes[s].encrypted }

// Upstream is one resolver to relay to.
type Upstream struct {
	Scheme Scheme
	// Addr is where to connect: an IP literal, never a hostname, because
	// resolving a name would take a plaintext DNS lookup first.
	Addr netip.AddrPort
	// ServerName is the name the upstream's certificate must carry; it is
	// also sent as SNI (and, for https://, as the requests' :authority).
	// tls:// and https:// only.
	ServerName string
	// Path is the DoH endpoint's path, e.g. "/dns-query". https:// only.
	Path string
	// GET sends DoH queries as GET ?dns= rather than POST (;method=get).
	// https:// only.
	GET bool
	// Pins are the entry's own SPKI SHA-256 pins; when not empty, a
	// connection is accepted only if one of them matches a key of the
	// verified chain. When empty, the default pins apply (TLS_PINS or
	// TLS_PINS_FILE) to UPSTREAMS entries, none to routes'. tls:// and
	// https:// only.
	Pins [][32]byte
	// CAFile is the entry's own CA bundle (;ca=), trusted instead of the
	// system roots for this entry alone, and re-read when it changes.
	// tls:// and https:// entries of ROUTES and CLUSTER_DNS only: UPSTREAMS
	// entries are verified against TLS_CA_FILE.
	CAFile string
	// Probe is the name of the entry's health probe (;probe=), in
	// presentation form with its final dot; empty for the default of its
	// group.
	Probe string
}

// Name identifies the upstream in logs and as the `upstream` metric label:
// "1.1.1.1:853#cloudflare-dns.com" for DNS over TLS,
// "https://1.1.1.1:443/dns-query#cloudflare-dns.com" for DNS over HTTPS,
// "dns://10.96.0.10:53" for plaintext, so that plaintext shows at a glance.
// Pins and options are left out so that rotating them does not start new
// metric series.
func (u Upstream) Name() string {
	switch u.Scheme {
	case SchemeTLS:
		return u.Addr.String() + "#" + u.ServerName
	case SchemeHTTPS:
		return "https://" + u.Addr.String() + u.Path + "#" + u.ServerName
	}
	return string(u.Scheme) + "://" + u.Addr.String()
}

// String returns the entry in list syntax, options included; ParseUpstream
// reads it back to an equal Upstream.
func (u Upstream) String() string {
	var b strings.Builder
	if u.Scheme == SchemeTLS {
		b.WriteString("tls://")
	}
	b.WriteString(u.Name())
	for _, p := range u.Pins {
		b.WriteString(";pin=")
		b.WriteString(FormatPin(p))
	}
	if u.CAFile != "" {
		b.WriteString(";ca=")
		b.WriteString(u.CAFile)
	}
	if u.Probe != "" {
		b.WriteString(";probe=")
		b.WriteString(u.Probe)
	}
	if u.GET {
		b.WriteString(";method=get")
	}
	return b.String()
}

// scheme describes one scheme: its default port, whether it encrypts, how
// to read what follows "://" up to the options, and the options it takes.
type scheme struct {
	port      uint16
	encrypted bool
	target    func(u *Upstream, target string) error
	options   map[string]func(u *Upstream, value string) error
}

var schemes = map[Scheme]scheme{
	SchemeTLS: {port: DefaultDoTPort, encrypted: true, target: tlsTarget,
		options: map[string]func(*Upstream, string) error{"pin": optPin, "ca": optCA, "probe": optProbe}},
	SchemeHTTPS: {port: DefaultDoHPort, encrypted: true, target: httpsTarget,
		options: map[string]func(*Upstream, string) error{"pin": optPin, "ca": optCA, "probe": optProbe, "method": optMethod}},
	SchemeDNS: {port: DefaultDNSPort, target: plainTarget,
		options: map[string]func(*Upstream, string) error{"probe": optProbe}},
	SchemeTCP: {port: DefaultDNSPort, target: plainTarget,
		options: map[string]func(*Upstream, string) error{"probe": optProbe}},
}

// schemeNames lists the schemes for error messages, in a fixed order.
func schemeNames() string {
	names := make([]string, 0, len(schemes))
	for s := range schemes {
		names = append(names, string(s))
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// ParseUpstream parses one upstream entry of any scheme:
//
//	tls://IP[:PORT]#SERVERNAME[;pin=BASE64]...[;ca=PATH][;probe=NAME]
//	https://IP[:PORT]/PATH#SERVERNAME[;pin=BASE64]...[;ca=PATH][;probe=NAME][;method=get|post]
//	dns://IP[:PORT][;probe=NAME]
//	tcp://IP[:PORT][;probe=NAME]
//
// IPv6 addresses go in brackets; PORT defaults to 853 for tls://, 443 for
// https://, 53 otherwise. Where an entry may stand (plaintext only in routes) is for the
// list parsers to say.
func ParseUpstream(entry string) (Upstream, error) {
	name, rest, ok := strings.Cut(entry, "://")
	if !ok {
		return Upstream{}, fmt.Errorf("want scheme://..., e.g. tls://1.1.1.1#cloudflare-dns.com")
	}
	u := Upstream{Scheme: Scheme(strings.ToLower(name))}
	sc, ok := schemes[u.Scheme]
	if !ok {
		return Upstream{}, fmt.Errorf("unknown scheme %q (supported: %s)", name, schemeNames())
	}
	target, opts, hasOpts := strings.Cut(rest, ";")
	if err := sc.target(&u, target); err != nil {
		return Upstream{}, err
	}
	if hasOpts {
		for _, opt := range strings.Split(opts, ";") {
			if opt == "" {
				return Upstream{}, fmt.Errorf("empty option after ';'")
			}
			key, value, ok := strings.Cut(opt, "=")
			if !ok {
				return Upstream{}, fmt.Errorf("option %q: want key=value", opt)
			}
			apply, ok := sc.options[key]
			if !ok {
				return Upstream{}, fmt.Errorf("unknown option %q for %s:// (supported: %s)", key, u.Scheme, optionNames(sc))
			}
			if err := apply(&u, value); err != nil {
				return Upstream{}, err
			}
		}
	}
	if u.Addr.Port() == 0 {
		u.Addr = netip.AddrPortFrom(u.Addr.Addr(), sc.port)
	}
	return u, nil
}

func optionNames(sc scheme) string {
	names := make([]string, 0, len(sc.options))
	for k := range sc.options {
		names = append(names, k)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// ParseUpstreams parses the comma-separated UPSTREAMS list: encrypted
// entries only, verified against TLS_CA_FILE (no ;ca=). Entries may be
// surrounded by spaces; an empty entry or the same upstream twice is an
// error.
func ParseUpstreams(s string) ([]Upstream, error) {
	ups, err := parseUpstreamList(s)
	if err != nil {
		return nil, err
	}
	for _, u := range ups {
		if !u.Scheme.Encrypted() {
			return nil, fmt.Errorf("%s is plaintext: UPSTREAMS must be encrypted; plaintext upstreams are allowed only in ROUTES and CLUSTER_DNS, to resolvers inside the cluster or network", u.Name())
		}
		if u.CAFile != "" {
			return nil, fmt.Errorf("%s: ;ca= is for ROUTES and CLUSTER_DNS entries; UPSTREAMS entries are verified against TLS_CA_FILE", u.Name())
		}
	}
	return ups, nil
}

// parseUpstreamList parses a comma-separated list of entries of any scheme.
func parseUpstreamList(s string) ([]Upstream, error) {
	var ups []Upstream
	seen := make(map[string]bool)
	entries := strings.Split(s, ",")
	for i, e := range entries {
		e = strings.TrimSpace(e)
		if e == "" {
			return nil, fmt.Errorf("entry %d is empty", i+1)
		}
		u, err := ParseUpstream(e)
		if err != nil {
			if len(entries) > 1 {
				// The whole list is already quoted by the caller; name the
				// culprit.
				return nil, fmt.Errorf("entry %d %q: %w", i+1, e, err)
			}
			return nil, err
		}
		if seen[u.Name()] {
			return nil, fmt.Errorf("%s is listed twice", u.Name())
		}
		seen[u.Name()] = true
		ups = append(ups, u)
	}
	return ups, nil
}

func optPin(u *Upstream, value string) error {
	pin, err := ParsePin(value)
	if err != nil {
		return err
	}
	u.Pins = appendPin(u.Pins, pin)
	return nil
}

func optCA(u *Upstream, value string) error {
	switch {
	case value == "":
		return fmt.Errorf("empty ;ca= path")
	case u.CAFile != "":
		return fmt.Errorf(";ca= given twice: put every CA in one bundle")
	case !filepath.IsAbs(value):
		// The sidecar's working directory is nobody's business; a relative
		// path would work or not depending on it.
		return fmt.Errorf(";ca=%s: want an absolute path", value)
	case strings.ContainsAny(value, ", \t\n"):
		return fmt.Errorf(";ca=%q: a path with commas or blanks cannot be written in a list", value)
	}
	u.CAFile = value
	return nil
}

func optProbe(u *Upstream, value string) error {
	if u.Probe != "" {
		return fmt.Errorf(";probe= given twice")
	}
	name, err := parseProbeName(value)
	if err != nil {
		return err
	}
	u.Probe = name
	return nil
}

// parseProbeName checks a health probe's name: a domain name, the root
// included; it is kept lower-cased with its final dot.
func parseProbeName(s string) (string, error) {
	if s == "." {
		return s, nil
	}
	z, err := parseZoneName(s)
	if err != nil {
		return "", fmt.Errorf(";probe=%s: %w", s, err)
	}
	return z + ".", nil
}

func tlsTarget(u *Upstream, target string) error {
	hostport, name, ok := strings.Cut(target, "#")
	if !ok {
		return fmt.Errorf("missing #SERVERNAME: the name the upstream's certificate must carry is mandatory")
	}
	var err error
	if u.Addr, err = parseHostPort(hostport); err != nil {
		return err
	}
	u.ServerName, err = parseServerName(name)
	return err
}

// httpsTarget reads IP[:PORT]/PATH#SERVERNAME: a DoH URL whose host is the
// address to connect to, with the certificate's name after '#', as for
// tls://.
func httpsTarget(u *Upstream, target string) error {
	rest, name, ok := strings.Cut(target, "#")
	if !ok {
		return fmt.Errorf("missing #SERVERNAME: the name the upstream's certificate must carry is mandatory")
	}
	hostport, path, ok := strings.Cut(rest, "/")
	if !ok {
		return fmt.Errorf("missing /PATH after the address: the DoH endpoint's path, e.g. https://%s/dns-query#%s", rest, name)
	}
	var err error
	if u.Addr, err = parseHostPort(hostport); err != nil {
		return err
	}
	if u.Path, err = parseURLPath("/" + path); err != nil {
		return err
	}
	u.ServerName, err = parseServerName(name)
	return err
}

// parseURLPath checks a DoH path: URL path characters (RFC 3986 pchar and
// '/'), percent escapes complete, and none of the characters the list
// syntax uses (',' ';') or a URL would read otherwise ('?' '#').
func parseURLPath(p string) (string, error) {
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("-._~!$&'()*+=:@/", c) >= 0:
		case c == '%':
			if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
				return "", fmt.Errorf("path %q: '%%' must start an escape such as %%2F", p)
			}
			i += 2
		case c == '?':
			return "", fmt.Errorf("path %q: no query: GET requests add ?dns= themselves", p)
		default:
			return "", fmt.Errorf("path %q: %q is not allowed in a path here", p, c)
		}
	}
	return p, nil
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func optMethod(u *Upstream, value string) error {
	switch strings.ToLower(value) {
	case "post":
		u.GET = false
	case "get":
		u.GET = true
	default:
		return fmt.Errorf(";method=%s: want get or post", value)
	}
	return nil
}

func plainTarget(u *Upstream, target string) error {
	if strings.Contains(target, "#") {
		return fmt.Errorf("%s:// takes no #SERVERNAME: plaintext has no certificate to check", u.Scheme)
	}
	var err error
	u.Addr, err = parseHostPort(target)
	return err
}

// parseHostPort reads IP, IP:PORT, [IPv6] or [IPv6]:PORT.
func parseHostPort(s string) (netip.AddrPort, error) {
	host, port := s, ""
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return netip.AddrPort{}, fmt.Errorf("missing ']' after IPv6 address")
		}
		host, port = s[1:end], s[end+1:]
		if port != "" {
			if port[0] != ':' {
				return netip.AddrPort{}, fmt.Errorf("unexpected %q after ']'", port)
			}
			port = port[1:]
			if port == "" {
				return netip.AddrPort{}, fmt.Errorf("empty port")
			}
		}
		a, err := parseIP(host)
		if err != nil {
			return netip.AddrPort{}, err
		}
		if !a.Is6() {
			return netip.AddrPort{}, fmt.Errorf("%q in brackets is not an IPv6 address", host)
		}
		return withPort(a, port)
	}
	if strings.Count(s, ":") > 1 {
		if _, err := netip.ParseAddr(s); err == nil {
			return netip.AddrPort{}, fmt.Errorf("IPv6 address %q must be in brackets: [%s] or [%s]:853", s, s, s)
		}
		return netip.AddrPort{}, fmt.Errorf("%q is not IP[:PORT] (IPv6 goes in brackets)", s)
	}
	if h, p, ok := strings.Cut(s, ":"); ok {
		host, port = h, p
		if port == "" {
			return netip.AddrPort{}, fmt.Errorf("empty port")
		}
	}
	a, err := parseIP(host)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return withPort(a, port)
}

// withPort adds the port; without one it is left 0, for the scheme's
// default.
func withPort(a netip.Addr, port string) (netip.AddrPort, error) {
	if port == "" {
		return netip.AddrPortFrom(a, 0), nil
	}
	p, err := parsePort(port)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(a, p), nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("port %q must be 1-65535", s)
	}
	return uint16(n), nil
}

// parseIP accepts an IP literal that can be a destination: hostnames are
// refused because resolving one would need a plaintext lookup first.
func parseIP(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		if looksLikeHostname(s) {
			return netip.Addr{}, fmt.Errorf("%q is a hostname, not an IP literal: resolving it would need a plaintext DNS lookup", s)
		}
		return netip.Addr{}, fmt.Errorf("%q is not an IP address", s)
	}
	if a.IsUnspecified() || a.IsMulticast() {
		return netip.Addr{}, fmt.Errorf("%s cannot be an upstream address", a)
	}
	if a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%q: IPv6 zones are not supported for upstreams", s)
	}
	return a, nil
}

func looksLikeHostname(s string) bool {
	if s == "" {
		return false
	}
	hasLetter := false
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z':
			hasLetter = true
		case r >= '0' && r <= '9', r == '-', r == '.', r == '_':
		default:
			return false
		}
	}
	return hasLetter
}

// parseServerName checks the name a certificate must carry: a DNS name
// (letters, digits, '-', '_' in dot-separated labels) or an IP literal for
// certificates with IP SANs. A trailing dot is dropped (SNI carries none) and
// the name is lower-cased so that metric labels are stable.
func parseServerName(s string) (string, error) {
	if s == "" {
		return "", fmt.Errorf("empty server name: the name the upstream's certificate must carry is mandatory")
	}
	if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
		return a.String(), nil
	}
	name := strings.ToLower(strings.TrimSuffix(s, "."))
	if len(name) == 0 || len(name) > 253 {
		return "", fmt.Errorf("server name %q is not a valid DNS name", s)
	}
	for _, label := range strings.Split(name, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return "", fmt.Errorf("server name %q is not a valid DNS name", s)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", fmt.Errorf("server name %q is not a valid DNS name", s)
			}
		}
	}
	return name, nil
}
