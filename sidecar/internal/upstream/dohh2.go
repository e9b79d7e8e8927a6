package upstream

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/rawconn"
)

// h2Conn is the client side of one HTTP/2 connection (RFC 9113), as much of
// it as DNS over HTTPS needs: requests whose body is one DNS message, and
// answers of at most one. It works as the DoT connection does (conn.go): a
// query registers its stream and appends its frames to a buffer under the
// connection's lock, one writer goroutine sends what the streams made
// runnable together have queued in one TLS record and one system call, and
// one reader goroutine hands each answer to its stream's channel. No
// goroutine is started per query, and a query costs a few allocations.
//
// (Go's HTTP/2 client, net/http's, starts a goroutine per request, builds
// and validates a header map both ways, copies the request, and allocates
// a 1 KiB body buffer per response that it never reuses: the relay spent
// more CPU in it than in everything else a query does.)
//
// The TLS is the DoT client's (tlsUpstream.dial): verified, with ALPN h2
// negotiated, before this sees it. Header compression is x/net's HPACK.
type h2Conn struct {
	tc   *tls.Conn // nil in tests of the frame handling alone
	name string    // the upstream's, in errors

	// peerMaxStreams is the server's SETTINGS_MAX_CONCURRENT_STREAMS
	// (unlimited until it says), read lock-free by the pool's picker.
	peerMaxStreams atomic.Uint32
	// usable turns false once the connection takes no new streams: dead,
	// or told to go away.
	usable atomic.Bool

	mu           sync.Mutex
	pending      []byte               // frames not yet written
	streams      map[uint32]*h2Stream // open streams by ID
	blocked      []*h2Stream          // request bodies waiting for flow-control window, in order
	nextID       uint32
	enc          *hpack.Encoder // writes into hdr
	hdr          bytes.Buffer   // header block being encoded
	sendWindow   int64          // the connection's, for request bodies
	peerInitWin  int64          // the server's SETTINGS_INITIAL_WINDOW_SIZE
	peerMaxFrame int            // the server's SETTINGS_MAX_FRAME_SIZE
	goAway       bool           // the server sent GOAWAY: no new streams
	err          error          // why the connection ended; nil while it lives

	wake chan struct{} // tells the writer there is something pending
	done chan struct{} // closed when the connection ends
	hard atomic.Bool   // skip the polite close: the peer is gone

	// socketClosed is set, and afterClose called, once the writer has
	// closed the socket (onSocketClosed).
	socketClosed bool
	afterClose   func()

	// The server's connection preface: settings is closed once its first
	// frame has come (or the connection ended first), and prefaceErr says
	// what was wrong with it.
	settings   chan struct{}
	prefaceErr error

	// Reader only.
	dec         *hpack.Decoder
	gotPreface  bool
	decoded     h2Result // the fields of the header block being decoded
	hdrErr      string   // what is wrong with that header block, if anything
	hdrSize     int      // its decoded size, for h2MaxHeaderList
	block       []byte   // a header block spread over CONTINUATION frames
	blockStream uint32   // its stream; 0 when none is open
	blockFlags  byte     // its HEADERS frame's flags
	recvUnacked int      // DATA bytes read since the last connection WINDOW_UPDATE
	frame       [h2FrameHeaderLen]byte
	payload     []byte
}

// h2Stream is one request and its answer. Streams are reused through
// streamPool; done has room for exactly one result, sent by whoever removes
// the stream from the connection's table. Everything else in it is the
// connection's, under its mu, while the stream is in the table: a stream
// given up on may be reused at once, while the reader is still busy with a
// frame for it.
type h2Stream struct {
	id     uint32
	done   chan h2Result
	body   []byte // request body not yet sent (flow control), or nil
	window int64  // the stream's send window, while body waits

	res   h2Result // the response so far
	final bool     // its final (non-1xx) header block has come
}

// h2Result is how a stream ended: a response (status, content type,
// length and body) or err.
type h2Result struct {
	status        int
	contentType   string
	contentTypes  int   // how many content-type fields came
	contentLength int64 // -1 when absent
	body          []byte
	err           error
}

var streamPool = sync.Pool{New: func() any { return &h2Stream{done: make(chan h2Result, 1)} }}

