package upstream

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/testpki"
)

// The HTTP/2 client (dohh2.go) is checked against x/net's framer and HPACK:
// what it writes must parse there, and what a server built on them sends
// must come out as the right result on the right stream. The connection
// runs without a socket: the test reads h.pending and feeds readFrames.

// frameConn is an h2Conn without a socket, past the server's preface.
func frameConn(t testing.TB) *h2Conn {
	t.Helper()
	h := newH2Conn(nil, "test")
	feed(t, h, func(s *server) { s.fr.WriteSettings() })
	return h
}

// server writes frames as an HTTP/2 server would.
type server struct {
	buf  bytes.Buffer
	fr   *http2.Framer
	hbuf bytes.Buffer
	enc  *hpack.Encoder
}

func newServer() *server {
	s := &server{}
	s.fr = http2.NewFramer(&s.buf, nil)
	s.enc = hpack.NewEncoder(&s.hbuf)
	return s
}

// block encodes header fields, name then value.
func (s *server) block(kv ...string) []byte {
	s.hbuf.Reset()
	for i := 0; i < len(kv); i += 2 {
		_ = s.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return bytes.Clone(s.hbuf.Bytes())
}

func (s *server) headers(stream uint32, endStream bool, kv ...string) {
	_ = s.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: stream, BlockFragment: s.block(kv...),
		EndStream: endStream, EndHeaders: true})
}

// answer writes a 200 with body, in one DATA frame.
func (s *server) answer(stream uint32, body []byte) {
	s.headers(stream, false, ":status", "200", "content-type", dnsMessage, "content-length", itoa(len(body)))
	_ = s.fr.WriteData(stream, true, body)
}

// feed runs readFrames over what write makes a server send, and returns
// readFrames' error, which is io.EOF when every frame was taken.
func feed(t testing.TB, h *h2Conn, write func(s *server)) error {
	t.Helper()
	s := newServer()
	write(s)
	return h.readFrames(bytes.NewReader(s.buf.Bytes()))
}

// openStream opens a POST (or, with get, a GET) of q on h.
func openStream(t testing.TB, h *h2Conn, q dnswire.Msg, get bool) *h2Stream {
	t.Helper()
	r := h2Request{authority: "dns.test", path: "/dns-query", q: &q}
	if get {
		r = h2Request{authority: "dns.test", path: "/dns-query?dns=" + base64.RawURLEncoding.EncodeToString(q.AppendTo(nil, 0))}
	}
	s := &h2Stream{done: make(chan h2Result, 1)}
	if err := h.open(s, &r); err != nil {
		t.Fatalf("open: %v", err)
	}
	return s
}

// streamResult returns the stream's result, or fails if it has none yet.
func streamResult(t testing.TB, s *h2Stream) h2Result {
	t.Helper()
	select {
	case r := <-s.done:
		return r
	default:
		t.Fatalf("stream %d has no result", s.id)
		return h2Result{}
	}
}

func noResult(t testing.TB, s *h2Stream) {
	t.Helper()
	select {
	case r := <-s.done:
		t.Fatalf("stream %d ended early: %+v", s.id, r)
	default:
	}
}

// written parses what h has queued for the server, past the preface.
func written(t testing.TB, h *h2Conn) []frame {
	t.Helper()
	b := h.pending
	if bytes.HasPrefix(b, []byte(h2Preface)) {
		b = b[len(h2Preface):]
	}
	fr := http2.NewFramer(nil, bytes.NewReader(b))
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	var out []frame
	for {
		f, err := fr.ReadFrame()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("the client wrote a frame x/net cannot read: %v", err)
		}
		out = append(out, copyFrame(f))
	}
}

// frame is what a test checks of a frame the client wrote (x/net's are
// valid only until the next is read).
type frame struct {
	typ      http2.FrameType
	stream   uint32
	end      bool // END_STREAM; ACK for SETTINGS and PING
	data     []byte
	fields   map[string]string
	settings map[http2.SettingID]uint32
	code     http2.ErrCode
	inc      uint32
}

