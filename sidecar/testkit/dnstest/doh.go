package dnstest

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"io"
	"log"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// DNS over HTTPS (RFC 8484) mode: Options.DoH serves the same answers, with
// the same Behavior, as HTTP/2 requests to Path (POST application/dns-message
// or GET ?dns=), through the standard library's HTTP/2 server. The TLS
// handshake stays this package's (certificates, BlackHole, HangUp, Nagle,
// counters); each verified connection is then handed to the HTTP server.
//
// What Behavior does in this mode:
//   - DelayNanos, Drop, Mangle (then the answer is the mangled message
//     alone: one stream carries one response), Cert, BlackHole, HangUp,
//     Nagle, ResetAfter (a TCP RST on reading the Nth request) and
//     ResetNextConns as for DoT;
//   - Status, ContentType, TruncateBody, OversizeBody, ResetStream,
//     GoAwayAfter and NoH2, below, only here;
//   - ReverseBatch, SplitWrites, CloseAfter and KeepaliveNanos only for DoT
//     (HTTP/2 frames and orders its streams itself, and manages its idle
//     connections).

// DefaultPath is the DoH endpoint's path unless Options.Path says otherwise.
const DefaultPath = "/dns-query"

// DNSMessage is the media type of DoH requests and answers.
const DNSMessage = "application/dns-message"

// URL is the DoH endpoint as a client configured with ServerName would
// write it, e.g. "https://dns.test:4433/dns-query".
func (s *Server) URL() string {
	return "https://" + net.JoinHostPort(s.ServerName, strconv.Itoa(int(s.Addr.Port()))) + s.Path
}

// Authorities returns every :authority (Host) the DoH requests carried,
// SNIs every TLS server name their connections were opened with, and
// Methods every HTTP method, each once.
func (s *Server) Authorities() []string { return s.seen(&s.authorities) }
func (s *Server) SNIs() []string        { return s.seen(&s.snis) }
func (s *Server) Methods() []string     { return s.seen(&s.methods) }

func (s *Server) seen(m *map[string]bool) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for k := range *m {
		out = append(out, k)
	}
	return out
}

func (s *Server) note(m *map[string]bool, v string) {
	s.mu.Lock()
	if *m == nil {
		*m = map[string]bool{}
	}
	(*m)[v] = true
	s.mu.Unlock()
}

// startHTTP starts the HTTP/2 server that serveConn hands connections to.
func (s *Server) startHTTP(maxStreams int) {
	s.httpLn = &connListener{conns: make(chan net.Conn), done: make(chan struct{}), addr: s.ln.Addr()}
	var protos http.Protocols
	protos.SetHTTP2(true)
	s.httpSrv = &http.Server{
		Handler:   http.HandlerFunc(s.serveHTTP),
		Protocols: &protos,
		// The handshakes are this package's; Serve only needs to know that
		// they offer HTTP/2, to set itself up for it.
		TLSConfig: &tls.Config{NextProtos: []string{"h2"}},
		HTTP2:     &http.HTTP2Config{MaxConcurrentStreams: maxStreams},
		// Serve must be handed the *tls.Conn itself to speak HTTP/2 on it;
		// what this package keeps per connection is found by it.
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			hc, _ := s.httpConns.Load(c)
			return context.WithValue(ctx, connKey{}, hc)
		},
		ConnState: func(c net.Conn, st http.ConnState) {
			if st == http.StateClosed || st == http.StateHijacked {
				if hc, ok := s.httpConns.LoadAndDelete(c); ok {
					close(hc.(*httpConn).closed)
				}
			}
		},
		ErrorLog: discardLog,
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		_ = s.httpSrv.Serve(s.httpLn)
	}()
}

// discardLog silences the HTTP server's complaints about the connections
// tests break on purpose.
var discardLog = log.New(io.Discard, "", 0)

type connKey struct{}

// httpConn is what this package keeps about a verified TLS connection
// handed to the HTTP server: the per-connection state Behavior counts by.
type httpConn struct {
	raw    net.Conn
	closed chan struct{} // closed when the HTTP server has closed it

	n           atomic.Int32 // requests read on this connection
	outstanding atomic.Int64 // requests read and not yet answered
	resetFirst  bool         // took one of Behavior.ResetNextConns
}

