// Package config is the only place dot-sidecar reads its environment. Load
// turns the process's arguments and environment into a validated Config:
// every setting is an environment variable (parsed with caarlos0/env) and a
// flag of the same name in lower-case dashed form (BIND_PORT → --bind-port);
// a flag wins over the variable, and an empty value means the default.
//
// The struct tags of Config are the single source of truth for each
// setting's variable, default, meaning and valid range: Load, Usage and the
// settings table in docs/settings.md (checked by a test) are all derived from them.
package config

import (
	"net/netip"
	"time"
)

// Values of the enumerated settings.
const (
	ProtoUDP  = "udp"
	ProtoTCP  = "tcp"
	ProtoBoth = "both"

	PolicySequential = "sequential"
	PolicyRoundRobin = "round_robin"
	PolicyRandom     = "random"

	LogFormatText = "text"
	LogFormatJSON = "json"
)

// HealthProbeTimeout bounds one health probe of an upstream marked down. It
// is a default without a setting: a probe that waits longer only delays the
// next one, and HEALTH_CHECK_INTERVAL already says how soon a returning
// upstream is noticed.
const HealthProbeTimeout = time.Second

// HealthPartialWindow is the window over which an upstream's timeouts are
// weighed against its answers, by distinct name: when more than half of a
// window's names (at least 20) timed out, the upstream is taken out of
// rotation. A default without a setting: long enough for a busy pod to ask
// 20 names, short enough that a partly failing upstream is out within
// seconds.
const HealthPartialWindow = 5 * time.Second

