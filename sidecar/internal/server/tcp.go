package server

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/rawconn"
)

// tcpSendBuffer is the send buffer (SO_SNDBUF) of a client TCP connection.
// The kernel charges a socket's buffers to the sidecar's memory cgroup, and
// left to autotuning a client that does not read could make it hold up to
// net.ipv4.tcp_wmem's maximum (4 MiB by default) per connection. This is
// room for two of the largest answers (the kernel doubles the value for
// its own bookkeeping); more only serves a client that reads slowly.
const tcpSendBuffer = 64 << 10

// acceptTCP accepts connections until Shutdown closes the listener.
func (s *Server) acceptTCP(l *net.TCPListener) {
	defer s.loops.Done()
	var backoff time.Duration
	for {
		nc, err := l.AcceptTCP()
		if err != nil {
			if s.closing.Load() {
				return
			}
			if errors.Is(err, net.ErrClosed) {
				s.loopDied(fmt.Errorf("accepting TCP on %s: %w", l.Addr(), err))
				return
			}
			// Out of file descriptors and the like: wait for some to free.
			backoff = nextBackoff(backoff)
			s.log.Warn("accepting a TCP connection failed", "addr", l.Addr(), "err", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		open := s.tcpOpen.Add(1)
		if open > int64(s.opts.TCPMaxConns) {
			s.tcpOpen.Add(-1)
			s.m.refused.Inc()
			_ = nc.Close()
			continue
		}
		_ = nc.SetWriteBuffer(tcpSendBuffer)
		c := &tcpConn{s: s, nc: nc, rw: rawconn.Wrap(nc, false), sem: make(chan struct{}, s.opts.TCPMaxInFlight),
			room: make(chan struct{}, 1)}
		if !s.track(c) {
			s.tcpOpen.Add(-1)
			_ = nc.Close()
			continue
		}
		s.idle.opened(s, open)
		go c.serve()
	}
}

// track registers c so that Shutdown can stop its reader; it refuses once
// Shutdown has begun.
func (s *Server) track(c *tcpConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		return false
	}
	s.conns[c] = struct{}{}
	s.connWG.Add(1)
	return true
}

func (s *Server) untrack(c *tcpConn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.idle.closed(s.tcpOpen.Add(-1))
	s.connWG.Done()
}

// tcpConn is one client connection: a reader that frames queries, answers
// those the server answers by itself (cache hits, protocol errors) at once
// and each other in its own goroutine (clients may pipeline, and answers go
// back in whatever order they come), and a queue of answers written out by
// whichever goroutine finds no write in progress (tcpwrite.go).
type tcpConn struct {
	s    *Server
	nc   *net.TCPConn
	rw   io.ReadWriter // nc's reads and writes, raw (rawconn.Conn)
	from netip.AddrPort

	mu      sync.Mutex // orders stopReading and shortenIdle against the reader's deadline changes
	stopped bool
	waiting bool      // the reader waits for the first byte of a message
	armedAt time.Time // when it began to
	armedTo time.Time // the read deadline then set

	sem      chan struct{} // a slot per query in flight
	inflight atomic.Int32
	queries  sync.WaitGroup

	wmu     sync.Mutex    // guards the fields below
	out     []byte        // framed answers not yet handed to the socket
	spare   []byte        // the buffer last written, for reuse
	unsent  int           // bytes in out and in the write in progress
	writing bool          // a goroutine is writing out
	broken  bool          // a write failed, or the client does not read; closing
	room    chan struct{} // signalled when unsent falls below TCPMaxUnread

	// The reader's: the query just read, parsed (a field, so that
	// passing it on does not move it to the heap for every query), and
	// where the cache writes a hit.
	query dnswire.Msg
	hits  []byte
}

// stopReading makes the reader stop at the next message boundary (Shutdown).
func (c *tcpConn) stopReading() {
	c.mu.Lock()
	c.stopped = true
	_ = c.nc.SetReadDeadline(aLongTimeAgo)
	c.mu.Unlock()
}

// armRead sets the idle deadline for the next message, unless the reader
// must stop.
func (c *tcpConn) armRead() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return false
	}
	c.waiting, c.armedAt = true, time.Now()
	c.armedTo = c.armedAt.Add(c.s.idle.timeout())
	_ = c.nc.SetReadDeadline(c.armedTo)
	return true
}

