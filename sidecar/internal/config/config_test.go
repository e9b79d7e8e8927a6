package config_test

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/testpki"
)

// pin returns a well-formed pin (base64 of 32 bytes) derived from seed.
func pin(seed string) string {
	sum := sha256.Sum256([]byte(seed))
	return base64.StdEncoding.EncodeToString(sum[:])
}

func pinBytes(seed string) [32]byte { return sha256.Sum256([]byte(seed)) }

// flagOf turns a variable into its flag, the rule the package documents.
func flagOf(env string) string {
	return "--" + strings.ToLower(strings.ReplaceAll(env, "_", "-"))
}

// envNames lists every setting's variable, read from Config's tags.
func envNames(t *testing.T) []string {
	t.Helper()
	var names []string
	ct := reflect.TypeFor[config.Config]()
	for i := range ct.NumField() {
		f := ct.Field(i)
		if !f.IsExported() {
			continue
		}
		name, ok := f.Tag.Lookup("env")
		if !ok {
			t.Fatalf("exported field %s has no env tag: every exported field must be a setting", f.Name)
		}
		names = append(names, name)
	}
	return names
}

// fieldOf returns the field of c that holds the setting env.
func fieldOf(t *testing.T, c *config.Config, env string) any {
	t.Helper()
	ct := reflect.TypeFor[config.Config]()
	for i := range ct.NumField() {
		if ct.Field(i).Tag.Get("env") == env {
			return reflect.ValueOf(c).Elem().Field(i).Interface()
		}
	}
	t.Fatalf("no field for %s", env)
	return nil
}