// Config holds every setting. Each exported field is one setting, described
// by its tags:
//
//	env         the variable; the flag is its lower-case dashed form
//	envDefault  the default ("" for none)
//	valid       the range checked at load: "1..65535", "1.." (at least 1),
//	            ">0" or ">=0" (durations), "a|b|c" (one of, case-insensitive)
//	help        the meaning, shown by --help
//	emptyOK     "true": an explicitly empty value means empty, not the default
//	sep         what joins the values of a repeated flag of a list: "," unless
//	            given (ROUTES' routes are separated by blanks)
type Config struct {
	BindAddress []netip.Addr `env:"BIND_ADDRESS" envDefault:"127.0.0.1,::1" help:"comma-separated IP literals to listen on. With the default, an address the host lacks (::1 when IPv6 is off) is skipped with a warning; an address set explicitly must bind"`
	BindPort    int          `env:"BIND_PORT" envDefault:"5053" valid:"1..65535" help:"port to listen on (UDP and TCP)"`
	Proto       string       `env:"PROTO" envDefault:"both" valid:"udp|tcp|both" help:"listeners to run: udp, tcp or both"`

	DoTAddress    netip.Addr `env:"DOT_ADDRESS" envDefault:"1.1.1.1" help:"upstream IPv4 or IPv6 literal, used when UPSTREAMS is empty"`
	DoTPort       int        `env:"DOT_PORT" envDefault:"853" valid:"1..65535" help:"upstream port, used when UPSTREAMS is empty"`
	DoTServerName string     `env:"DOT_SERVER_NAME" envDefault:"cloudflare-dns.com" help:"name the upstream certificate must carry, used when UPSTREAMS is empty"`
	// UpstreamList is UPSTREAMS as written; use Upstreams() for the effective
	// list.
	UpstreamList []Upstream `env:"UPSTREAMS" envDefault:"" help:"comma-separated upstreams, each tls://IP[:PORT]#SERVERNAME[;pin=BASE64]...[;probe=NAME] (DNS over TLS, port 853 by default) or https://IP[:PORT]/PATH#SERVERNAME with the same options and ;method=get (DNS over HTTPS, port 443 by default), IPv6 in brackets; when set, replaces DOT_ADDRESS, DOT_PORT and DOT_SERVER_NAME"`

	// The trust files are named here and read by package upstream, which
	// also watches them (LoadTrust, TrustReloader).
	TLSCAFile   string     `env:"TLS_CA_FILE" envDefault:"" help:"PEM bundle of CA certificates to trust instead of the system roots; re-read when it changes"`
	TLSPins     [][32]byte `env:"TLS_PINS" envDefault:"" help:"comma-separated SPKI pins (base64 SHA-256 of a SubjectPublicKeyInfo, leaf or CA) for upstreams without pins of their own"`
	TLSPinsFile string     `env:"TLS_PINS_FILE" envDefault:"" help:"file of SPKI pins, one a line ('#' comments allowed), for upstreams without pins of their own; re-read when it changes; excludes TLS_PINS"`

	// Routing: which zones go to which upstreams. The decision of
	// CLUSTER_DNS=auto, which reads RESOLV_CONF, is made at start by the
	// caller with package resolvconf.
	Routes                []Route        `env:"ROUTES" envDefault:"" sep:" " help:"zones with upstreams of their own, separated by blanks, each ZONE=UPSTREAM[,UPSTREAM...] in UPSTREAMS' entry syntax, plus dns://IP[:PORT] and tcp://IP[:PORT] (plaintext, to private addresses only) and the options ;ca=PATH and ;probe=NAME; the longest matching zone wins, everything else goes to UPSTREAMS"`
	ClusterDNS            ClusterDNS     `env:"CLUSTER_DNS" envDefault:"auto" help:"upstreams of the cluster domain: auto (the nameservers of the kubelet's resolv.conf, over dns://, for the cluster domain and the file's other search domains), off, or an upstream list like ROUTES'"`
	ClusterDomain         string         `env:"CLUSTER_DOMAIN" envDefault:"" help:"the cluster domain; empty: the one the kubelet's resolv.conf shows, else cluster.local"`
	ResolvConf            string         `env:"RESOLV_CONF" envDefault:"/etc/resolv.conf" help:"the pod's resolv.conf, read at start to find the cluster's resolver, domain and search domains"`
	PlaintextAllowedCIDRs []netip.Prefix `env:"PLAINTEXT_ALLOWED_CIDRS" envDefault:"" help:"comma-separated CIDRs besides loopback, link-local, RFC 1918, RFC 6598 and ULA ranges to which ROUTES and CLUSTER_DNS may send plaintext (Services in public ranges)"`

	LogLevel  string `env:"LOG_LEVEL" envDefault:"info" valid:"debug|info|warn|error" help:"debug, info, warn or error; one line per query only at debug"`
	LogFormat string `env:"LOG_FORMAT" envDefault:"text" valid:"text|json" help:"text or json"`
	LogFile   string `env:"LOG_FILE" envDefault:"" help:"file to append logs to; empty means stderr"`

	QueryTimeout   time.Duration `env:"QUERY_TIMEOUT" envDefault:"2s" valid:">0" help:"deadline of each client query, retries included; past it the client gets SERVFAIL"`
	UDPMaxSize     int           `env:"UDP_MAX_SIZE" envDefault:"1232" valid:"512..65535" help:"largest UDP answer sent, whatever size the client advertises (512-65535)"`
	TCPIdleTimeout time.Duration `env:"TCP_IDLE_TIMEOUT" envDefault:"10s" valid:">0" help:"idle time after which a client TCP connection is closed; shorter, down to 200ms, while more than half of TCP_MAX_CONNS are open"`
	TCPMaxConns    int           `env:"TCP_MAX_CONNS" envDefault:"256" valid:"1.." help:"most client TCP connections open at once; more are refused"`
	TCPMaxInflight int           `env:"TCP_MAX_INFLIGHT" envDefault:"128" valid:"1.." help:"most queries in flight on one client TCP connection"`
	TCPMaxUnread   int           `env:"TCP_MAX_UNREAD" envDefault:"16384" valid:"512.." help:"bytes of answers a client TCP connection may leave unread once the kernel's buffers are full; at the limit no more of its queries are read, and if more answers come the connection is closed"`
	MaxInflight    int           `env:"MAX_INFLIGHT" envDefault:"2048" valid:"1.." help:"most client queries in flight over all listeners, at most UPSTREAM_POOL_SIZE × UPSTREAM_MAX_INFLIGHT; at the limit a query in flight for 200ms or more is given up on (SERVFAIL) for a new one, else the new one gets SERVFAIL at once; bounds memory under a flood"`

	// The answer cache (package cache; what each setting does: cache.go
	// there and docs/cache.md).
	CacheSize               int           `env:"CACHE_SIZE" envDefault:"10000" valid:"0.." help:"most answers cached (an answer over 1 KiB counts once per KiB); 0 turns the cache off and every query goes upstream"`
	CacheMaxTTL             time.Duration `env:"CACHE_MAX_TTL" envDefault:"1h" valid:">0" help:"longest a positive answer is cached, whatever its TTLs say (at least 1s)"`
	CacheMinTTL             time.Duration `env:"CACHE_MIN_TTL" envDefault:"0s" valid:">=0" help:"shortest an answer is cached, whatever its TTLs say; 0 respects them, down to not caching TTL 0"`
	CacheMaxNegativeTTL     time.Duration `env:"CACHE_MAX_NEGATIVE_TTL" envDefault:"30m" valid:">0" help:"longest an NXDOMAIN or NODATA answer is cached, whatever its SOA says (at least 1s)"`
	CacheServfailTTL        time.Duration `env:"CACHE_SERVFAIL_TTL" envDefault:"5s" valid:">=0" help:"how long an upstream's SERVFAIL is cached (at most 5m; 0 never)"`
	CacheStaleMax           time.Duration `env:"CACHE_STALE_MAX" envDefault:"6h" valid:">=0" help:"how long after it expires an answer may be served stale, when the upstreams fail or are slow; 0 turns serve-stale off"`
	CacheStaleExclude       StaleExclude  `env:"CACHE_STALE_EXCLUDE" envDefault:"auto" help:"zones never served stale: auto (the cluster route's and plaintext routes' zones and the private reverse zones), none, or a comma-separated list of zones, auto among them to keep those"`
	CacheStaleClientTimeout time.Duration `env:"CACHE_STALE_CLIENT_TIMEOUT" envDefault:"1.8s" valid:">0" help:"how long a query for an expired answer waits for the upstream before it gets the stale one; less than QUERY_TIMEOUT"`
	CachePrefetch           int           `env:"CACHE_PREFETCH" envDefault:"10" valid:"0.." help:"hits, each within CACHE_PREFETCH_WINDOW of the last, that make an answer hot: a hot answer is refreshed before it expires; 0 turns prefetch off"`
	CachePrefetchWindow     time.Duration `env:"CACHE_PREFETCH_WINDOW" envDefault:"1m" valid:">0" help:"longest gap between two hits of a hot answer"`
	CachePrefetchPercent    int           `env:"CACHE_PREFETCH_PERCENT" envDefault:"10" valid:"1..99" help:"a hot answer is refreshed once this percentage of its lifetime remains (or 1s, if later)"`

	UpstreamPoolSize    int           `env:"UPSTREAM_POOL_SIZE" envDefault:"2" valid:"1..64" help:"persistent TLS connections per upstream (1-64)"`
	UpstreamIdleTimeout time.Duration `env:"UPSTREAM_IDLE_TIMEOUT" envDefault:"30s" valid:">0" help:"idle time after which an upstream connection is closed"`
	UpstreamMaxAge      time.Duration `env:"UPSTREAM_MAX_AGE" envDefault:"5m" valid:">0" help:"age at which an upstream connection is retired, so certificates are verified again"`
	DialTimeout         time.Duration `env:"DIAL_TIMEOUT" envDefault:"2s" valid:">0" help:"limit for the TCP connect plus TLS handshake to an upstream"`
	UpstreamMaxInflight int           `env:"UPSTREAM_MAX_INFLIGHT" envDefault:"1024" valid:"1..16384" help:"most queries in flight on one upstream connection (1-16384: message IDs are 16 bits and a free one must stay cheap to draw)"`
	ForwardClientSubnet bool          `env:"FORWARD_CLIENT_SUBNET" envDefault:"false" help:"pass a client's EDNS Client Subnet option (RFC 7871) on to upstreams; off, it is removed from every query, and the sidecar never adds one"`

	UpstreamPolicy      string        `env:"UPSTREAM_POLICY" envDefault:"sequential" valid:"sequential|round_robin|random" help:"how to choose among healthy upstreams: sequential (first healthy in list order, the default: a deterministic primary keeps behaviour and debugging predictable), round_robin or random"`
	RetryMaxAttempts    int           `env:"RETRY_MAX_ATTEMPTS" envDefault:"3" valid:"1.." help:"most attempts per query (1 = no retry); each retry goes to the next healthy upstream"`
	RetryBaseDelay      time.Duration `env:"RETRY_BASE_DELAY" envDefault:"10ms" valid:">0" help:"first retry backoff, doubled with jitter at each attempt; must be under QUERY_TIMEOUT"`
	HealthMaxFails      int           `env:"HEALTH_MAX_FAILS" envDefault:"3" valid:"1.." help:"consecutive transport failures that mark an upstream down"`
	HealthCheckInterval time.Duration `env:"HEALTH_CHECK_INTERVAL" envDefault:"1s" valid:">0" help:"cap of the backoff between probes of a down upstream"`

	AdminAddress          string        `env:"ADMIN_ADDRESS" envDefault:":9253" emptyOK:"true" help:"[IP]:PORT of the HTTP listener for /livez, /startupz, /readyz and /metrics; empty disables it"`
	ReadyRequiresUpstream bool          `env:"READY_REQUIRES_UPSTREAM" envDefault:"false" help:"make /readyz fail while every upstream of UPSTREAMS is down (routes are not looked at; off: a shared outage would pull every pod out of its Service at once)"`
	ReadyFailThreshold    int           `env:"READY_FAIL_THRESHOLD" envDefault:"3" valid:"1.." help:"with READY_REQUIRES_UPSTREAM, consecutive failed checks before unready"`
	ReadySuccessThreshold int           `env:"READY_SUCCESS_THRESHOLD" envDefault:"1" valid:"1.." help:"with READY_REQUIRES_UPSTREAM, consecutive good checks before ready again"`
	ShutdownLameduck      time.Duration `env:"SHUTDOWN_LAMEDUCK" envDefault:"2s" valid:">=0" help:"after SIGTERM, time /readyz reports 503 while listeners keep answering (0 disables)"`
	ShutdownGrace         time.Duration `env:"SHUTDOWN_GRACE" envDefault:"10s" valid:">0" help:"total time from SIGTERM to exit, lame duck included; must exceed SHUTDOWN_LAMEDUCK"`
	TrustReloadInterval   time.Duration `env:"TRUST_RELOAD_INTERVAL" envDefault:"5s" valid:">0" help:"how often TLS_CA_FILE, TLS_PINS_FILE and the ;ca= files of routes are checked for changes"`

	// Derived at load, not settings.
	bindAddressExplicit bool
	sources             map[string]source // by variable: what supplied each setting
	warnings            []string
}

