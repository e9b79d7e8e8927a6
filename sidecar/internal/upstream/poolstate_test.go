package upstream

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// stubConn is a poolConn that died of cause, or lives if cause is nil.
type stubConn struct{ cause error }

func (c *stubConn) isDead() bool            { return c.cause != nil }
func (c *stubConn) deathCause() error       { return c.cause }
func (c *stubConn) retiredSince() time.Time { return time.Time{} }
func (c *stubConn) evict(string)            {}

// A query that waited for a dial whose connection died before it got on it
// was caught on that connection as surely as one sent on it: when the
// connection was new and answered nothing, the query gets its loss (one of
// the run, or the run's end) and does not dial again, whether the death came
// before the dial finished or after the connection was published. Only a
// connection that served and then closed lets its waiters dial again.
func TestDialFailureOfConnectionLostNew(t *testing.T) {
	var u tlsUpstream
	dialErr := fmt.Errorf("dialing: %w", ErrUnreachable)
	lostOne := u.lostNew(fmt.Errorf("reading: EOF"))
	served := fmt.Errorf("%w: reading: EOF", ErrConnClosed)
	tests := []struct {
		name string
		dl   dialState[*stubConn]
		want error // nil: the waiter may dial again
	}{
		{"dial failed", dialState[*stubConn]{finished: true, err: dialErr}, dialErr},
		{"first new connection lost", dialState[*stubConn]{finished: true, conn: &stubConn{lostOne}, hasConn: true}, lostOne},
		{"run of new connections lost", dialState[*stubConn]{finished: true, conn: &stubConn{dialErr}, hasConn: true}, dialErr},
		{"served, then closed", dialState[*stubConn]{finished: true, conn: &stubConn{served}, hasConn: true}, nil},
		{"closed by this side", dialState[*stubConn]{finished: true, conn: &stubConn{ErrClosed}, hasConn: true}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.dl.failure(); got != tt.want {
				t.Errorf("failure() = %v, want %v", got, tt.want)
			}
		})
	}
}

// A query whose deadline came while it waited for a dial timed out on the
// upstream's handshake, even when the dial finished just then and left a
// connection open that the query never got to use: a failure like any
// timeout, never ErrBusy, which is for waiting on full connections with no
// dial going on, and which neither health nor the partial-failure window
// counts.
func TestWaitErrorOfDialFinishingAtTheDeadline(t *testing.T) {
	var p pool[*stubConn]
	p.publishLocked([]*stubConn{{}})
	dctx, cancel := context.WithDeadline(context.Background(), time.Now())
	defer cancel()
	<-dctx.Done()

	finished := &dialState[*stubConn]{finished: true, conn: &stubConn{}, hasConn: true}
	if err := p.waitError(dctx, "up", finished); errors.Is(err, ErrBusy) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("deadline while waiting for a dial that just finished: %v, want a deadline, not ErrBusy", err)
	}
	if err := p.waitError(dctx, "up", &dialState[*stubConn]{}); errors.Is(err, ErrBusy) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("deadline while waiting for a dial: %v, want a deadline, not ErrBusy", err)
	}
	if err := p.waitError(dctx, "up", nil); !errors.Is(err, ErrBusy) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("deadline while waiting for room on an open connection: %v, want ErrBusy", err)
	}
}