func copyFrame(f http2.Frame) frame {
	h := f.Header()
	c := frame{typ: h.Type, stream: h.StreamID}
	switch f := f.(type) {
	case *http2.DataFrame:
		c.end, c.data = f.StreamEnded(), bytes.Clone(f.Data())
	case *http2.MetaHeadersFrame:
		c.end, c.fields = f.StreamEnded(), map[string]string{}
		for _, hf := range f.Fields {
			c.fields[hf.Name] = hf.Value
		}
	case *http2.SettingsFrame:
		c.end, c.settings = f.IsAck(), map[http2.SettingID]uint32{}
		_ = f.ForeachSetting(func(s http2.Setting) error { c.settings[s.ID] = s.Val; return nil })
	case *http2.RSTStreamFrame:
		c.code = f.ErrCode
	case *http2.GoAwayFrame:
		c.code = f.ErrCode
	case *http2.WindowUpdateFrame:
		c.inc = f.Increment
	case *http2.PingFrame:
		c.end, c.data = f.IsAck(), bytes.Clone(f.Data[:])
	}
	return c
}

func TestH2ClientFrames(t *testing.T) {
	h := newH2Conn(nil, "test")
	q := packQuery(t, "example.com.", dns.TypeA)
	post := openStream(t, h, q, false)
	get := openStream(t, h, q, true)
	if post.id != 1 || get.id != 3 {
		t.Fatalf("stream IDs %d, %d; want 1, 3", post.id, get.id)
	}
	if !bytes.HasPrefix(h.pending, []byte(h2Preface)) {
		t.Fatalf("the client did not start with the preface: %q", h.pending[:min(len(h.pending), 24)])
	}
	frames := written(t, h)
	if len(frames) != 5 {
		t.Fatalf("%d frames, want SETTINGS, WINDOW_UPDATE, HEADERS, DATA, HEADERS: %+v", len(frames), frames)
	}
	if f := frames[0]; f.typ != http2.FrameSettings || f.end {
		t.Fatalf("first frame %+v, want SETTINGS", f)
	}
	for id, want := range map[http2.SettingID]uint32{http2.SettingEnablePush: 0,
		http2.SettingInitialWindowSize: h2StreamWindow, http2.SettingMaxHeaderListSize: h2MaxHeaderList} {
		if v, ok := frames[0].settings[id]; !ok || v != want {
			t.Errorf("SETTINGS %v = %d (%v), want %d", id, v, ok, want)
		}
	}
	if f := frames[1]; f.typ != http2.FrameWindowUpdate || f.stream != 0 || f.inc != h2ConnWindow-h2DefaultWindow {
		t.Errorf("second frame %+v, want the connection's WINDOW_UPDATE", f)
	}
	ph := frames[2]
	if ph.typ != http2.FrameHeaders || ph.stream != 1 || ph.end {
		t.Fatalf("third frame %+v, want HEADERS of stream 1 without END_STREAM", ph)
	}
	wire := q.AppendTo(nil, 0)
	for k, v := range map[string]string{":method": "POST", ":scheme": "https", ":authority": "dns.test",
		":path": "/dns-query", "accept": dnsMessage, "content-type": dnsMessage, "content-length": itoa(len(wire))} {
		if got := ph.fields[k]; got != v {
			t.Errorf("POST %s = %q, want %q", k, got, v)
		}
	}
	if d := frames[3]; d.typ != http2.FrameData || d.stream != 1 || !d.end || !bytes.Equal(d.data, wire) {
		t.Errorf("fourth frame %+v, want DATA of stream 1 with END_STREAM and the query with ID 0", d)
	}
	gh := frames[4]
	if gh.typ != http2.FrameHeaders || gh.stream != 3 || !gh.end {
		t.Fatalf("fifth frame %+v, want HEADERS of stream 3 with END_STREAM", gh)
	}
	if m := gh.fields; m[":method"] != "GET" || !strings.HasPrefix(m[":path"], "/dns-query?dns=") || m["content-type"] != "" {
		t.Errorf("GET fields %v", m)
	}
}