// trustFiles writes a CA file and a pins file into a temporary directory.
func trustFiles(t *testing.T) (caFile, pinsFile string, ca *testpki.CA) {
	t.Helper()
	ca, err := testpki.NewCA("config test CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue([]string{"dns.example"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	caFile, _, _, err = testpki.WriteFiles(dir, ca, leaf)
	if err != nil {
		t.Fatal(err)
	}
	pinsFile = filepath.Join(dir, "pins")
	body := "# rotation: old and new key\n" + pin("old") + "\n\n" + pin("new") + "  # added today\n"
	if err := os.WriteFile(pinsFile, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return caFile, pinsFile, ca
}

func TestDefaults(t *testing.T) {
	c, err := config.Load(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"BIND_ADDRESS":               []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")},
		"BIND_PORT":                  5053,
		"PROTO":                      "both",
		"DOT_ADDRESS":                netip.MustParseAddr("1.1.1.1"),
		"DOT_PORT":                   853,
		"DOT_SERVER_NAME":            "cloudflare-dns.com",
		"UPSTREAMS":                  []config.Upstream(nil),
		"TLS_CA_FILE":                "",
		"TLS_PINS":                   [][32]byte(nil),
		"TLS_PINS_FILE":              "",
		"ROUTES":                     []config.Route(nil),
		"CLUSTER_DNS":                config.ClusterDNS{Mode: config.ClusterDNSAuto},
		"CLUSTER_DOMAIN":             "",
		"RESOLV_CONF":                "/etc/resolv.conf",
		"PLAINTEXT_ALLOWED_CIDRS":    []netip.Prefix(nil),
		"LOG_LEVEL":                  "info",
		"LOG_FORMAT":                 "text",
		"LOG_FILE":                   "",
		"QUERY_TIMEOUT":              2 * time.Second,
		"UDP_MAX_SIZE":               1232,
		"TCP_IDLE_TIMEOUT":           10 * time.Second,
		"TCP_MAX_CONNS":              256,
		"TCP_MAX_INFLIGHT":           128,
		"TCP_MAX_UNREAD":             16384,
		"MAX_INFLIGHT":               2048,
		"CACHE_SIZE":                 10000,
		"CACHE_MAX_TTL":              time.Hour,
		"CACHE_MIN_TTL":              time.Duration(0),
		"CACHE_MAX_NEGATIVE_TTL":     30 * time.Minute,
		"CACHE_SERVFAIL_TTL":         5 * time.Second,
		"CACHE_STALE_MAX":            6 * time.Hour,
		"CACHE_STALE_EXCLUDE":        config.StaleExclude{Cluster: true},
		"CACHE_STALE_CLIENT_TIMEOUT": 1800 * time.Millisecond,
		"CACHE_PREFETCH":             10,
		"CACHE_PREFETCH_WINDOW":      time.Minute,
		"CACHE_PREFETCH_PERCENT":     10,
		"UPSTREAM_POOL_SIZE":         2,
		"UPSTREAM_IDLE_TIMEOUT":      30 * time.Second,
		"UPSTREAM_MAX_AGE":           5 * time.Minute,
		"DIAL_TIMEOUT":               2 * time.Second,
		"UPSTREAM_MAX_INFLIGHT":      1024,
		"FORWARD_CLIENT_SUBNET":      false,
		"UPSTREAM_POLICY":            "sequential",
		"RETRY_MAX_ATTEMPTS":         3,
		"RETRY_BASE_DELAY":           10 * time.Millisecond,
		"HEALTH_MAX_FAILS":           3,
		"HEALTH_CHECK_INTERVAL":      time.Second,
		"ADMIN_ADDRESS":              ":9253",
		"READY_REQUIRES_UPSTREAM":    false,
		"READY_FAIL_THRESHOLD":       3,
		"READY_SUCCESS_THRESHOLD":    1,
		"SHUTDOWN_LAMEDUCK":          2 * time.Second,
		"SHUTDOWN_GRACE":             10 * time.Second,
		"TRUST_RELOAD_INTERVAL":      5 * time.Second,
	}
	for _, env := range envNames(t) {
		w, ok := want[env]
		if !ok {
			t.Errorf("%s: no expected default in this test", env)
			continue
		}
		if got := fieldOf(t, c, env); !reflect.DeepEqual(got, w) {
			t.Errorf("%s = %#v, want %#v", env, got, w)
		}
	}
	if c.BindAddressExplicit() {
		t.Error("BindAddressExplicit() = true with the default list")
	}
	if w := c.Warnings(); len(w) != 0 {
		t.Errorf("Warnings() = %q, want none", w)
	}
	ups := c.Upstreams()
	if len(ups) != 1 || ups[0].Name() != "1.1.1.1:853#cloudflare-dns.com" || ups[0].Pins != nil {
		t.Errorf("Upstreams() = %+v, want only 1.1.1.1:853#cloudflare-dns.com without pins", ups)
	}
}

// TestEverySetting sets each setting to a non-default value, once through
// its variable and once through its flag.
func TestEverySetting(t *testing.T) {
	caFile, pinsFile, _ := trustFiles(t)
	logFile := filepath.Join(t.TempDir(), "sidecar.log")
	up1 := "tls://9.9.9.9#dns.quad9.net"
	up2 := "tls://[2620:fe::fe]:8853#dns.quad9.net;pin=" + pin("q")
	tests := []struct {
		env, value string
		want       any
	}{
		{"BIND_ADDRESS", "127.0.0.2, ::", []netip.Addr{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("::")}},
		{"BIND_PORT", "53", 53},
		{"PROTO", "UDP", "udp"},
		{"DOT_ADDRESS", "2606:4700:4700::1111", netip.MustParseAddr("2606:4700:4700::1111")},
		{"DOT_PORT", "8853", 8853},
		{"DOT_SERVER_NAME", "One.One.One.One.", "one.one.one.one"},
		{"UPSTREAMS", up1 + "," + up2, []config.Upstream{
			{Scheme: config.SchemeTLS, Addr: netip.MustParseAddrPort("9.9.9.9:853"), ServerName: "dns.quad9.net"},
			{Scheme: config.SchemeTLS, Addr: netip.MustParseAddrPort("[2620:fe::fe]:8853"), ServerName: "dns.quad9.net", Pins: [][32]byte{pinBytes("q")}},
		}},
		{"TLS_CA_FILE", caFile, caFile},
		{"TLS_PINS", pin("a") + "," + pin("b"), [][32]byte{pinBytes("a"), pinBytes("b")}},
		{"TLS_PINS_FILE", pinsFile, pinsFile},
		{"ROUTES", " Cluster.Local.=dns://10.96.0.10 corp.example=tls://10.0.0.53#ns.corp.example;ca=/etc/corp/ca.pem;probe=corp.example ", []config.Route{
			{Zone: "cluster.local", Upstreams: []config.Upstream{{Scheme: config.SchemeDNS, Addr: netip.MustParseAddrPort("10.96.0.10:53")}}},
			{Zone: "corp.example", Upstreams: []config.Upstream{{Scheme: config.SchemeTLS, Addr: netip.MustParseAddrPort("10.0.0.53:853"),
				ServerName: "ns.corp.example", CAFile: "/etc/corp/ca.pem", Probe: "corp.example."}}},
		}},
		{"CLUSTER_DNS", "tcp://10.96.0.10,tcp://[fd00::a]:5353", config.ClusterDNS{Upstreams: []config.Upstream{
			{Scheme: config.SchemeTCP, Addr: netip.MustParseAddrPort("10.96.0.10:53")},
			{Scheme: config.SchemeTCP, Addr: netip.MustParseAddrPort("[fd00::a]:5353")},
		}}},
		{"CLUSTER_DOMAIN", "K8s.Example.", "k8s.example"},
		{"RESOLV_CONF", "/run/resolv.conf", "/run/resolv.conf"},
		{"PLAINTEXT_ALLOWED_CIDRS", "203.0.113.7/24, 2001:db8::/32", []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("2001:db8::/32")}},
		{"LOG_LEVEL", "debug", "debug"},
		{"LOG_FORMAT", "json", "json"},
		{"LOG_FILE", logFile, logFile},
		{"QUERY_TIMEOUT", "1500ms", 1500 * time.Millisecond},
		{"UDP_MAX_SIZE", "4096", 4096},
		{"TCP_IDLE_TIMEOUT", "1m", time.Minute},
		{"TCP_MAX_CONNS", "10", 10},
		{"TCP_MAX_INFLIGHT", "16", 16},
		{"TCP_MAX_UNREAD", "1048576", 1048576},
		{"MAX_INFLIGHT", "1000", 1000},
		{"CACHE_SIZE", "0", 0},
		{"CACHE_MAX_TTL", "5m", 5 * time.Minute},
		{"CACHE_MIN_TTL", "30s", 30 * time.Second},
		{"CACHE_MAX_NEGATIVE_TTL", "1m", time.Minute},
		{"CACHE_SERVFAIL_TTL", "0s", time.Duration(0)},
		{"CACHE_STALE_MAX", "24h", 24 * time.Hour},
		{"CACHE_STALE_EXCLUDE", " Corp.Example., auto ,db.internal", config.StaleExclude{Cluster: true, Zones: []string{"corp.example", "db.internal"}}},
		{"CACHE_STALE_CLIENT_TIMEOUT", "500ms", 500 * time.Millisecond},
		{"CACHE_PREFETCH", "0", 0},
		{"CACHE_PREFETCH_WINDOW", "10s", 10 * time.Second},
		{"CACHE_PREFETCH_PERCENT", "50", 50},
		{"UPSTREAM_POOL_SIZE", "64", 64},
		{"UPSTREAM_IDLE_TIMEOUT", "5s", 5 * time.Second},
		{"UPSTREAM_MAX_AGE", "1h", time.Hour},
		{"DIAL_TIMEOUT", "500ms", 500 * time.Millisecond},
		{"UPSTREAM_MAX_INFLIGHT", "16384", 16384},
		{"FORWARD_CLIENT_SUBNET", "true", true},
		{"UPSTREAM_POLICY", "round_robin", "round_robin"},
		{"RETRY_MAX_ATTEMPTS", "1", 1},
		{"RETRY_BASE_DELAY", "50ms", 50 * time.Millisecond},
		{"HEALTH_MAX_FAILS", "5", 5},
		{"HEALTH_CHECK_INTERVAL", "250ms", 250 * time.Millisecond},
		{"ADMIN_ADDRESS", "[::1]:9999", "[::1]:9999"},
		{"READY_REQUIRES_UPSTREAM", "true", true},
		{"READY_FAIL_THRESHOLD", "7", 7},
		{"READY_SUCCESS_THRESHOLD", "2", 2},
		{"SHUTDOWN_LAMEDUCK", "0s", time.Duration(0)},
		{"SHUTDOWN_GRACE", "30s", 30 * time.Second},
		{"TRUST_RELOAD_INTERVAL", "10s", 10 * time.Second},
	}
	covered := make(map[string]bool)
	for _, tt := range tests {
		covered[tt.env] = true
		for _, via := range []string{"env", "flag"} {
			t.Run(tt.env+"/"+via, func(t *testing.T) {
				var args, environ []string
				if via == "env" {
					environ = []string{tt.env + "=" + tt.value}
				} else {
					args = []string{flagOf(tt.env) + "=" + tt.value}
				}
				c, err := config.Load(args, environ)
				if err != nil {
					t.Fatal(err)
				}
				if got := fieldOf(t, c, tt.env); !reflect.DeepEqual(got, tt.want) {
					t.Errorf("got %#v, want %#v", got, tt.want)
				}
			})
		}
	}
	for _, env := range envNames(t) {
		if !covered[env] {
			t.Errorf("%s is not exercised by this test", env)
		}
	}
}

func TestFlagSyntaxes(t *testing.T) {
	tests := []struct {
		args []string
		want func(*config.Config) bool
	}{
		{[]string{"--bind-port", "6000"}, func(c *config.Config) bool { return c.BindPort == 6000 }},
		{[]string{"-bind-port=6000"}, func(c *config.Config) bool { return c.BindPort == 6000 }},
		{[]string{"--ready-requires-upstream"}, func(c *config.Config) bool { return c.ReadyRequiresUpstream }},
		{[]string{"--ready-requires-upstream=false"}, func(c *config.Config) bool { return !c.ReadyRequiresUpstream }},
		// A list flag may be repeated; the values accumulate.
		{[]string{"--tls-pins", pin("a"), "--tls-pins", pin("b")}, func(c *config.Config) bool {
			return reflect.DeepEqual(c.TLSPins, [][32]byte{pinBytes("a"), pinBytes("b")})
		}},
		{[]string{"--upstreams=tls://9.9.9.9#q.example", "--upstreams=tls://1.1.1.1#c.example"}, func(c *config.Config) bool {
			return len(c.UpstreamList) == 2 && c.UpstreamList[1].ServerName == "c.example"
		}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			c, err := config.Load(tt.args, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !tt.want(c) {
				t.Errorf("unexpected config %+v", c)
			}
		})
	}
}

func TestFlagWinsOverEnv(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		environ []string
		check   func(*config.Config) error
	}{
		{"scalar", []string{"--bind-port=7000"}, []string{"BIND_PORT=6000"}, func(c *config.Config) error {
			if c.BindPort != 7000 {
				return fmt.Errorf("BindPort = %d", c.BindPort)
			}
			return nil
		}},
		{"list replaced, not merged", []string{"--upstreams=tls://9.9.9.9#q.example"}, []string{"UPSTREAMS=tls://1.1.1.1#c.example"}, func(c *config.Config) error {
			if len(c.UpstreamList) != 1 || c.UpstreamList[0].ServerName != "q.example" {
				return fmt.Errorf("UpstreamList = %+v", c.UpstreamList)
			}
			return nil
		}},
		{"bool", []string{"--ready-requires-upstream=false"}, []string{"READY_REQUIRES_UPSTREAM=true"}, func(c *config.Config) error {
			if c.ReadyRequiresUpstream {
				return errors.New("ReadyRequiresUpstream = true")
			}
			return nil
		}},
		// The flag replaces the variable before parsing, so a bad variable
		// that a flag overrides is never an error.
		{"bad env hidden by flag", []string{"--proto=tcp"}, []string{"PROTO=sctp"}, func(c *config.Config) error {
			if c.Proto != "tcp" {
				return fmt.Errorf("Proto = %q", c.Proto)
			}
			return nil
		}},
		{"later env entry wins", nil, []string{"BIND_PORT=6000", "BIND_PORT=6001"}, func(c *config.Config) error {
			if c.BindPort != 6001 {
				return fmt.Errorf("BindPort = %d", c.BindPort)
			}
			return nil
		}},
		{"empty env means default", nil, []string{"BIND_PORT=", "LOG_LEVEL="}, func(c *config.Config) error {
			if c.BindPort != 5053 || c.LogLevel != "info" {
				return fmt.Errorf("BindPort = %d, LogLevel = %q", c.BindPort, c.LogLevel)
			}
			return nil
		}},
		{"empty ADMIN_ADDRESS disables", nil, []string{"ADMIN_ADDRESS="}, func(c *config.Config) error {
			if c.AdminAddress != "" {
				return fmt.Errorf("AdminAddress = %q", c.AdminAddress)
			}
			return nil
		}},
		{"empty --admin-address disables over env", []string{"--admin-address="}, []string{"ADMIN_ADDRESS=127.0.0.1:9000"}, func(c *config.Config) error {
			if c.AdminAddress != "" {
				return fmt.Errorf("AdminAddress = %q", c.AdminAddress)
			}
			return nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := config.Load(tt.args, tt.environ)
			if err != nil {
				t.Fatal(err)
			}
			if err := tt.check(c); err != nil {
				t.Error(err)
			}
		})
	}
	// The other way round: a good variable and a bad flag blames the flag.
	_, err := config.Load([]string{"--bind-port=x"}, []string{"BIND_PORT=6000"})
	if want := `invalid --bind-port "x": must be an integer`; err == nil || err.Error() != want {
		t.Errorf("err = %v, want %s", err, want)
	}
}

