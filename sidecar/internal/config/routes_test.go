package config_test

import (
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
)

// TestRoutesErrors: every way ROUTES, CLUSTER_DNS and CLUSTER_DOMAIN can be
// wrong, each reported on one line naming the variable or flag and the
// value.
func TestRoutesErrors(t *testing.T) {
	tests := []struct {
		env, value, reason string
		more               []string // other settings
	}{
		{"ROUTES", "cluster.local", `route "cluster.local": want ZONE=UPSTREAM[,UPSTREAM...]`, nil},
		{"ROUTES", "=dns://10.0.0.1", `route "=dns://10.0.0.1": empty zone before '='`, nil},
		{"ROUTES", "cluster.local=", `route "cluster.local=": empty upstream list`, nil},
		{"ROUTES", ".=dns://10.0.0.1", `route ".=dns://10.0.0.1": the root zone is not a route: UPSTREAMS answers every name no route matches`, nil},
		{"ROUTES", "cluster..local=dns://10.0.0.1", `route "cluster..local=dns://10.0.0.1": "cluster..local" is not a domain name`, nil},
		{"ROUTES", "clu$ter.local=dns://10.0.0.1", `route "clu$ter.local=dns://10.0.0.1": "clu$ter.local" is not a domain name`, nil},
		{"ROUTES", strings.Repeat("a", 64) + ".example=dns://10.0.0.1", `is not a domain name`, nil},
		{"ROUTES", "a.example=dns://10.0.0.1 A.Example.=tcp://10.0.0.2", `zone a.example is routed twice`, nil},
		{"ROUTES", "a.example=udp://10.0.0.1", `route "a.example=udp://10.0.0.1": unknown scheme "udp" (supported: dns, https, tcp, tls)`, nil},
		{"ROUTES", "a.example=dns://10.0.0.1,", `route "a.example=dns://10.0.0.1,": entry 2 is empty`, nil},
		{"ROUTES", "a.example=dns://10.0.0.1,dns://10.0.0.1:53", `route "a.example=dns://10.0.0.1,dns://10.0.0.1:53": dns://10.0.0.1:53 is listed twice`, nil},
		{"ROUTES", "a.example=dns://10.0.0.1#ns.example", `dns:// takes no #SERVERNAME: plaintext has no certificate to check`, nil},
		{"ROUTES", "a.example=dns://kube-dns", `"kube-dns" is a hostname, not an IP literal`, nil},
		{"ROUTES", "a.example=dns://10.0.0.1;pin=" + pin("x"), `unknown option "pin" for dns:// (supported: probe)`, nil},
		{"ROUTES", "a.example=tls://10.0.0.1#ns.example;ca=ca.pem", `;ca=ca.pem: want an absolute path`, nil},
		{"ROUTES", "a.example=tls://10.0.0.1#ns.example;ca=/a.pem;ca=/b.pem", `;ca= given twice: put every CA in one bundle`, nil},
		{"ROUTES", "a.example=tls://10.0.0.1#ns.example;ca=", `empty ;ca= path`, nil},
		{"ROUTES", "a.example=dns://10.0.0.1;probe=a..example", `;probe=a..example: "a..example" is not a domain name`, nil},
		{"ROUTES", "a.example=dns://10.0.0.1;probe=a.example;probe=b.example", `;probe= given twice`, nil},
		{"ROUTES", "a.example=tls://10.0.0.1#ns.example,dns://10.0.0.2",
			`route "a.example=tls://10.0.0.1#ns.example,dns://10.0.0.2": mixes encrypted and plaintext upstreams (10.0.0.1:853#ns.example, dns://10.0.0.2:53): failover must never drop to plaintext`, nil},
		{"ROUTES", "a.example=https://10.0.0.1/dns-query#ns.example,dns://10.0.0.2",
			`mixes encrypted and plaintext upstreams (https://10.0.0.1:443/dns-query#ns.example, dns://10.0.0.2:53)`, nil},
		{"ROUTES", "a.example=tcp://198.51.100.53",
			`route a.example: tcp://198.51.100.53:53 would send queries in plaintext to a public address; plaintext is allowed only to loopback, link-local, private (RFC 1918, RFC 6598, ULA) addresses and PLAINTEXT_ALLOWED_CIDRS`, nil},
		{"ROUTES", "a.example=dns://[2001:db8::53]", `route a.example: dns://[2001:db8::53]:53 would send queries in plaintext`,
			[]string{"PLAINTEXT_ALLOWED_CIDRS=2001:db9::/32"}},
		{"ROUTES", "a.example=dns://[::ffff:8.8.8.8]", `would send queries in plaintext to a public address`, nil},
		{"CLUSTER_DNS", "", "", nil}, // empty is the default: no error
		{"CLUSTER_DNS", "automatic", `want auto, off, or a list of upstreams such as dns://10.96.0.10`, nil},
		{"CLUSTER_DNS", "dns://10.96.0.10,tls://10.96.0.10#kube-dns.kube-system.svc", `mixes encrypted and plaintext upstreams`, nil},
		{"CLUSTER_DNS", "dns://10.96.0.10,", `entry 2 is empty`, nil},
		{"CLUSTER_DNS", "dns://192.0.2.53", `dns://192.0.2.53:53 would send queries in plaintext to a public address`, nil},
		{"CLUSTER_DOMAIN", ".", `the root zone cannot be the cluster domain`, nil},
		{"CLUSTER_DOMAIN", "cluster local", `"cluster local" is not a domain name`, nil},
		{"PLAINTEXT_ALLOWED_CIDRS", "0.0.0.0/0", `0.0.0.0/0 allows every address: list the ranges of your resolvers`, nil},
		{"PLAINTEXT_ALLOWED_CIDRS", "10.0.0.0/8,", `CIDR 2 is empty`, nil},
		{"PLAINTEXT_ALLOWED_CIDRS", "fe80::/10%eth0", `is not a CIDR`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.env+"="+tt.value, func(t *testing.T) {
			_, err := config.Load(nil, append([]string{tt.env + "=" + tt.value}, tt.more...))
			if tt.reason == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			prefix := fmt.Sprintf("invalid %s %q: ", tt.env, tt.value)
			if err == nil || !strings.HasPrefix(err.Error(), prefix) || !strings.Contains(err.Error(), tt.reason) {
				t.Errorf("error\n got: %v\nwant: %s...%s", err, prefix, tt.reason)
			}
		})
	}
}

