package upstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sethvargo/go-retry"
)

// GroupOptions configures a Group. Zero values take the documented defaults.
type GroupOptions struct {
	// Upstreams in configuration order; at least one.
	Upstreams []Upstream
	// Policy chooses where each query starts. Default Sequential.
	Policy Policy
	// MaxAttempts bounds the attempts one query makes across upstreams,
	// first try included. Default 3.
	MaxAttempts int
	// BaseDelay is the first backoff between attempts; it grows
	// exponentially with jitter. Default 10ms.
	BaseDelay time.Duration
	// MaxFails consecutive transport failures mark an upstream down.
	// Default 3.
	MaxFails int
	// ProbeInterval caps the backoff between health probes of a down
	// upstream, so a returning upstream is noticed within about this long.
	// Default 1s.
	ProbeInterval time.Duration
	// ProbeTimeout bounds one health probe. Default 1s.
	ProbeTimeout time.Duration
	// Logger is never nil.
	Logger *slog.Logger
	// Metrics is never nil.
	Metrics *Metrics
}

// Group sends each query to one of several upstreams, retries transport
// failures on the next healthy one, and takes upstreams that keep failing out
// of rotation until a background probe sees them answer again.
type Group struct {
	members []*member
	opts    GroupOptions
	rr      atomic.Uint64

	ctx    context.Context // cancelled by Close; probes stop with it
	cancel context.CancelFunc
	probes sync.WaitGroup
}

var _ Upstream = (*Group)(nil)

// NewGroup builds a Group over upstreams that the caller created; Close
// closes them.
func NewGroup(opts GroupOptions) (*Group, error) {
	if len(opts.Upstreams) == 0 {
		return nil, errors.New("upstream group needs at least one upstream")
	}
	if opts.Logger == nil || opts.Metrics == nil {
		return nil, errors.New("upstream group needs a logger and metrics")
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = 3
	}
	if opts.BaseDelay <= 0 {
		opts.BaseDelay = 10 * time.Millisecond
	}
	if opts.MaxFails <= 0 {
		opts.MaxFails = 3
	}
	if opts.ProbeInterval <= 0 {
		opts.ProbeInterval = time.Second
	}
	if opts.ProbeTimeout <= 0 {
		opts.ProbeTimeout = time.Second
	}
	g := &Group{opts: opts}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	for _, u := range opts.Upstreams {
		g.members = append(g.members, &member{up: u})
	}
	return g, nil
}

// Name lists the members.
func (g *Group) Name() string {
	if len(g.members) == 1 {
		return g.members[0].up.Name()
	}
	return fmt.Sprintf("group(%d upstreams, %s)", len(g.members), g.opts.Policy)
}

// Healthy reports whether at least one upstream is up. Readiness uses it
// when READY_REQUIRES_UPSTREAM is set.
func (g *Group) Healthy() bool {
	for _, m := range g.members {
		if !m.down.Load() {
			return true
		}
	}
	return false
}

// Exchange sends query to the upstream the policy picks and, on a transport
// failure, to the next healthy one, with exponential backoff and jitter,
// bounded by ctx's deadline and by MaxAttempts. Any DNS answer, SERVFAIL
// included, is final: one broken zone must not look like a broken upstream.
func (g *Group) Exchange(ctx context.Context, query []byte) ([]byte, error) {
	n := len(g.members)
	first := g.opts.Policy.start(n, &g.rr)
	idx := g.nextHealthy(first, n)
	if idx < 0 {
		return nil, ErrAllDown
	}
	// The first attempt runs outside the retry machinery so that the common
	// case allocates no backoff.
	resp, err := g.attempt(ctx, query, idx, 1)
	if err == nil || !retryable(ctx, err) || g.opts.MaxAttempts == 1 {
		return resp, err
	}

	lastErr, attempts, prev := err, 1, idx
	b := retry.WithMaxRetries(uint64(g.opts.MaxAttempts-1),
		retry.WithJitterPercent(50, retry.NewExponential(g.opts.BaseDelay)))
	resp, err = retry.DoValue(ctx, b, func(ctx context.Context) ([]byte, error) {
		attempts++
		next := g.nextHealthy((prev+1)%n, n)
		if next < 0 {
			// Everyone went down under us; the last transport error says why.
			return nil, lastErr
		}
		g.opts.Metrics.Retries.WithLabelValues(g.members[next].up.Name()).Inc()
		if next != prev {
			g.opts.Metrics.Failovers.WithLabelValues(g.members[prev].up.Name()).Inc()
		}
		prev = next
		r, err := g.attempt(ctx, query, next, attempts)
		if err != nil {
			lastErr = err
			if retryable(ctx, err) {
				return nil, retry.RetryableError(err)
			}
		}
		return r, err
	})
	if err != nil && ctx.Err() != nil && !errors.Is(lastErr, ctx.Err()) {
		// The deadline ran out while backing off: report what went wrong,
		// which decides the Extended DNS Error, not the bare deadline.
		return nil, fmt.Errorf("%w (last attempt: %w)", ctx.Err(), lastErr)
	}
	return resp, err
}

// attempt sends one try to member idx and keeps its health accounting.
func (g *Group) attempt(ctx context.Context, query []byte, idx, attempt int) ([]byte, error) {
	m := g.members[idx]
	actx := ctx
	if attempt < g.opts.MaxAttempts && g.healthyCount() > 1 {
		// With somewhere else to go, one silent upstream may take only half
		// of what is left, so a retry can still answer before the deadline.
		if dl, ok := ctx.Deadline(); ok {
			var cancel context.CancelFunc
			actx, cancel = context.WithDeadline(ctx, time.Now().Add(time.Until(dl)/2))
			defer cancel()
		}
	}
	resp, err := m.up.Exchange(actx, query)
	switch {
	case err == nil:
		m.fails.Store(0)
	case errors.Is(err, ErrConnClosed), errors.Is(err, ErrClosed):
		// The upstream closed a pooled connection (normal, RFC 7858 §3.4) or
		// we are shutting down: nothing to hold against it.
	case ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded):
		// The client went away; the upstream did nothing wrong.
	default:
		g.failed(m, err)
	}
	return resp, err
}

// retryable tells transport failures, worth another upstream, from
// outcomes that another attempt cannot change.
func retryable(ctx context.Context, err error) bool {
	if ctx.Err() != nil || errors.Is(err, ErrClosed) {
		return false
	}
	return true
}

func (g *Group) healthyCount() int {
	n := 0
	for _, m := range g.members {
		if !m.down.Load() {
			n++
		}
	}
	return n
}

// nextHealthy returns the first member at or after from (wrapping) that is
// up, or -1.
func (g *Group) nextHealthy(from, n int) int {
	for i := 0; i < n; i++ {
		j := (from + i) % n
		if !g.members[j].down.Load() {
			return j
		}
	}
	return -1
}

// Close stops the probes and closes every member.
func (g *Group) Close() error {
	g.cancel()
	g.probes.Wait()
	var errs []error
	for _, m := range g.members {
		if err := m.up.Close(); err != nil {
			errs = append(errs, fmt.Errorf("closing %s: %w", m.up.Name(), err))
		}
	}
	return errors.Join(errs...)
}