func TestBindAddressExplicit(t *testing.T) {
	tests := []struct {
		args, environ []string
		want          bool
	}{
		{nil, nil, false},
		{nil, []string{"BIND_ADDRESS="}, false},
		{nil, []string{"BIND_ADDRESS=127.0.0.1,::1"}, true}, // the default list, but written out: must bind
		{[]string{"--bind-address=::1"}, nil, true},
	}
	for _, tt := range tests {
		c, err := config.Load(tt.args, tt.environ)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.BindAddressExplicit(); got != tt.want {
			t.Errorf("args %q env %q: BindAddressExplicit() = %v, want %v", tt.args, tt.environ, got, tt.want)
		}
	}
}

// TestBadValues checks each error: one line, naming the variable or the flag
// that supplied the value, and the value.
func TestBadValues(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	tests := []struct {
		env, value string
		reason     string // the message after `invalid NAME "value": `
	}{
		{"BIND_ADDRESS", "localhost", `"localhost" is a hostname; listen addresses must be IP literals`},
		{"BIND_ADDRESS", "127.0.0.1,127.0.0.1", `127.0.0.1 is listed twice`},
		{"BIND_ADDRESS", "127.0.0.1,,::1", `address 2 is empty`},
		{"BIND_ADDRESS", "300.1.1.1", `"300.1.1.1" is not an IP address`},
		{"BIND_PORT", "70000", `must be 1-65535`},
		{"BIND_PORT", "0", `must be 1-65535`},
		{"BIND_PORT", "x", `must be an integer`},
		{"PROTO", "sctp", `must be one of udp, tcp, both`},
		{"DOT_ADDRESS", "dns.google", `"dns.google" is a hostname, not an IP literal: resolving it would need a plaintext DNS lookup`},
		{"DOT_ADDRESS", "0.0.0.0", `0.0.0.0 cannot be an upstream address`},
		{"DOT_ADDRESS", "1.1.1", `"1.1.1" is not an IP address`},
		{"DOT_PORT", "65536", `must be 1-65535`},
		{"DOT_SERVER_NAME", "bad name", `server name "bad name" is not a valid DNS name`},
		{"UPSTREAMS", "tls://dns.google#dns.google", `"dns.google" is a hostname, not an IP literal: resolving it would need a plaintext DNS lookup`},
		{"UPSTREAMS", "tls://1.1.1.1#one.one.one.one,tls://8.8.8.8", `entry 2 "tls://8.8.8.8": missing #SERVERNAME: the name the upstream's certificate must carry is mandatory`},
		{"UPSTREAMS", "dns://10.96.0.10", `dns://10.96.0.10:53 is plaintext: UPSTREAMS must be encrypted; plaintext upstreams are allowed only in ROUTES and CLUSTER_DNS, to resolvers inside the cluster or network`},
		{"ROUTES", "cluster.local=dns://8.8.8.8", `route cluster.local: dns://8.8.8.8:53 would send queries in plaintext to a public address; plaintext is allowed only to loopback, link-local, private (RFC 1918, RFC 6598, ULA) addresses and PLAINTEXT_ALLOWED_CIDRS`},
		{"ROUTES", ".=tls://1.1.1.1#one.one.one.one", `route ".=tls://1.1.1.1#one.one.one.one": the root zone is not a route: UPSTREAMS answers every name no route matches`},
		{"CLUSTER_DNS", "kube-dns", `want auto, off, or a list of upstreams such as dns://10.96.0.10`},
		{"CLUSTER_DNS", "dns://203.0.113.10", `dns://203.0.113.10:53 would send queries in plaintext to a public address; plaintext is allowed only to loopback, link-local, private (RFC 1918, RFC 6598, ULA) addresses and PLAINTEXT_ALLOWED_CIDRS`},
		{"CLUSTER_DOMAIN", "cluster..local", `"cluster..local" is not a domain name`},
		{"PLAINTEXT_ALLOWED_CIDRS", "203.0.113.0", `"203.0.113.0" is not a CIDR such as 203.0.113.0/24 or 2001:db8::/32`},
		{"TLS_PINS", "abc", `pin "abc" is not base64 (want the base64 SHA-256 of a SubjectPublicKeyInfo)`},
		{"TLS_PINS", "YWJj", `pin "YWJj" decodes to 3 bytes, want 32 (a SHA-256 digest)`},
		{"LOG_LEVEL", "verbose", `must be one of debug, info, warn, error`},
		{"LOG_FORMAT", "xml", `must be one of text, json`},
		{"LOG_FILE", dir, `is a directory`},
		{"LOG_FILE", missing + "/sidecar.log", `directory ` + missing + ` does not exist`},
		{"QUERY_TIMEOUT", "0s", `must be greater than 0`},
		{"QUERY_TIMEOUT", "5", `must be a duration such as 500ms, 2s or 1m`},
		{"UDP_MAX_SIZE", "511", `must be 512-65535`},
		{"TCP_IDLE_TIMEOUT", "-1s", `must be greater than 0`},
		{"TCP_MAX_CONNS", "0", `must be at least 1`},
		{"TCP_MAX_INFLIGHT", "0", `must be at least 1`},
		{"TCP_MAX_UNREAD", "511", `must be at least 512`},
		{"MAX_INFLIGHT", "0", `must be at least 1`},
		{"CACHE_SIZE", "-1", `must be at least 0`},
		{"CACHE_MAX_TTL", "500ms", `must be at least 1s: TTLs count whole seconds`},
		{"CACHE_MAX_NEGATIVE_TTL", "0s", `must be greater than 0`},
		{"CACHE_SERVFAIL_TTL", "10m", `must be at most 5m0s (RFC 2308 §7.1)`},
		{"CACHE_STALE_MAX", "-1h", `must not be negative`},
		{"CACHE_STALE_EXCLUDE", "auto,,corp.example", `entry 2 is empty`},
		{"CACHE_STALE_EXCLUDE", "none,corp.example", `none cannot be combined with zones`},
		{"CACHE_STALE_EXCLUDE", ".", `the root zone would exclude every name: set CACHE_STALE_MAX=0 to turn serve-stale off`},
		{"CACHE_STALE_EXCLUDE", "corp.example,Corp.Example.", `zone corp.example is listed twice`},
		{"CACHE_STALE_EXCLUDE", "corp example", `"corp example" is not a domain name`},
		{"CACHE_STALE_CLIENT_TIMEOUT", "2s", `must be less than QUERY_TIMEOUT (2s), or a stale answer would come after the client gave up`},
		{"CACHE_MIN_TTL", "45m", `must not exceed CACHE_MAX_NEGATIVE_TTL (30m0s)`},
		{"CACHE_PREFETCH", "-1", `must be at least 0`},
		{"CACHE_PREFETCH_WINDOW", "0s", `must be greater than 0`},
		{"CACHE_PREFETCH_PERCENT", "100", `must be 1-99`},
		{"MAX_INFLIGHT", "4096", `must not exceed what an upstream's connections carry, UPSTREAM_POOL_SIZE × UPSTREAM_MAX_INFLIGHT (2 × 1024 = 2048)`},
		{"UPSTREAM_POOL_SIZE", "1", `with UPSTREAM_MAX_INFLIGHT 1024, an upstream's connections then carry 1024 queries, fewer than MAX_INFLIGHT (2048) admits: lower MAX_INFLIGHT with it`},
		{"UPSTREAM_MAX_INFLIGHT", "512", `with UPSTREAM_POOL_SIZE 2, an upstream's connections then carry 1024 queries, fewer than MAX_INFLIGHT (2048) admits: lower MAX_INFLIGHT with it`},
		{"UPSTREAM_POOL_SIZE", "65", `must be 1-64`},
		{"UPSTREAM_POOL_SIZE", "0", `must be 1-64`},
		{"UPSTREAM_IDLE_TIMEOUT", "0", `must be greater than 0`},
		{"UPSTREAM_MAX_AGE", "0s", `must be greater than 0`},
		{"DIAL_TIMEOUT", "0s", `must be greater than 0`},
		{"UPSTREAM_MAX_INFLIGHT", "16385", `must be 1-16384`},
		{"FORWARD_CLIENT_SUBNET", "yes please", `must be true or false`},
		{"UPSTREAM_POLICY", "fastest", `must be one of sequential, round_robin, random`},
		{"RETRY_MAX_ATTEMPTS", "0", `must be at least 1`},
		{"RETRY_BASE_DELAY", "0s", `must be greater than 0`},
		{"HEALTH_MAX_FAILS", "0", `must be at least 1`},
		{"HEALTH_CHECK_INTERVAL", "0s", `must be greater than 0`},
		{"ADMIN_ADDRESS", "localhost:9253", `host "localhost" must be an IP literal, or empty for all addresses`},
		{"ADMIN_ADDRESS", "9253", `want [IP]:PORT such as :9253 or 127.0.0.1:9253`},
		{"ADMIN_ADDRESS", ":0", `port "0" must be 1-65535`},
		{"READY_REQUIRES_UPSTREAM", "maybe", `must be true or false`},
		{"READY_FAIL_THRESHOLD", "0", `must be at least 1`},
		{"READY_SUCCESS_THRESHOLD", "-1", `must be at least 1`},
		{"SHUTDOWN_LAMEDUCK", "-1s", `must not be negative`},
		{"SHUTDOWN_LAMEDUCK", "10s", `must be less than SHUTDOWN_GRACE (10s)`},
		{"SHUTDOWN_GRACE", "0s", `must be greater than 0`},
		{"SHUTDOWN_GRACE", "2s", `must exceed SHUTDOWN_LAMEDUCK (2s)`},
		{"RETRY_BASE_DELAY", "2s", `must be less than QUERY_TIMEOUT (2s), or no retry could ever fit`},
		{"QUERY_TIMEOUT", "10ms", `must exceed RETRY_BASE_DELAY (10ms), or no retry could ever fit`},
		{"TRUST_RELOAD_INTERVAL", "0s", `must be greater than 0`},
	}
	covered := map[string]bool{}
	for _, tt := range tests {
		covered[tt.env] = true
		for _, via := range []string{"env", "flag"} {
			t.Run(tt.env+"="+tt.value+"/"+via, func(t *testing.T) {
				name := tt.env
				var args, environ []string
				if via == "env" {
					environ = []string{tt.env + "=" + tt.value}
				} else {
					name = flagOf(tt.env)
					args = []string{name + "=" + tt.value}
				}
				c, err := config.Load(args, environ)
				if err == nil {
					t.Fatalf("no error; config %+v", c)
				}
				want := fmt.Sprintf("invalid %s %q: %s", name, tt.value, tt.reason)
				if err.Error() != want {
					t.Errorf("error\n got: %s\nwant: %s", err, want)
				}
				var se *config.SettingError
				if !errors.As(err, &se) || se.Name != name || se.Value != tt.value || !errors.Is(err, config.ErrInvalid) {
					t.Errorf("error %#v is not a SettingError for %s=%q", err, name, tt.value)
				}
			})
		}
	}
	// The trust files are read by package upstream, after Load; what it
	// refuses in them is reported through Config.Invalid (TestInvalid).
	// RESOLV_CONF is read at start: a file that cannot be read only costs
	// the cluster route, with a warning.
	readAfterLoad := map[string]bool{"TLS_CA_FILE": true, "TLS_PINS_FILE": true, "RESOLV_CONF": true}
	for _, env := range envNames(t) {
		if !covered[env] && !readAfterLoad[env] {
			t.Errorf("%s has no bad-value case", env)
		}
	}
}