// TestRoutesAccepted: what ROUTES and CLUSTER_DNS accept, normalised.
func TestRoutesAccepted(t *testing.T) {
	tests := []struct {
		environ []string
		routes  string // Route.String() of each, blank-separated
		cluster string // ClusterDNS.String()
	}{
		{[]string{"ROUTES=cluster.local=dns://10.96.0.10"}, "cluster.local=dns://10.96.0.10:53", "auto"},
		{[]string{"ROUTES=\tA.example.=dns://10.0.0.1,dns://[fd00::1]:5353;probe=a.example\n b.example=tcp://100.64.0.10 ",
			"CLUSTER_DNS=OFF"},
			"a.example=dns://10.0.0.1:53,dns://[fd00::1]:5353;probe=a.example. b.example=tcp://100.64.0.10:53", "off"},
		// Plaintext to a public address the operator allows.
		{[]string{"ROUTES=svc.example=dns://203.0.113.10", "PLAINTEXT_ALLOWED_CIDRS=203.0.113.0/24",
			"CLUSTER_DNS=dns://203.0.113.10,dns://169.254.20.10"},
			"svc.example=dns://203.0.113.10:53", "dns://203.0.113.10:53,dns://169.254.20.10:53"},
		// Reverse zones and service labels are zones like any other.
		{[]string{"ROUTES=10.in-addr.arpa=dns://10.0.0.1 _tcp.corp.example=tls://10.0.0.2#ns.corp.example"},
			"10.in-addr.arpa=dns://10.0.0.1:53 _tcp.corp.example=tls://10.0.0.2:853#ns.corp.example", "auto"},
		{[]string{"CLUSTER_DNS=tls://10.96.0.10#kube-dns.kube-system.svc.cluster.local;ca=/etc/kube-dns/ca.crt;probe=cluster.local"},
			"", "tls://10.96.0.10:853#kube-dns.kube-system.svc.cluster.local;ca=/etc/kube-dns/ca.crt;probe=cluster.local."},
		// DNS over HTTPS and over TLS mix freely: both are encrypted.
		{[]string{"ROUTES=corp.example=https://10.0.0.53/dns-query#doh.corp.example;ca=/etc/corp/ca.pem;method=get,tls://10.0.0.54#dot.corp.example"},
			"corp.example=https://10.0.0.53:443/dns-query#doh.corp.example;ca=/etc/corp/ca.pem;method=get,tls://10.0.0.54:853#dot.corp.example", "auto"},
	}
	for _, tt := range tests {
		c, err := config.Load(nil, tt.environ)
		if err != nil {
			t.Errorf("%q: %v", tt.environ, err)
			continue
		}
		var routes []string
		for _, r := range c.Routes {
			routes = append(routes, r.String())
		}
		if got := strings.Join(routes, " "); got != tt.routes {
			t.Errorf("%q: routes %q, want %q", tt.environ, got, tt.routes)
		}
		if got := c.ClusterDNS.String(); got != tt.cluster {
			t.Errorf("%q: CLUSTER_DNS %q, want %q", tt.environ, got, tt.cluster)
		}
	}
}

