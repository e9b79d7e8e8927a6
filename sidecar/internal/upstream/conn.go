package upstream

import (
	"bufio"
	"context"
	crand "crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/rawconn"
)

const (
	// readBufSize holds several TLS records' worth of responses, so that the
	// reader makes one read call per burst rather than one per response.
	readBufSize = 64 << 10
	// writeTimeout bounds one coalesced write: an upstream that stops reading
	// for this long is treated as dead and its queries are resent elsewhere.
	writeTimeout = 5 * time.Second
	// closeNotifyTimeout bounds the polite close_notify on a graceful close.
	closeNotifyTimeout = time.Second
	// maxSpareWriteBuf is the largest write buffer kept for reuse; a rare
	// burst does not pin its memory for the connection's lifetime.
	maxSpareWriteBuf = 256 << 10
)

// request is one query in flight. It is reused through reqPool; its done
// channel has room for exactly one result, and exactly one party sends it:
// whoever removes the request from a connection's in-flight table.
type request struct {
	query dnswire.Msg // the caller's query; its bytes are read only while registered

	// Set by the connection that carries the request, under its mu.
	upID      uint16 // the ID on the wire
	answers   uint64 // the connection's answer count when the request was queued
	upAnswers uint64 // the upstream's (tlsUpstream.answered) then

	done chan result
}

type result struct {
	ans dnswire.Msg
	err error
}

var reqPool = sync.Pool{New: func() any { return &request{done: make(chan result, 1)} }}

// conn is one TLS connection carrying many queries at once. A writer
// goroutine drains queued frames into one TLS write; a reader goroutine
// matches responses to the in-flight table by ID and question. No goroutine
// is started per query.
type conn struct {
	d     *DoT
	tc    *tls.Conn
	born  time.Time
	certs tls.ConnectionState // as verified at handshake

	load     atomic.Int32  // queries in flight, read lock-free by the picker
	closing  atomic.Bool   // retired or dead: the picker skips it
	answers  atomic.Uint64 // responses to our queries, late ones included: proof the upstream serves on it
	keepIdle atomic.Int64  // nanoseconds c may stay idle by the upstream's keepalive (keepalive.go); 0: not announced
	// lostCounted: c died before answering anything and was counted in the
	// upstream's run of such connections (lost).
	lostCounted atomic.Bool

	mu        sync.Mutex
	inflight  map[uint16]*request // by the ID on the wire
	pending   []byte              // framed queries not yet written
	rng       *rand.ChaCha8       // unpredictable upstream IDs
	idBits    uint64              // unused random bits from rng
	idLeft    int                 // IDs left in idBits
	abandoned *idQuarantine       // IDs of queries given up on lately; nil until the first
	sent      uint64              // queries sent on it, for the upstream's per-connection limit (budget.go)
	retired   bool                // no new queries; closes once drained
	retiredAt time.Time
	dead      bool
	cause     error       // why it died, once dead
	idleSince time.Time   // when inflight last became empty
	trust     *trustState // the trust the connection was last verified against

	wake chan struct{} // tells the writer there is something pending
	done chan struct{} // closed when the connection dies
	hard atomic.Bool   // skip close_notify: the peer is gone or we are in a hurry

	lenBuf [2]byte // reader's scratch for the length prefix
}

func newConn(d *DoT, tc *tls.Conn, st *trustState) *conn {
	var seed [32]byte
	if _, err := crand.Read(seed[:]); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	now := time.Now()
	return &conn{
		d:         d,
		tc:        tc,
		born:      now,
		certs:     tc.ConnectionState(),
		inflight:  make(map[uint16]*request),
		rng:       rand.NewChaCha8(seed),
		idleSince: now,
		trust:     st,
		wake:      make(chan struct{}, 1),
		done:      make(chan struct{}),
	}
}

func (c *conn) start() {
	c.d.wg.Add(2)
	go c.readLoop()
	go c.writeLoop()
}

// nextID returns an ID unused among the in-flight queries and not abandoned
// lately. Called with mu held.
func (c *conn) nextID() uint16 {
	for {
		if c.idLeft == 0 {
			c.idBits = c.rng.Uint64()
			c.idLeft = 4
		}
		id := uint16(c.idBits)
		c.idBits >>= 16
		c.idLeft--
		if _, busy := c.inflight[id]; !busy && (c.abandoned == nil || !c.abandoned.has(id)) {
			return id
		}
	}
}