// Responses, as a server may legally frame them, and the result the stream
// gets; each case opens stream 1, a POST.
func TestH2Responses(t *testing.T) {
	body := []byte("0123456789")
	big := make([]byte, dnswire.MaxMsgSize+1)
	tests := []struct {
		name  string
		write func(s *server)
		want  h2Result // compared on status, contentType(s), contentLength, body
		err   string   // the result's error, when it has one
		reset bool     // the client resets the stream
	}{
		{"answer", func(s *server) { s.answer(1, body) },
			h2Result{status: 200, contentType: dnsMessage, contentTypes: 1, contentLength: 10, body: body}, "", false},
		{"padded, with priority, in two DATA frames, no length", func(s *server) {
			_ = s.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: s.block(":status", "200", "content-type", dnsMessage),
				EndHeaders: true, PadLength: 7, Priority: http2.PriorityParam{StreamDep: 0, Weight: 3}})
			_ = s.fr.WriteDataPadded(1, false, body[:4], make([]byte, 5))
			_ = s.fr.WriteDataPadded(1, true, body[4:], nil)
		}, h2Result{status: 200, contentType: dnsMessage, contentTypes: 1, contentLength: -1, body: body}, "", false},
		{"header block in CONTINUATION frames", func(s *server) {
			b := s.block(":status", "200", "content-type", dnsMessage, "x-pad", strings.Repeat("p", 100))
			_ = s.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:5]})
			_ = s.fr.WriteContinuation(1, false, b[5:40])
			_ = s.fr.WriteContinuation(1, true, b[40:])
			_ = s.fr.WriteData(1, true, body)
		}, h2Result{status: 200, contentType: dnsMessage, contentTypes: 1, contentLength: -1, body: body}, "", false},
		{"103 first, trailers after", func(s *server) {
			s.headers(1, false, ":status", "103", "link", "</x>")
			s.headers(1, false, ":status", "200", "content-type", dnsMessage)
			_ = s.fr.WriteData(1, false, body)
			s.headers(1, true, "x-trailer", "1")
		}, h2Result{status: 200, contentType: dnsMessage, contentTypes: 1, contentLength: -1, body: body}, "", false},
		{"other frames in between", func(s *server) {
			_ = s.fr.WritePing(false, [8]byte{1})
			_ = s.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 50})
			_ = s.fr.WriteWindowUpdate(0, 1000)
			_ = s.fr.WriteRawFrame(0x42, 0, 1, []byte("unknown types are ignored"))
			_ = s.fr.WritePriority(1, http2.PriorityParam{Weight: 1})
			s.answer(1, body)
		}, h2Result{status: 200, contentType: dnsMessage, contentTypes: 1, contentLength: 10, body: body}, "", false},
		{"503, before its body", func(s *server) {
			s.headers(1, false, ":status", "503", "content-type", "text/plain")
		}, h2Result{status: 503, contentType: "text/plain", contentTypes: 1, contentLength: -1}, "", true},
		{"two content types", func(s *server) {
			s.headers(1, true, ":status", "200", "content-type", dnsMessage, "content-type", "text/html")
		}, h2Result{status: 200, contentType: dnsMessage, contentTypes: 2, contentLength: -1}, "", false},
		{"headers end the stream", func(s *server) {
			s.headers(1, true, ":status", "200", "content-type", dnsMessage, "content-length", "0")
		}, h2Result{status: 200, contentType: dnsMessage, contentTypes: 1, contentLength: 0}, "", false},
		{"body short of its length", func(s *server) {
			s.headers(1, false, ":status", "200", "content-type", dnsMessage, "content-length", "20")
			_ = s.fr.WriteData(1, true, body)
		}, h2Result{status: 200, contentType: dnsMessage, contentTypes: 1, contentLength: 20, body: body}, "", false},
		{"length above a DNS message", func(s *server) {
			s.headers(1, false, ":status", "200", "content-type", dnsMessage, "content-length", "65536")
		}, h2Result{}, "above the 65535", true},
		{"body past its length", func(s *server) {
			s.headers(1, false, ":status", "200", "content-type", dnsMessage, "content-length", "4")
			_ = s.fr.WriteData(1, false, body)
		}, h2Result{}, "longer than its Content-Length", true},
		{"body above a DNS message, no length", func(s *server) {
			s.headers(1, false, ":status", "200", "content-type", dnsMessage)
			for off := 0; off < len(big); off += h2MaxFrameSize {
				_ = s.fr.WriteData(1, false, big[off:min(off+h2MaxFrameSize, len(big))])
			}
		}, h2Result{}, "longer than the 65535", true},
		{"DATA before headers", func(s *server) { _ = s.fr.WriteData(1, false, body) }, h2Result{}, "before the response's headers", true},
		{"no :status", func(s *server) { s.headers(1, false, "content-type", dnsMessage) }, h2Result{}, "without :status", true},
		{"bad :status", func(s *server) { s.headers(1, true, ":status", "2000") }, h2Result{}, `:status "2000"`, false},
		{"two lengths", func(s *server) {
			s.headers(1, false, ":status", "200", "content-length", "1", "content-length", "2")
		}, h2Result{}, `content-length "2"`, true},
		{"headers above the limit", func(s *server) {
			b := s.block(":status", "200", "x-big", strings.Repeat("b", h2MaxHeaderList/2), "x-big2", strings.Repeat("c", h2MaxHeaderList/2))
			_ = s.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:len(b)/2]})
			_ = s.fr.WriteContinuation(1, true, b[len(b)/2:])
		}, h2Result{}, "response headers above", true},
		{"informational response ending the stream", func(s *server) { s.headers(1, true, ":status", "100") },
			h2Result{}, "informational response ends the stream", false},
		{"trailers that leave the stream open", func(s *server) {
			s.headers(1, false, ":status", "200", "content-type", dnsMessage)
			_ = s.fr.WriteData(1, false, body)
			s.headers(1, false, "x-trailer", "1")
		}, h2Result{}, "trailers that do not end the stream", true},
		{"stream reset", func(s *server) { _ = s.fr.WriteRSTStream(1, http2.ErrCodeRefusedStream) },
			h2Result{}, "stream 1 reset (REFUSED_STREAM)", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := frameConn(t)
			s := openStream(t, h, packQuery(t, "example.com.", dns.TypeA), false)
			h.pending = nil
			if err := feed(t, h, tt.write); err != io.EOF {
				t.Fatalf("readFrames: %v, want every frame taken", err)
			}
			got := streamResult(t, s)
			if tt.err != "" {
				if got.err == nil || !strings.Contains(got.err.Error(), tt.err) {
					t.Fatalf("result %+v, want the error %q", got, tt.err)
				}
			} else {
				if got.err != nil {
					t.Fatalf("result error %v", got.err)
				}
				if got.status != tt.want.status || got.contentType != tt.want.contentType || got.contentTypes != tt.want.contentTypes ||
					got.contentLength != tt.want.contentLength || !bytes.Equal(got.body, tt.want.body) {
					t.Errorf("result %+v\nwant   %+v", got, tt.want)
				}
			}
			reset := false
			for _, f := range written(t, h) {
				reset = reset || f.typ == http2.FrameRSTStream && f.stream == 1 && f.code == http2.ErrCodeCancel
			}
			if reset != tt.reset {
				t.Errorf("stream reset by the client: %v, want %v", reset, tt.reset)
			}
			if len(h.streams) != 0 {
				t.Errorf("%d streams left open", len(h.streams))
			}
		})
	}
}

