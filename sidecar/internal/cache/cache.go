// Package cache answers repeated DNS questions from memory, with the
// semantics of CoreDNS's cache plugin, which the cluster's own resolver
// already applies: answers keyed by name (case folded), type, class and the
// DO and CD bits; positive answers kept for their smallest TTL, negative
// ones for the SOA's (RFC 2308), an upstream's SERVFAIL for a few seconds;
// TTLs counted down; hot entries refreshed before they expire (prefetch);
// and, when every upstream fails, expired answers served with EDE 3 (RFC
// 8767, serve-stale).
//
// A Cache sits between the server and the router, and has two faces:
//   - Lookup, which the server's read loops call for every well-formed
//     query before anything else is spent on it: a hit costs a map
//     lookup, a copy of the stored answer shaped for the client
//     (dnswire.Template) and the write, and no goroutine, lock or
//     allocation (lookup.go);
//   - Exchange, an upstream.Upstream for the misses: concurrent misses of
//     one key make one upstream query (flight.go), the answer is kept if
//     it may be (entry.go), and an expired entry stands in when the
//     upstreams fail (stale.go).
//
// Entries live in an otter cache (W-TinyLFU eviction, per-entry expiry),
// bounded by Options.Size (store.go).
package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/router"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/upstream"
)

// Router answers what the cache cannot, and tells the route of a query:
// router.Router.
type Router interface {
	upstream.Upstream
	Route(q *dnswire.Msg) *router.Route
}

// Options configures a Cache. Every field is required unless it says
// otherwise; the defaults are the settings' (package config).
type Options struct {
	// Upstream answers the misses: the router.
	Upstream Router
	// Size bounds the entries kept: an answer counts once per KiB or part
	// of one, so that Size bounds memory too.
	Size int

	// MaxTTL caps how long a positive answer is kept; MaxNegativeTTL
	// caps a negative one (NXDOMAIN, NODATA); MinTTL is the least either
	// is kept (0: as long as the TTLs say, down to not at all).
	MaxTTL, MinTTL, MaxNegativeTTL time.Duration
	// ServfailTTL is how long an upstream's SERVFAIL is kept; 0: never.
	ServfailTTL time.Duration

	// StaleMax is how long after expiry an entry may be served stale; 0
	// turns serve-stale off.
	StaleMax time.Duration
	// StaleClientTimeout is how long a query for an expired entry waits
	// for the upstream before it gets the stale answer (RFC 8767's client
	// response timer); below the server's query timeout.
	StaleClientTimeout time.Duration
	// StaleRecheck is how long after a failed refresh an expired entry is
	// served stale without asking the upstream again (RFC 8767's failure
	// recheck timer); 0 means DefaultStaleRecheck.
	StaleRecheck time.Duration
	// StaleExclude lists zones (presentation form) never served stale.
	StaleExclude []string
	// StaleExcludeCluster also excludes the cluster's names: every route
	// that is router.Route.Cluster (the cluster route) or not Encrypted
	// (plaintext routes), and the private reverse zones. Their answers follow the
	// cluster's state (Pods and Services come and go, addresses are
	// reused): a stale one can be wrong.
	StaleExcludeCluster bool

	// PrefetchHits: an entry asked for at least this often, with no gap
	// of PrefetchWindow between two asks, is refreshed in the background
	// once PrefetchPercent of its lifetime remains (or 1 s, if later); 0
	// turns prefetch off.
	PrefetchHits    int
	PrefetchWindow  time.Duration
	PrefetchPercent int

	// QueryTimeout bounds the upstream queries made in the background
	// (prefetch, the refresh behind a stale answer).
	QueryTimeout time.Duration
	// UDPSize is the payload size advertised in the OPT record of answers
	// from the cache to queries with EDNS.
	UDPSize uint16

	// Logger is never nil.
	Logger *slog.Logger
	// Registerer receives the cache's collectors (metrics.go).
	Registerer prometheus.Registerer
	// Clock tells the time; nil: the system's. Tests move it by hand.
	Clock Clock
}

// DefaultStaleRecheck is RFC 8767 §5's suggested failure recheck timer.
const DefaultStaleRecheck = 30 * time.Second

