package upstream

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
)

// DoTOptions configures a DNS-over-TLS upstream (RFC 7858). Every field but
// Pins is required: the defaults are the settings' (package config), and
// NewDoT refuses a zero it cannot use.
type DoTOptions struct {
	// Addr is the upstream's IP address and port (853 for DoT). Required. An
	// IP literal, never a name: resolving one would need a plaintext lookup.
	Addr netip.AddrPort
	// ServerName is the name the upstream's certificate must carry. Required.
	ServerName string
	// Pins are this upstream's own SPKI SHA-256 pins. When empty, the Trust's
	// default pins apply; when both are empty, chain and name verification
	// alone decide.
	Pins [][32]byte
	// Trust holds the roots and default pins, shared by upstreams and swapped
	// at run time.
	Trust *Trust
	// PoolSize caps the TLS connections open or being dialed.
	PoolSize int
	// DialTimeout bounds the TCP connect plus the TLS handshake. A query
	// never waits for a dial past its own deadline.
	DialTimeout time.Duration
	// IdleTimeout closes a connection with nothing in flight for this long.
	IdleTimeout time.Duration
	// MaxAge retires a connection this old (no new queries; it closes once
	// its in-flight queries are done), so certificates are verified again.
	MaxAge time.Duration
	// MaxInFlightPerConn caps the queries pipelined on one connection: at
	// most 16384 (IDs are 16-bit and must stay cheap to draw unused).
	MaxInFlightPerConn int
	// QueryTimeout bounds an Exchange whose context has no deadline of its
	// own.
	QueryTimeout time.Duration
	// ForwardClientSubnet passes a client's EDNS Client Subnet option on to
	// the upstream; otherwise it is removed, as the client's other hop
	// options always are (dnswire.QueryRewrite).
	ForwardClientSubnet bool
	// Logger receives connection events; per-query events only at Debug.
	// Never nil.
	Logger *slog.Logger
	// Metrics receives this upstream's series, labelled with Name(). Never nil.
	Metrics *Metrics
}

// maxMaxInFlight caps MaxInFlightPerConn: IDs are 16-bit and must stay cheap
// to draw unused.
const maxMaxInFlight = 16384

// DoT is one DNS-over-TLS upstream: a small pool of verified TLS connections,
// each carrying many queries at once.
type DoT struct {
	tlsUpstream // name, addr, log, m: the upstream's, for all of the DoT
	pool[*conn] // the connections (poolstate.go; how a DoT uses them: pool.go)
	opts        DoTOptions
	tick        time.Duration
	budget      connBudget // the upstream's per-connection query limit, once learned

	ctx    context.Context // cancelled by Close: stops dials and housekeeping
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine this DoT started
}

var _ Upstream = (*DoT)(nil)

// NewDoT validates opts and returns an upstream that dials lazily, on the
// first query.
func NewDoT(opts DoTOptions) (*DoT, error) {
	if err := opts.check(); err != nil {
		return nil, err
	}

	d := &DoT{
		tlsUpstream: newTLSUpstream(opts, opts.Addr.String()+"#"+opts.ServerName, dotRewrite(opts)),
		opts:        opts,
		tick:        housekeepingTick(opts),
	}
	d.pool.init(opts.PoolSize, d.m.open, d.launchDial)
	d.m.initKeepalive()
	d.ctx, d.cancel = context.WithCancel(context.Background())
	d.wg.Add(1)
	go everyTick(d.ctx, &d.wg, d.tick, d.housekeep)
	return d, nil
}

// dotRewrite is how a DoT upstream writes queries: padded (RFC 8467), and
// offering edns-tcp-keepalive so that the upstream says how long it keeps an
// idle connection (keepalive.go).
func dotRewrite(opts DoTOptions) dnswire.QueryRewrite {
	return dnswire.QueryRewrite{PadBlock: dnswire.PadBlock, Keepalive: true, KeepClientSubnet: opts.ForwardClientSubnet}
}

// housekeepingTick runs housekeeping often enough to honour the shortest
// limit within a quarter of it, and at least once a second.
func housekeepingTick(opts DoTOptions) time.Duration {
	return max(min(opts.IdleTimeout, opts.MaxAge, time.Second*4)/4, 5*time.Millisecond)
}