// What a server may not do ends the connection, with a GOAWAY that says
// why, and fails every open stream.
func TestH2ConnectionErrors(t *testing.T) {
	tests := []struct {
		name  string
		write func(s *server)
		code  http2.ErrCode
	}{
		{"PUSH_PROMISE", func(s *server) {
			_ = s.fr.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, BlockFragment: s.block(":method", "GET"), EndHeaders: true})
		}, http2.ErrCodeProtocol},
		{"a stream never opened", func(s *server) { s.answer(5, []byte("x")) }, http2.ErrCodeProtocol},
		{"a server stream", func(s *server) { _ = s.fr.WriteRSTStream(2, http2.ErrCodeCancel) }, http2.ErrCodeProtocol},
		{"DATA on stream 0", func(s *server) { _ = s.fr.WriteRawFrame(http2.FrameData, 0, 0, []byte("x")) }, http2.ErrCodeProtocol},
		{"frame above 16 KiB", func(s *server) {
			_ = s.fr.WriteRawFrame(http2.FrameData, 0, 1, make([]byte, h2MaxFrameSize+1))
		}, http2.ErrCodeFrameSize},
		{"HPACK garbage", func(s *server) {
			_ = s.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0xff, 0xff, 0xff, 0xff}, EndHeaders: true})
		}, http2.ErrCodeCompression},
		{"CONTINUATION alone", func(s *server) { _ = s.fr.WriteContinuation(1, true, s.block(":status", "200")) }, http2.ErrCodeProtocol},
		{"another frame inside a header block", func(s *server) {
			_ = s.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: s.block(":status", "200")})
			_ = s.fr.WritePing(false, [8]byte{})
		}, http2.ErrCodeProtocol},
		{"SETTINGS of 5 bytes", func(s *server) { _ = s.fr.WriteRawFrame(http2.FrameSettings, 0, 0, make([]byte, 5)) }, http2.ErrCodeFrameSize},
		{"SETTINGS_MAX_FRAME_SIZE too small", func(s *server) {
			_ = s.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 100})
		}, http2.ErrCodeProtocol},
		{"SETTINGS_INITIAL_WINDOW_SIZE too large", func(s *server) {
			_ = s.fr.WriteRawFrame(http2.FrameSettings, 0, 0, []byte{0, 4, 0x80, 0, 0, 0})
		}, http2.ErrCodeFlowControl},
		{"connection window overflow", func(s *server) { _ = s.fr.WriteWindowUpdate(0, h2MaxWindow) }, http2.ErrCodeFlowControl},
		{"PING of 4 bytes", func(s *server) { _ = s.fr.WriteRawFrame(http2.FramePing, 0, 0, make([]byte, 4)) }, http2.ErrCodeFrameSize},
		{"PING on a stream", func(s *server) { _ = s.fr.WriteRawFrame(http2.FramePing, 0, 1, make([]byte, 8)) }, http2.ErrCodeProtocol},
		{"GOAWAY of 4 bytes", func(s *server) { _ = s.fr.WriteRawFrame(http2.FrameGoAway, 0, 0, make([]byte, 4)) }, http2.ErrCodeFrameSize},
		{"padding past the payload", func(s *server) {
			_ = s.fr.WriteRawFrame(http2.FrameData, http2.FlagDataPadded, 1, []byte{9, 1, 2})
		}, http2.ErrCodeProtocol},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := frameConn(t)
			s := openStream(t, h, packQuery(t, "example.com.", dns.TypeA), false)
			h.pending = nil
			err := feed(t, h, tt.write)
			var ce h2ConnError
			if !errors.As(err, &ce) || ce.code != uint32(tt.code) {
				t.Fatalf("readFrames: %v, want a connection error %v", err, tt.code)
			}
			frames := written(t, h)
			if len(frames) == 0 {
				t.Fatal("no GOAWAY")
			}
			if g := frames[len(frames)-1]; g.typ != http2.FrameGoAway || g.code != tt.code {
				t.Errorf("last frame written %+v, want GOAWAY %v", g, tt.code)
			}
			h.fail(err, true)
			if r := streamResult(t, s); !errors.Is(r.err, err) {
				t.Errorf("open stream's result %v, want the connection's error", r.err)
			}
		})
	}
}

