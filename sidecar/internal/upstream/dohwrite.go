package upstream

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/rawconn"
)

// batchedTLS is the connection HTTP/2 runs on for a DoH upstream: the
// verified TLS connection, with writes batched the way the DoT client
// batches its queries (conn.writeLoop).
//
// Go's HTTP/2 client writes each request from a goroutine of its own, and
// flushes twice per POST (HEADERS, then DATA): written straight to TLS,
// every query cost two TLS records, two system calls, and the stack growth
// of that goroutine through the TLS and socket code: about half of a
// query's CPU. Here a Write only appends to a buffer; one writer goroutine
// sends what the streams made runnable together have queued, as one TLS
// record in one system call, after letting them queue it
// (rawconn.YieldToBatch).
//
// HTTP/2 gets it as a connection it does not know to be TLS
// (newH2Transport: "prior knowledge" HTTP/2, which net/http speaks on any
// connection a DialTLSContext returns that is not a *tls.Conn). The TLS
// itself is the DoT client's (tlsUpstream.dial): verified, with ALPN h2
// negotiated, before HTTP/2 sees it; requests still carry :scheme https.
type batchedTLS struct {
	tc *tls.Conn

	mu      sync.Mutex
	pending []byte
	err     error // the first write error: every later Write fails with it
	closed  bool

	wake chan struct{} // tells the writer there is something pending
	quit chan struct{} // closed by Close
	done chan struct{} // closed when the writer has returned

	// The server's connection preface, its first SETTINGS frame (RFC 9113
	// §3.4), as the reader goroutine sees it go by: settings is closed once
	// it has, and then maxStreams is its SETTINGS_MAX_CONCURRENT_STREAMS (0
	// when absent) and prefaceErr says what was wrong with it, if anything.
	// Only the reader touches preface and prefaceDone.
	settings    chan struct{}
	maxStreams  uint32
	prefaceErr  error
	preface     []byte
	prefaceDone bool
}

// maxPending bounds what may wait for the writer: HTTP/2 flow control and
// stream limits keep a DoH client's backlog far below it, unless the
// upstream has stopped reading, which the writer's deadline ends.
const maxPending = 4 << 20

var errBacklog = errors.New("upstream not reading: write backlog full")

func newBatchedTLS(tc *tls.Conn) *batchedTLS {
	b := &batchedTLS{tc: tc, wake: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{}),
		settings: make(chan struct{})}
	go b.writeLoop()
	return b
}

// Write queues p. It never blocks on the network: errors of the write that
// carried earlier bytes come back on a later call, and end the connection
// (the reader then fails too).
func (b *batchedTLS) Write(p []byte) (int, error) {
	b.mu.Lock()
	switch {
	case b.err != nil:
		err := b.err
		b.mu.Unlock()
		return 0, err
	case len(b.pending)+len(p) > maxPending:
		b.err = errBacklog
		b.mu.Unlock()
		_ = b.tc.NetConn().Close()
		return 0, errBacklog
	}
	signal := len(b.pending) == 0
	b.pending = append(b.pending, p...)
	b.mu.Unlock()
	if signal {
		select {
		case b.wake <- struct{}{}:
		default:
		}
	}
	return len(p), nil
}

func (b *batchedTLS) writeLoop() {
	defer close(b.done)
	var buf []byte
	for {
		select {
		case <-b.wake:
		case <-b.quit:
			return
		}
		// Let the streams made runnable with the one that woke us queue
		// their frames first (see rawconn.YieldToBatch).
		rawconn.YieldToBatch()
		b.mu.Lock()
		buf, b.pending = b.pending, buf[:0]
		b.mu.Unlock()
		if len(buf) == 0 {
			continue
		}
		_ = b.tc.SetWriteDeadline(time.Now().Add(writeTimeout))
		if _, err := b.tc.Write(buf); err != nil {
			b.mu.Lock()
			b.err = fmt.Errorf("writing: %w", err)
			b.mu.Unlock()
			_ = b.tc.NetConn().Close() // the reader fails too: the connection is over
			return
		}
		if cap(buf) > maxSpareWriteBuf {
			buf = nil
		}
	}
}