// quarantineLen is how many of a connection's most recently abandoned IDs
// stay out of use. The answer to a query given up on may still come. Had a
// new query for the same question drawn that ID meanwhile, the late answer
// would match it by ID and question (RFC 7766 §7) and be delivered as its
// answer, although it was made for another client's message, with that
// message's EDNS flags and options (DO, CD, cookies, client subnet). With at
// most 16384 in flight, at least 45056 IDs stay free, so drawing one stays
// cheap.
const quarantineLen = 4096

// idQuarantine is a set of abandoned IDs that forgets the oldest first.
type idQuarantine struct {
	set  [1 << 16 / 64]uint64 // bit per ID
	ring [quarantineLen]uint16
	next int // ring slot to fill next
	full bool
}

func (q *idQuarantine) has(id uint16) bool { return q.set[id>>6]&(1<<(id&63)) != 0 }

// add quarantines id, which nextID has kept out of the set, so no ID is in
// the ring twice and evicting one never frees another copy early.
func (q *idQuarantine) add(id uint16) {
	if q.full {
		old := q.ring[q.next]
		q.set[old>>6] &^= 1 << (old & 63)
	}
	q.ring[q.next] = id
	q.set[id>>6] |= 1 << (id & 63)
	if q.next++; q.next == quarantineLen {
		q.next, q.full = 0, true
	}
}

