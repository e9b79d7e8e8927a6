package server

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/rawconn"
)

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
		if s.tcpOpen.Add(1) > int64(s.opts.TCPMaxConns) {
			s.tcpOpen.Add(-1)
			s.m.refused.Inc()
			_ = nc.Close()
			continue
		}
		c := &tcpConn{s: s, nc: nc, rw: rawconn.Wrap(nc, false), sem: make(chan struct{}, s.opts.TCPMaxInFlight)}
		if !s.track(c) {
			s.tcpOpen.Add(-1)
			_ = nc.Close()
			continue
		}
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
	s.tcpOpen.Add(-1)
	s.connWG.Done()
}

// tcpConn is one client connection: a reader that frames queries, answers
// those the server answers by itself (cache hits, protocol errors) at once
// and each other in its own goroutine (clients may pipeline, and answers go
// back in whatever order they come), and writes serialised by wmu.
type tcpConn struct {
	s    *Server
	nc   *net.TCPConn
	rw   io.ReadWriter // nc's reads and writes, raw (rawconn.Conn)
	from netip.AddrPort

	mu      sync.Mutex // orders stopReading against the reader's deadline changes
	stopped bool

	sem      chan struct{} // a slot per query in flight
	inflight atomic.Int32
	queries  sync.WaitGroup

	wmu    sync.Mutex // serialises writes
	wbuf   []byte
	broken bool // a write failed; the connection is closing

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
	_ = c.nc.SetReadDeadline(time.Now().Add(c.s.opts.TCPIdleTimeout))
	return true
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
	for {
		if !c.armRead() {
			return
		}
		n, err := io.ReadFull(br, prefix[:])
		if err != nil {
			// Idle with answers still to come: not idle, wait again.
			if n == 0 && isTimeout(err) && c.inflight.Load() > 0 {
				continue
			}
			return // EOF, reset, idle timeout or Shutdown
		}
		size := int(binary.BigEndian.Uint16(prefix[:]))
		q := tcpMsgPool.Get().(*[]byte)
		msg := *q
		if cap(msg) < size {
			msg = make([]byte, size)
		}
		msg = msg[:size]
		*q = msg
		if _, err := io.ReadFull(br, msg); err != nil {
			recycleTCPMsg(q)
			return
		}
		if size < dnswire.HeaderLen {
			recycleTCPMsg(q)
			c.s.m.malformed.Inc()
			continue
		}
		start := time.Now()
		var perr error
		c.query, perr = dnswire.Parse(msg)
		// The protocol rules and cache hits are answered here, without
		// a goroutine or an in-flight slot.
		if r, done := c.s.early(&c.query, perr, protoTCP, c.hits[:0]); done {
			c.finish(start, &r)
			c.hits = keepLarger(c.hits, r.reply) // the write copied it
			recycleTCPMsg(q)
			continue
		}
		select {
		case c.sem <- struct{}{}:
		case <-c.s.quit:
			recycleTCPMsg(q)
			return
		}
		if !c.s.admit() {
			r := c.s.forward(&c.query, protoTCP, errOverloaded)
			c.finish(start, &r)
			recycleTCPMsg(q)
			<-c.sem
			continue
		}
		c.queries.Add(1)
		c.inflight.Add(1)
		go c.answer(q, c.query, start)
	}
}

// finish accounts for and sends the answer to one query.
func (c *tcpConn) finish(start time.Time, r *result) {
	c.s.m.done(protoTCP, start, r)
	if r.reply != nil {
		c.write(r.reply)
	}
	c.s.logQuery(protoTCP, c.from, start, r)
}

var tcpMsgPool = sync.Pool{New: func() any { b := make([]byte, 0, pooledMsgSize); return &b }}

// recycleTCPMsg pools a message buffer again unless a large message grew it:
// a client announcing 64 KiB and hanging up must not leave 64 KiB buffers
// in the pool for small queries to carry.
func recycleTCPMsg(q *[]byte) {
	if cap(*q) <= maxPooledSize {
		tcpMsgPool.Put(q)
	}
}

// answer asks the upstream for query's answer, in a goroutine of its own;
// q holds query's bytes.
func (c *tcpConn) answer(q *[]byte, query dnswire.Msg, start time.Time) {
	r := c.s.forward(&query, protoTCP, nil)
	c.s.m.done(protoTCP, start, &r)
	if r.reply != nil {
		c.write(r.reply)
	}
	c.s.inflight.Add(-1)
	c.s.logQuery(protoTCP, c.from, start, &r)
	recycleTCPMsg(q)
	<-c.sem
	c.inflight.Add(-1)
	c.queries.Done()
}

// write sends one answer, length prefix and message in one write so that
// concurrent answers never interleave.
func (c *tcpConn) write(reply []byte) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.broken {
		return
	}
	c.wbuf = binary.BigEndian.AppendUint16(c.wbuf[:0], uint16(len(reply)))
	c.wbuf = append(c.wbuf, reply...)
	// A client that does not read its answers is idle too.
	dl := time.Now().Add(c.s.opts.TCPIdleTimeout).UnixNano()
	_ = c.nc.SetWriteDeadline(time.Unix(0, dl))
	// Checked after setting ours: a cutoff stored later is applied by
	// cutWrites after this, so the earlier deadline always wins.
	if co := c.s.writeCutoff.Load(); co != 0 && co < dl {
		_ = c.nc.SetWriteDeadline(time.Unix(0, co))
	}
	if _, err := c.rw.Write(c.wbuf); err != nil {
		c.broken = true
		c.s.log.Debug("writing a TCP answer failed; closing the connection", "client", c.from, "err", err)
		_ = c.nc.Close() // wakes the reader
	}
	if cap(c.wbuf) > maxPooledSize {
		c.wbuf = nil
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
