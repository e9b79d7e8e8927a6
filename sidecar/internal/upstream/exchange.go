package upstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
)

// maxAttempts bounds the sends of one query when its connections keep
// dying under it.
const maxAttempts = 3

// silentAfter: a query that waited this long on a connection that delivered
// no response at all meanwhile suggests the connection is dead without
// knowing it (a NAT or conntrack entry that expired, a half-open socket).
const silentAfter = time.Second

// queryContext refuses what Exchange cannot send and gives ctx a deadline
// of timeout when it has none. The caller calls cancel.
func (t *tlsUpstream) queryContext(ctx context.Context, q *dnswire.Msg, timeout time.Duration) (context.Context, context.CancelFunc, error) {
	if err := checkQuery(q); err != nil {
		return ctx, func() {}, err
	}
	if err := ctx.Err(); err != nil {
		return ctx, func() {}, fmt.Errorf("query for %s: %w", t.name, err)
	}
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	return ctx, cancel, nil
}

// checkQuery refuses what Exchange cannot send and match an answer to: a
// message Parse did not accept, or one without exactly one question (the
// only kind a QUERY carries in practice, RFC 9619), and one whose EDNS
// options cannot be rewritten for the upstream (a compression pointer into
// or past its OPT record), which would otherwise go out with its client's
// hop options, Client Subnet included.
func checkQuery(q *dnswire.Msg) error {
	switch {
	case !q.Valid():
		return fmt.Errorf("%w: not a parsed DNS message", ErrBadQuery)
	case q.QDCount != 1:
		return fmt.Errorf("%w: %d questions", ErrBadQuery, q.QDCount)
	case !q.RewritableEDNS():
		return fmt.Errorf("%w: a compression pointer into or past the OPT record", ErrBadQuery)
	}
	return nil
}

// hopOptions are the EDNS options of an answer that belong to the hop from
// the upstream, removed before anyone else sees the answer (a cache
// included): its padding (RFC 7830), its idle timeout for our connection
// (RFC 7828), and a COOKIE, which can only be the upstream's own for a
// client cookie we never sent (client cookies are not forwarded), and which
// the relay's client would take for a forged one (RFC 7873 §5.3).
var hopOptions = [...]uint16{dnswire.OptionPadding, dnswire.OptionKeepalive, dnswire.OptionCookie}

// stripHop removes hopOptions from ans, a Valid answer; an answer it cannot
// re-encode is ErrBadResponse from upstream name.
func stripHop(ans *dnswire.Msg, name string) error {
	if err := ans.StripOptions(hopOptions[:]...); err != nil {
		return fmt.Errorf("%w from %s: %w", ErrBadResponse, name, err)
	}
	return nil
}

// resending calls send, one send of the query on a pooled connection, until
// it has an answer. A send that fails with ErrConnClosed (a connection that
// had served died under the query, the upstream declined to process it
// there, or a new connection died before answering anything) is not the
// caller's problem: the query goes out again, up to maxAttempts sends within
// ctx, and after a new connection's loss once only (newconn.go); only then
// does it fail, with an error wrapping ErrConnClosed. Any other failure is
// returned at once. Answers,
// malformed ones included, are timed into the duration histogram.
func (t *tlsUpstream) resending(ctx context.Context, send func() (dnswire.Msg, error)) (dnswire.Msg, error) {
	start := time.Now()
	lostNew := false // the query was caught on a new connection lost (newconn.go)
	for attempt := 1; ; attempt++ {
		ans, err := send()
		if err == nil || errors.Is(err, ErrBadResponse) {
			// A malformed answer is an answer all the same: timed, and
			// final (another send would get the same).
			t.m.observe(ans.Header.Rcode(), time.Since(start).Seconds())
			return ans, err
		}
		if !errors.Is(err, ErrConnClosed) {
			return dnswire.Msg{}, err
		}
		if ctx.Err() != nil {
			if errors.Is(err, ctx.Err()) {
				return dnswire.Msg{}, err // the send said both already
			}
			return dnswire.Msg{}, fmt.Errorf("no answer from %s: %w (%w)", t.name, ctx.Err(), err)
		}
		if attempt >= maxAttempts || secondNewLoss(err, &lostNew) {
			return dnswire.Msg{}, fmt.Errorf("giving up on %s after %d sends: %w", t.name, attempt, err)
		}
		t.m.resent.Inc()
		if t.log.Enabled(ctx, slog.LevelDebug) {
			t.log.Debug("resending query after its connection died", "upstream", t.name, "attempt", attempt+1, "error", err)
		}
	}
}