// errGoAway fails a stream the server will not process: it sent GOAWAY
// with a last stream ID below it, or before the stream was opened.
var errGoAway = errors.New("GOAWAY from the server before this stream was processed")

// h2BodyError is a response the reader refused for its body or headers
// (too large, longer than announced, malformed); the stream was reset.
type h2BodyError struct{ why string }

func (e h2BodyError) Error() string { return e.why }

func newH2Conn(tc *tls.Conn, name string) *h2Conn {
	h := &h2Conn{
		tc:           tc,
		name:         name,
		streams:      make(map[uint32]*h2Stream),
		nextID:       1,
		sendWindow:   h2DefaultWindow,
		peerInitWin:  h2DefaultWindow,
		peerMaxFrame: h2MaxFrameSize,
		wake:         make(chan struct{}, 1),
		done:         make(chan struct{}),
		settings:     make(chan struct{}),
		payload:      make([]byte, h2MaxFrameSize),
	}
	h.peerMaxStreams.Store(math.MaxUint32)
	h.usable.Store(true)
	h.enc = hpack.NewEncoder(&h.hdr)
	h.dec = hpack.NewDecoder(h2HeaderTableSize, h.field)
	h.dec.SetMaxStringLength(h2MaxHeaderList)
	h.pending = appendClientPreface(h.pending)
	return h
}

// start runs the writer and the reader, each signing off on wg. The writer
// sends the client preface at once.
func (h *h2Conn) start(wg *sync.WaitGroup) {
	wg.Add(2)
	go func() {
		defer wg.Done()
		h.writeLoop()
	}()
	go func() {
		defer wg.Done()
		err := h.readFrames(bufio.NewReaderSize(h.tc, readBufSize))
		// After a protocol error of the server's, the writer sends the
		// GOAWAY that says so before it closes; a read that failed
		// leaves nothing to say.
		var ce h2ConnError
		h.fail(fmt.Errorf("reading from %s: %w", h.name, err), !errors.As(err, &ce))
	}()
	h.signal()
}

func (h *h2Conn) signal() {
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// Err is why the connection ended, or nil while it lives.
func (h *h2Conn) Err() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err
}

// request is what a query sends: :path, and the body of a POST (nil for a
// GET, whose path carries the query).
type h2Request struct {
	authority string
	path      string
	q         *dnswire.Msg         // POST: its message with ID 0 is the body,
	rewrite   dnswire.QueryRewrite // rewritten so (AppendQuery)
}

// paddedLengths are the content-length values of padded queries, a few
// blocks long, formatted once: strconv makes a new string of every number
// of three digits or more, an allocation per query.
var paddedLengths = func() (l [4]string) {
	for i := range l {
		l[i] = strconv.Itoa((i + 1) * dnswire.PadBlock)
	}
	return l
}()

// contentLength formats n, a query's length.
func contentLength(n int) string {
	if i := n/dnswire.PadBlock - 1; n%dnswire.PadBlock == 0 && i >= 0 && i < len(paddedLengths) {
		return paddedLengths[i]
	}
	return strconv.Itoa(n)
}

// roundTrip sends r on a new stream and waits for its answer or for ctx. A
// stream given up on is reset, and whatever the server still sends on it
// is dropped.
func (h *h2Conn) roundTrip(ctx context.Context, r *h2Request) h2Result {
	s := streamPool.Get().(*h2Stream)
	if err := h.open(s, r); err != nil {
		streamPool.Put(s)
		return h2Result{err: err}
	}
	var res h2Result
	select {
	case res = <-s.done:
	case <-ctx.Done():
		if h.cancel(s) {
			streamPool.Put(s)
			return h2Result{err: errCanceled}
		}
		res = <-s.done // answered meanwhile: its result is on its way
	}
	streamPool.Put(s)
	return res
}

// errCanceled is a stream given up on by its caller; the caller knows why.
var errCanceled = errors.New("stream canceled")

