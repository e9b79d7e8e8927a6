package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/rawconn"
)

// udpQuery carries one datagram from a reader to the goroutine answering it,
// and its answer to the socket's batch writer (udpbatch.go), which releases
// it once sent.
type udpQuery struct {
	sock  *udpSocket
	from  netip.AddrPort
	msg   []byte
	oob   []byte // on a wildcard socket: sets the answer's source (pktinfo_linux.go)
	reply []byte
}

// Most queries are well under 512 bytes; larger ones grow their buffer and
// are not pooled again, so the pool never pins big buffers.
const (
	pooledMsgSize = 512
	maxPooledSize = 4096
)

var udpQueryPool = sync.Pool{New: func() any { return &udpQuery{msg: make([]byte, 0, pooledMsgSize)} }}

func releaseUDPQuery(q *udpQuery) {
	if cap(q.msg) > maxPooledSize {
		return
	}
	q.sock, q.msg, q.oob, q.reply = nil, q.msg[:0], q.oob[:0], nil
	udpQueryPool.Put(q)
}

// readUDP reads datagrams until Shutdown, up to udpBatch per system call,
// and answers each in its own goroutine: the upstream's latency must not hold
// the reader. On a wildcard socket it also reads each datagram's destination
// address, which becomes its answer's source.
func (s *Server) readUDP(u *udpSocket) {
	defer s.loops.Done()
	ms := u.newReadBatch()
	rd := rawconn.NewBatch(u.c, udpBatch)
	var info []byte
	if u.wild {
		info = make([]byte, 0, pktinfoSize)
	}
	var backoff time.Duration
	for {
		n, err := rd.Read(ms)
		if err != nil {
			if s.closing.Load() {
				return
			}
			if errors.Is(err, net.ErrClosed) {
				s.loopDied(fmt.Errorf("reading UDP on %s: %w", u.c.LocalAddr(), err))
				return
			}
			backoff = nextBackoff(backoff)
			s.log.Warn("reading a UDP query failed", "addr", u.c.LocalAddr(), "err", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		for i := range ms[:n] {
			m := &ms[i]
			msg := m.Buf[:m.N]
			if len(msg) < dnswire.HeaderLen {
				s.m.malformed.Inc() // no header: nothing to answer
				continue
			}
			if u.wild {
				info = replyPktinfo(info, m.OOB[:m.OOBN])
			}
			if !s.admit() {
				s.shedUDP(u.c, m.Addr, msg, info)
				continue
			}
			q := udpQueryPool.Get().(*udpQuery)
			q.sock, q.from = u, m.Addr
			q.msg, q.oob = append(q.msg[:0], msg...), append(q.oob[:0], info...)
			s.queries.Add(1)
			go s.serveUDP(q)
		}
	}
}

func (s *Server) serveUDP(q *udpQuery) {
	start := time.Now()
	r := s.answer(q.msg, protoUDP)
	// Counted before the write, so that a client holding an answer can
	// trust the metrics to include it.
	s.m.done(protoUDP, start, &r)
	s.logQuery(protoUDP, q.from, start, &r)
	if r.reply != nil {
		q.reply = r.reply
		q.sock.send(s, q) // the writer releases q once the answer is out
	} else {
		releaseUDPQuery(q)
	}
	s.inflight.Add(-1)
	s.queries.Done()
}

// shedUDP answers, from the reader itself, a query that came when the server
// was full: a local answer costs less than a goroutine.
func (s *Server) shedUDP(c *net.UDPConn, from netip.AddrPort, msg, oob []byte) {
	start := time.Now()
	r := s.shed(msg, protoUDP)
	s.m.done(protoUDP, start, &r)
	if r.reply != nil {
		_ = writeUDP(c, r.reply, from, oob)
	}
	s.logQuery(protoUDP, from, start, &r)
}

// writeUDP sends an answer, with the control message oob when there is one.
func writeUDP(c *net.UDPConn, b []byte, to netip.AddrPort, oob []byte) error {
	if len(oob) > 0 {
		_, _, err := c.WriteMsgUDPAddrPort(b, oob, to)
		return err
	}
	_, err := c.WriteToUDPAddrPort(b, to)
	return err
}

// logQuery writes the per-query line, at Debug only: at any other level it
// costs one check.
func (s *Server) logQuery(p proto, from netip.AddrPort, start time.Time, r *result) {
	if !s.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	attrs := []slog.Attr{
		slog.String("proto", p.String()),
		slog.String("client", from.String()),
		slog.Duration("duration", time.Since(start)),
	}
	if q := &r.query; q.Valid() || q.QName() != nil {
		attrs = append(attrs, slog.Int("id", int(q.ID)), slog.String("qname", q.QNameText()), slog.String("qtype", dnswire.TypeName(q.QType())))
	}
	switch {
	case r.reply == nil:
		attrs = append(attrs, slog.String("rcode", "dropped"))
	default:
		attrs = append(attrs, slog.String("rcode", rcodeName(r.rcode)), slog.Bool("truncated", r.truncated))
	}
	if r.err != nil {
		attrs = append(attrs, slog.Any("err", r.err))
	}
	s.log.LogAttrs(context.Background(), slog.LevelDebug, "query", attrs...)
}

// nextBackoff paces a loop whose socket keeps failing (out of file
// descriptors, say) so that it neither spins nor gives up.
func nextBackoff(d time.Duration) time.Duration {
	switch {
	case d == 0:
		return 5 * time.Millisecond
	case d >= time.Second:
		return time.Second
	default:
		return 2 * d
	}
}
