package upstream

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
)

// aLongTimeAgo, as a deadline, wakes a blocked read or write at once.
var aLongTimeAgo = time.Unix(1, 0)

// exchangeUDP sends q over a UDP socket of its own, connected to the
// resolver, and waits for the datagram that answers it.
//
// Connecting the socket makes the kernel choose a fresh random source port
// (Linux draws ephemeral ports at random, RFC 6056) and drop datagrams from
// any address but the resolver's; with a random ID, a blind spoofer must
// guess 32 bits. A datagram with another ID or question is dropped and the
// wait goes on: a spoofer's wrong guess must not end the query. One socket
// per query costs a few system calls, cheap beside the round trip, and
// keeps one query's late answer from ever reaching another.
func (p *Plain) exchangeUDP(ctx context.Context, q dnswire.Msg) (dnswire.Msg, error) {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(p.opts.Addr))
	if err != nil {
		return dnswire.Msg{}, fmt.Errorf("%w: %s: %w", ErrUnreachable, p.name, err)
	}
	defer c.Close()
	dl, _ := ctx.Deadline()
	_ = c.SetDeadline(dl)
	// A cancelled query (client gone, shutdown) stops waiting at once.
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(aLongTimeAgo) })
	defer stop()

	buf := readBufPool.Get().(*[dnswire.MaxMsgSize]byte)
	defer readBufPool.Put(buf)
	id := uint16(rand.Uint32())
	if _, err := c.Write(q.AppendQuery(buf[:0], id, p.rewrite)); err != nil {
		return dnswire.Msg{}, p.udpError(ctx, "sending to", err)
	}
	for {
		n, err := c.Read(buf[:])
		if err != nil {
			return dnswire.Msg{}, p.udpError(ctx, "reading from", err)
		}
		if ans, ok, err := p.accept(&q, id, buf[:n]); ok {
			return ans, err
		}
	}
}

// udpError says why a UDP exchange ended without an answer. An ICMP port
// unreachable (ECONNREFUSED on a connected socket) means no resolver listens
// there: unreachable, known at once rather than at the deadline.
func (p *Plain) udpError(ctx context.Context, doing string, err error) error {
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("no answer from %s: %w", p.name, ctx.Err())
	case errors.Is(err, os.ErrDeadlineExceeded):
		// The socket's deadline, the query's, passed before ctx's timer
		// fired.
		return fmt.Errorf("no answer from %s: %w", p.name, context.DeadlineExceeded)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%w: %s %s: port unreachable", ErrUnreachable, doing, p.name)
	}
	return fmt.Errorf("%w: %s %s: %w", ErrUnreachable, doing, p.name, err)
}