// open registers s and queues its HEADERS and, for a POST, its DATA.
func (h *h2Conn) open(s *h2Stream, r *h2Request) error {
	h.mu.Lock()
	switch {
	case h.err != nil:
		err := h.err
		h.mu.Unlock()
		return err
	case h.goAway:
		h.mu.Unlock()
		return errGoAway
	case h.nextID > h2MaxStreamID:
		// Every stream ID is used: the connection takes no more.
		h.goAway = true
		h.usable.Store(false)
		h.mu.Unlock()
		return errGoAway
	}
	s.id, s.body, s.final = h.nextID, nil, false
	s.res = h2Result{contentLength: -1}
	h.nextID += 2
	h.streams[s.id] = s
	wasEmpty := len(h.pending) == 0

	h.hdr.Reset()
	method := "GET"
	if r.q != nil {
		method = "POST"
	}
	h.writeField(":method", method, false)
	h.writeField(":scheme", "https", false)
	h.writeField(":authority", r.authority, false)
	// A GET's path is new every time: indexing it would only churn the
	// server's table.
	h.writeField(":path", r.path, r.q == nil)
	h.writeField("accept", dnsMessage, false)
	if r.q == nil {
		h.pending = appendHeaderBlock(h.pending, s.id, h.hdr.Bytes(), true, h.peerMaxFrame)
	} else {
		n := r.q.QueryLen(r.rewrite)
		h.writeField("content-type", dnsMessage, false)
		h.writeField("content-length", contentLength(n), true)
		h.pending = appendHeaderBlock(h.pending, s.id, h.hdr.Bytes(), false, h.peerMaxFrame)
		if len(h.blocked) == 0 && int64(n) <= min(h.sendWindow, h.peerInitWin) && n <= h.peerMaxFrame {
			// The usual case: the message goes straight into the frame.
			h.sendWindow -= int64(n)
			h.pending = appendFrameHeader(h.pending, n, h2FrameData, h2FlagEndStream, s.id)
			h.pending = r.q.AppendQuery(h.pending, 0, r.rewrite)
		} else {
			s.body, s.window = r.q.AppendQuery(nil, 0, r.rewrite), h.peerInitWin
			h.blocked = append(h.blocked, s)
			h.sendBlockedLocked()
		}
	}
	h.mu.Unlock()
	if wasEmpty {
		// Only the stream that finds the queue empty wakes the writer;
		// later ones ride along in the same write.
		h.signal()
	}
	return nil
}

func (h *h2Conn) writeField(name, value string, sensitive bool) {
	// hpack writes into a bytes.Buffer, which does not fail.
	_ = h.enc.WriteField(hpack.HeaderField{Name: name, Value: value, Sensitive: sensitive})
}

// sendBlockedLocked sends what the flow-control windows allow of the
// request bodies waiting for them, in order. Called with mu held.
func (h *h2Conn) sendBlockedLocked() {
	for len(h.blocked) > 0 && h.sendWindow > 0 {
		s := h.blocked[0]
		for len(s.body) > 0 {
			n := int(min(int64(len(s.body)), h.sendWindow, s.window, int64(h.peerMaxFrame)))
			if n <= 0 {
				return // this stream's window is shut: the others wait behind it
			}
			flags := byte(0)
			if n == len(s.body) {
				flags = h2FlagEndStream
			}
			h.pending = appendFrameHeader(h.pending, n, h2FrameData, flags, s.id)
			h.pending = append(h.pending, s.body[:n]...)
			s.body = s.body[n:]
			h.sendWindow -= int64(n)
			s.window -= int64(n)
		}
		s.body = nil
		h.blocked = h.blocked[1:]
	}
}

func (h *h2Conn) unblockLocked(s *h2Stream) {
	for i, b := range h.blocked {
		if b == s {
			h.blocked = append(h.blocked[:i], h.blocked[i+1:]...)
			s.body = nil
			return
		}
	}
}

// cancel withdraws s (its caller gave up) and resets its stream. It reports
// false when s is no longer open, which means its result is on its way.
func (h *h2Conn) cancel(s *h2Stream) bool {
	h.mu.Lock()
	if h.streams[s.id] != s {
		h.mu.Unlock()
		return false
	}
	delete(h.streams, s.id)
	h.unblockLocked(s)
	wasEmpty := len(h.pending) == 0
	if h.err == nil {
		h.pending = appendRSTStream(h.pending, s.id, h2Cancel)
	}
	h.mu.Unlock()
	if wasEmpty {
		h.signal()
	}
	return true
}

