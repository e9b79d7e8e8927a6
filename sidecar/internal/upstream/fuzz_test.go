package upstream

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/testpki"
)

// The upstream clients read bytes a resolver, or anyone on the path of a
// plaintext one, chose. These targets feed them arbitrary answers through
// their real read paths: the DoT and plain TCP framing and matching, the
// plain UDP matching, the DoH response checks. Whatever comes back, an
// Exchange ends (no later than its deadline), and an answer it accepts is
// the bytes received, a well-formed answer to the very question asked,
// with the client's ID.

// fuzzAnswer is what a fuzz input makes a resolver send for one query:
// resp with the query's ID when matchID is set (else resp's own), framed
// for a stream with a length off by delta and followed by trailer.
type fuzzAnswer struct {
	resp    []byte
	trailer []byte
	delta   int8
	matchID bool
}

// message is resp as sent in answer to query.
func (a *fuzzAnswer) message(query []byte) []byte {
	m := append([]byte(nil), a.resp...)
	if a.matchID && len(m) >= 2 && len(query) >= 2 {
		copy(m, query[:2])
	}
	return m
}

// stream is the whole byte stream sent on a TCP connection for query.
func (a *fuzzAnswer) stream(query []byte) []byte {
	m := a.message(query)
	b := binary.BigEndian.AppendUint16(nil, uint16(len(m)+int(a.delta)))
	return append(append(b, m...), a.trailer...)
}

// rawResolver serves fuzz answers on a loopback port, over UDP and TCP
// (TLS on TCP when tlsConf is set). On TCP it reads one query, writes the
// answer's stream whole and closes the connection: each input then meets
// a fresh connection, and a stream that does not frame ends in EOF, not in
// a wait. On UDP it sends the answer's message, then a REFUSED that does
// answer the query, so that a client dropping the first never waits out
// its deadline.
type rawResolver struct {
	addr    netip.AddrPort
	tlsConf *tls.Config
	ln      net.Listener
	pc      net.PacketConn

	mu     sync.Mutex
	answer fuzzAnswer
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

func startRawResolver(tb testing.TB, tlsConf *tls.Config) *rawResolver {
	tb.Helper()
	r := &rawResolver{tlsConf: tlsConf, conns: map[net.Conn]struct{}{}}
	for range 20 { // a port free on both TCP and UDP
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		pc, err := net.ListenPacket("udp", ln.Addr().String())
		if err == nil {
			r.ln, r.pc = ln, pc
			break
		}
		_ = ln.Close()
	}
	if r.ln == nil {
		tb.Fatal("no loopback port free on both TCP and UDP")
	}
	r.addr = r.ln.Addr().(*net.TCPAddr).AddrPort()
	r.wg.Add(2)
	go r.acceptLoop()
	go r.udpLoop()
	tb.Cleanup(r.close)
	return r
}

func (r *rawResolver) set(a fuzzAnswer) {
	r.mu.Lock()
	r.answer = a
	r.mu.Unlock()
}

func (r *rawResolver) get() fuzzAnswer {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.answer
}

func (r *rawResolver) acceptLoop() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			_ = c.Close()
			return
		}
		r.conns[c] = struct{}{}
		r.wg.Add(1)
		r.mu.Unlock()
		go r.serve(c)
	}
}

func (r *rawResolver) serve(c net.Conn) {
	defer r.wg.Done()
	defer func() {
		r.mu.Lock()
		delete(r.conns, c)
		r.mu.Unlock()
		_ = c.Close()
	}()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	rw := c
	if r.tlsConf != nil {
		tc := tls.Server(c, r.tlsConf)
		defer tc.Close() // close_notify after the stream
		rw = tc
	}
	var prefix [2]byte
	if _, err := io.ReadFull(rw, prefix[:]); err != nil {
		return
	}
	query := make([]byte, binary.BigEndian.Uint16(prefix[:]))
	if _, err := io.ReadFull(rw, query); err != nil {
		return
	}
	a := r.get()
	_, _ = rw.Write(a.stream(query))
}