// The server's first frame must be its SETTINGS: anything else is not
// HTTP/2, and the dial waiting for them hears why.
func TestH2Preface(t *testing.T) {
	for name, write := range map[string]func(s *server){
		"PING first":          func(s *server) { _ = s.fr.WritePing(false, [8]byte{}) },
		"SETTINGS ACK first":  func(s *server) { _ = s.fr.WriteSettingsAck() },
		"no streams allowed":  func(s *server) { _ = s.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 0}) },
		"an HTTP/1.1 answer":  func(s *server) { s.buf.WriteString("HTTP/1.1 400 Bad Request\r\n\r\n") },
		"nothing, then EOF":   func(s *server) {},
		"half a frame header": func(s *server) { s.buf.Write([]byte{0, 0, 0, 4}) },
	} {
		t.Run(name, func(t *testing.T) {
			h := newH2Conn(nil, "test")
			err := feed(t, h, write)
			if err == nil {
				t.Fatal("readFrames: no error")
			}
			h.fail(err, true)
			<-h.settings
			if h.prefaceErr == nil {
				t.Error("the dial would take this for HTTP/2")
			}
		})
	}
	h := newH2Conn(nil, "test")
	if err := feed(t, h, func(s *server) {
		_ = s.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 7})
	}); err != io.EOF {
		t.Fatal(err)
	}
	<-h.settings
	if h.prefaceErr != nil || h.peerMaxStreams.Load() != 7 {
		t.Errorf("preface error %v, stream limit %d; want none, 7", h.prefaceErr, h.peerMaxStreams.Load())
	}
	if frames := written(t, h); len(frames) != 3 || frames[2].typ != http2.FrameSettings || !frames[2].end {
		t.Errorf("client frames %+v, want its SETTINGS and WINDOW_UPDATE, then the ACK", frames)
	}
}