// close ends the connection from this side: a GOAWAY and close_notify
// when it is not already broken. Open streams fail with err.
func (h *h2Conn) close(err error) {
	h.mu.Lock()
	if h.err == nil {
		h.pending = appendGoAway(h.pending, h2NoError)
	}
	h.mu.Unlock()
	h.fail(err, false)
}

// fail ends the connection once: every open stream gets err, and the
// writer closes the socket (at once when hard).
func (h *h2Conn) fail(err error, hard bool) {
	h.mu.Lock()
	if h.err != nil {
		h.mu.Unlock()
		return
	}
	h.err = err
	h.usable.Store(false)
	orphans := h.streams
	h.streams = nil
	h.blocked = nil
	h.mu.Unlock()
	if hard {
		h.hard.Store(true)
		if h.tc != nil {
			// Unblocks the reader and any write in progress.
			_ = h.tc.NetConn().Close()
		}
	}
	close(h.done)
	// A connection ended before the server's first frame tells the dial
	// (once that frame came, this does nothing).
	h.endPreface(fmt.Errorf("connection ended before the server's SETTINGS: %w", err))
	for _, s := range orphans {
		s.done <- h2Result{err: err}
	}
}

// endPreface reports the server's first frame (or its absence) once.
func (h *h2Conn) endPreface(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	select {
	case <-h.settings:
	default:
		h.prefaceErr = err
		close(h.settings)
	}
}

func (h *h2Conn) writeLoop() {
	var buf []byte
	for {
		select {
		case <-h.wake:
		case <-h.done:
			h.closeSocket()
			return
		}
		// Let the streams made runnable with the one that woke us queue
		// their frames first (see rawconn.YieldToBatch).
		rawconn.YieldToBatch()
		h.mu.Lock()
		buf, h.pending = h.pending, buf[:0]
		h.mu.Unlock()
		if len(buf) == 0 {
			continue
		}
		_ = h.tc.SetWriteDeadline(time.Now().Add(writeTimeout))
		if _, err := h.tc.Write(buf); err != nil {
			h.fail(fmt.Errorf("writing to %s: %w", h.name, err), true)
			h.closeSocket()
			return
		}
		if cap(buf) > maxSpareWriteBuf {
			buf = nil
		}
	}
}

// closeSocket closes the TLS connection: after the frames still pending
// (the GOAWAY of a close) and close_notify, unless the peer is gone, each
// bounded by closeNotifyTimeout.
func (h *h2Conn) closeSocket() {
	defer h.socketDone()
	if h.hard.Load() {
		_ = h.tc.Close() // the socket is closed already; this releases the TLS side
		return
	}
	h.mu.Lock()
	last := h.pending
	h.pending = nil
	h.mu.Unlock()
	closePolitely(h.tc, last)
}

// onSocketClosed has f called once the socket is closed: at once if it is.
// The pool frees a connection's slot then, not when it decides to close it:
// a replacement dialed while the old socket still sends its GOAWAY and
// close_notify would be one connection more than the pool allows.
func (h *h2Conn) onSocketClosed(f func()) {
	h.mu.Lock()
	if !h.socketClosed {
		h.afterClose = f
		h.mu.Unlock()
		return
	}
	h.mu.Unlock()
	f()
}

func (h *h2Conn) socketDone() {
	h.mu.Lock()
	h.socketClosed = true
	f := h.afterClose
	h.afterClose = nil
	h.mu.Unlock()
	if f != nil {
		f()
	}
}

// readFrames reads and handles frames until the connection fails, and
// returns why.
func (h *h2Conn) readFrames(r io.Reader) error {
	for {
		if _, err := io.ReadFull(r, h.frame[:]); err != nil {
			return err
		}
		fh := parseFrameHeader(h.frame[:])
		if fh.length > h2MaxFrameSize {
			return h.connError(connErr(h2FrameSizeError, "frame of %d bytes, above %d", fh.length, h2MaxFrameSize))
		}
		p := h.payload[:fh.length]
		if _, err := io.ReadFull(r, p); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		if err := h.handle(fh, p); err != nil {
			return h.connError(err)
		}
	}
}

