package dnstest

import (
	"bufio"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

func sha256Sum(b []byte) [32]byte { return sha256.Sum256(b) }

// frame is a length-prefixed message on its way out. answer marks the frame
// that settles a query (not a spoiled copy sent before the real answer).
type frame struct {
	b      []byte
	answer bool
}

var framePool = sync.Pool{New: func() any { return &frame{b: make([]byte, 0, 512)} }}

func getFrame() *frame { f := framePool.Get().(*frame); f.b, f.answer = f.b[:0], false; return f }

// closeFrame, queued after the last answer, makes the writer close the
// connection once everything before it is written.
var closeFrame = new(frame)

// session is one client connection: a reader that parses queries and
// produces answers, and a writer that coalesces them. Delayed answers each
// get a timer goroutine; fine for a test server.
type session struct {
	s       *Server
	raw     net.Conn
	tc      *tls.Conn
	out     chan *frame
	quit    chan struct{} // closed when either side ends
	once    sync.Once
	wg      sync.WaitGroup
	delayed sync.WaitGroup // answers waiting out DelayNanos

	n     int32    // queries read on this connection
	batch []*frame // answers held for ReverseBatch
	// resetFirst: this connection took one of ResetNextConns, and is reset
	// on reading its first query.
	resetFirst bool

	outstanding atomic.Int64 // queries read and not yet answered
	lastAnswer  atomic.Int64 // unix nanos of the last answer written
}

func newSession(s *Server, raw net.Conn, tc *tls.Conn) *session {
	return &session{s: s, raw: raw, tc: tc, out: make(chan *frame, 1024), quit: make(chan struct{}),
		resetFirst: takeOne(&s.Behavior.ResetNextConns)}
}

// takeOne takes one from n if it is above zero, and reports whether it did.
func takeOne(n *atomic.Int32) bool {
	for {
		v := n.Load()
		if v <= 0 {
			return false
		}
		if n.CompareAndSwap(v, v-1) {
			return true
		}
	}
}

func (c *session) stop() { c.once.Do(func() { close(c.quit) }) }

func (c *session) serve() {
	c.wg.Add(1)
	go c.writeLoop()
	if !c.readLoop() {
		c.stop()
	}
	c.wg.Wait()
}

// readLoop reads and answers queries. It returns true when it queued
// closeFrame, so that the writer ends the connection after the last answer.
func (c *session) readLoop() bool {
	br := bufio.NewReaderSize(c.tc, 64<<10)
	var lenBuf [2]byte
	var msg []byte
	for {
		idle, err := c.readLength(br, lenBuf[:])
		if idle {
			// Closed as the keepalive announced: close_notify, then FIN.
			c.s.idleClosed.Add(1)
			c.enqueue(closeFrame)
			return true
		}
		if err != nil {
			return false
		}
		n := int(binary.BigEndian.Uint16(lenBuf[:]))
		msg = slices.Grow(msg[:0], n)[:n]
		if _, err := io.ReadFull(br, msg); err != nil {
			return false
		}
		c.s.queries.Add(1)
		c.n++
		b := &c.s.Behavior
		if r := b.ResetAfter.Load(); (r > 0 && c.n >= r) || c.resetFirst {
			c.reset()
			return false
		}
		if !b.Drop.Load() {
			c.answer(msg)
		}
		if ca := b.CloseAfter.Load(); ca > 0 && c.n >= ca {
			c.flushBatch()
			// Close after the answers, delayed ones included: they are
			// already owed.
			c.wg.Add(1)
			go func() {
				defer c.wg.Done()
				c.delayed.Wait()
				c.enqueue(closeFrame)
			}()
			return true
		}
	}
}

// readLength reads the next frame's length prefix into lenBuf. With a
// keepalive announced, it reports idle instead once nothing has been read
// or answered for that long, with nothing outstanding: the idle time starts
// at the last query read or answer written, whichever is later.
func (c *session) readLength(br *bufio.Reader, lenBuf []byte) (idle bool, err error) {
	since := time.Now()
	for {
		ka := time.Duration(c.s.Behavior.KeepaliveNanos.Load())
		if ka > 0 {
			_ = c.tc.SetReadDeadline(since.Add(ka))
		}
		n, err := io.ReadFull(br, lenBuf)
		if ka > 0 {
			_ = c.tc.SetReadDeadline(time.Time{})
		}
		if err == nil || n != 0 || ka <= 0 || !isTimeout(err) {
			return false, err
		}
		last := time.Unix(0, c.lastAnswer.Load())
		switch {
		case c.outstanding.Load() > 0:
			since = time.Now() // answers still owed: not idle yet
		case last.After(since):
			since = last
		default:
			return true, nil
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// reset sends a TCP RST: with linger 0, close discards unsent data and
// aborts the connection.
func (c *session) reset() {
	if tcp, ok := c.raw.(*net.TCPConn); ok {
		_ = tcp.SetLinger(0)
	}
	_ = c.raw.Close()
}

func (c *session) answer(query []byte) {
	f := getFrame()
	f.b = append(f.b, 0, 0)
	if c.s.raw != nil {
		f.b = c.s.raw(f.b, query)
	} else {
		f.b = c.handle(f.b, query)
	}
	if len(f.b) <= 2 {
		framePool.Put(f)
		return
	}
	binary.BigEndian.PutUint16(f.b, uint16(len(f.b)-2))
	f.answer = true
	c.s.noteOutstanding(c.outstanding.Add(1))

	b := &c.s.Behavior
	if m := Mangle(b.Mangle.Load()); m != MangleNone {
		bad := getFrame()
		bad.b = append(bad.b, f.b...)
		mangle(bad.b[2:], m)
		if !b.MangleThenAnswer.Load() {
			bad.answer = true
			framePool.Put(f)
			f = nil
		}
		c.emit(bad)
	}
	if f != nil {
		c.emit(f)
	}
}

// handle decodes query with miekg/dns, asks the Handler and appends the
// packed answer to dst.
func (c *session) handle(dst, query []byte) []byte {
	q := new(dns.Msg)
	if err := q.Unpack(query); err != nil {
		// Header readable: FORMERR, as a server would.
		if len(query) < 12 {
			return dst
		}
		q = &dns.Msg{}
		q.Id = binary.BigEndian.Uint16(query)
		r := new(dns.Msg)
		r.SetRcodeFormatError(q)
		packed, _ := r.Pack()
		return append(dst, packed...)
	}
	r := c.s.handler(q)
	if r == nil {
		return dst
	}
	if ka := time.Duration(c.s.Behavior.KeepaliveNanos.Load()); ka > 0 && offersKeepalive(q) {
		if r.IsEdns0() == nil {
			r.SetEdns0(dns.DefaultMsgSize, false)
		}
		opt := r.IsEdns0()
		opt.Option = append(opt.Option, &dns.EDNS0_TCP_KEEPALIVE{Code: dns.EDNS0TCPKEEPALIVE, Timeout: uint16(ka / (100 * time.Millisecond))})
	}
	packed, err := r.Pack()
	if err != nil {
		return dst
	}
	return append(dst, packed...)
}

// offersKeepalive reports whether q carries edns-tcp-keepalive.
func offersKeepalive(q *dns.Msg) bool {
	if opt := q.IsEdns0(); opt != nil {
		for _, o := range opt.Option {
			if o.Option() == dns.EDNS0TCPKEEPALIVE {
				return true
			}
		}
	}
	return false
}

func mangle(msg []byte, m Mangle) {
	if len(msg) < 12 {
		return
	}
	switch m {
	case MangleID:
		binary.BigEndian.PutUint16(msg, binary.BigEndian.Uint16(msg)+1)
	case MangleQuestion:
		// XOR 1 never turns a letter into its other case, so the name really
		// differs; for the root name, change the type instead.
		if len(msg) > 13 && msg[12] > 0 && msg[12] < 64 {
			msg[13] ^= 1
		} else if len(msg) > 14 {
			msg[14] ^= 1
		}
	}
}

// emit applies ReverseBatch and Delay to an answer, then queues it.
func (c *session) emit(f *frame) {
	if n := int(c.s.Behavior.ReverseBatch.Load()); n > 1 {
		c.batch = append(c.batch, f)
		if len(c.batch) < n {
			return
		}
		c.flushBatch()
		return
	}
	c.send(f)
}

func (c *session) flushBatch() {
	for i := len(c.batch) - 1; i >= 0; i-- {
		c.send(c.batch[i])
	}
	c.batch = c.batch[:0]
}

func (c *session) send(f *frame) {
	d := time.Duration(c.s.Behavior.DelayNanos.Load())
	if d <= 0 {
		c.enqueue(f)
		return
	}
	c.wg.Add(1)
	c.delayed.Add(1)
	go func() {
		defer c.wg.Done()
		defer c.delayed.Done()
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			c.enqueue(f)
		case <-c.quit:
		}
	}()
}

func (c *session) enqueue(f *frame) {
	select {
	case c.out <- f:
	case <-c.quit:
	}
}

func (c *session) writeLoop() {
	defer c.wg.Done()
	defer c.stop()
	bw := bufio.NewWriterSize(c.tc, 64<<10)
	for {
		var f *frame
		select {
		case f = <-c.out:
		case <-c.quit:
			return
		}
		for {
			if f == closeFrame {
				_ = bw.Flush()
				_ = c.tc.Close()
				return
			}
			if err := c.write(bw, f.b); err != nil {
				_ = c.raw.Close()
				return
			}
			if f.answer {
				c.lastAnswer.Store(time.Now().UnixNano())
				c.outstanding.Add(-1)
			}
			framePool.Put(f)
			// Coalesce whatever else is ready into the same flush.
			select {
			case f = <-c.out:
				continue
			default:
			}
			break
		}
		if err := bw.Flush(); err != nil {
			_ = c.raw.Close()
			return
		}
	}
}

func (c *session) write(bw *bufio.Writer, frame []byte) error {
	if !c.s.Behavior.SplitWrites.Load() || len(frame) < 4 {
		_, err := bw.Write(frame)
		return err
	}
	// Each flush is one TLS record: the client sees the prefix a byte at a
	// time, then the message in two pieces.
	half := 2 + (len(frame)-2)/2
	for _, piece := range [][]byte{frame[:1], frame[1:2], frame[2:half], frame[half:]} {
		if _, err := bw.Write(piece); err != nil {
			return err
		}
		if err := bw.Flush(); err != nil {
			return err
		}
	}
	return nil
}