// shortenIdle brings the deadline of a reader waiting for its next message
// forward to d after it began to wait, if that is sooner.
func (c *tcpConn) shortenIdle(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if to := c.armedAt.Add(d); c.waiting && !c.stopped && to.Before(c.armedTo) {
		c.armedTo = to
		_ = c.nc.SetReadDeadline(to)
	}
}

func (c *tcpConn) read(br *bufio.Reader, b []byte) (int, error) {
	n, err := io.ReadFull(br, b)
	c.mu.Lock()
	c.waiting = false
	c.mu.Unlock()
	return n, err
}

func (c *tcpConn) serve() {
	c.from = c.nc.RemoteAddr().(*net.TCPAddr).AddrPort()
	defer func() {
		// Queries already read are answered even when the client has
		// stopped sending (a half-close is normal) or Shutdown stopped us.
		c.queries.Wait()
		_ = c.nc.Close()
		c.s.untrack(c)
	}()
	br := bufio.NewReaderSize(c.rw, 4096)
	var prefix [2]byte
	var msg []byte // the message being read; grown for a large one, then let go
	for {
		if !c.waitRoom() || !c.armRead() {
			return
		}
		n, err := c.read(br, prefix[:])
		if err != nil {
			// Idle with answers still to come: not idle, wait again.
			if n == 0 && isTimeout(err) && c.inflight.Load() > 0 {
				continue
			}
			return // EOF, reset, idle timeout or Shutdown
		}
		size := int(binary.BigEndian.Uint16(prefix[:]))
		if cap(msg) < size || cap(msg) > maxPooledSize {
			msg = make([]byte, size, max(size, pooledMsgSize))
		}
		msg = msg[:size]
		if _, err := io.ReadFull(br, msg); err != nil {
			return
		}
		if size < dnswire.HeaderLen {
			c.s.m.malformed.Inc()
			continue
		}
		if !c.handle(msg) {
			return
		}
		if br.Buffered() > 0 {
			// The client pipelines faster than we answer. Reading on would
			// keep this goroutine running for its whole time slice, and with
			// a few such clients every other goroutine (the UDP readers, the
			// admin listener, a dial to the upstream) would wait for a round
			// of slices, seconds with dozens of them on the default one
			// thread: one message per turn, as an event loop would.
			runtime.Gosched()
		}
	}
}

// handle answers a message, as readUDPQuery does: at once when the server
// answers it itself (the protocol rules and cache hits, without a goroutine
// or an in-flight slot), else in a goroutine, with the query in compact
// form. It reports false when the server is shutting down.
func (c *tcpConn) handle(msg []byte) bool {
	start := time.Now()
	var perr error
	c.query, perr = dnswire.Parse(msg)
	if r, done := c.s.early(&c.query, perr, protoTCP, c.hits[:0]); done {
		c.finish(start, &r)
		c.hits = keepLarger(c.hits, r.reply) // send copied it
		return true
	}
	select {
	case c.sem <- struct{}{}:
	case <-c.s.quit:
		return false
	}
	b := c.s.adm.admit()
	if b == nil {
		r := c.s.overloaded(&c.query)
		c.finish(start, &r)
		<-c.sem
		return true
	}
	buf := tcpMsgPool.Get().(*[]byte)
	q := c.query.AppendCompact((*buf)[:0])
	*buf = q.Wire()
	c.queries.Add(1)
	c.inflight.Add(1)
	go c.answer(start, b, q, buf)
	return true
}

// finish accounts for and sends the answer to one query.
func (c *tcpConn) finish(start time.Time, r *result) {
	c.s.m.done(protoTCP, start, r)
	c.s.logQuery(protoTCP, c.from, start, r)
	if r.reply != nil {
		c.send(r.reply)
	}
}

var tcpMsgPool = sync.Pool{New: func() any { b := make([]byte, 0, pooledMsgSize); return &b }}

// answer asks the upstream for q's answer, in a goroutine of its own; buf
// holds q's bytes.
func (c *tcpConn) answer(start time.Time, b *bucket, q dnswire.Msg, buf *[]byte) {
	r := c.s.forward(b, q, protoTCP)
	// The query's slots are free once its answer is made: a client that
	// does not read holds its answers' bytes (up to TCPMaxUnread), never
	// the server's slots.
	c.s.adm.release(b)
	c.s.m.done(protoTCP, start, &r)
	c.s.logQuery(protoTCP, c.from, start, &r)
	tcpMsgPool.Put(buf)
	<-c.sem
	c.inflight.Add(-1)
	if r.reply != nil {
		c.send(r.reply)
	}
	c.queries.Done()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