// send registers req and queues its frame. It fails when the connection is
// retired, dead or full; the caller then picks another.
func (c *conn) send(req *request) bool {
	c.mu.Lock()
	if c.retired || c.dead || len(c.inflight) >= c.d.opts.MaxInFlightPerConn {
		c.mu.Unlock()
		return false
	}
	if c.idleExpiredLocked() {
		// The upstream may be closing it as we speak: close it first.
		c.retired = true
		c.closing.Store(true)
		c.mu.Unlock()
		c.d.log.Debug("closing upstream connection idle past its keepalive", "upstream", c.d.name)
		c.shutdown(ErrClosed, false)
		return false
	}
	id := c.nextID()
	req.upID = id
	req.answers, req.upAnswers = c.answers.Load(), c.d.answered.Load()
	c.inflight[id] = req
	c.load.Store(int32(len(c.inflight)))
	// The length prefix and the message go out in the same write; the
	// message, rewritten and padded as it is written, gets its length once
	// written.
	signal := len(c.pending) == 0
	at := len(c.pending)
	c.pending = req.query.AppendQuery(append(c.pending, 0, 0), id, c.d.rewrite)
	binary.BigEndian.PutUint16(c.pending[at:], uint16(len(c.pending)-at-2))
	c.sent++
	spent := false
	if limit := c.d.budget.queries(c.d.opts.MaxAge); limit != 0 && c.sent >= limit {
		// The upstream closes the connection after this one: no more.
		spent, c.retired, c.retiredAt = true, true, time.Now()
		c.closing.Store(true)
	}
	c.mu.Unlock()
	if spent {
		// Not busy as retire counts it: the upstream answers these few at
		// once, and evicting another draining connection for a
		// replacement would throw away queries it is about to answer.
		c.d.retired(c, false)
	}
	if signal {
		// Only the query that finds the queue empty wakes the writer; later
		// ones ride along in the same write.
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
	return true
}

// cancel withdraws req (its caller gave up). It reports false when req is no
// longer in flight, which means its result is on its way to req.done.
func (c *conn) cancel(req *request) bool {
	c.mu.Lock()
	if c.inflight[req.upID] != req {
		c.mu.Unlock()
		return false
	}
	closeNow, wasFull := c.removeLocked(req.upID)
	if c.abandoned == nil {
		c.abandoned = new(idQuarantine)
	}
	c.abandoned.add(req.upID)
	c.mu.Unlock()
	c.afterRemove(closeNow, wasFull)
	return true
}

// removeLocked deletes an in-flight entry. It reports whether the
// connection, being retired, has now drained and should close, and whether it
// was full (a query may be waiting for room).
func (c *conn) removeLocked(id uint16) (closeNow, wasFull bool) {
	wasFull = len(c.inflight) >= c.d.opts.MaxInFlightPerConn
	delete(c.inflight, id)
	n := len(c.inflight)
	c.load.Store(int32(n))
	if n == 0 {
		c.idleSince = time.Now()
	}
	return n == 0 && c.retired, wasFull
}

// afterRemove does, outside c.mu, what removeLocked found necessary.
func (c *conn) afterRemove(closeNow, wasFull bool) {
	if wasFull {
		c.d.notify()
	}
	if closeNow {
		c.shutdown(ErrClosed, false)
	}
}

// retire stops new queries on c; it closes once its in-flight queries are
// answered or given up.
func (c *conn) retire(why string) {
	c.mu.Lock()
	if c.retired || c.dead {
		c.mu.Unlock()
		return
	}
	c.retired = true
	c.retiredAt = time.Now()
	c.closing.Store(true)
	drained := len(c.inflight) == 0
	busy := !drained
	c.mu.Unlock()
	c.d.log.Debug("retiring upstream connection", "upstream", c.d.name, "reason", why,
		"local", c.tc.LocalAddr().String())
	c.d.retired(c, busy)
	if drained {
		c.shutdown(ErrClosed, false)
	}
}

// closeIfIdle closes c if no query is in flight and none has been for its
// idle limit (the pool's idle timeout, or the upstream's keepalive, checked
// every tick) before now.
func (c *conn) closeIfIdle(now time.Time, tick time.Duration) bool {
	c.mu.Lock()
	idle := !c.dead && len(c.inflight) == 0 && now.Sub(c.idleSince) >= c.idleLimit(tick)
	if idle {
		c.closing.Store(true)
		c.retired = true // send refuses from here on
	}
	c.mu.Unlock()
	if idle {
		c.shutdown(ErrClosed, false)
	}
	return idle
}

// lost kills c after a failure of the connection itself: a read or write
// error, or a drain cut short. What its queries get depends on whether c
// ever served. A connection that answered before and then died is the
// normal end of a pooled connection (upstreams close idle or busy ones,
// RFC 7858 §3.4): ErrConnClosed, and Exchange resends the queries on a fresh
// one. A connection that never answered anything is a new one lost
// (newconn.go): its queries are sent once more, unless it is the third in a
// row, which makes it the upstream failing (ErrUnreachable, which a Group
// counts against it). Every query caught gets the same error value, so a
// Group counts the death of one connection once, however many queries it
// carried.
func (c *conn) lost(err error) {
	if n := c.answers.Load(); n != 0 {
		if c.load.Load() > 0 && c.d.budget.closedUnderLoad(n) {
			c.d.log.Info("upstream closes connections after a fixed number of queries; sending at most that many on each",
				"upstream", c.d.name, "queries", n)
		}
		c.shutdown(fmt.Errorf("%w: %w", ErrConnClosed, err), true)
		return
	}
	// The reader and the writer may both see the death; it is counted once,
	// and not at all when c was closed by this side first.
	if c.isDead() || !c.lostCounted.CompareAndSwap(false, true) {
		return
	}
	c.shutdown(c.d.lostNew(err), true)
}

// shutdown kills the connection once: it fails every query in flight with
// cause (ErrConnClosed-wrapped causes are resent by Exchange) and leaves the
// socket to the writer goroutine to close, outside any mutex. hard skips the
// close_notify alert and breaks a blocked read or write at once.
//
// The pool's slot is freed once the socket is closed: here after a hard
// close, by the writer after a polite one (closeSocket). Freed before, it
// would let a replacement be dialed while the socket, still sending its
// close_notify, is open: one connection to the upstream more than the pool
// allows, for up to closeNotifyTimeout.
func (c *conn) shutdown(cause error, hard bool) {
	c.mu.Lock()
	if c.dead {
		c.mu.Unlock()
		return
	}
	c.dead = true
	c.cause = cause
	c.closing.Store(true)
	orphans := c.inflight
	c.inflight = nil
	c.load.Store(0)
	c.pending = nil
	c.mu.Unlock()

	if hard {
		c.hard.Store(true)
		// Unblocks the reader and any write in progress; the writer skips
		// close_notify on a dead socket.
		_ = c.tc.NetConn().Close()
	}
	close(c.done)
	for _, req := range orphans {
		req.done <- result{err: cause}
	}
	if hard {
		c.d.removeConn(c)
	}
}

func (c *conn) writeLoop() {
	defer c.d.wg.Done()
	var buf []byte
	for {
		select {
		case <-c.wake:
		case <-c.done:
			c.closeSocket()
			return
		}
		// The query that woke us is usually one of several made runnable
		// together (a batch of datagrams, a burst on a TCP client): let them
		// queue their frames first, so that one TLS record and one write
		// carry them all. Without this the writer, handed the CPU first,
		// writes each query alone.
		rawconn.YieldToBatch()
		c.mu.Lock()
		buf, c.pending = c.pending, buf[:0]
		c.mu.Unlock()
		if len(buf) == 0 {
			continue
		}
		// One deadline and one TLS write for everything queued so far.
		_ = c.tc.SetWriteDeadline(time.Now().Add(writeTimeout))
		if _, err := c.tc.Write(buf); err != nil {
			c.writeFailed(fmt.Errorf("writing to %s: %w", c.d.name, err))
			<-c.done
			c.closeSocket()
			return
		}
		if cap(buf) > maxSpareWriteBuf {
			buf = nil
		}
	}
}

// writeFailed handles a write that failed with err. When the upstream has
// closed or reset the connection, the answers it wrote before may be
// waiting unread in the receive buffer: an upstream that closes connections
// after so many queries, with more unread, resets them, and the first sign
// of it is often a write failing while its last answers are still in
// flight to the reader. Those answers are delivered, by the reader, which
// then meets the end and ends c (lost), within closeNotifyTimeout; c takes
// no new queries meanwhile. Killing c at once would discard them and fail
// every query it carried as if nothing had been answered. Any other failure
// (the write deadline: the upstream stopped reading) ends c now.
func (c *conn) writeFailed(err error) {
	if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
		c.lost(err)
		return
	}
	// Retired as a spent connection is (send): it ends within a round trip,
	// and evicting a draining one to make room, possibly c itself, would
	// discard what it still has to deliver.
	c.mu.Lock()
	fresh := !c.retired && !c.dead
	if fresh {
		c.retired, c.retiredAt = true, time.Now()
		c.closing.Store(true)
	}
	c.mu.Unlock()
	if fresh {
		c.d.retired(c, false)
	}
	_ = c.tc.SetReadDeadline(time.Now().Add(closeNotifyTimeout))
}