// check refuses options a DoT or DoH upstream cannot work with.
func (opts *DoTOptions) check() error {
	if !opts.Addr.IsValid() || opts.Addr.Port() == 0 {
		return fmt.Errorf("upstream address %q: want an IP address and port", opts.Addr)
	}
	if opts.ServerName == "" {
		return fmt.Errorf("upstream %s: %w", opts.Addr, errNoServerName)
	}
	if opts.Trust == nil || opts.Logger == nil || opts.Metrics == nil {
		return fmt.Errorf("upstream %s: Trust, Logger and Metrics are required", opts.Addr)
	}
	err := cmp.Or(
		positive("PoolSize", opts.PoolSize),
		positive("DialTimeout", opts.DialTimeout),
		positive("IdleTimeout", opts.IdleTimeout),
		positive("MaxAge", opts.MaxAge),
		positive("MaxInFlightPerConn", opts.MaxInFlightPerConn),
		positive("QueryTimeout", opts.QueryTimeout))
	if err != nil {
		return fmt.Errorf("upstream %s: %w", opts.Addr, err)
	}
	if opts.MaxInFlightPerConn > maxMaxInFlight {
		return fmt.Errorf("upstream %s: MaxInFlightPerConn %d above %d", opts.Addr, opts.MaxInFlightPerConn, maxMaxInFlight)
	}
	return nil
}

// positive refuses a size or duration that is not above zero. This
// package's options have no defaults of their own: a zero would mean the
// caller forgot to pass the setting.
func positive[T int | time.Duration](name string, v T) error {
	if v <= 0 {
		return fmt.Errorf("%s is %v, want more than 0", name, v)
	}
	return nil
}

// Name is "ADDR:PORT#SERVERNAME", e.g. "1.1.1.1:853#cloudflare-dns.com".
func (d *DoT) Name() string { return d.name }

// Exchange sends q on a pooled connection and waits for its answer. A
// pooled connection that had served and dies under the query (the upstream
// closed or reset it) is not the caller's problem: the query is sent again
// on another, up to maxAttempts sends within ctx; only then does Exchange
// fail, with an error wrapping ErrConnClosed. A new connection that dies
// before answering anything fails the query at once with ErrUnreachable:
// the upstream is not serving. A ctx without deadline gets QueryTimeout.
func (d *DoT) Exchange(ctx context.Context, q dnswire.Msg) (dnswire.Msg, error) {
	ctx, cancel, err := d.queryContext(ctx, &q, d.opts.QueryTimeout)
	defer cancel()
	if err != nil {
		return dnswire.Msg{}, err
	}
	req := reqPool.Get().(*request)
	req.query = q
	ans, err := d.resending(ctx, func() (dnswire.Msg, error) {
		c, err := d.acquire(ctx, req)
		if err != nil {
			return dnswire.Msg{}, err
		}
		return d.await(ctx, c, req, time.Now())
	})
	// Every path out of a send has taken req's result or withdrawn req, so
	// its channel is empty and no connection refers to it.
	req.query = dnswire.Msg{}
	if len(req.done) == 0 { // always, by the protocol above; a stale answer must never reach another query
		reqPool.Put(req)
	}
	return ans, err
}

func (d *DoT) await(ctx context.Context, c *conn, req *request, sent time.Time) (dnswire.Msg, error) {
	select {
	case r := <-req.done:
		return r.ans, r.err
	case <-ctx.Done():
	}
	if c.cancel(req) {
		silent := c.silentSince(req)
		if silent && time.Since(sent) >= silentAfter {
			c.retire("no response within " + time.Since(sent).Round(time.Millisecond).String())
		}
		if !silent || d.answered.Load() != req.upAnswers {
			// The upstream answered other queries meanwhile, on this
			// connection or another: it is up and this name is slow. Said
			// so, so that slow names cannot get a healthy upstream marked
			// down.
			return dnswire.Msg{}, fmt.Errorf("no answer from %s: %w: %w", d.name, ErrSlowAnswer, ctx.Err())
		}
		return dnswire.Msg{}, fmt.Errorf("no answer from %s: %w", d.name, ctx.Err())
	}
	// The answer (or the connection's death) raced the deadline and is being
	// handed over right now; an answer that made it is worth returning. A
	// death is reported along with the deadline: whether the connection was
	// a pooled one closing (ErrConnClosed) decides whether a Group counts
	// the failure against the upstream.
	r := <-req.done
	if r.err != nil && !errors.Is(r.err, ErrBadResponse) {
		return dnswire.Msg{}, fmt.Errorf("no answer from %s: %w (%w)", d.name, ctx.Err(), r.err)
	}
	return r.ans, r.err
}

// Close closes every connection at once; queries in flight fail with
// ErrClosed. It waits for the DoT's goroutines to end.
func (d *DoT) Close() error {
	conns, ok := d.close()
	if !ok {
		return nil
	}
	d.cancel()
	for _, c := range conns {
		c.shutdown(ErrClosed, true)
	}
	d.wg.Wait()
	return nil
}

// Reverify checks every open connection verified against an older state of
// the DoT's Trust (before a Trust.Update) against the Trust as it is now,
// and retires those whose chain, name or pins no longer pass: they take no
// new queries and close once their in-flight queries are done. It returns
// how many it retired. Housekeeping does the same on its own within a tick
// of an Update; calling Reverify makes it immediate. A DoT whose Trust did
// not change has nothing to do.
func (d *DoT) Reverify() int { return reverify(&d.tlsUpstream, d.activeConns(), d.opts.Trust.load()) }
