package config_test

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
)

func TestParseUpstream(t *testing.T) {
	p1, p2 := pin("one"), pin("two")
	tests := []struct {
		entry string
		want  config.Upstream
		name  string // want.Name()
	}{
		{"tls://1.1.1.1#cloudflare-dns.com",
			config.Upstream{Scheme: config.SchemeTLS, Addr: netip.MustParseAddrPort("1.1.1.1:853"), ServerName: "cloudflare-dns.com"},
			"1.1.1.1:853#cloudflare-dns.com"},
		{"tls://1.1.1.1:8853#cloudflare-dns.com",
			config.Upstream{Scheme: config.SchemeTLS, Addr: netip.MustParseAddrPort("1.1.1.1:8853"), ServerName: "cloudflare-dns.com"},
			"1.1.1.1:8853#cloudflare-dns.com"},
		{"tls://[2606:4700:4700::1111]#cloudflare-dns.com",
			config.Upstream{Scheme: config.SchemeTLS, Addr: netip.MustParseAddrPort("[2606:4700:4700::1111]:853"), ServerName: "cloudflare-dns.com"},
			"[2606:4700:4700::1111]:853#cloudflare-dns.com"},
		{"tls://[2606:4700:4700::1111]:853#cloudflare-dns.com;pin=" + p1,
			config.Upstream{Scheme: config.SchemeTLS, Addr: netip.MustParseAddrPort("[2606:4700:4700::1111]:853"), ServerName: "cloudflare-dns.com", Pins: [][32]byte{pinBytes("one")}},
			"[2606:4700:4700::1111]:853#cloudflare-dns.com"},
		{"tls://9.9.9.9#dns.quad9.net;pin=" + p1 + ";pin=" + p2,
			config.Upstream{Scheme: config.SchemeTLS, Addr: netip.MustParseAddrPort("9.9.9.9:853"), ServerName: "dns.quad9.net", Pins: [][32]byte{pinBytes("one"), pinBytes("two")}},
			"9.9.9.9:853#dns.quad9.net"},
		// A repeated pin is kept once.
		{"tls://9.9.9.9#dns.quad9.net;pin=" + p1 + ";pin=" + p1,
			config.Upstream{Scheme: config.SchemeTLS, Addr: netip.MustParseAddrPort("9.9.9.9:853"), ServerName: "dns.quad9.net", Pins: [][32]byte{pinBytes("one")}},
			"9.9.9.9:853#dns.quad9.net"},
		// Scheme and name are case-insensitive; a trailing dot is dropped.
		{"TLS://8.8.8.8#DNS.Google.",
			config.Upstream{Scheme: config.SchemeTLS, Addr: netip.MustParseAddrPort("8.8.8.8:853"), ServerName: "dns.google"},
			"8.8.8.8:853#dns.google"},
		// A certificate may name an IP (IP SAN).
		{"tls://127.0.0.1:8853#127.0.0.1",
			config.Upstream{Scheme: config.SchemeTLS, Addr: netip.MustParseAddrPort("127.0.0.1:8853"), ServerName: "127.0.0.1"},
			"127.0.0.1:8853#127.0.0.1"},
		{"tls://[::1]:8853#localhost",
			config.Upstream{Scheme: config.SchemeTLS, Addr: netip.MustParseAddrPort("[::1]:8853"), ServerName: "localhost"},
			"[::1]:8853#localhost"},
		// Options of routes: a CA of the entry's own, a probe name.
		{"tls://10.96.0.10#kube-dns.kube-system.svc;ca=/etc/kube-dns/ca.crt;probe=Cluster.Local",
			config.Upstream{Scheme: config.SchemeTLS, Addr: netip.MustParseAddrPort("10.96.0.10:853"), ServerName: "kube-dns.kube-system.svc",
				CAFile: "/etc/kube-dns/ca.crt", Probe: "cluster.local."},
			"10.96.0.10:853#kube-dns.kube-system.svc"},
		{"tls://1.1.1.1#one.one.one.one;probe=.",
			config.Upstream{Scheme: config.SchemeTLS, Addr: netip.MustParseAddrPort("1.1.1.1:853"), ServerName: "one.one.one.one", Probe: "."},
			"1.1.1.1:853#one.one.one.one"},
		// Plaintext: port 53 by default, named with the scheme.
		{"dns://10.96.0.10",
			config.Upstream{Scheme: config.SchemeDNS, Addr: netip.MustParseAddrPort("10.96.0.10:53")},
			"dns://10.96.0.10:53"},
		{"DNS://[fd00:10:96::a]:5353;probe=cluster.local.",
			config.Upstream{Scheme: config.SchemeDNS, Addr: netip.MustParseAddrPort("[fd00:10:96::a]:5353"), Probe: "cluster.local."},
			"dns://[fd00:10:96::a]:5353"},
		{"tcp://169.254.20.10",
			config.Upstream{Scheme: config.SchemeTCP, Addr: netip.MustParseAddrPort("169.254.20.10:53")},
			"tcp://169.254.20.10:53"},
		// DNS over HTTPS: port 443 by default, the path kept as written.
		{"https://1.1.1.1/dns-query#cloudflare-dns.com",
			config.Upstream{Scheme: config.SchemeHTTPS, Addr: netip.MustParseAddrPort("1.1.1.1:443"), Path: "/dns-query", ServerName: "cloudflare-dns.com"},
			"https://1.1.1.1:443/dns-query#cloudflare-dns.com"},
		{"HTTPS://[2606:4700:4700::1111]:8443/Resolve/v1#One.One.One.One;pin=" + p1 + ";method=GET",
			config.Upstream{Scheme: config.SchemeHTTPS, Addr: netip.MustParseAddrPort("[2606:4700:4700::1111]:8443"), Path: "/Resolve/v1",
				ServerName: "one.one.one.one", Pins: [][32]byte{pinBytes("one")}, GET: true},
			"https://[2606:4700:4700::1111]:8443/Resolve/v1#one.one.one.one"},
		{"https://10.0.0.53/dns-query#doh.internal;method=post;ca=/etc/doh/ca.pem;probe=internal",
			config.Upstream{Scheme: config.SchemeHTTPS, Addr: netip.MustParseAddrPort("10.0.0.53:443"), Path: "/dns-query",
				ServerName: "doh.internal", CAFile: "/etc/doh/ca.pem", Probe: "internal."},
			"https://10.0.0.53:443/dns-query#doh.internal"},
		{"https://9.9.9.9/#dns.quad9.net",
			config.Upstream{Scheme: config.SchemeHTTPS, Addr: netip.MustParseAddrPort("9.9.9.9:443"), Path: "/", ServerName: "dns.quad9.net"},
			"https://9.9.9.9:443/#dns.quad9.net"},
		{"https://9.9.9.9/dns%2Dquery:x@y#dns.quad9.net",
			config.Upstream{Scheme: config.SchemeHTTPS, Addr: netip.MustParseAddrPort("9.9.9.9:443"), Path: "/dns%2Dquery:x@y", ServerName: "dns.quad9.net"},
			"https://9.9.9.9:443/dns%2Dquery:x@y#dns.quad9.net"},
	}
	for _, tt := range tests {
		t.Run(tt.entry, func(t *testing.T) {
			got, err := config.ParseUpstream(tt.entry)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
			if got.Name() != tt.name {
				t.Errorf("Name() = %q, want %q", got.Name(), tt.name)
			}
			back, err := config.ParseUpstream(got.String())
			if err != nil || !reflect.DeepEqual(back, got) {
				t.Errorf("String() %q does not parse back: %+v, %v", got.String(), back, err)
			}
		})
	}
}