// TestInvalid: a value refused after Load, by what uses it, is reported
// like one Load refuses: naming the variable or the flag, and the value.
func TestInvalid(t *testing.T) {
	reason := errors.New("no PEM certificate")
	for _, tt := range []struct {
		args, environ []string
		want          string
	}{
		{nil, []string{"TLS_CA_FILE=/etc/ca.pem"}, `invalid TLS_CA_FILE "/etc/ca.pem": no PEM certificate`},
		{[]string{"--tls-ca-file=/etc/flag.pem"}, []string{"TLS_CA_FILE=/etc/ca.pem"}, `invalid --tls-ca-file "/etc/flag.pem": no PEM certificate`},
	} {
		c, err := config.Load(tt.args, tt.environ)
		if err != nil {
			t.Fatal(err)
		}
		err = c.Invalid("TLS_CA_FILE", reason)
		var se *config.SettingError
		if err.Error() != tt.want || !errors.Is(err, reason) || !errors.Is(err, config.ErrInvalid) || !errors.As(err, &se) {
			t.Errorf("Invalid = %v, want %s, matching the reason and ErrInvalid", err, tt.want)
		}
	}
}

func TestOtherErrors(t *testing.T) {
	caFile, pinsFile, _ := trustFiles(t)
	tests := []struct {
		name          string
		args, environ []string
		want          string
	}{
		{"several bad values on one line", nil, []string{"BIND_PORT=0", "PROTO=x"},
			`invalid BIND_PORT "0": must be 1-65535; invalid PROTO "x": must be one of udp, tcp, both`},
		{"cross check names both sources", []string{"--shutdown-lameduck=20s"}, []string{"SHUTDOWN_GRACE=15s"},
			`invalid SHUTDOWN_GRACE "15s": must exceed --shutdown-lameduck (20s)`},
		{"pins and pins file together", []string{"--tls-pins-file=" + pinsFile}, []string{"TLS_PINS=" + pin("a")},
			fmt.Sprintf(`invalid --tls-pins-file %q: cannot be combined with TLS_PINS: choose one source of default pins`, pinsFile)},
		{"flag given twice", []string{"--bind-port=1", "--bind-port=2"}, nil, `invalid --bind-port "2": given more than once`},
		{"unknown flag", []string{"--bind-prot=1"}, nil, `flag provided but not defined: --bind-prot (see --help)`},
		{"positional argument", []string{"serve"}, nil, `unexpected argument "serve" (settings are --name=value flags; see --help)`},
		{"CA file fine but lameduck bad", []string{"--tls-ca-file=" + caFile, "--shutdown-lameduck=-1s"}, nil,
			`invalid --shutdown-lameduck "-1s": must not be negative`},
		{"cache minimum above a maximum", nil, []string{"CACHE_MIN_TTL=10m", "CACHE_MAX_NEGATIVE_TTL=5m"},
			`invalid CACHE_MIN_TTL "10m": must not exceed CACHE_MAX_NEGATIVE_TTL (5m0s)`},
		{"stale client timeout against a short query timeout", []string{"--query-timeout=1s"}, []string{"CACHE_STALE_CLIENT_TIMEOUT=1s"},
			`invalid CACHE_STALE_CLIENT_TIMEOUT "1s": must be less than --query-timeout (1s), or a stale answer would come after the client gave up`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := config.Load(tt.args, tt.environ)
			if err == nil || err.Error() != tt.want {
				t.Errorf("error\n got: %v\nwant: %s", err, tt.want)
			}
			if err != nil && strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans several lines: %q", err)
			}
		})
	}
}

