package upstream

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sethvargo/go-retry"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
)

// GroupOptions configures a Group. Every field is required (Policy's zero
// is Sequential): the defaults are the settings' (package config).
type GroupOptions struct {
	// Upstreams in configuration order; at least one.
	Upstreams []Upstream
	// Policy chooses where each query goes first.
	Policy Policy
	// MaxAttempts bounds the attempts one query makes across upstreams,
	// first try included.
	MaxAttempts int
	// BaseDelay is the first backoff between attempts; it doubles at each
	// attempt, with ±50% jitter.
	BaseDelay time.Duration
	// MaxFails consecutive transport failures mark an upstream down.
	MaxFails int
	// ProbeInterval caps the backoff between health probes of a down
	// upstream, so a returning upstream is noticed within about this long.
	ProbeInterval time.Duration
	// ProbeTimeout bounds one health probe.
	ProbeTimeout time.Duration
	// PartialWindow is the window over which an upstream's timeouts are
	// weighed against its answers, by distinct name (partial.go).
	PartialWindow time.Duration
	// Probe is what the health probe of a down upstream asks, unless Probes
	// says otherwise; the zero value asks "NS .", which a recursive
	// resolver with Internet access answers at once. A resolver that
	// answers only its own zones (a cluster's, an internal one) is better
	// probed with a name it has data for.
	Probe Probe
	// Probes, when not nil, has one entry per upstream, in the order of
	// Upstreams: that upstream's probe, or the zero Probe for Probe.
	Probes []Probe
	// Logger is never nil.
	Logger *slog.Logger
	// Metrics is never nil.
	Metrics *Metrics
}

// minJudgedBudget: an attempt that timed out with less time than this to
// begin with says little about the upstream (the query's deadline was all
// but spent, by the client or by earlier attempts), so it is not counted
// against it.
const minJudgedBudget = 50 * time.Millisecond

// Group sends each query to one of several upstreams, retries transport
// failures on the next healthy one, and takes upstreams that keep failing out
// of rotation until a background probe sees them answer again.
//
// What is retried: every failure to get an answer (dial refused, handshake
// or verification failure, reset, timeout) except the query's own deadline
// or cancellation, shutdown, and a query that cannot be sent at all. What is
// final: any DNS answer, SERVFAIL and REFUSED included. One broken zone must
// not look like a broken upstream, nor multiply load by retrying.
type Group struct {
	members []*member
	opts    GroupOptions
	log     *slog.Logger
	rr      atomic.Uint64

	ctx    context.Context // cancelled by Close; probes stop with it
	cancel context.CancelFunc
	mu     sync.Mutex // guards closed and probes.Add against Close
	closed bool
	probes sync.WaitGroup
	// downMu serializes taking upstreams out for partial failure, which
	// must leave one healthy.
	downMu sync.Mutex
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
	err := cmp.Or(
		positive("MaxAttempts", opts.MaxAttempts),
		positive("BaseDelay", opts.BaseDelay),
		positive("MaxFails", opts.MaxFails),
		positive("ProbeInterval", opts.ProbeInterval),
		positive("ProbeTimeout", opts.ProbeTimeout),
		positive("PartialWindow", opts.PartialWindow))
	if err != nil {
		return nil, fmt.Errorf("upstream group: %w", err)
	}
	if opts.Probes != nil && len(opts.Probes) != len(opts.Upstreams) {
		return nil, fmt.Errorf("upstream group: %d probes for %d upstreams", len(opts.Probes), len(opts.Upstreams))
	}
	g := &Group{opts: opts, log: opts.Logger}
	seen := make(map[string]bool)
	for i, u := range opts.Upstreams {
		if seen[u.Name()] {
			// Their series and logs would be indistinguishable.
			return nil, fmt.Errorf("upstream %s listed twice", u.Name())
		}
		seen[u.Name()] = true
		p := opts.Probe
		if opts.Probes != nil && opts.Probes[i] != (Probe{}) {
			p = opts.Probes[i]
		}
		if p == (Probe{}) {
			p = defaultProbe
		}
		if _, err := p.query(); err != nil {
			return nil, fmt.Errorf("upstream %s: health probe %v: %w", u.Name(), p, err)
		}
		g.members = append(g.members, newMember(u, opts.Metrics, p))
	}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	return g, nil
}

// Name is the single upstream's name, or a summary of the group.
func (g *Group) Name() string {
	if len(g.members) == 1 {
		return g.members[0].name
	}
	return fmt.Sprintf("group(%d upstreams, %s)", len(g.members), g.opts.Policy)
}

