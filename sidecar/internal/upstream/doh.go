package upstream

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
)

// DoHOptions configures a DNS-over-HTTPS upstream (RFC 8484): a DoT
// upstream's options, which mean the same here, and the HTTP part. Addr's
// port is HTTPS's (443); ServerName is also sent as the requests'
// :authority (with the port unless 443); MaxInFlightPerConn caps the
// streams open at once on a connection, which the server's
// SETTINGS_MAX_CONCURRENT_STREAMS may cap lower.
type DoHOptions struct {
	DoTOptions
	// Path is the path of the DoH endpoint, e.g. "/dns-query". Required.
	Path string
	// GET sends queries as GET ?dns=BASE64URL instead of POST.
	GET bool
}

// DoH is one DNS-over-HTTPS upstream: a small pool of verified HTTP/2
// connections, each carrying many queries at once as concurrent streams.
//
// HTTP/2 is this package's (h2Conn, dohh2.go), one per connection, so that
// the pool decides how many connections there are, when one is retired and
// what it was verified against, exactly as for a DoT upstream: the TLS
// connection is dialed and verified by the same code (tlsUpstream.dial) and
// only then does HTTP/2 start on it.
type DoH struct {
	tlsUpstream    // name, addr, log, m: the upstream's, for all of the DoH
	pool[*dohConn] // the connections (poolstate.go; how a DoH uses them: dohpool.go)
	opts           DoHOptions
	tick           time.Duration

	authority string // every request's :authority

	ctx    context.Context // cancelled by Close: stops dials and housekeeping
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine this DoH started

	lastHTTPWarn atomic.Int64 // unix nanos of the last bad HTTP response logged at Warn
	waiting      atomic.Int32 // queries waiting for room on a connection
}

var _ Upstream = (*DoH)(nil)

// maxDoHPool caps PoolSize (as the settings do): the picker tracks the
// connections it tried in a 64-bit mask.
const maxDoHPool = 64

// NewDoH validates opts and returns an upstream that dials lazily, on the
// first query.
func NewDoH(opts DoHOptions) (*DoH, error) {
	if err := opts.check(); err != nil {
		return nil, err
	}
	if err := checkPath(opts.Path); err != nil {
		return nil, fmt.Errorf("upstream %s: %w", opts.Addr, err)
	}
	if opts.PoolSize > maxDoHPool {
		return nil, fmt.Errorf("upstream %s: PoolSize %d above %d", opts.Addr, opts.PoolSize, maxDoHPool)
	}

	// Padded as DoT is (RFC 8467 applies to DoH too); no keepalive option,
	// which is TCP's (RFC 7828): HTTP/2 manages its connections.
	rewrite := dnswire.QueryRewrite{PadBlock: dnswire.PadBlock, KeepClientSubnet: opts.ForwardClientSubnet}
	d := &DoH{
		tlsUpstream: newTLSUpstream(opts.DoTOptions, "https://"+opts.Addr.String()+opts.Path+"#"+opts.ServerName, rewrite, "h2"),
		opts:        opts,
		tick:        housekeepingTick(opts.DoTOptions),
	}
	d.pool.init(opts.PoolSize, d.m.open, d.launchDial)
	d.m.initHTTP()
	d.authority = authority(opts.ServerName, opts.Addr.Port())
	d.ctx, d.cancel = context.WithCancel(context.Background())
	d.wg.Add(1)
	go everyTick(d.ctx, &d.wg, d.tick, d.housekeep)
	return d, nil
}

// checkPath accepts an absolute URL path without query or fragment: the
// GET form adds a query of its own, and a fragment is never sent.
func checkPath(p string) error {
	if !strings.HasPrefix(p, "/") {
		return fmt.Errorf("path %q: want an absolute path such as /dns-query", p)
	}
	if strings.ContainsAny(p, "?# \t\r\n") {
		return fmt.Errorf("path %q: want a path without query, fragment or spaces", p)
	}
	if u, err := url.Parse(p); err != nil || u.Path != p {
		return fmt.Errorf("path %q: not a plain URL path", p)
	}
	return nil
}

// authority is the requests' :authority: the server name, with the port
// when it is not HTTPS's own (RFC 9110 §4.2.2), as a browser would send it.
// Front ends compare it with the SNI and answer 421 when they differ.
func authority(serverName string, port uint16) string {
	if port == 443 {
		if strings.Contains(serverName, ":") {
			return "[" + serverName + "]" // an IPv6 literal
		}
		return serverName
	}
	return net.JoinHostPort(serverName, strconv.Itoa(int(port)))
}

// Name is "https://ADDR:PORT/PATH#SERVERNAME", e.g.
// "https://1.1.1.1:443/dns-query#cloudflare-dns.com".
func (d *DoH) Name() string { return d.name }

// Exchange sends q as one HTTP/2 request on a pooled connection and reads
// its answer. As for a DoT upstream, a pooled connection that had served
// and dies under the query (closed, reset, or sending GOAWAY before it
// processed the query), or a stream the server refused unprocessed, is not
// the caller's problem: the query is sent again on another, up to
// maxAttempts sends within ctx. A new connection that dies before answering
// anything fails the query with ErrUnreachable, and an HTTP response
// without a usable answer with ErrHTTP. A ctx without deadline gets
// QueryTimeout.
func (d *DoH) Exchange(ctx context.Context, q dnswire.Msg) (dnswire.Msg, error) {
	ctx, cancel, err := d.queryContext(ctx, &q, d.opts.QueryTimeout)
	defer cancel()
	if err != nil {
		return dnswire.Msg{}, err
	}
	return d.resending(ctx, func() (dnswire.Msg, error) {
		c, err := d.acquire(ctx)
		if err != nil {
			return dnswire.Msg{}, err
		}
		return d.roundTrip(ctx, c, &q)
	})
}

// Close closes every connection at once; queries in flight fail with
// ErrClosed. It waits for the DoH's goroutines to end.
func (d *DoH) Close() error {
	conns, ok := d.close()
	if !ok {
		return nil
	}
	d.cancel()
	for _, c := range conns {
		c.shutdown()
	}
	d.wg.Wait()
	return nil
}

// Reverify checks every open connection verified against an older state of
// the DoH's Trust against the Trust as it is now, and retires those that no
// longer pass, as DoT.Reverify does. It returns how many it retired.
func (d *DoH) Reverify() int { return reverify(&d.tlsUpstream, d.activeConns(), d.trust.load()) }