// connError ends the connection after an error of the server's: a GOAWAY
// with the code says why, when the error is a protocol one.
func (h *h2Conn) connError(err error) error {
	var ce h2ConnError
	if errors.As(err, &ce) {
		h.mu.Lock()
		if h.err == nil {
			h.pending = appendGoAway(h.pending, ce.code)
		}
		h.mu.Unlock()
	}
	return err
}

// handle acts on one frame; an error is a connection error.
func (h *h2Conn) handle(fh h2FrameHeader, p []byte) error {
	if !h.gotPreface {
		h.gotPreface = true
		if fh.typ != h2FrameSettings || fh.flags&h2FlagAck != 0 {
			err := errors.New("the server's first frame is not SETTINGS: not HTTP/2")
			h.endPreface(err)
			return err
		}
		err := h.settingsFrame(fh, p)
		if err == nil && h.peerMaxStreams.Load() == 0 {
			err = errors.New("the server allows no streams")
		}
		h.endPreface(err)
		return err
	}
	if h.blockStream != 0 && fh.typ != h2FrameContinuation {
		return connErr(h2ProtocolError, "frame of type %d inside a header block", fh.typ)
	}
	switch fh.typ {
	case h2FrameData:
		return h.dataFrame(fh, p)
	case h2FrameHeaders:
		return h.headersFrame(fh, p)
	case h2FrameContinuation:
		return h.continuationFrame(fh, p)
	case h2FramePriority:
		if fh.stream == 0 {
			return connErr(h2ProtocolError, "PRIORITY on stream 0")
		}
		return nil
	case h2FrameRSTStream:
		if fh.stream == 0 {
			return connErr(h2ProtocolError, "RST_STREAM on stream 0")
		}
		if len(p) != 4 {
			return connErr(h2FrameSizeError, "RST_STREAM of %d bytes", len(p))
		}
		if err := h.checkOpened(fh.stream); err != nil {
			return err
		}
		h.finish(fh.stream, h2Result{err: h2StreamError{StreamID: fh.stream, Code: binary.BigEndian.Uint32(p)}})
		return nil
	case h2FrameSettings:
		return h.settingsFrame(fh, p)
	case h2FramePushPromise:
		return connErr(h2ProtocolError, "PUSH_PROMISE, with push disabled")
	case h2FramePing:
		if fh.stream != 0 {
			return connErr(h2ProtocolError, "PING on stream %d", fh.stream)
		}
		if len(p) != 8 {
			return connErr(h2FrameSizeError, "PING of %d bytes", len(p))
		}
		if fh.flags&h2FlagAck == 0 {
			h.queue(func(b []byte) []byte {
				b = appendFrameHeader(b, 8, h2FramePing, h2FlagAck, 0)
				return append(b, p...)
			})
		}
		return nil
	case h2FrameGoAway:
		if fh.stream != 0 {
			return connErr(h2ProtocolError, "GOAWAY on stream %d", fh.stream)
		}
		if len(p) < 8 {
			return connErr(h2FrameSizeError, "GOAWAY of %d bytes", len(p))
		}
		h.goAwayFrame(binary.BigEndian.Uint32(p) & h2MaxStreamID)
		return nil
	case h2FrameWindowUpdate:
		return h.windowUpdateFrame(fh, p)
	}
	return nil // unknown frame types are ignored (RFC 9113 §4.1)
}

// queue appends a frame the server's frames call for (a PING's or SETTINGS'
// acknowledgement, a WINDOW_UPDATE) for the writer, unless the connection
// is over. A server that sends such frames without reading ours would grow
// the backlog without end: past maxPending the connection ends.
func (h *h2Conn) queue(appendFrame func([]byte) []byte) {
	h.mu.Lock()
	if h.err != nil {
		h.mu.Unlock()
		return
	}
	if len(h.pending) > maxPending {
		h.mu.Unlock()
		h.fail(fmt.Errorf("%s: %w", h.name, errBacklog), true)
		return
	}
	wasEmpty := len(h.pending) == 0
	h.pending = appendFrame(h.pending)
	h.mu.Unlock()
	if wasEmpty {
		h.signal()
	}
}