// A request body larger than the server lets a stream send waits for its
// WINDOW_UPDATE, and goes out in pieces that fit.
func TestH2FlowControl(t *testing.T) {
	h := newH2Conn(nil, "test")
	if err := feed(t, h, func(s *server) {
		_ = s.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 10})
	}); err != io.EOF {
		t.Fatal(err)
	}
	q := packQuery(t, "a-rather-long-name.example.com.", dns.TypeA)
	wire := q.AppendTo(nil, 0)
	s := openStream(t, h, q, false)
	second := openStream(t, h, packQuery(t, "another-long-name.example.com.", dns.TypeA), false)
	sent := func() (data []byte, ended bool) {
		for _, f := range written(t, h) {
			if f.typ == http2.FrameData && f.stream == s.id {
				data = append(data, f.data...)
				ended = ended || f.end
			}
		}
		return data, ended
	}
	if data, ended := sent(); len(data) != 10 || ended {
		t.Fatalf("sent %d bytes (ended %v) in a window of 10", len(data), ended)
	}
	// Raising every stream's window by SETTINGS counts for the waiting one.
	if err := feed(t, h, func(sv *server) {
		_ = sv.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 25})
	}); err != io.EOF {
		t.Fatal(err)
	}
	if data, ended := sent(); len(data) != 25 || ended {
		t.Fatalf("sent %d bytes (ended %v) in a window of 25", len(data), ended)
	}
	if err := feed(t, h, func(sv *server) { _ = sv.fr.WriteWindowUpdate(s.id, 1000) }); err != io.EOF {
		t.Fatal(err)
	}
	if data, ended := sent(); !bytes.Equal(data, wire) || !ended {
		t.Fatalf("sent %x (ended %v), want the whole query %x", data, ended, wire)
	}
	// The second stream waited behind the first.
	firstDone := false
	for _, f := range written(t, h) {
		if f.typ == http2.FrameData {
			if f.stream == second.id && !firstDone {
				t.Errorf("second stream sent before the first had finished")
			}
			firstDone = firstDone || f.stream == s.id && f.end
		}
	}
	if len(h.blocked) != 1 || h.blocked[0] != second {
		t.Errorf("blocked %v, want the second stream alone (its window is 25)", h.blocked)
	}
	// A stream given up on leaves the queue.
	if !h.cancel(second) || len(h.blocked) != 0 {
		t.Errorf("cancel left %d blocked", len(h.blocked))
	}
}

