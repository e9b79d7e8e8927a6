package upstream

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
)

// PlainOptions configures a plaintext DNS upstream: dns:// (UDP, then TCP
// when the answer is truncated) or tcp:// (TCP only). Plaintext is for
// resolvers inside the cluster or the host's network only; package config
// decides which addresses may be one. Every field is required but TCPOnly.
type PlainOptions struct {
	// Addr is the resolver's IP address and port (53). An IP literal, never
	// a name.
	Addr netip.AddrPort
	// TCPOnly makes every query go over TCP (tcp://); otherwise queries go
	// over UDP and only truncated answers are asked again over TCP
	// (RFC 7766 §5).
	TCPOnly bool
	// DialTimeout bounds a TCP connect.
	DialTimeout time.Duration
	// QueryTimeout bounds an Exchange whose context has no deadline of its
	// own.
	QueryTimeout time.Duration
	// ForwardClientSubnet passes a client's EDNS Client Subnet option on,
	// as DoTOptions' does.
	ForwardClientSubnet bool
	// Logger is never nil; per-query events only at Debug.
	Logger *slog.Logger
	// Metrics receives this upstream's series, labelled with Name(). Never
	// nil.
	Metrics *Metrics
}

// Plain is one plaintext DNS upstream.
//
// Over UDP each query gets a socket of its own, connected to the resolver:
// the kernel then picks a new random source port for it (so that kube-proxy
// spreads queries over the resolver's pods, and a spoofer must guess the
// port as well as the ID) and drops datagrams from any other address. The
// ID is drawn at random for each query and the client's restored on the
// answer; a datagram with another ID or question is dropped and the wait
// goes on until the deadline.
//
// Over TCP, queries go one at a time on a few reused connections
// (plain_tcp.go): the resolvers this speaks to in a cluster answer the
// queries of one connection one after the other (CoreDNS does), so a slow
// name would hold up every query pipelined behind it.
type Plain struct {
	opts PlainOptions
	name string
	// rewrite drops the client's hop options and pads nothing: padding
	// hides sizes from whoever reads an encrypted hop, and this one is read
	// as it is (dnswire.QueryRewrite).
	rewrite dnswire.QueryRewrite
	log     *slog.Logger
	m       *upstreamMetrics
	tcp     tcpPool

	// answered counts answers received over either transport: a query that
	// times out while it grew was slow, not lost to a dead resolver.
	answered atomic.Uint64

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
}

var _ Upstream = (*Plain)(nil)

// NewPlain validates opts and returns an upstream that opens nothing until
// the first query.
func NewPlain(opts PlainOptions) (*Plain, error) {
	if !opts.Addr.IsValid() || opts.Addr.Port() == 0 {
		return nil, fmt.Errorf("upstream address %q: want an IP address and port", opts.Addr)
	}
	if opts.Logger == nil || opts.Metrics == nil {
		return nil, fmt.Errorf("upstream %s: Logger and Metrics are required", opts.Addr)
	}
	if err := cmp.Or(positive("DialTimeout", opts.DialTimeout), positive("QueryTimeout", opts.QueryTimeout)); err != nil {
		return nil, fmt.Errorf("upstream %s: %w", opts.Addr, err)
	}
	scheme := "dns://"
	if opts.TCPOnly {
		scheme = "tcp://"
	}
	p := &Plain{opts: opts, name: scheme + opts.Addr.String(), log: opts.Logger,
		rewrite: dnswire.QueryRewrite{KeepClientSubnet: opts.ForwardClientSubnet}}
	p.m = newUpstreamMetrics(opts.Metrics, p.name)
	p.tcp.p = p
	p.ctx, p.cancel = context.WithCancel(context.Background())
	return p, nil
}

// Name is "dns://ADDR:PORT" or "tcp://ADDR:PORT": plaintext shows in every
// log line and metric series.
func (p *Plain) Name() string { return p.name }