// maxPending bounds the frames waiting for the writer. Queries cannot
// reach it (the pool bounds the streams, flow control their bodies); a
// server that has stopped reading while it makes us answer its frames can.
const maxPending = 4 << 20

var errBacklog = errors.New("upstream not reading: write backlog full")

// checkOpened refuses a frame for a stream this client never opened (even
// IDs are the server's, which may open none).
func (h *h2Conn) checkOpened(id uint32) error {
	h.mu.Lock()
	next := h.nextID
	h.mu.Unlock()
	if id%2 == 0 || id >= next {
		return connErr(h2ProtocolError, "frame for stream %d, which was never opened", id)
	}
	return nil
}

// finish ends stream id with res, if it is still open.
func (h *h2Conn) finish(id uint32, res h2Result) {
	h.mu.Lock()
	s := h.streams[id]
	if s == nil {
		h.mu.Unlock()
		return
	}
	h.endLocked(s, false)
	h.mu.Unlock()
	s.done <- res
}

// endLocked removes s from the open streams, for its result to be sent on
// s.done once mu is released; reset also resets the stream at the server,
// which has more to send on it. Called with mu held.
func (h *h2Conn) endLocked(s *h2Stream, reset bool) {
	delete(h.streams, s.id)
	h.unblockLocked(s)
	if reset && h.err == nil {
		if len(h.pending) == 0 {
			defer h.signal() // a buffered channel: no lock is taken
		}
		h.pending = appendRSTStream(h.pending, s.id, h2Cancel)
	}
}