func (c *conn) closeSocket() {
	if c.hard.Load() {
		_ = c.tc.Close() // the socket is closed already; this releases the TLS side
		return
	}
	closePolitely(c.tc, nil)
	c.d.removeConn(c) // the socket is closed: its slot is free (shutdown)
}

// closePolitely closes tc after last (frames still to send, nil for none)
// and close_notify, and returns once its socket is closed. crypto/tls gives
// that alert a write deadline of 5 s of its own, overriding any set here,
// so an upstream that stopped reading would hold the caller that long; the
// socket is closed under it after closeNotifyTimeout instead.
func closePolitely(tc *tls.Conn, last []byte) {
	cut := make(chan struct{})
	t := time.AfterFunc(closeNotifyTimeout, func() { _ = tc.NetConn().Close(); close(cut) })
	if len(last) > 0 {
		_ = tc.SetWriteDeadline(time.Now().Add(closeNotifyTimeout))
		_, _ = tc.Write(last)
	}
	_ = tc.Close()
	if !t.Stop() {
		<-cut // closing the socket under tc.Close, which may have returned first
	}
}

func (c *conn) readLoop() {
	defer c.d.wg.Done()
	br := bufio.NewReaderSize(c.tc, readBufSize)
	for {
		msg, err := c.readFrame(br)
		if err != nil {
			select {
			case <-c.done: // we closed it
			default:
				c.d.log.Debug("upstream connection lost", "upstream", c.d.name, "error", err)
			}
			c.lost(fmt.Errorf("reading from %s: %w", c.d.name, err))
			return
		}
		c.deliver(msg)
	}
}