func TestParseUpstreamErrors(t *testing.T) {
	tests := []struct {
		entry, want string
	}{
		{"tls://dns.google#dns.google", `"dns.google" is a hostname, not an IP literal: resolving it would need a plaintext DNS lookup`},
		{"tls://dns.google:853#dns.google", `"dns.google" is a hostname, not an IP literal`},
		{"tls://1.1.1.1", `missing #SERVERNAME: the name the upstream's certificate must carry is mandatory`},
		{"tls://1.1.1.1:853;pin=" + pin("x"), `missing #SERVERNAME`},
		{"tls://1.1.1.1#", `empty server name`},
		{"tls://1.1.1.1#;pin=" + pin("x"), `empty server name`},
		{"tls://1.1.1.1#bad..name", `server name "bad..name" is not a valid DNS name`},
		{"tls://1.1.1.1#-bad.example", `is not a valid DNS name`},
		{"tls://1.1.1.1#" + strings.Repeat("a", 64) + ".example", `is not a valid DNS name`},
		{"tls://1.1.1.1#c.example;pin=abc", `pin "abc" is not base64`},
		{"tls://1.1.1.1#c.example;pin=YWJj", `pin "YWJj" decodes to 3 bytes, want 32`},
		{"tls://1.1.1.1#c.example;pin=", `decodes to 0 bytes`},
		{"tls://1.1.1.1:0#c.example", `port "0" must be 1-65535`},
		{"tls://1.1.1.1:65536#c.example", `port "65536" must be 1-65535`},
		{"tls://1.1.1.1:dot#c.example", `port "dot" must be 1-65535`},
		{"tls://1.1.1.1:#c.example", `empty port`},
		{"tls://[::1]:#c.example", `empty port`},
		{"tls://[::1]853#c.example", `unexpected "853" after ']'`},
		{"tls://[::1#c.example", `missing ']'`},
		{"tls://[1.1.1.1]#c.example", `"1.1.1.1" in brackets is not an IPv6 address`},
		{"tls://2606:4700::1111#c.example", `IPv6 address "2606:4700::1111" must be in brackets`},
		{"tls://0.0.0.0#c.example", `0.0.0.0 cannot be an upstream address`},
		{"tls://[::]#c.example", `:: cannot be an upstream address`},
		{"tls://224.0.0.1#c.example", `224.0.0.1 cannot be an upstream address`},
		{"tls://[fe80::1%eth0]#c.example", `IPv6 zones are not supported`},
		{"tls://1.1.1.1#c.example;sni=other", `unknown option "sni" for tls:// (supported: ca, pin, probe)`},
		{"tls://1.1.1.1#c.example;pin", `option "pin": want key=value`},
		{"tls://1.1.1.1#c.example;", `empty option after ';'`},
		{"udp://1.1.1.1#c.example", `unknown scheme "udp" (supported: dns, https, tcp, tls)`},
		{"https://1.1.1.1/dns-query", `missing #SERVERNAME`},
		{"https://1.1.1.1#cloudflare-dns.com", `missing /PATH after the address: the DoH endpoint's path, e.g. https://1.1.1.1/dns-query#cloudflare-dns.com`},
		{"https://dns.google/dns-query#dns.google", `"dns.google" is a hostname, not an IP literal`},
		{"https://1.1.1.1:0/dns-query#c.example", `port "0" must be 1-65535`},
		{"https://2606:4700::1111/dns-query#c.example", `IPv6 address "2606:4700::1111" must be in brackets`},
		{"https://1.1.1.1/dns-query?dns=x#c.example", `path "/dns-query?dns=x": no query: GET requests add ?dns= themselves`},
		{"https://1.1.1.1/dns query#c.example", `path "/dns query": ' ' is not allowed in a path here`},
		{"https://1.1.1.1/dns%2#c.example", `'%' must start an escape`},
		{"https://1.1.1.1/dns-query#", `empty server name`},
		{"https://1.1.1.1/dns-query#c.example;method=put", `;method=put: want get or post`},
		{"https://1.1.1.1/dns-query#c.example;sni=x", `unknown option "sni" for https:// (supported: ca, method, pin, probe)`},
		{"tls://1.1.1.1#c.example;method=get", `unknown option "method" for tls://`},
		{"1.1.1.1#c.example", `want scheme://...`},
		{"tcp://10.0.0.1;ca=/etc/ca.pem", `unknown option "ca" for tcp:// (supported: probe)`},
		{"dns://10.0.0.1:0", `port "0" must be 1-65535`},
		{"tls://1.1.1.1#c.example;probe=x/y", `;probe=x/y: "x/y" is not a domain name`},
		{"", `want scheme://...`},
	}
	for _, tt := range tests {
		t.Run(tt.entry, func(t *testing.T) {
			u, err := config.ParseUpstream(tt.entry)
			if err == nil {
				t.Fatalf("accepted as %+v", u)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}

func TestParseUpstreams(t *testing.T) {
	ups, err := config.ParseUpstreams(" tls://1.1.1.1#one.one.one.one ,\n tls://[2606:4700:4700::1111]#one.one.one.one , https://1.1.1.1/dns-query#one.one.one.one")
	if err != nil {
		t.Fatal(err)
	}
	if len(ups) != 3 || ups[0].Name() != "1.1.1.1:853#one.one.one.one" || ups[1].Name() != "[2606:4700:4700::1111]:853#one.one.one.one" ||
		ups[2].Name() != "https://1.1.1.1:443/dns-query#one.one.one.one" {
		t.Errorf("got %+v", ups)
	}
	for _, tt := range []struct{ list, want string }{
		{"tls://1.1.1.1#a.example,", `entry 2 is empty`},
		{"tls://1.1.1.1#a.example,tls://1.1.1.1:853#a.example", `1.1.1.1:853#a.example is listed twice`},
		{"tls://1.1.1.1#a.example,tls://1.1.1.1#b.example,tls://x#c", `entry 3 "tls://x#c": "x" is a hostname`},
		{"tls://1.1.1.1#a.example,tcp://10.0.0.1", `tcp://10.0.0.1:53 is plaintext: UPSTREAMS must be encrypted`},
		{"tls://10.0.0.1#a.example;ca=/etc/ca.pem", `10.0.0.1:853#a.example: ;ca= is for ROUTES and CLUSTER_DNS entries; UPSTREAMS entries are verified against TLS_CA_FILE`},
		{"https://10.0.0.1/dns-query#a.example;ca=/etc/ca.pem", `https://10.0.0.1:443/dns-query#a.example: ;ca= is for ROUTES`},
		{"https://1.1.1.1/dns-query#a.example,https://1.1.1.1:443/dns-query#a.example;method=get", `https://1.1.1.1:443/dns-query#a.example is listed twice`},
	} {
		if _, err := config.ParseUpstreams(tt.list); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseUpstreams(%q) error = %v, want %q", tt.list, err, tt.want)
		}
	}
}

// TestEffectiveUpstreams checks Config.Upstreams: the list or DOT_*, each
// upstream with its own pins only, and the default pins given once.
func TestEffectiveUpstreams(t *testing.T) {
	_, pinsFile, _ := trustFiles(t)
	own := "tls://9.9.9.9#q.example;pin=" + pin("own")
	bare := "tls://[2620:fe::fe]:8853#q.example"
	type up struct {
		name string
		pins [][32]byte
	}
	tests := []struct {
		name     string
		environ  []string
		want     []up
		defaults [][32]byte // TLS_PINS
	}{
		{"DOT_* over IPv6", []string{"DOT_ADDRESS=2606:4700:4700::1111", "DOT_PORT=8853", "DOT_SERVER_NAME=one.one.one.one"},
			[]up{{"[2606:4700:4700::1111]:8853#one.one.one.one", nil}}, nil},
		{"DOT_* with TLS_PINS", []string{"TLS_PINS=" + pin("a") + "," + pin("b")},
			[]up{{"1.1.1.1:853#cloudflare-dns.com", nil}}, [][32]byte{pinBytes("a"), pinBytes("b")}},
		{"UPSTREAMS replaces DOT_*", []string{"UPSTREAMS=" + bare, "DOT_ADDRESS=8.8.8.8"},
			[]up{{"[2620:fe::fe]:8853#q.example", nil}}, nil},
		{"own pins beside TLS_PINS", []string{"UPSTREAMS=" + own + "," + bare, "TLS_PINS=" + pin("a")},
			[]up{
				{"9.9.9.9:853#q.example", [][32]byte{pinBytes("own")}},
				{"[2620:fe::fe]:8853#q.example", nil},
			}, [][32]byte{pinBytes("a")}},
		{"own pins beside TLS_PINS_FILE", []string{"UPSTREAMS=" + own + "," + bare, "TLS_PINS_FILE=" + pinsFile},
			[]up{
				{"9.9.9.9:853#q.example", [][32]byte{pinBytes("own")}},
				{"[2620:fe::fe]:8853#q.example", nil},
			}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := config.Load(nil, tt.environ)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(c.TLSPins, tt.defaults) {
				t.Errorf("TLS_PINS = %x, want %x", c.TLSPins, tt.defaults)
			}
			ups := c.Upstreams()
			var got []up
			for _, u := range ups {
				got = append(got, up{u.Name(), u.Pins})
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
			// The result is the caller's: changing it leaves the Config alone.
			for i := range ups {
				for j := range ups[i].Pins {
					ups[i].Pins[j][0] ^= 0xff
				}
			}
			if again := c.Upstreams(); !reflect.DeepEqual(again[0].Pins, tt.want[0].pins) {
				t.Errorf("Upstreams() shares pins with its callers")
			}
		})
	}
}

// FuzzParseUpstream: no input panics, and every accepted entry is a usable
// upstream that prints back to itself.
func FuzzParseUpstream(f *testing.F) {
	for _, s := range []string{
		"tls://1.1.1.1#cloudflare-dns.com",
		"tls://[2606:4700:4700::1111]:853#cloudflare-dns.com;pin=" + pin("a"),
		"tls://9.9.9.9:8853#dns.quad9.net;pin=" + pin("a") + ";pin=" + pin("b"),
		"tls://[::ffff:1.2.3.4]#1.2.3.4",
		"tls://[fe80::1%eth0]#x",
		"TLS://1.1.1.1#A.B.",
		"https://1.1.1.1/dns-query",
		"https://1.1.1.1/dns-query#cloudflare-dns.com;method=get",
		"https://[2606:4700::1111]:8443/a/b%2Fc#x.example;pin=" + pin("a") + ";ca=/ca.pem;probe=.;method=POST",
		"https://1.1.1.1/#x",
		"tls://1.1.1.1:#x;",
		"tls://[::1]]#x",
		"dns://10.96.0.10;probe=cluster.local",
		"tcp://[fd00::a]:5353",
		"tls://10.0.0.1#ns.example;ca=/etc/ca.pem;probe=.",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, entry string) {
		u, err := config.ParseUpstream(entry)
		if err != nil {
			return
		}
		if !u.Addr.IsValid() || u.Addr.Port() == 0 || u.Addr.Addr().Zone() != "" || u.Addr.Addr().IsUnspecified() {
			t.Fatalf("%q: unusable address %v", entry, u.Addr)
		}
		if u.Scheme.Encrypted() != (u.Scheme == config.SchemeTLS || u.Scheme == config.SchemeHTTPS) {
			t.Fatalf("%q: scheme %q", entry, u.Scheme)
		}
		if (u.Scheme == config.SchemeHTTPS) != (u.Path != "") || u.Path != "" && (u.Path[0] != '/' || strings.ContainsAny(u.Path, "?#;, ")) {
			t.Fatalf("%q: path %q for %s", entry, u.Path, u.Scheme)
		}
		if (u.ServerName == "") == u.Scheme.Encrypted() || strings.ContainsAny(u.ServerName, "#;, ") {
			t.Fatalf("%q: bad server name %q for %s", entry, u.ServerName, u.Scheme)
		}
		back, err := config.ParseUpstream(u.String())
		if err != nil {
			t.Fatalf("%q → %q does not parse: %v", entry, u.String(), err)
		}
		if !reflect.DeepEqual(back, u) {
			t.Fatalf("%q → %q parses to %+v, want %+v", entry, u.String(), back, u)
		}
		// An accepted encrypted entry without a CA of its own is also a
		// valid one-element UPSTREAMS; any other is refused there.
		list, err := config.ParseUpstreams(u.String())
		if ok := u.Scheme.Encrypted() && u.CAFile == ""; ok != (err == nil && len(list) == 1) {
			t.Fatalf("%q as UPSTREAMS: %v, %v", u.String(), list, err)
		}
	})
}

// FuzzParseUpstreams: no UPSTREAMS value panics, and an accepted one is a
// list of distinct encrypted upstreams, verified against TLS_CA_FILE, that
// prints back to itself.
func FuzzParseUpstreams(f *testing.F) {
	for _, s := range []string{
		"tls://1.1.1.1#cloudflare-dns.com,tls://1.0.0.1#cloudflare-dns.com",
		" tls://9.9.9.9#dns.quad9.net , https://[2620:fe::fe]/dns-query#dns.quad9.net;method=get",
		"tls://1.1.1.1#a,,tls://1.1.1.2#a",
		"tls://1.1.1.1#a,tls://1.1.1.1:853#b",
		"dns://10.0.0.1",
		"tls://10.0.0.1#x;ca=/etc/ca.pem",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ups, err := config.ParseUpstreams(s)
		if err != nil {
			return
		}
		if len(ups) == 0 {
			t.Fatalf("%q: no upstream and no error", s)
		}
		names := map[string]bool{}
		var back []string
		for _, u := range ups {
			if !u.Scheme.Encrypted() || u.CAFile != "" || names[u.Name()] {
				t.Fatalf("%q: entry %+v", s, u)
			}
			names[u.Name()] = true
			back = append(back, u.String())
		}
		again, err := config.ParseUpstreams(strings.Join(back, ","))
		if err != nil || !reflect.DeepEqual(again, ups) {
			t.Fatalf("%q → %q parses to %+v, %v", s, strings.Join(back, ","), again, err)
		}
	})
}
