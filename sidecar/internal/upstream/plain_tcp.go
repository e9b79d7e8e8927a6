package upstream

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
)

// How plaintext TCP connections are reused. Measured against CoreDNS
// 1.14.7 (the usual cluster resolver) on loopback: it answers the queries of
// one TCP connection one at a time, in order, so a query pipelined behind a
// name that takes a second waited that second too, while through this pool
// it was answered in 2 ms; it closes a connection idle for 10 s. One
// connection used one query at a time carried about 8,000 queries/s, four
// about 13,000, sixteen about 15,000 (CoreDNS's limit on that machine).
// Hence one query at a time per connection, as many connections as queries
// in flight, and a few kept for reuse, each closed before the resolver
// would close it.
const (
	// tcpMaxIdle connections wait for the next query; more are closed once
	// their query is answered. Enough for the cluster lookups a pod makes
	// at once (A and AAAA of a few names): a burst beyond it costs new
	// connections, a TCP handshake each. Taken oldest first, so that reuse
	// spreads over them, and over the resolver pods kube-proxy chose for
	// each.
	tcpMaxIdle = 8
	// tcpIdleTimeout closes a connection unused this long: before CoreDNS
	// (10 s) closes its side, which would cost a resend.
	tcpIdleTimeout = 5 * time.Second
	// tcpMaxSends bounds the sends of one query when the pooled connections
	// it is given turn out to be closed by the resolver.
	tcpMaxSends = 3
)

// tcpPool is the Plain upstream's TCP connections not in use.
type tcpPool struct {
	p *Plain

	mu     sync.Mutex
	idle   []*plainConn // by time of last use, oldest first
	sweep  *time.Timer  // closes connections idle too long; nil when none is
	closed bool
}

type plainConn struct {
	nc     net.Conn
	used   time.Time // when its last answer came
	lenBuf [2]byte
}

// exchange sends q over a TCP connection from the pool, or a new one, and
// reads its answer. A pooled connection that the resolver closed meanwhile
// (it may close idle ones at any time, RFC 7766 §6.2.3) costs a resend on
// another connection, not a failure.
func (t *tcpPool) exchange(ctx context.Context, q dnswire.Msg) (dnswire.Msg, error) {
	for send := 1; ; send++ {
		pc := t.get()
		reused := pc != nil
		if !reused {
			var err error
			if pc, err = t.dial(ctx); err != nil {
				return dnswire.Msg{}, err
			}
		}
		ans, err := t.roundTrip(ctx, pc, q, reused)
		if err == nil || errors.Is(err, ErrBadResponse) {
			return ans, err
		}
		if !errors.Is(err, ErrConnClosed) || send >= tcpMaxSends || ctx.Err() != nil {
			return dnswire.Msg{}, err
		}
		t.p.m.resent.Inc()
	}
}

// roundTrip sends q on pc and reads until its answer; it returns pc to the
// pool after an answer and closes it otherwise.
func (t *tcpPool) roundTrip(ctx context.Context, pc *plainConn, q dnswire.Msg, reused bool) (ans dnswire.Msg, err error) {
	dl, _ := ctx.Deadline()
	_ = pc.nc.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { _ = pc.nc.SetDeadline(aLongTimeAgo) })
	defer func() {
		// A connection whose deadline the query's end may have moved, or
		// that did not deliver the answer, is not used again.
		if stopped := stop(); stopped && (err == nil || errors.Is(err, ErrBadResponse)) {
			t.put(pc)
		} else {
			t.discard(pc)
		}
	}()

	id := uint16(rand.Uint32())
	frame := q.AppendQuery(make([]byte, 2, 2+len(q.Wire())), id, t.p.rewrite)
	binary.BigEndian.PutUint16(frame, uint16(len(frame)-2))
	if _, err := pc.nc.Write(frame); err != nil {
		return dnswire.Msg{}, t.connError(ctx, "sending to", err, reused)
	}
	for {
		msg, err := pc.readFrame()
		if err != nil {
			return dnswire.Msg{}, t.connError(ctx, "reading from", err, reused)
		}
		m, perr := dnswire.Parse(msg)
		if errors.Is(perr, dnswire.ErrShort) || m.ID != id || !m.Answers(&q) {
			t.p.mismatch(&m, msg)
			continue
		}
		pc.used = time.Now()
		m.SetID(q.ID)
		if perr != nil {
			return m, fmt.Errorf("%w from %s: %w", ErrBadResponse, t.p.name, perr)
		}
		return m, stripHop(&m, t.p.name)
	}
}