// Asking for help wins over bad settings, so that an operator can read the
// help in the very environment that fails.
func TestHelp(t *testing.T) {
	for _, arg := range []string{"-h", "--help", "-help"} {
		for _, args := range [][]string{{arg}, {"--bind-port=1", arg}} {
			c, err := config.Load(args, []string{"BIND_PORT=bad"})
			if !errors.Is(err, config.ErrHelp) || c != nil {
				t.Errorf("Load(%q) = %v, %v; want nil, ErrHelp", args, c, err)
			}
		}
	}
}

func TestWithFlags(t *testing.T) {
	var timeout time.Duration
	define := config.WithFlags(func(fs *flag.FlagSet) {
		fs.DurationVar(&timeout, "timeout", time.Minute, "how long to wait")
	})
	c, err := config.Load([]string{"--timeout=5s"}, []string{"ADMIN_ADDRESS=127.0.0.1:9999"}, define)
	if err != nil {
		t.Fatal(err)
	}
	if timeout != 5*time.Second || c.AdminAddress != "127.0.0.1:9999" {
		t.Errorf("timeout = %v, AdminAddress = %q", timeout, c.AdminAddress)
	}
	if _, err := config.Load([]string{"--timeout=5s"}, nil); err == nil {
		t.Error("--timeout accepted without WithFlags")
	}
}