func (r *rawResolver) udpLoop() {
	defer r.wg.Done()
	buf := make([]byte, dnswire.MaxMsgSize)
	for {
		n, from, err := r.pc.ReadFrom(buf)
		if err != nil {
			return
		}
		query := buf[:n]
		a := r.get()
		_, _ = r.pc.WriteTo(a.message(query), from)
		if len(a.trailer) > 0 {
			_, _ = r.pc.WriteTo(a.trailer, from)
		}
		if q, err := dnswire.Parse(query); err == nil {
			_, _ = r.pc.WriteTo(dnswire.AppendReply(nil, &q, dnswire.Reply{Rcode: dnswire.RcodeRefused}), from)
		}
	}
}

func (r *rawResolver) close() {
	r.mu.Lock()
	r.closed = true
	for c := range r.conns {
		_ = c.Close()
	}
	r.mu.Unlock()
	_ = r.ln.Close()
	_ = r.pc.Close()
	r.wg.Wait()
}

// fuzzTLS returns a server configuration with a certificate for
// fuzz.test made at run time, and a pool trusting its CA.
func fuzzTLS(tb testing.TB) (*tls.Config, *x509.CertPool) {
	tb.Helper()
	ca, err := testpki.NewCA("fuzz CA")
	if err != nil {
		tb.Fatal(err)
	}
	leaf, err := ca.Issue([]string{"fuzz.test"}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return &tls.Config{Certificates: []tls.Certificate{leaf.TLS}, MinVersion: tls.VersionTLS12}, pool
}

// fuzzSeeds adds, for each of a few answers to query, the input that
// sends it as it is, and a few that spoil it.
func fuzzSeeds(f *testing.F, query *dns.Msg, plain bool) {
	answers := []*dns.Msg{}
	ok := new(dns.Msg)
	ok.SetReply(query)
	ok.RecursionAvailable = true
	ok.Answer = append(ok.Answer, &dns.A{Hdr: dns.RR_Header{Name: query.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 1)})
	answers = append(answers, ok)
	edns := ok.Copy()
	edns.SetEdns0(1232, true)
	answers = append(answers, edns)
	tc := new(dns.Msg)
	tc.SetReply(query)
	tc.Truncated = true
	answers = append(answers, tc)
	other := ok.Copy()
	other.Question[0].Name = "other.example."
	answers = append(answers, other)
	for _, m := range answers {
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		add := func(resp, trailer []byte, delta int8, matchID bool) {
			if plain {
				f.Add(resp, trailer, delta, matchID, false)
				f.Add(resp, trailer, delta, matchID, true)
			} else {
				f.Add(resp, trailer, delta, matchID)
			}
		}
		add(b, nil, 0, true)
		add(b, nil, -3, true)
		add(b, nil, 4, true)
		add(b, []byte{0, 12, 1, 2}, 0, true)
		add(b[:len(b)-2], nil, 0, true)
		add(b, nil, 0, false)
	}
}

// checkFuzzAnswer checks what an Exchange of q returned, given the message
// the resolver sent (msg, with q's ID where the wire had the client's): an
// accepted answer is a well-formed answer to q with q's ID, and it is msg,
// cut to its end, or over UDP the resolver's REFUSED. The header is
// compared from its flags to the authority count: a client may strip
// options off the OPT record, or the record itself, but never changes
// what the resolver said.
func checkFuzzAnswer(t *testing.T, q dnswire.Msg, msg []byte, ans dnswire.Msg, err error, udp bool) {
	t.Helper()
	if err != nil {
		return
	}
	if !ans.Valid() || !ans.Answers(&q) || ans.ID != q.ID {
		t.Fatalf("accepted % x as the answer to % x", ans.Wire(), q.Wire())
	}
	w := ans.Wire()
	if udp && ans.Rcode() == dnswire.RcodeRefused && (len(msg) < 4 || !bytes.Equal(w[2:4], msg[2:4])) {
		return // the resolver's REFUSED, after msg was dropped
	}
	if len(msg) < 10 || !bytes.Equal(w[2:10], msg[2:10]) {
		t.Fatalf("accepted answer % x is not what the resolver sent, % x", w, msg)
	}
}

// exchangeBound is how long one Exchange of a fuzz input may take: the
// resolver answers at once and closes, so only a client that waits for
// what never comes gets near it.
const exchangeBound = 3 * time.Second

// FuzzDoTAnswers sends arbitrary answers, framed or not, to the DoT
// client's reader over a real TLS connection.
func FuzzDoTAnswers(f *testing.F) {
	query := new(dns.Msg)
	query.SetQuestion("www.example.", dns.TypeA)
	fuzzSeeds(f, query, false)

	conf, pool := fuzzTLS(f)
	r := startRawResolver(f, conf)
	opts := DoTOptions{
		Addr:               r.addr,
		ServerName:         "fuzz.test",
		Trust:              NewTrust(pool, nil),
		PoolSize:           1,
		DialTimeout:        2 * time.Second,
		IdleTimeout:        30 * time.Second,
		MaxAge:             5 * time.Minute,
		MaxInFlightPerConn: 16,
		QueryTimeout:       exchangeBound,
		Logger:             testLogger(),
		Metrics:            NewMetrics(prometheus.NewRegistry()),
	}
	d, err := NewDoT(opts)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = d.Close() })
	q := parseMsg(f, query)
	f.Fuzz(func(t *testing.T, resp, trailer []byte, delta int8, matchID bool) {
		a := fuzzAnswer{resp: resp, trailer: trailer, delta: delta, matchID: matchID}
		r.set(a)
		ctx, cancel := context.WithTimeout(context.Background(), exchangeBound)
		defer cancel()
		start := time.Now()
		ans, err := d.Exchange(ctx, q)
		if took := time.Since(start); took > exchangeBound+time.Second {
			t.Fatalf("Exchange took %v", took)
		}
		// The ID the client chose is not known here: a matching answer
		// carries it, and the bytes after it are the resolver's.
		checkFuzzAnswer(t, q, a.message(q.Wire()), ans, err, false)
	})
}