// Read passes HTTP/2's reads through, watching for the server's preface.
func (b *batchedTLS) Read(p []byte) (int, error) {
	n, err := b.tc.Read(p)
	if !b.prefaceDone {
		b.watchPreface(p[:n], err)
	}
	return n, err
}

// h2 frame layout (RFC 9113 §4.1, §6.5).
const (
	h2FrameHeaderLen      = 9
	h2FrameSettings       = 0x4
	h2FlagAck             = 0x1
	h2SettingMaxStreams   = 0x3
	h2SettingLen          = 6
	h2MaxSettingsFrameLen = 16 << 10 // SETTINGS_MAX_FRAME_SIZE's floor: a preface never needs more
)

// watchPreface collects the first bytes the server sends until they hold
// its first frame, and reads the stream limit from it.
func (b *batchedTLS) watchPreface(p []byte, err error) {
	b.preface = append(b.preface, p...)
	done := func(max uint32, perr error) {
		b.maxStreams, b.prefaceErr, b.preface, b.prefaceDone = max, perr, nil, true
		close(b.settings)
	}
	if len(b.preface) < h2FrameHeaderLen {
		if err != nil {
			done(0, fmt.Errorf("connection ended before the server's SETTINGS: %w", err))
		}
		return
	}
	h := b.preface
	length := int(h[0])<<16 | int(h[1])<<8 | int(h[2])
	switch {
	case h[3] != h2FrameSettings || h[4]&h2FlagAck != 0 || length%h2SettingLen != 0 || length > h2MaxSettingsFrameLen:
		done(0, errors.New("the server's first frame is not SETTINGS: not HTTP/2"))
		return
	case len(h) < h2FrameHeaderLen+length:
		if err != nil {
			done(0, fmt.Errorf("connection ended inside the server's SETTINGS: %w", err))
		}
		return
	}
	var max uint32
	for off := h2FrameHeaderLen; off < h2FrameHeaderLen+length; off += h2SettingLen {
		if int(h[off])<<8|int(h[off+1]) == h2SettingMaxStreams {
			max = uint32(h[off+2])<<24 | uint32(h[off+3])<<16 | uint32(h[off+4])<<8 | uint32(h[off+5])
			if max == 0 {
				done(0, errors.New("the server allows no streams"))
				return
			}
		}
	}
	done(max, nil)
}

// Close ends the writer and closes the connection: what is still pending
// is dropped (a close only ever follows the last stream a caller cares
// about), and close_notify is bounded as for DoT.
func (b *batchedTLS) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.mu.Unlock()
	close(b.quit)
	// A writer blocked on an upstream that stopped reading, and the
	// close_notify after it, get closeNotifyTimeout between them.
	t := time.AfterFunc(closeNotifyTimeout, func() { _ = b.tc.NetConn().Close() })
	<-b.done
	err := b.tc.Close()
	t.Stop()
	return err
}

// ConnectionState lets HTTP/2 report the TLS state on responses.
func (b *batchedTLS) ConnectionState() tls.ConnectionState { return b.tc.ConnectionState() }

func (b *batchedTLS) LocalAddr() net.Addr                { return b.tc.LocalAddr() }
func (b *batchedTLS) RemoteAddr() net.Addr               { return b.tc.RemoteAddr() }
func (b *batchedTLS) SetDeadline(t time.Time) error      { return b.tc.SetReadDeadline(t) }
func (b *batchedTLS) SetReadDeadline(t time.Time) error  { return b.tc.SetReadDeadline(t) }
func (b *batchedTLS) SetWriteDeadline(t time.Time) error { return nil } // the writer sets its own