// Healthy reports whether at least one upstream is up. Readiness uses it
// when READY_REQUIRES_UPSTREAM is set.
func (g *Group) Healthy() bool { return g.healthyCount() > 0 }

// Exchange sends q to the upstream the policy picks and, on a transport
// failure, to the next healthy one after a backoff, bounded by ctx's
// deadline and by MaxAttempts. When every upstream is down it sends q to
// one that has no such query in flight, as a probe (trial); when each has
// one, it fails at once with ErrAllDown.
func (g *Group) Exchange(ctx context.Context, q dnswire.Msg) (dnswire.Msg, error) {
	idx := g.first()
	if idx < 0 {
		return g.trial(ctx, q)
	}
	// The first attempt runs outside the retry machinery so that the common
	// case allocates no backoff.
	resp, err := g.attempt(ctx, q, idx, 1)
	if err == nil || !retryable(ctx, err) || g.opts.MaxAttempts == 1 {
		return resp, err
	}

	lastErr, attempts, prev := err, 1, idx
	var b retry.Backoff = retry.WithMaxRetries(uint64(g.opts.MaxAttempts-1),
		retry.WithJitterPercent(50, retry.NewExponential(g.opts.BaseDelay)))
	if dl, ok := ctx.Deadline(); ok {
		b = untilDeadline(dl, b)
	}
	// DoValue calls its function at once; the first retry must back off
	// like the others, so its wait happens here.
	wait, stop := b.Next()
	if stop {
		return dnswire.Msg{}, err
	}
	if !sleepCtx(ctx, wait) {
		return dnswire.Msg{}, fmt.Errorf("%w (last error: %w)", ctx.Err(), err)
	}
	resp, err = retry.DoValue(ctx, b, func(ctx context.Context) (dnswire.Msg, error) {
		next := g.nextHealthy(prev + 1)
		if next < 0 {
			// Everyone went down under us; the last failure says why.
			return dnswire.Msg{}, fmt.Errorf("%w (last error: %w)", ErrAllDown, lastErr)
		}
		attempts++
		to := g.members[next]
		to.retries.Inc()
		if next != prev {
			g.members[prev].failovers.Inc()
		}
		if g.log.Enabled(ctx, slog.LevelDebug) {
			g.log.Debug("retrying query", "from", g.members[prev].name, "to", to.name, "attempt", attempts, "err", lastErr)
		}
		prev = next
		r, err := g.attempt(ctx, q, next, attempts)
		if err != nil {
			if ctx.Err() == nil {
				// An attempt the deadline cut short says only that time ran
				// out; the one before says what went wrong.
				lastErr = err
			}
			if retryable(ctx, err) {
				return dnswire.Msg{}, retry.RetryableError(err)
			}
		}
		return r, err
	})
	if err != nil && ctx.Err() != nil && !errors.Is(err, lastErr) {
		// The deadline ran out while backing off or during an attempt:
		// report what went wrong, which decides the Extended DNS Error,
		// along with the deadline.
		return dnswire.Msg{}, fmt.Errorf("%w (last error: %w)", err, lastErr)
	}
	return resp, err
}

// trial sends q, while every upstream is down, to the first upstream in
// list order that has no trial query in flight; there is none, it fails at
// once with ErrAllDown. Real queries then act as probes, at most one in
// flight per upstream: a resolver that answers queries but not the health
// probe (a probe name it must recurse for, without Internet access) is back
// with its first answer, and the other queries keep getting their fast
// SERVFAIL rather than a wait for an upstream that is most likely down.
// A trial is one attempt, not retried.
func (g *Group) trial(ctx context.Context, q dnswire.Msg) (dnswire.Msg, error) {
	for i, m := range g.members {
		if !m.trial.CompareAndSwap(false, true) {
			continue
		}
		resp, err := g.attempt(ctx, q, i, g.opts.MaxAttempts)
		m.trial.Store(false)
		if err != nil && !errors.Is(err, ErrBadResponse) {
			return dnswire.Msg{}, fmt.Errorf("%w (a query sent anyway failed: %w)", ErrAllDown, err)
		}
		return resp, err
	}
	return dnswire.Msg{}, ErrAllDown
}

// untilDeadline stops the retries when the next backoff would end past dl:
// failing now beats failing the same way at the deadline.
func untilDeadline(dl time.Time, next retry.Backoff) retry.Backoff {
	return retry.BackoffFunc(func() (time.Duration, bool) {
		d, stop := next.Next()
		if stop || time.Until(dl) <= d {
			return 0, true
		}
		return d, false
	})
}