// FuzzPlainAnswers sends arbitrary answers to the plaintext client: over
// UDP as datagrams (a truncated one sends the query to TCP), over TCP as a
// stream.
func FuzzPlainAnswers(f *testing.F) {
	query := new(dns.Msg)
	query.SetQuestion("www.example.", dns.TypeA)
	fuzzSeeds(f, query, true)

	r := startRawResolver(f, nil)
	clients := map[bool]*Plain{}
	for _, tcpOnly := range []bool{false, true} {
		p, err := NewPlain(PlainOptions{
			Addr:         r.addr,
			TCPOnly:      tcpOnly,
			DialTimeout:  2 * time.Second,
			QueryTimeout: exchangeBound,
			Logger:       testLogger(),
			Metrics:      NewMetrics(prometheus.NewRegistry()).ForRoute("fuzz.test"),
		})
		if err != nil {
			f.Fatal(err)
		}
		f.Cleanup(func() { _ = p.Close() })
		clients[tcpOnly] = p
	}
	q := parseMsg(f, query)
	f.Fuzz(func(t *testing.T, resp, trailer []byte, delta int8, matchID, tcpOnly bool) {
		a := fuzzAnswer{resp: resp, trailer: trailer, delta: delta, matchID: matchID}
		r.set(a)
		ctx, cancel := context.WithTimeout(context.Background(), exchangeBound)
		defer cancel()
		start := time.Now()
		ans, err := clients[tcpOnly].Exchange(ctx, q)
		if took := time.Since(start); took > exchangeBound+time.Second {
			t.Fatalf("Exchange took %v", took)
		}
		checkFuzzAnswer(t, q, a.message(q.Wire()), ans, err, !tcpOnly)
	})
}