// GOAWAY: streams above its last ID fail at once, to be resent; those below
// are still answered; no stream opens after it.
func TestH2GoAway(t *testing.T) {
	h := frameConn(t)
	q := packQuery(t, "example.com.", dns.TypeA)
	s1, s3, s5 := openStream(t, h, q, false), openStream(t, h, q, false), openStream(t, h, q, false)
	if err := feed(t, h, func(s *server) { _ = s.fr.WriteGoAway(3, http2.ErrCodeNo, nil) }); err != io.EOF {
		t.Fatal(err)
	}
	if r := streamResult(t, s5); !errors.Is(r.err, errGoAway) {
		t.Errorf("stream 5: %v, want errGoAway", r.err)
	}
	noResult(t, s1)
	noResult(t, s3)
	if h.usable.Load() {
		t.Error("usable after GOAWAY")
	}
	if err := h.open(&h2Stream{done: make(chan h2Result, 1)}, &h2Request{path: "/", q: &q}); !errors.Is(err, errGoAway) {
		t.Errorf("open after GOAWAY: %v", err)
	}
	if err := feed(t, h, func(s *server) { s.answer(1, []byte("a")); s.answer(3, []byte("b")) }); err != io.EOF {
		t.Fatal(err)
	}
	if r1, r3 := streamResult(t, s1), streamResult(t, s3); string(r1.body) != "a" || string(r3.body) != "b" {
		t.Errorf("answers %q, %q", r1.body, r3.body)
	}
}

// PINGs are answered; the connection's receive window is topped up as
// answers are read, streams given up on included.
func TestH2PingAndWindow(t *testing.T) {
	h := frameConn(t)
	s := openStream(t, h, packQuery(t, "example.com.", dns.TypeA), false)
	if !h.cancel(s) {
		t.Fatal("cancel")
	}
	h.pending = nil
	chunk := make([]byte, h2MaxFrameSize)
	if err := feed(t, h, func(sv *server) {
		_ = sv.fr.WritePing(false, [8]byte{'p', 'i', 'n', 'g'})
		sv.headers(1, false, ":status", "200", "content-type", dnsMessage)
		for range h2ConnWindow / 2 / h2MaxFrameSize {
			_ = sv.fr.WriteData(1, false, chunk)
		}
	}); err != io.EOF {
		t.Fatal(err)
	}
	var ping, update bool
	for _, f := range written(t, h) {
		switch f.typ {
		case http2.FramePing:
			ping = f.end && bytes.Equal(f.data, []byte{'p', 'i', 'n', 'g', 0, 0, 0, 0})
		case http2.FrameWindowUpdate:
			update = f.stream == 0 && f.inc == h2ConnWindow/2
		}
	}
	if !ping || !update {
		t.Errorf("PING answered %v, connection window topped up %v", ping, update)
	}
}