// sleepCtx waits for d or until ctx is done; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// attempt sends one try to member idx and keeps its health accounting.
func (g *Group) attempt(ctx context.Context, q dnswire.Msg, idx, attempt int) (dnswire.Msg, error) {
	m := g.members[idx]
	actx, budget := ctx, time.Duration(-1)
	if dl, ok := ctx.Deadline(); ok {
		budget = time.Until(dl)
		if attempt < g.opts.MaxAttempts && g.healthyCount() > 1 {
			// With somewhere else to go, one silent upstream may take only
			// half of what is left, so that a retry can still answer before
			// the deadline: a black-holed upstream costs a query at most
			// half its deadline, and never the whole of it.
			budget /= 2
			var cancel context.CancelFunc
			actx, cancel = context.WithTimeout(ctx, budget)
			defer cancel()
		}
	}
	started := time.Now()
	resp, err := m.up.Exchange(actx, q)
	// A timeout with less than minJudgedBudget to begin with says nothing.
	judged := budget < 0 || budget >= minJudgedBudget
	switch {
	case err == nil, errors.Is(err, ErrBadResponse):
		// An answer, even one that does not parse, shows the upstream up.
		g.succeeded(m)
		g.weigh(m, &q, false)
	case errors.Is(err, ErrConnClosed), errors.Is(err, ErrClosed), errors.Is(err, ErrBadQuery):
		// Connections the upstream closed under the query (normal, RFC 7858
		// §3.4; the DoT has resent on fresh ones already), shutdown, or a
		// query nothing could be sent for: nothing to hold against it.
	case errors.Is(err, ErrBusy):
		// The deadline came while the query waited for room on connections
		// full of other queries: the sidecar's own limit. Counting it would
		// let a flood of slow names, which fills the connections, take a
		// healthy upstream out for everyone.
	case errors.Is(err, ErrSlowAnswer):
		// Timed out while the upstream answered other queries on the same
		// connection: a slow name, not a sick upstream. Counting these would
		// let a client asking a few slow names (A and AAAA, search-list
		// expansions, its own retries: all time out together) take a
		// healthy upstream out, for everyone. Over many names, though, it
		// is an upstream dropping queries (partial.go).
		if judged && !errors.Is(ctx.Err(), context.Canceled) {
			g.weigh(m, &q, true)
		}
	case errors.Is(ctx.Err(), context.Canceled):
		// The client went away, or we are shutting down.
	case errors.Is(err, context.DeadlineExceeded) && !judged:
		// No fair chance to answer.
	default:
		g.failed(m, err, started)
		if errors.Is(err, context.DeadlineExceeded) {
			g.weigh(m, &q, true)
		}
	}
	return resp, err
}

// retryable tells transport failures, worth another upstream, from
// outcomes that another attempt cannot change. A malformed answer is final
// like any answer: the upstream did answer.
func retryable(ctx context.Context, err error) bool {
	return ctx.Err() == nil && !errors.Is(err, ErrClosed) && !errors.Is(err, ErrBadQuery) &&
		!errors.Is(err, ErrBadResponse)
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

// first returns the member a new query goes to, or -1 when all are down.
func (g *Group) first() int {
	healthy := g.healthyCount()
	if healthy == 0 {
		return -1
	}
	r := g.opts.Policy.rank(healthy, &g.rr)
	for i, m := range g.members {
		if m.down.Load() {
			continue
		}
		if r == 0 {
			return i
		}
		r--
	}
	// Members went down since they were counted: take any that is up.
	return g.nextHealthy(0)
}

// nextHealthy returns the first member at or after from (wrapping) that is
// up, or -1.
func (g *Group) nextHealthy(from int) int {
	n := len(g.members)
	for i := range n {
		j := (from + i) % n
		if !g.members[j].down.Load() {
			return j
		}
	}
	return -1
}

// Reverify has every member that keeps verified connections (a DoT) check
// them against the Trust as it is now, retiring those that no longer pass.
// It returns how many were retired. The trust reloader calls it after each
// change it applies.
func (g *Group) Reverify() int {
	n := 0
	for _, m := range g.members {
		if r, ok := m.up.(interface{ Reverify() int }); ok {
			n += r.Reverify()
		}
	}
	return n
}

// Close stops the probes and closes every member.
func (g *Group) Close() error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil
	}
	g.closed = true
	g.mu.Unlock()
	g.cancel()
	g.probes.Wait()
	var errs []error
	for _, m := range g.members {
		if err := m.up.Close(); err != nil {
			errs = append(errs, fmt.Errorf("closing %s: %w", m.name, err))
		}
	}
	return errors.Join(errs...)
}