// Exchange sends q and waits for its answer, within ctx's deadline
// (QueryTimeout when it has none). Over UDP, a truncated answer is asked
// again over TCP.
func (p *Plain) Exchange(ctx context.Context, q dnswire.Msg) (dnswire.Msg, error) {
	if err := checkQuery(&q); err != nil {
		return dnswire.Msg{}, err
	}
	if p.ctx.Err() != nil {
		return dnswire.Msg{}, ErrClosed
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.opts.QueryTimeout)
		defer cancel()
	}
	// Close ends the query at once, like the client going away.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(p.ctx, func() { cancel(ErrClosed) })
	defer stop()

	start, seen := time.Now(), p.answered.Load()
	var ans dnswire.Msg
	var err error
	if p.opts.TCPOnly {
		ans, err = p.tcp.exchange(ctx, q)
	} else {
		ans, err = p.exchangeUDP(ctx, q)
		if err == nil && ans.Truncated() {
			if p.log.Enabled(ctx, slog.LevelDebug) {
				p.log.Debug("answer truncated, asking again over TCP", "upstream", p.name, "name", q.QNameText())
			}
			ans, err = p.tcp.exchange(ctx, q)
		}
	}
	switch {
	case err == nil, errors.Is(err, ErrBadResponse):
		p.answered.Add(1)
		p.m.observe(ans.Header.Rcode(), time.Since(start).Seconds())
		return ans, err
	case context.Cause(ctx) == ErrClosed:
		return dnswire.Msg{}, fmt.Errorf("query for %s: %w", p.name, ErrClosed)
	case ctx.Err() != nil && p.answered.Load() != seen:
		// Other queries got answers meanwhile: the resolver is up and this
		// name is slow (kube-dns forwarding a node's domain, say).
		return dnswire.Msg{}, fmt.Errorf("no answer from %s: %w: %w", p.name, ErrSlowAnswer, ctx.Err())
	case ctx.Err() != nil && !errors.Is(err, ctx.Err()):
		return dnswire.Msg{}, fmt.Errorf("no answer from %s: %w (%w)", p.name, ctx.Err(), err)
	}
	return dnswire.Msg{}, err
}

// Close fails the queries in flight with ErrClosed and closes the pooled
// connections. A query's own socket or connection is closed by the query
// as it returns.
func (p *Plain) Close() error {
	p.cancel()
	p.tcp.close()
	return nil
}

// readBufPool holds buffers as large as any DNS message, for reading
// answers whose size is not known in advance; an answer is copied out of
// one into a buffer of its own size, which the caller owns.
var readBufPool = sync.Pool{New: func() any { return new([dnswire.MaxMsgSize]byte) }}

// accept checks that b, read from the resolver, answers q sent with ID id,
// and returns it parsed, in a buffer of its own, with q's ID. ok is false
// for a message to drop (another ID or question, or shorter than a
// header); the caller waits on. A message that answers q but does not parse
// whole is returned with ErrBadResponse.
func (p *Plain) accept(q *dnswire.Msg, id uint16, b []byte) (ans dnswire.Msg, ok bool, err error) {
	m, perr := dnswire.Parse(b)
	if errors.Is(perr, dnswire.ErrShort) || m.ID != id || !m.Answers(q) {
		p.mismatch(&m, b)
		return dnswire.Msg{}, false, nil
	}
	ans, perr = dnswire.Parse(append([]byte(nil), b...))
	ans.SetID(q.ID)
	if perr != nil {
		return ans, true, fmt.Errorf("%w from %s: %w", ErrBadResponse, p.name, perr)
	}
	return ans, true, stripHop(&ans, p.name)
}

func (p *Plain) mismatch(m *dnswire.Msg, b []byte) {
	p.m.mismatched.Inc()
	if p.log.Enabled(context.Background(), slog.LevelDebug) {
		id := -1
		if len(b) >= dnswire.HeaderLen {
			id = int(m.ID)
		}
		p.log.Debug("dropping upstream response that does not answer the query", "upstream", p.name, "id", id, "len", len(b))
	}
}