// serveHTTPConn hands tc to the HTTP server and returns once it has closed
// it.
func (s *Server) serveHTTPConn(raw, tc net.Conn) {
	hc := &httpConn{raw: raw, closed: make(chan struct{}), resetFirst: takeOne(&s.Behavior.ResetNextConns)}
	s.httpConns.Store(tc, hc)
	select {
	case s.httpLn.conns <- tc:
	case <-s.done:
		s.httpConns.Delete(tc)
		return
	}
	select {
	case <-hc.closed:
	case <-s.done:
	}
}

// connListener is the net.Listener the HTTP server accepts handed-over
// connections from.
type connListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
	addr  net.Addr
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error   { l.once.Do(func() { close(l.done) }); return nil }
func (l *connListener) Addr() net.Addr { return l.addr }

// maxQuery is the largest DNS message.
const maxQuery = 65535

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	hc, _ := r.Context().Value(connKey{}).(*httpConn)
	s.note(&s.authorities, r.Host)
	s.note(&s.methods, r.Method)
	if r.TLS != nil {
		s.note(&s.snis, r.TLS.ServerName)
	}
	if r.URL.Path != s.Path {
		http.NotFound(w, r)
		return
	}
	query, status := readQuery(r)
	if status != http.StatusOK {
		http.Error(w, http.StatusText(status), status)
		return
	}
	s.queries.Add(1)
	n := hc.n.Add(1)
	b := &s.Behavior
	if ra := b.ResetAfter.Load(); (ra > 0 && n >= ra) || hc.resetFirst {
		if tcp, ok := hc.raw.(*net.TCPConn); ok {
			_ = tcp.SetLinger(0)
		}
		_ = hc.raw.Close()
		return
	}
	if b.Drop.Load() {
		<-r.Context().Done()
		return
	}
	s.noteOutstanding(hc.outstanding.Add(1))
	defer hc.outstanding.Add(-1)
	if d := time.Duration(b.DelayNanos.Load()); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}
	if st := b.Status.Load(); st != 0 && st != http.StatusOK {
		http.Error(w, "scripted failure", int(st))
		return
	}
	if b.ResetStream.Load() {
		panic(http.ErrAbortHandler) // RST_STREAM INTERNAL_ERROR
	}
	var ans []byte
	if s.raw != nil {
		ans = s.raw(nil, query)
	} else {
		ans = (&session{s: s}).handle(nil, query)
	}
	if len(ans) == 0 {
		<-r.Context().Done() // no answer: the client's deadline ends it
		return
	}
	if m := Mangle(b.Mangle.Load()); m != MangleNone {
		mangle(ans, m)
	}
	if b.OversizeBody.Load() {
		ans = append(ans, make([]byte, maxQuery+1-len(ans))...)
	}
	ct := DNSMessage
	if p := b.ContentType.Load(); p != nil {
		ct = *p
	}
	h := w.Header()
	h.Set("Content-Type", ct)
	h.Set("Content-Length", strconv.Itoa(len(ans)))
	if g := b.GoAwayAfter.Load(); g > 0 && n >= g {
		// Go's HTTP/2 server takes this as: send GOAWAY, finish the
		// streams already read, then close.
		h.Set("Connection", "close")
	}
	if b.TruncateBody.Load() {
		_, _ = w.Write(ans[:len(ans)/2])
		return // the stream ends there, short of its Content-Length
	}
	_, _ = w.Write(ans)
}

// readQuery returns the DNS query of a DoH request, or the HTTP status to
// refuse it with.
func readQuery(r *http.Request) ([]byte, int) {
	switch r.Method {
	case http.MethodGet:
		q, err := base64.RawURLEncoding.DecodeString(r.URL.Query().Get("dns"))
		if err != nil || len(q) == 0 {
			return nil, http.StatusBadRequest
		}
		return q, http.StatusOK
	case http.MethodPost:
		if r.Header.Get("Content-Type") != DNSMessage {
			return nil, http.StatusUnsupportedMediaType
		}
		q, err := io.ReadAll(io.LimitReader(r.Body, maxQuery+1))
		if err != nil || len(q) == 0 || len(q) > maxQuery {
			return nil, http.StatusBadRequest
		}
		return q, http.StatusOK
	}
	return nil, http.StatusMethodNotAllowed
}