// FuzzDoHAnswer gives the DoH client's response checks (readAnswer)
// arbitrary responses, as its HTTP/2 reader hands them over (the frames
// themselves are FuzzH2Frames'): any status, content types, announced
// length and body. An answer they accept came with status 200 and one
// DNS content type, is the body, a well-formed answer to the query, and
// has the client's ID.
func FuzzDoHAnswer(f *testing.F) {
	query := new(dns.Msg)
	query.SetQuestion("www.example.", dns.TypeA)
	ok := new(dns.Msg)
	ok.SetReply(query)
	ok.Id = 0 // RFC 8484 §4.1
	ok.Answer = append(ok.Answer, &dns.A{Hdr: dns.RR_Header{Name: "www.example.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 1)})
	body, err := ok.Pack()
	if err != nil {
		f.Fatal(err)
	}
	for _, ct := range []string{dnsMessage, "Application/DNS-Message; charset=x", "text/html"} {
		for _, n := range []int32{int32(len(body)), -1, int32(len(body)) + 5} {
			f.Add(uint16(200), ct, uint8(1), n, body)
		}
	}
	f.Add(uint16(200), dnsMessage, uint8(2), int32(-1), body)
	f.Add(uint16(404), dnsMessage, uint8(1), int32(0), []byte{})
	f.Add(uint16(200), dnsMessage, uint8(1), int32(-1), body[:11])

	d, err := NewDoH(DoHOptions{
		DoTOptions: DoTOptions{
			Addr:               netip.MustParseAddrPort("127.0.0.1:443"), // never dialed
			ServerName:         "fuzz.test",
			Trust:              NewTrust(x509.NewCertPool(), nil),
			PoolSize:           1,
			DialTimeout:        time.Second,
			IdleTimeout:        time.Minute,
			MaxAge:             time.Minute,
			MaxInFlightPerConn: 16,
			QueryTimeout:       time.Second,
			Logger:             testLogger(),
			Metrics:            NewMetrics(prometheus.NewRegistry()),
		},
		Path: "/dns-query",
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = d.Close() })
	query.Id = 4711 // the client's own ID, which an accepted answer gets back
	q := parseMsg(f, query)
	f.Fuzz(func(t *testing.T, status uint16, ct string, cts uint8, length int32, body []byte) {
		res := h2Result{status: int(status), contentType: ct, contentTypes: int(cts), contentLength: max(int64(length), -1), body: bytes.Clone(body)}
		ans, err := d.readAnswer(&res, &q)
		if err != nil {
			return
		}
		if status != 200 || cts != 1 || !isDNSMessage(ct) || length >= 0 && len(body) < int(length) {
			t.Fatalf("accepted a response of status %d, %d content types %q, Content-Length %d, body of %d bytes", status, cts, ct, length, len(body))
		}
		if !ans.Valid() || !ans.Answers(&q) || ans.ID != q.ID {
			t.Fatalf("accepted % x as the answer to the query", ans.Wire())
		}
		if w := ans.Wire(); len(body) < len(w) || !bytes.Equal(w[2:], body[2:len(w)]) || body[0] != 0 || body[1] != 0 {
			t.Fatalf("accepted answer % x is not the body % x with the query's ID", w, body)
		}
	})
}

// FuzzTrustFiles feeds arbitrary file contents to the parsers of
// TLS_PINS_FILE and TLS_CA_FILE, which the reloader runs on every change:
// they never panic, and what they accept is usable (pins of 32 bytes, each
// once, printing back to lines the parser reads again the same).
func FuzzTrustFiles(f *testing.F) {
	f.Add([]byte("# pins\n" + pin32('a') + "\n\n  " + pin32('b') + " # backup\n"))
	f.Add([]byte(pin32('a') + "\r\n" + pin32('a')))
	f.Add([]byte("not base64\n"))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		pins, err := ParsePins(data)
		if err == nil {
			var again bytes.Buffer
			seen := map[[32]byte]bool{}
			for _, p := range pins {
				if seen[p] {
					t.Fatalf("pin %x listed twice", p)
				}
				seen[p] = true
				again.WriteString(config.FormatPin(p) + "\n")
			}
			back, err := ParsePins(again.Bytes())
			if err != nil || len(back) != len(pins) {
				t.Fatalf("the pins accepted do not parse back: %v", err)
			}
		} else if !errors.Is(err, ErrNoPins) && len(data) == 0 {
			t.Fatalf("empty file: %v, want ErrNoPins", err)
		}
		if pool, err := parseCAs(data); err == nil && pool == nil {
			t.Fatal("parseCAs accepted a bundle without returning a pool")
		}
	})
}

// pin32 is a well-formed pin of 32 bytes of c.
func pin32(c byte) string { return config.FormatPin([32]byte(bytes.Repeat([]byte{c}, 32))) }
