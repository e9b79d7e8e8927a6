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
	start time.Time
	b     *bucket     // its admission
	q     dnswire.Msg // the query, compact, in msg
	msg   []byte
	oob   []byte // on a wildcard socket: sets the answer's source (pktinfo_linux.go)
	reply []byte
}

// Most queries are well under 512 bytes; larger ones grow their buffer, up
// to maxQuerySize, and are pooled again.
const (
	pooledMsgSize = 512
	maxPooledSize = maxQuerySize
)

var udpQueryPool = sync.Pool{New: func() any { return &udpQuery{msg: make([]byte, 0, pooledMsgSize)} }}

func releaseUDPQuery(q *udpQuery) {
	if cap(q.msg) > maxPooledSize {
		return
	}
	q.sock, q.b, q.q, q.msg, q.oob, q.reply = nil, nil, dnswire.Msg{}, q.msg[:0], q.oob[:0], nil
	udpQueryPool.Put(q)
}

// readUDP reads datagrams until Shutdown, up to udpBatch per system call.
// What the server answers by itself (the protocol rules, the canary, cache
// hits, and SERVFAIL when full) is answered here, and written back one
// system call per batch read; each other query is answered in a goroutine
// of its own, so that the upstream's latency does not hold the reader. On
// a wildcard socket it also reads each datagram's destination address,
// which becomes its answer's source.
func (s *Server) readUDP(u *udpSocket) {
	defer s.loops.Done()
	ms := u.newReadBatch()
	rd := rawconn.NewBatch(u.c, udpBatch)
	out := newLoopWrites(u.c)
	// The query being handled, parsed: one for the loop, so that handing
	// it to the cache does not move a new one to the heap for every query.
	q := new(dnswire.Msg)
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
			s.readUDPQuery(u, out, q, msg, m.Addr, info)
		}
		out.flush(s)
	}
}

// readUDPQuery parses one datagram into q, the one time the server does,
// in the reader's batch buffer. What the server answers itself (protocol errors,
// the canary, cache hits, a query over the limit) is answered into out,
// since a local answer costs less than a goroutine; a query for the
// upstream is kept in compact form, not the datagram it came in, and
// answered in a goroutine of its own, so that the upstream's latency does
// not hold the reader.
func (s *Server) readUDPQuery(u *udpSocket, out *loopWrites, q *dnswire.Msg, msg []byte, from netip.AddrPort, info []byte) {
	start := time.Now()
	var perr error
	*q, perr = dnswire.Parse(msg)
	r, done := s.early(q, perr, protoUDP, out.room())
	if !done {
		if b := s.adm.admit(); b != nil {
			uq := udpQueryPool.Get().(*udpQuery)
			uq.sock, uq.from, uq.start, uq.b = u, from, start, b
			uq.q = q.AppendCompact(uq.msg[:0])
			uq.msg, uq.oob = uq.q.Wire(), append(uq.oob[:0], info...)
			s.queries.Add(1)
			go s.serveUDP(uq)
			return
		}
		r = s.overloaded(q)
	}
	// Counted before the write, so that a client holding an answer can
	// trust the metrics to include it.
	s.m.done(protoUDP, start, &r)
	s.logQuery(protoUDP, from, start, &r)
	if r.reply != nil {
		out.add(r.reply, from, info)
	}
}

func (s *Server) serveUDP(q *udpQuery) {
	r := s.forward(q.b, q.q, protoUDP)
	s.adm.release(q.b)
	// Counted before the write, so that a client holding an answer can
	// trust the metrics to include it.
	s.m.done(protoUDP, q.start, &r)
	s.logQuery(protoUDP, q.from, q.start, &r)
	if r.reply != nil {
		q.reply = r.reply
		q.sock.send(s, q) // the writer releases q once the answer is out
	} else {
		releaseUDPQuery(q)
	}
	s.queries.Done()
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
