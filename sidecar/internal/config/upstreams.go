package config

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// DefaultDoTPort is the port of an UPSTREAMS tls:// entry that names none
// (RFC 7858 §3.1).
const DefaultDoTPort = 853

// Upstream is one encrypted resolver to relay to.
type Upstream struct {
	// Addr is where to connect: an IP literal, never a hostname, because
	// resolving a name would take a plaintext DNS lookup first.
	Addr netip.AddrPort
	// ServerName is the name the upstream's certificate must carry; it is
	// also sent as SNI.
	ServerName string
	// Pins are the entry's own SPKI SHA-256 pins; when not empty, a
	// connection is accepted only if one of them matches a key of the
	// verified chain. When empty, the default pins apply (TLS_PINS or
	// TLS_PINS_FILE), if any.
	Pins [][32]byte
}

// Name identifies the upstream in logs and as the `upstream` metric label,
// e.g. "1.1.1.1:853#cloudflare-dns.com". Pins are left out so that
// rotating them does not start new metric series.
func (u Upstream) Name() string {
	return u.Addr.String() + "#" + u.ServerName
}

// String returns the entry in UPSTREAMS syntax, pins included; ParseUpstream
// reads it back to an equal Upstream.
func (u Upstream) String() string {
	var b strings.Builder
	b.WriteString("tls://")
	b.WriteString(u.Name())
	for _, p := range u.Pins {
		b.WriteString(";pin=")
		b.WriteString(FormatPin(p))
	}
	return b.String()
}

// schemes maps an UPSTREAMS scheme to the parser of what follows "://".
// A DNS-over-HTTPS upstream becomes one more entry here ("https"), with its
// own options, without touching the list syntax or the other schemes.
var schemes = map[string]func(rest string) (Upstream, error){
	"tls": parseTLSEntry,
}

// ParseUpstream parses one UPSTREAMS entry:
//
//	tls://IP[:PORT]#SERVERNAME[;pin=BASE64]...
//
// IPv6 addresses go in brackets; PORT defaults to 853; SERVERNAME is
// mandatory; pin may be repeated.
func ParseUpstream(entry string) (Upstream, error) {
	scheme, rest, ok := strings.Cut(entry, "://")
	if !ok {
		return Upstream{}, fmt.Errorf("want scheme://..., e.g. tls://1.1.1.1#cloudflare-dns.com")
	}
	parse, ok := schemes[strings.ToLower(scheme)]
	if !ok {
		return Upstream{}, fmt.Errorf("unknown scheme %q (supported: tls)", scheme)
	}
	return parse(rest)
}

// ParseUpstreams parses the comma-separated UPSTREAMS list. Entries may be
// surrounded by spaces; an empty entry or the same upstream twice is an
// error.
func ParseUpstreams(s string) ([]Upstream, error) {
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

// tlsOptions are the ";key=value" options a tls:// entry accepts.
var tlsOptions = map[string]func(u *Upstream, value string) error{
	"pin": func(u *Upstream, value string) error {
		pin, err := ParsePin(value)
		if err != nil {
			return err
		}
		u.Pins = appendPin(u.Pins, pin)
		return nil
	},
}

func parseTLSEntry(rest string) (Upstream, error) {
	var u Upstream
	target, opts, _ := strings.Cut(rest, ";")
	hostport, name, ok := strings.Cut(target, "#")
	if !ok {
		return u, fmt.Errorf("missing #SERVERNAME: the name the upstream's certificate must carry is mandatory")
	}
	addr, err := parseHostPort(hostport)
	if err != nil {
		return u, err
	}
	u.Addr = addr
	if u.ServerName, err = parseServerName(name); err != nil {
		return u, err
	}
	if opts == "" {
		if strings.HasSuffix(rest, ";") {
			return u, fmt.Errorf("empty option after ';'")
		}
		return u, nil
	}
	for _, opt := range strings.Split(opts, ";") {
		key, value, ok := strings.Cut(opt, "=")
		if !ok {
			return u, fmt.Errorf("option %q: want key=value", opt)
		}
		apply, ok := tlsOptions[key]
		if !ok {
			return u, fmt.Errorf("unknown option %q (supported: pin)", key)
		}
		if err := apply(&u, value); err != nil {
			return u, err
		}
	}
	return u, nil
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

func withPort(a netip.Addr, port string) (netip.AddrPort, error) {
	if port == "" {
		return netip.AddrPortFrom(a, DefaultDoTPort), nil
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