// readFrame reads one length-prefixed message into a buffer of its own,
// which the caller keeps.
func (pc *plainConn) readFrame() ([]byte, error) {
	if _, err := io.ReadFull(pc.nc, pc.lenBuf[:]); err != nil {
		return nil, err
	}
	msg := make([]byte, binary.BigEndian.Uint16(pc.lenBuf[:]))
	if _, err := io.ReadFull(pc.nc, msg); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return msg, nil
}

// connError says why a TCP exchange ended without an answer. A pooled
// connection closed or reset under the query is ErrConnClosed, resent on
// another; a new one is the resolver not serving: ErrUnreachable.
func (t *tcpPool) connError(ctx context.Context, doing string, err error, reused bool) error {
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("no answer from %s: %w", t.p.name, ctx.Err())
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("no answer from %s: %w", t.p.name, context.DeadlineExceeded)
	case reused && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)):
		return fmt.Errorf("%w: %s %s: %w", ErrConnClosed, doing, t.p.name, err)
	}
	return fmt.Errorf("%w: %s %s over TCP: %w", ErrUnreachable, doing, t.p.name, err)
}

// dial opens a TCP connection within DialTimeout and the query's deadline.
func (t *tcpPool) dial(ctx context.Context) (*plainConn, error) {
	d := net.Dialer{Timeout: t.p.opts.DialTimeout}
	nc, err := d.DialContext(ctx, "tcp", t.p.opts.Addr.String())
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("connecting to %s: %w", t.p.name, ctx.Err())
		}
		return nil, fmt.Errorf("%w: connecting to %s over TCP: %w", ErrUnreachable, t.p.name, err)
	}
	t.p.m.opened.Inc()
	t.p.m.open.Inc()
	return &plainConn{nc: nc}, nil
}

// get takes the connection unused longest, closing those idle too long.
func (t *tcpPool) get() *plainConn {
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	for len(t.idle) > 0 {
		pc := t.idle[0]
		t.idle[0] = nil
		t.idle = t.idle[1:]
		if now.Sub(pc.used) < tcpIdleTimeout {
			return pc
		}
		t.closeConn(pc)
	}
	return nil
}

// put keeps pc for the next query, unless enough are kept already.
func (t *tcpPool) put(pc *plainConn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed || len(t.idle) >= tcpMaxIdle {
		t.closeConn(pc)
		return
	}
	t.idle = append(t.idle, pc)
	if t.sweep == nil {
		t.sweep = time.AfterFunc(tcpIdleTimeout, t.closeIdle)
	}
}

func (t *tcpPool) discard(pc *plainConn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closeConn(pc)
}

// closeIdle closes the connections idle too long, and runs again while any
// is left, so that a pool nobody uses ends up with nothing open.
func (t *tcpPool) closeIdle() {
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sweep = nil
	keep := t.idle[:0]
	for _, pc := range t.idle {
		if now.Sub(pc.used) >= tcpIdleTimeout {
			t.closeConn(pc)
		} else {
			keep = append(keep, pc)
		}
	}
	clear(t.idle[len(keep):])
	t.idle = keep
	if len(t.idle) > 0 && !t.closed {
		t.sweep = time.AfterFunc(tcpIdleTimeout-now.Sub(t.idle[0].used), t.closeIdle)
	}
}

// closeConn closes one connection. Called with mu held: closing a TCP
// socket does not block.
func (t *tcpPool) closeConn(pc *plainConn) {
	_ = pc.nc.Close()
	t.p.m.open.Dec()
}

func (t *tcpPool) close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	if t.sweep != nil {
		t.sweep.Stop()
		t.sweep = nil
	}
	for _, pc := range t.idle {
		t.closeConn(pc)
	}
	t.idle = nil
}