// Whatever a server sends, the reader does not panic, each stream ends at
// most once, an answer it accepts is within a DNS message's size, and what
// the client writes back stays well-formed HTTP/2.
func FuzzH2Frames(f *testing.F) {
	s := newServer()
	_ = s.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 5})
	s.answer(1, []byte("answer"))
	s.headers(3, false, ":status", "103")
	s.headers(3, true, ":status", "503")
	_ = s.fr.WriteGoAway(3, http2.ErrCodeNo, nil)
	f.Add(s.buf.Bytes())
	s = newServer()
	_ = s.fr.WriteSettings()
	_ = s.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 5, BlockFragment: s.block(":status", "200", "content-length", "3")})
	_ = s.fr.WriteContinuation(5, true, s.block("content-type", dnsMessage))
	_ = s.fr.WriteDataPadded(5, true, []byte("abc"), []byte{0, 0})
	_ = s.fr.WritePing(false, [8]byte{})
	_ = s.fr.WriteWindowUpdate(1, 100)
	f.Add(s.buf.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		h := newH2Conn(nil, "fuzz")
		q := packQuery(t, "example.com.", dns.TypeA)
		streams := []*h2Stream{openStream(t, h, q, false), openStream(t, h, q, true), openStream(t, h, q, false)}
		err := h.readFrames(bytes.NewReader(data))
		if err == nil {
			t.Fatal("readFrames returned without an error")
		}
		written(t, h) // fails the test on a frame x/net cannot read
		h.fail(err, true)
		for _, s := range streams {
			r := streamResult(t, s)
			noResult(t, s)
			if r.err == nil && len(r.body) > dnswire.MaxMsgSize {
				t.Errorf("stream %d: an answer of %d bytes", s.id, len(r.body))
			}
		}
	})
}

// Over a real TLS connection, with the writer and the reader running: the
// preface, a request answered, and after a frame the protocol forbids, a
// GOAWAY naming the error before the connection closes.
func TestH2OverTLS(t *testing.T) {
	ca, err := testpki.NewCA("h2 test CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue([]string{"dns.test"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{leaf.TLS},
		NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })

	type seen struct {
		goAway http2.ErrCode
		eof    bool
		err    error
	}
	done := make(chan seen, 1)
	go func() {
		var g seen
		defer func() { done <- g }()
		c, err := ln.Accept()
		if err != nil {
			g.err = err
			return
		}
		defer c.Close()
		pre := make([]byte, len(h2Preface))
		if _, err := io.ReadFull(c, pre); err != nil || string(pre) != h2Preface {
			g.err = fmt.Errorf("preface %q: %v", pre, err)
			return
		}
		s := newServer()
		fr := http2.NewFramer(c, c)
		_ = fr.WriteSettings()
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				g.eof = errors.Is(err, io.EOF)
				return
			}
			switch f := f.(type) {
			case *http2.DataFrame:
				// The answer echoes the query, then a PUSH_PROMISE breaks
				// the protocol.
				body := bytes.Clone(f.Data())
				_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, EndHeaders: true,
					BlockFragment: s.block(":status", "200", "content-type", dnsMessage, "content-length", itoa(len(body)))})
				_ = fr.WriteData(f.StreamID, true, body)
				_ = fr.WritePushPromise(http2.PushPromiseParam{StreamID: f.StreamID, PromiseID: 2, EndHeaders: true,
					BlockFragment: s.block(":method", "GET")})
			case *http2.GoAwayFrame:
				g.goAway = f.ErrCode
			}
		}
	}()

	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	tc, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "dns.test",
		NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	h := newH2Conn(tc, "test")
	var wg sync.WaitGroup
	h.start(&wg)
	<-h.settings
	if h.prefaceErr != nil {
		t.Fatalf("preface: %v", h.prefaceErr)
	}
	q := packQuery(t, "example.com.", dns.TypeA)
	res := h.roundTrip(ctxTimeout(t, answerTimeout), &h2Request{authority: "dns.test", path: "/dns-query", q: &q})
	if res.err != nil || res.status != 200 || !bytes.Equal(res.body, q.AppendTo(nil, 0)) {
		t.Fatalf("result %+v, want the query echoed", res)
	}
	g := <-done
	if g.err != nil || g.goAway != http2.ErrCodeProtocol || !g.eof {
		t.Errorf("server saw GOAWAY %v then EOF %v (%v); want PROTOCOL_ERROR, then EOF", g.goAway, g.eof, g.err)
	}
	wg.Wait()
	var ce h2ConnError
	if err := h.Err(); !errors.As(err, &ce) || ce.code != h2ProtocolError {
		t.Errorf("connection error %v, want PROTOCOL_ERROR", err)
	}
}