// source is what supplied a setting: the variable or the flag, as the
// operator wrote it, and the value.
type source struct{ name, value string }

// BindAddressExplicit reports whether BIND_ADDRESS was set. With the default
// list, an address the host lacks is skipped with a warning; an address the
// operator listed must bind or the program stops.
func (c *Config) BindAddressExplicit() bool { return c.bindAddressExplicit }

// Invalid reports that what uses a setting refused its value after Load (a
// trust file that cannot be read, say) the way Load reports a bad value: a
// *SettingError naming the variable or flag that supplied it, and the value.
// env is the setting's variable name.
func (c *Config) Invalid(env string, reason error) error {
	src, ok := c.sources[env]
	if !ok {
		panic("config: no setting " + env)
	}
	return &SettingError{Name: src.name, Value: src.value, Reason: reason}
}

// Warnings lists settings that are valid but probably not what the operator
// meant (e.g. DOT_ADDRESS set alongside UPSTREAMS, which replaces it). The
// caller logs them once the logger exists.
func (c *Config) Warnings() []string { return append([]string(nil), c.warnings...) }

// Upstreams returns the effective upstreams: the UPSTREAMS entries, or the
// single one that DOT_ADDRESS, DOT_PORT and DOT_SERVER_NAME describe, each
// with its own pins only (none when the entry has none). The default pins
// for the others are given once, by TLS_PINS or TLS_PINS_FILE. The result
// is a fresh copy.
func (c *Config) Upstreams() []Upstream {
	if len(c.UpstreamList) == 0 {
		return []Upstream{{
			Scheme:     SchemeTLS,
			Addr:       netip.AddrPortFrom(c.DoTAddress, uint16(c.DoTPort)),
			ServerName: c.DoTServerName,
		}}
	}
	ups := make([]Upstream, len(c.UpstreamList))
	for i, u := range c.UpstreamList {
		u.Pins = clonePins(u.Pins)
		ups[i] = u
	}
	return ups
}

func clonePins(p [][32]byte) [][32]byte {
	if p == nil {
		return nil
	}
	return append([][32]byte(nil), p...)
}