func TestWarnings(t *testing.T) {
	tests := []struct {
		name          string
		args, environ []string
		want          []string
	}{
		{"none by default", nil, nil, nil},
		{"DOT_* beside UPSTREAMS", []string{"--dot-server-name=x.example"}, []string{"UPSTREAMS=tls://9.9.9.9#q.example", "DOT_ADDRESS=8.8.8.8"},
			[]string{"DOT_ADDRESS, --dot-server-name ignored: UPSTREAMS replaces it"}},
		{"TLS_PINS unused", nil, []string{"UPSTREAMS=tls://9.9.9.9#q.example;pin=" + pin("q"), "TLS_PINS=" + pin("a")},
			[]string{"TLS_PINS applies to no upstream: every UPSTREAMS entry has its own pins"}},
		{"ready thresholds without READY_REQUIRES_UPSTREAM", []string{"--ready-fail-threshold=5"}, nil,
			[]string{"--ready-fail-threshold has no effect unless READY_REQUIRES_UPSTREAM is true"}},
		{"ready thresholds with READY_REQUIRES_UPSTREAM", []string{"--ready-fail-threshold=5"}, []string{"READY_REQUIRES_UPSTREAM=true"}, nil},
		{"dial longer than query", []string{"--dial-timeout=5s"}, nil,
			[]string{"--dial-timeout (5s) exceeds QUERY_TIMEOUT (2s): a query gives up before a slow dial completes"}},
		{"cache settings without a cache", []string{"--cache-size=0", "--cache-max-ttl=5m"}, []string{"CACHE_PREFETCH=3"},
			[]string{"--cache-max-ttl has no effect with --cache-size=0", "CACHE_PREFETCH has no effect with --cache-size=0"}},
		{"stale settings without serve-stale", nil, []string{"CACHE_STALE_MAX=0", "CACHE_STALE_EXCLUDE=none"},
			[]string{"CACHE_STALE_EXCLUDE has no effect with CACHE_STALE_MAX=0"}},
		{"prefetch settings without prefetch", nil, []string{"CACHE_PREFETCH=0", "CACHE_PREFETCH_PERCENT=20"},
			[]string{"CACHE_PREFETCH_PERCENT has no effect with CACHE_PREFETCH=0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := config.Load(tt.args, tt.environ)
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Warnings(); !reflect.DeepEqual(got, tt.want) && (len(got) != 0 || len(tt.want) != 0) {
				t.Errorf("Warnings() = %q, want %q", got, tt.want)
			}
		})
	}
}