// staleTTL is the TTL of every record of a stale answer (RFC 8767 §4).
const staleTTL = 30

// Cache is an upstream.Upstream that keeps answers. Create it with New.
type Cache struct {
	opts    Options
	up      Router
	log     *slog.Logger
	m       *metrics
	clock   Clock
	store   *store
	exclude zoneSet // StaleExclude, and the private reverse zones with StaleExcludeCluster

	// base parents the background queries; Close cancels it.
	base   context.Context
	cancel context.CancelFunc

	mu      sync.Mutex // guards flights, closed, and bg.Add
	flights map[string]*flight
	closed  bool
	bg      sync.WaitGroup // background queries
}

var _ upstream.Upstream = (*Cache)(nil)

// New checks opts and registers the metrics. It sends nothing.
func New(opts Options) (*Cache, error) {
	if opts.Upstream == nil || opts.Logger == nil || opts.Registerer == nil {
		return nil, errors.New("cache: Upstream, Logger and Registerer are required")
	}
	if err := opts.check(); err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	if opts.StaleRecheck == 0 {
		opts.StaleRecheck = DefaultStaleRecheck
	}
	c := &Cache{opts: opts, up: opts.Upstream, log: opts.Logger, flights: make(map[string]*flight)}
	c.clock = opts.Clock
	if c.clock == nil {
		c.clock = newSystemClock()
	}
	zones := opts.StaleExclude
	if opts.StaleExcludeCluster {
		zones = append(router.PrivateReverseZones(), zones...)
	}
	var err error
	if c.exclude, err = newZoneSet(zones); err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	if c.m, err = newMetrics(opts.Registerer); err != nil {
		return nil, fmt.Errorf("cache: registering metrics: %w", err)
	}
	if c.store, err = newStore(opts.Size, opts.Clock, c.m, c.log); err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	c.base, c.cancel = context.WithCancel(context.Background())
	return c, nil
}

func (o *Options) check() error {
	switch {
	case o.Size < 1:
		return fmt.Errorf("size %d below 1", o.Size)
	case o.MaxTTL < time.Second || o.MaxNegativeTTL < time.Second:
		return fmt.Errorf("max TTLs %v and %v: want at least 1s", o.MaxTTL, o.MaxNegativeTTL)
	case o.MinTTL < 0 || o.MinTTL > o.MaxTTL || o.MinTTL > o.MaxNegativeTTL:
		return fmt.Errorf("min TTL %v: want 0 up to the max TTLs", o.MinTTL)
	case o.ServfailTTL < 0 || o.StaleMax < 0 || o.StaleRecheck < 0:
		return errors.New("SERVFAIL TTL, stale max and stale recheck must not be negative")
	case o.StaleMax > 0 && o.StaleClientTimeout <= 0:
		return fmt.Errorf("stale client timeout %v: want more than 0", o.StaleClientTimeout)
	case o.PrefetchHits < 0 || o.PrefetchHits > 0 && (o.PrefetchWindow <= 0 || o.PrefetchPercent < 1 || o.PrefetchPercent > 99):
		return fmt.Errorf("prefetch %d hits in %v at %d%%: want hits >= 0, a window > 0 and 1-99%%", o.PrefetchHits, o.PrefetchWindow, o.PrefetchPercent)
	case o.QueryTimeout <= 0:
		return fmt.Errorf("query timeout %v: want more than 0", o.QueryTimeout)
	}
	return nil
}

// Name describes the cache and what it wraps, for logs.
func (c *Cache) Name() string { return "cache(" + c.up.Name() + ")" }

// Close stops the background queries and waits for them, then closes the
// upstream. The entries stay readable; nothing is added any more.
func (c *Cache) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	c.bg.Wait()
	c.store.close()
	return c.up.Close()
}

// goBackground runs fn in a goroutine that Close waits for, unless Close
// has begun.
func (c *Cache) goBackground(fn func(ctx context.Context)) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.bg.Add(1)
	go func() {
		defer c.bg.Done()
		ctx, cancel := context.WithTimeout(c.base, c.opts.QueryTimeout)
		defer cancel()
		fn(ctx)
	}()
	return true
}