// TestRoutesFlagRepeated: --routes may be repeated, one route each, as
// list flags may.
func TestRoutesFlagRepeated(t *testing.T) {
	c, err := config.Load([]string{"--routes=a.example=dns://10.0.0.1", "--routes", "b.example=dns://10.0.0.2,dns://10.0.0.3"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Routes) != 2 || c.Routes[1].String() != "b.example=dns://10.0.0.2:53,dns://10.0.0.3:53" {
		t.Errorf("routes %v", c.Routes)
	}
}

// TestRoutingWarnings: settings that do nothing as set are warned about.
func TestRoutingWarnings(t *testing.T) {
	c, err := config.Load([]string{"--cluster-dns=off", "--cluster-domain=k8s.example"},
		[]string{"RESOLV_CONF=/run/resolv.conf", "PLAINTEXT_ALLOWED_CIDRS=203.0.113.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"--cluster-domain has no effect with --cluster-dns=off",
		"RESOLV_CONF has no effect with --cluster-dns=off",
		"PLAINTEXT_ALLOWED_CIDRS has no effect: no ROUTES or CLUSTER_DNS entry sends plaintext to an address of your choosing",
	}
	if got := c.Warnings(); !reflect.DeepEqual(got, want) {
		t.Errorf("warnings\n got %q\nwant %q", got, want)
	}
}

func TestPlaintextAllowed(t *testing.T) {
	extra := []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}
	for _, tt := range []struct {
		addr string
		want bool
	}{
		{"127.0.0.1", true}, {"127.255.0.9", true}, {"::1", true},
		{"169.254.20.10", true}, {"fe80::1", true},
		{"10.96.0.10", true}, {"172.16.0.1", true}, {"172.31.255.255", true}, {"192.168.1.1", true},
		{"100.64.0.10", true}, {"100.127.255.255", true}, {"fd00::a", true}, {"fc00::1", true},
		{"::ffff:10.0.0.1", true}, {"203.0.113.200", true},
		{"172.32.0.1", false}, {"100.128.0.1", false}, {"8.8.8.8", false}, {"2001:db8::1", false},
		{"::ffff:8.8.8.8", false}, {"fe00::1", false}, {"192.169.0.1", false},
	} {
		if got := config.PlaintextAllowed(netip.MustParseAddr(tt.addr), extra); got != tt.want {
			t.Errorf("PlaintextAllowed(%s) = %v, want %v", tt.addr, got, tt.want)
		}
	}
}

// FuzzParseRoutes: no input panics; every accepted ROUTES value is routes of
// valid zones, never the root, each all encrypted or all plaintext, that
// print back to themselves.
func FuzzParseRoutes(f *testing.F) {
	for _, s := range []string{
		"cluster.local=dns://10.96.0.10",
		"a.example=dns://10.0.0.1,dns://[fd00::1]:5353;probe=a.example b.example=tcp://100.64.0.10",
		"corp.example=tls://10.0.0.53#ns.corp.example;ca=/etc/ca.pem;pin=" + pin("a"),
		"corp.example=https://[fd00::53]:8443/dns-query#doh.corp.example;method=get;ca=/etc/ca.pem,tls://10.0.0.53#ns.corp.example",
		".=dns://10.0.0.1",
		"a=b=c",
		"a.example=tls://10.0.0.1#x,dns://10.0.0.2",
		"A.EXAMPLE.=dns://127.0.0.1:0",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		routes, err := config.ParseRoutes(s)
		if err != nil {
			return
		}
		seen := map[string]bool{}
		var back []string
		for _, r := range routes {
			if r.Zone == "" || r.Zone == "." || strings.HasSuffix(r.Zone, ".") || r.Zone != strings.ToLower(r.Zone) || seen[r.Zone] {
				t.Fatalf("%q: zone %q", s, r.Zone)
			}
			seen[r.Zone] = true
			if len(r.Upstreams) == 0 {
				t.Fatalf("%q: route %s without upstreams", s, r.Zone)
			}
			for _, u := range r.Upstreams {
				if u.Scheme.Encrypted() != r.Encrypted() {
					t.Fatalf("%q: mixed route %s", s, r)
				}
				if !u.Addr.IsValid() || u.Addr.Port() == 0 {
					t.Fatalf("%q: unusable address %v", s, u.Addr)
				}
			}
			back = append(back, r.String())
		}
		again, err := config.ParseRoutes(strings.Join(back, " "))
		if err != nil || !reflect.DeepEqual(again, routes) {
			t.Fatalf("%q → %q parses to %+v, %v; want %+v", s, back, again, err, routes)
		}
	})
}
