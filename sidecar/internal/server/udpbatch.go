package server

import (
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/rawconn"
)

// A relay's cost per query is mostly system calls, so UDP queries are read
// and answers written several per call (rawconn.Batch: recvmmsg and sendmmsg
// on Linux, one per call elsewhere). Batches form only under load: a read
// returns what is queued, at least one datagram, and never waits for more;
// a write sends what is ready, and never waits for more either.

// udpBatch is the most datagrams one system call reads or writes.
const udpBatch = 16

// udpSocket is one UDP listener and the answers queued on it.
type udpSocket struct {
	c    *net.UDPConn
	wild bool // bound to 0.0.0.0 or ::, see pktinfo_linux.go

	mu       sync.Mutex
	queue    []*udpQuery // answers waiting for the writer
	flushing bool        // a goroutine is writing queue out

	// Owned by the goroutine that is flushing.
	w     *rawconn.Batch
	spare []*udpQuery
	msgs  []rawconn.Msg
}

func newUDPSocket(c *net.UDPConn) *udpSocket {
	return &udpSocket{c: c, wild: isWildcard(c), w: rawconn.NewBatch(c, udpBatch)}
}

// newReadBatch returns a reader's messages. Each holds a whole datagram, so
// that an oversized one is seen whole (and answered FORMERR or relayed)
// rather than silently cut; the kernel writes, and so the process touches,
// only the pages datagrams fill.
func (u *udpSocket) newReadBatch() []rawconn.Msg {
	const size = dnswire.MaxMsgSize
	buf := make([]byte, udpBatch*size)
	var oob []byte
	if u.wild {
		oob = make([]byte, udpBatch*2*pktinfoSize)
	}
	ms := make([]rawconn.Msg, udpBatch)
	for i := range ms {
		ms[i].Buf = buf[i*size : (i+1)*size : (i+1)*size]
		if u.wild {
			ms[i].OOB = oob[i*2*pktinfoSize : (i+1)*2*pktinfoSize : (i+1)*2*pktinfoSize]
		}
	}
	return ms
}

// send queues q's answer. The first goroutine to find no write in progress
// becomes the writer: it yields once (rawconn.YieldToBatch), so that the
// answers made ready with its own (a TLS read delivers several) queue behind
// it, then writes batches until the queue is empty. Everyone else returns at once. No goroutine is
// woken for this, and the writer is a query goroutine, so Shutdown, which
// waits for those, also waits for every queued answer to be written.
func (u *udpSocket) send(s *Server, q *udpQuery) {
	u.mu.Lock()
	u.queue = append(u.queue, q)
	if u.flushing {
		u.mu.Unlock()
		return
	}
	u.flushing = true
	spare := u.spare
	u.mu.Unlock()

	rawconn.YieldToBatch()
	for {
		u.mu.Lock()
		batch := u.queue
		if len(batch) == 0 {
			u.flushing = false
			u.spare = spare
			u.mu.Unlock()
			return
		}
		u.queue = spare[:0]
		u.mu.Unlock()
		u.write(s, batch)
		for i, q := range batch {
			releaseUDPQuery(q)
			batch[i] = nil
		}
		spare = batch
	}
}

// write sends the answers of batch.
func (u *udpSocket) write(s *Server, batch []*udpQuery) {
	for len(batch) > 0 {
		n := min(len(batch), udpBatch)
		ms := u.msgs[:0]
		for _, q := range batch[:n] {
			ms = append(ms, rawconn.Msg{Buf: q.reply, OOB: q.oob, Addr: q.from})
		}
		u.msgs = ms
		writeAll(u.w, ms, s.log)
		clear(u.msgs)
		batch = batch[n:]
	}
}

// writeAll sends ms, as many per system call as w takes. A datagram the
// kernel refuses is skipped (the client will retry, as after any loss).
func writeAll(w *rawconn.Batch, ms []rawconn.Msg, log *slog.Logger) {
	for len(ms) > 0 {
		sent, err := w.Write(ms)
		if err != nil && sent < len(ms) {
			log.Debug("writing a UDP answer failed", "client", ms[sent].Addr, "err", err)
			sent++
		}
		ms = ms[min(sent, len(ms)):]
	}
}

// loopWrites holds the answers a read loop made by itself (cache hits,
// protocol errors, SERVFAIL when full) from one batch of datagrams, and
// writes them back in one system call. Each of its slots keeps its buffer
// from batch to batch, so that the cache writes hits into memory it
// reuses: a hit allocates nothing.
type loopWrites struct {
	w    *rawconn.Batch
	ms   []rawconn.Msg
	bufs [udpBatch][]byte
	oobs [udpBatch][]byte
}

func newLoopWrites(c *net.UDPConn) *loopWrites {
	o := &loopWrites{w: rawconn.NewBatch(c, udpBatch), ms: make([]rawconn.Msg, 0, udpBatch)}
	for i := range o.bufs {
		o.bufs[i] = make([]byte, 0, pooledMsgSize)
	}
	return o
}

// room returns the buffer of the next answer, empty. A read returns at
// most udpBatch datagrams, and flush follows each read, so there is always
// one.
func (o *loopWrites) room() []byte { return o.bufs[len(o.ms)][:0] }

// add queues reply for to, with the control message oob. The slot keeps
// reply's buffer for the next batch when it is larger than its own (the
// cache grew it), short of a large answer's.
func (o *loopWrites) add(reply []byte, to netip.AddrPort, oob []byte) {
	k := len(o.ms)
	o.bufs[k] = keepLarger(o.bufs[k], reply)
	o.oobs[k] = append(o.oobs[k][:0], oob...)
	o.ms = append(o.ms, rawconn.Msg{Buf: reply, OOB: o.oobs[k], Addr: to})
}

// flush writes the queued answers.
func (o *loopWrites) flush(s *Server) {
	if len(o.ms) == 0 {
		return
	}
	writeAll(o.w, o.ms, s.log)
	clear(o.ms)
	o.ms = o.ms[:0]
}

// keepLarger returns the buffer a read loop keeps for the next answer
// written in place: reply's, once written, if it is larger than own (an
// answer grew own, or came in a larger buffer of its own) but not past
// maxPooledSize; own otherwise. A small buffer of a local answer (FORMERR,
// the canary) never replaces a loop's larger one.
func keepLarger(own, reply []byte) []byte {
	if cap(reply) > cap(own) && cap(reply) <= maxPooledSize {
		return reply[:0]
	}
	return own[:0]
}