func (c *conn) readFrame(br *bufio.Reader) ([]byte, error) {
	if _, err := io.ReadFull(br, c.lenBuf[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(c.lenBuf[:]))
	// The caller owns the answer, so each one gets its own exact-size slice.
	msg := make([]byte, n)
	if _, err := io.ReadFull(br, msg); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return msg, nil
}

// deliver parses msg, the one time anything reads it, and hands it to the
// query it answers, with that query's ID. A response whose ID and question
// match nothing in flight is dropped and counted: it may be a late answer
// to a query given up on, or something worse, and is never forwarded. One
// that matches a query but does not parse whole fails that query with
// ErrBadResponse.
func (c *conn) deliver(msg []byte) {
	// Parsed before taking mu: the walk over the records needs nothing of
	// the query.
	ans, perr := dnswire.Parse(msg)
	if errors.Is(perr, dnswire.ErrShort) {
		c.mismatch(&ans, perr)
		return
	}
	c.mu.Lock()
	req := c.inflight[ans.ID]
	// The question is compared under mu: only while registered is the
	// query's buffer sure to hold the caller's unchanged message.
	if req == nil || !ans.Answers(&req.query) {
		late := req == nil && c.abandoned != nil && c.abandoned.has(ans.ID)
		c.mu.Unlock()
		if late {
			// The answer to a query given up on (its client gone, or the
			// server making room for newer ones) still shows the upstream
			// serving on c. Under a flood that makes the server give up on
			// many, late answers may be all that comes for a while; not
			// counting them, the queries behind would time out on a
			// connection that looks silent, and a healthy upstream would
			// be marked down for the sidecar's own decisions.
			if c.answers.Add(1) == 1 {
				c.d.servedNew()
			}
			c.d.answered.Add(1)
		}
		c.mismatch(&ans, dnswire.ErrNotAnswer)
		return
	}
	closeNow, wasFull := c.removeLocked(req.upID)
	c.mu.Unlock()
	if c.answers.Add(1) == 1 {
		c.d.servedNew()
	}
	c.d.answered.Add(1)
	ans.SetID(req.query.ID)
	r := result{ans: ans}
	if perr != nil {
		r.err = fmt.Errorf("%w from %s: %w", ErrBadResponse, c.d.name, perr)
	} else {
		if ka, ok := ans.Option(dnswire.OptionKeepalive); ok {
			c.noteKeepalive(ka)
		}
		r.err = stripHop(&r.ans, c.d.name)
	}
	req.done <- r
	c.afterRemove(closeNow, wasFull)
}

func (c *conn) mismatch(ans *dnswire.Msg, why error) {
	c.d.m.mismatched.Inc()
	if c.d.log.Enabled(context.Background(), slog.LevelDebug) {
		id := -1
		if len(ans.Wire()) >= dnswire.HeaderLen {
			id = int(ans.ID)
		}
		c.d.log.Debug("dropping upstream response that matches no query in flight",
			"upstream", c.d.name, "id", id, "len", len(ans.Wire()), "error", why)
	}
}

func (c *conn) peer() *tls.ConnectionState { return &c.certs }

func (c *conn) setTrust(st *trustState) {
	c.mu.Lock()
	c.trust = st
	c.mu.Unlock()
}

// verifiedAgainst reports whether c was last verified against st.
func (c *conn) verifiedAgainst(st *trustState) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.trust == st
}

func (c *conn) isDead() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dead
}

// silentSince reports whether c has answered no query at all since req was
// queued on it.
func (c *conn) silentSince(req *request) bool { return c.answers.Load() == req.answers }

// retiredSince is when c was retired (zero if it was not).
func (c *conn) retiredSince() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.retiredAt
}

// evict closes c now; its queries are resent on another connection. It is
// this side's doing, not the upstream's: nothing is held against it.
func (c *conn) evict(why string) {
	c.shutdown(fmt.Errorf("%w: %s: %s", ErrConnClosed, c.d.name, why), true)
}

// deathCause is why c died (nil while it lives).
func (c *conn) deathCause() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cause
}

func (c *conn) localAddr() net.Addr { return c.tc.LocalAddr() }