func (h *h2Conn) settingsFrame(fh h2FrameHeader, p []byte) error {
	if fh.stream != 0 {
		return connErr(h2ProtocolError, "SETTINGS on stream %d", fh.stream)
	}
	if fh.flags&h2FlagAck != 0 {
		if len(p) != 0 {
			return connErr(h2FrameSizeError, "SETTINGS ACK of %d bytes", len(p))
		}
		return nil
	}
	if len(p)%h2SettingLen != 0 {
		return connErr(h2FrameSizeError, "SETTINGS of %d bytes", len(p))
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for ; len(p) > 0; p = p[h2SettingLen:] {
		id, v := binary.BigEndian.Uint16(p), binary.BigEndian.Uint32(p[2:])
		switch id {
		case h2SettingHeaderTableSize:
			h.enc.SetMaxDynamicTableSizeLimit(v)
		case h2SettingEnablePush:
			if v > 1 {
				return connErr(h2ProtocolError, "SETTINGS_ENABLE_PUSH %d", v)
			}
		case h2SettingMaxStreams:
			h.peerMaxStreams.Store(v)
		case h2SettingInitialWindowSize:
			if v > h2MaxWindow {
				return connErr(h2FlowControlError, "SETTINGS_INITIAL_WINDOW_SIZE %d", v)
			}
			// The change applies to every stream's window (§6.9.2); only
			// those with a body left to send still use theirs.
			delta := int64(v) - h.peerInitWin
			h.peerInitWin = int64(v)
			for _, s := range h.blocked {
				s.window += delta
			}
		case h2SettingMaxFrameSize:
			if v < h2MaxFrameSize || v > 1<<24-1 {
				return connErr(h2ProtocolError, "SETTINGS_MAX_FRAME_SIZE %d", v)
			}
			h.peerMaxFrame = int(v)
		}
	}
	if len(h.pending) > maxPending {
		return fmt.Errorf("%s: %w", h.name, errBacklog) // see queue
	}
	if h.err == nil {
		wasEmpty := len(h.pending) == 0
		h.pending = appendFrameHeader(h.pending, 0, h2FrameSettings, h2FlagAck, 0)
		h.sendBlockedLocked()
		if wasEmpty {
			h.signal()
		}
	}
	return nil
}

func (h *h2Conn) windowUpdateFrame(fh h2FrameHeader, p []byte) error {
	if len(p) != 4 {
		return connErr(h2FrameSizeError, "WINDOW_UPDATE of %d bytes", len(p))
	}
	inc := int64(binary.BigEndian.Uint32(p) & h2MaxWindow)
	if fh.stream != 0 {
		if err := h.checkOpened(fh.stream); err != nil {
			return err
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if fh.stream == 0 {
		if inc == 0 || h.sendWindow+inc > h2MaxWindow {
			return connErr(h2FlowControlError, "connection WINDOW_UPDATE of %d to %d", inc, h.sendWindow)
		}
		h.sendWindow += inc
	} else if s := h.streams[fh.stream]; s != nil && s.body != nil {
		s.window += inc
	}
	if h.err == nil && len(h.blocked) > 0 {
		wasEmpty := len(h.pending) == 0
		h.sendBlockedLocked()
		if wasEmpty && len(h.pending) > 0 {
			h.signal()
		}
	}
	return nil
}

// goAwayFrame stops new streams, and fails those above last, which the
// server will not process: they can go out again on another connection.
// The others are still answered.
func (h *h2Conn) goAwayFrame(last uint32) {
	h.mu.Lock()
	h.goAway = true
	h.usable.Store(false)
	var unprocessed []*h2Stream
	for id, s := range h.streams {
		if id > last {
			delete(h.streams, id)
			h.unblockLocked(s)
			unprocessed = append(unprocessed, s)
		}
	}
	h.mu.Unlock()
	for _, s := range unprocessed {
		s.done <- h2Result{err: errGoAway}
	}
}

func (h *h2Conn) dataFrame(fh h2FrameHeader, p []byte) error {
	if fh.stream == 0 {
		return connErr(h2ProtocolError, "DATA on stream 0")
	}
	if err := h.checkOpened(fh.stream); err != nil {
		return err
	}
	// Flow control counts the whole payload, padding included, whatever
	// becomes of it. The window is topped up once half of it is used.
	if h.recvUnacked += fh.length; h.recvUnacked >= h2ConnWindow/2 {
		n := h.recvUnacked
		h.recvUnacked = 0
		h.queue(func(b []byte) []byte { return appendWindowUpdate(b, 0, uint32(n)) })
	}
	data, err := unpad(fh, p)
	if err != nil {
		return connErr(h2ProtocolError, "DATA: %v", err)
	}
	endStream := fh.flags&h2FlagEndStream != 0
	h.mu.Lock()
	s := h.streams[fh.stream]
	if s == nil {
		h.mu.Unlock()
		return nil // given up on
	}
	r := &s.res
	var res h2Result
	switch {
	case !s.final:
		res.err = h2BodyError{"DATA before the response's headers"}
	case len(r.body)+len(data) > dnswire.MaxMsgSize:
		res.err = h2BodyError{"body longer than the 65535 bytes of a DNS message"}
	case r.contentLength >= 0 && int64(len(r.body)+len(data)) > r.contentLength:
		res.err = h2BodyError{"body longer than its Content-Length"}
	case r.body == nil && endStream:
		// The whole body in one frame, as usual: the caller gets its own
		// exact-size copy.
		r.body = make([]byte, len(data))
		copy(r.body, data)
	default:
		r.body = append(r.body, data...)
	}
	if res.err == nil && !endStream {
		h.mu.Unlock()
		return nil
	}
	if res.err == nil {
		res = *r
	}
	h.endLocked(s, !endStream)
	h.mu.Unlock()
	s.done <- res
	return nil
}

func (h *h2Conn) headersFrame(fh h2FrameHeader, p []byte) error {
	if fh.stream == 0 {
		return connErr(h2ProtocolError, "HEADERS on stream 0")
	}
	if err := h.checkOpened(fh.stream); err != nil {
		return err
	}
	block, err := unpad(fh, p)
	if err != nil {
		return connErr(h2ProtocolError, "HEADERS: %v", err)
	}
	if fh.flags&h2FlagPriority != 0 {
		if len(block) < 5 {
			return connErr(h2ProtocolError, "HEADERS with PRIORITY in %d bytes", len(block))
		}
		block = block[5:]
	}
	if fh.flags&h2FlagEndHeaders == 0 {
		h.block = append(h.block[:0], block...)
		h.blockStream, h.blockFlags = fh.stream, fh.flags
		return nil
	}
	return h.headerBlock(fh.stream, fh.flags, block)
}

func (h *h2Conn) continuationFrame(fh h2FrameHeader, p []byte) error {
	if h.blockStream == 0 || fh.stream != h.blockStream {
		return connErr(h2ProtocolError, "CONTINUATION on stream %d outside a header block", fh.stream)
	}
	if len(h.block)+len(p) > h2MaxHeaderList*4 {
		return connErr(h2ProtocolError, "header block above %d bytes", h2MaxHeaderList*4)
	}
	h.block = append(h.block, p...)
	if fh.flags&h2FlagEndHeaders == 0 {
		return nil
	}
	id, flags := h.blockStream, h.blockFlags
	h.blockStream = 0
	err := h.headerBlock(id, flags, h.block)
	if cap(h.block) > h2MaxFrameSize {
		h.block = nil
	}
	return err
}

// headerBlock decodes a complete header block of stream id (always, for
// the decoder's table) and acts on it: an informational response is
// skipped; a final one ends the stream when it ends the stream, or when it
// cannot lead to an answer (a status other than 200, another content type,
// a length above a DNS message's), and otherwise opens its body; trailers
// end the stream.
func (h *h2Conn) headerBlock(id uint32, flags byte, block []byte) error {
	h.decoded, h.hdrErr, h.hdrSize = h2Result{contentLength: -1}, "", 0
	_, err := h.dec.Write(block)
	if err == nil {
		err = h.dec.Close()
	}
	if err != nil {
		return connErr(h2CompressionError, "%v", err)
	}
	endStream := flags&h2FlagEndStream != 0
	h.mu.Lock()
	s := h.streams[id]
	if s == nil {
		h.mu.Unlock()
		return nil // given up on
	}
	hr := &h.decoded
	var res h2Result
	done := true
	switch {
	case h.hdrErr != "":
		res.err = h2BodyError{h.hdrErr}
	case s.final: // trailers
		if endStream {
			res = s.res
		} else {
			res.err = h2BodyError{"trailers that do not end the stream"}
		}
	case hr.status == 0:
		res.err = h2BodyError{"response without :status"}
	case hr.status < 200:
		res.err = h2BodyError{"informational response ends the stream"}
		done = endStream // else the final response follows
	case hr.status != 200 || hr.contentTypes != 1 || !isDNSMessage(hr.contentType):
		// Not an answer, whatever the body says: the caller reports it.
		res = *hr
	case hr.contentLength > dnswire.MaxMsgSize:
		res.err = h2BodyError{fmt.Sprintf("body of %d bytes, above the 65535 of a DNS message", hr.contentLength)}
	default:
		s.final, s.res = true, *hr
		if endStream {
			res = s.res
		} else {
			done = false
			if hr.contentLength > 0 {
				s.res.body = make([]byte, 0, hr.contentLength)
			}
		}
	}
	if done {
		h.endLocked(s, !endStream)
	}
	h.mu.Unlock()
	if done {
		s.done <- res
	}
	return nil
}

// field takes one decoded header field of the block being decoded.
func (h *h2Conn) field(f hpack.HeaderField) {
	if h.hdrSize += int(f.Size()); h.hdrSize > h2MaxHeaderList && h.hdrErr == "" {
		h.hdrErr = fmt.Sprintf("response headers above %d bytes", h2MaxHeaderList)
	}
	if h.hdrErr != "" {
		return
	}
	r := &h.decoded
	switch f.Name {
	case ":status":
		n, err := strconv.Atoi(f.Value)
		if err != nil || len(f.Value) != 3 || n < 100 || r.status != 0 {
			h.hdrErr = fmt.Sprintf(":status %q", f.Value)
			return
		}
		r.status = n
	case "content-type":
		r.contentTypes++
		if r.contentTypes == 1 {
			r.contentType = f.Value
		}
	case "content-length":
		n, err := strconv.ParseInt(f.Value, 10, 64)
		if err != nil || n < 0 || (r.contentLength >= 0 && n != r.contentLength) {
			h.hdrErr = fmt.Sprintf("content-length %q", f.Value)
			return
		}
		r.contentLength = n
	}
}
