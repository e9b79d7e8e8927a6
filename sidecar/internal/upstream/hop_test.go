package upstream

import (
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/miekg/dns"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
)

// seenQuery is a query as an upstream read it.
type seenQuery struct {
	size int // bytes on the wire (0 where the server decodes for us)
	msg  *dns.Msg
}

// recorder keeps the queries a test server reads.
type recorder struct {
	mu   sync.Mutex
	seen []seenQuery
}

func (r *recorder) add(size int, m *dns.Msg) {
	r.mu.Lock()
	r.seen = append(r.seen, seenQuery{size, m})
	r.mu.Unlock()
}

func (r *recorder) last(t testing.TB) seenQuery {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.seen) == 0 {
		t.Fatal("the upstream read no query")
	}
	return r.seen[len(r.seen)-1]
}

// handler records each query and answers it with h.
func (r *recorder) handler(h dnstest.Handler) dnstest.Handler {
	return func(q *dns.Msg) *dns.Msg {
		r.add(0, q.Copy())
		return h(q)
	}
}

// raw records each query with its size on the wire and answers it with h.
func (r *recorder) raw(h dnstest.Handler) dnstest.RawHandler {
	return func(dst, query []byte) []byte {
		q := new(dns.Msg)
		if q.Unpack(query) != nil {
			return dst
		}
		r.add(len(query), q.Copy())
		ans := h(q)
		if ans == nil {
			return dst
		}
		b, err := ans.Pack()
		if err != nil {
			return dst
		}
		return append(dst, b...)
	}
}

// hopHandler answers as dnstest's default does, and, to a query with EDNS,
// adds the options of its own hop (padding, a keepalive, a server cookie)
// and one that belongs to the answer (NSID).
func hopHandler(q *dns.Msg) *dns.Msg {
	r := dnstest.DefaultHandler(q)
	if opt := r.IsEdns0(); opt != nil {
		opt.Option = append(opt.Option,
			&dns.EDNS0_PADDING{Padding: make([]byte, 100)},
			&dns.EDNS0_TCP_KEEPALIVE{Code: dns.EDNS0TCPKEEPALIVE, Timeout: 600},
			&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708a1a2a3a4a5a6a7a8"},
			&dns.EDNS0_NSID{Code: dns.EDNS0NSID, Nsid: "6e73"})
	}
	return r
}

// hopUpstreams are the kinds of upstream whose EDNS handling differs: the
// encrypted ones pad, DoT offers keepalive, plaintext ones do neither.
var hopUpstreams = []string{"dot", "doh", "dns", "tcp"}

// newHopUpstream starts a server of kind answering with h through rec, and
// the upstream for it.
func newHopUpstream(t *testing.T, kind string, rec *recorder, h dnstest.Handler, forwardECS bool) Upstream {
	t.Helper()
	switch kind {
	case "dns", "tcp":
		srv := dnstest.NewPlain(t, dnstest.PlainOptions{Handler: rec.handler(h)})
		return newTestPlain(t, srv, kind == "tcp", func(o *PlainOptions) { o.ForwardClientSubnet = forwardECS })
	}
	srv := newTestServer(t, kind, dnstest.Options{Raw: rec.raw(h)})
	return newTestUpstream(t, srv, func(o *DoTOptions) { o.ForwardClientSubnet = forwardECS })
}

func optionCodesOf(m *dns.Msg) []uint16 {
	var codes []uint16
	if opt := m.IsEdns0(); opt != nil {
		for _, o := range opt.Option {
			codes = append(codes, o.Option())
		}
	}
	return codes
}

// What leaves for each kind of upstream: the client's hop options (COOKIE,
// keepalive, padding) never; its Client Subnet only when forwarded; its
// other options, DO bit and payload size always; padding to 128-byte blocks
// and, for DoT, a keepalive offer on encrypted hops, with an OPT record
// added for it when the client sent none; on plaintext hops, nothing added.
// And what comes back: the answer's options but padding, keepalive and
// COOKIE, which belong to the upstream's hop.
func TestHopEDNS(t *testing.T) {
	clientOpts := func() []dns.EDNS0 {
		return []dns.EDNS0{
			&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "1112131415161718"},
			&dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: []byte{198, 51, 100, 0}},
			&dns.EDNS0_TCP_KEEPALIVE{Code: dns.EDNS0TCPKEEPALIVE},
			&dns.EDNS0_PADDING{Padding: make([]byte, 20)},
			&dns.EDNS0_NSID{Code: dns.EDNS0NSID},
		}
	}
	for _, kind := range hopUpstreams {
		encrypted := kind == "dot" || kind == "doh"
		for _, forwardECS := range []bool{false, true} {
			for _, edns := range []bool{false, true} {
				name := kind + map[bool]string{false: "/ECS removed", true: "/ECS forwarded"}[forwardECS] +
					map[bool]string{false: "/no EDNS", true: "/EDNS"}[edns]
				t.Run(name, func(t *testing.T) {
					rec := new(recorder)
					u := newHopUpstream(t, kind, rec, hopHandler, forwardECS)
					m := new(dns.Msg)
					m.SetQuestion("hop.example.", dns.TypeA)
					if edns {
						m.SetEdns0(4096, true)
						m.IsEdns0().Option = clientOpts()
					}
					q := parseMsg(t, m)
					ans, err := u.Exchange(ctxTimeout(t, answerTimeout), q)
					if err != nil {
						t.Fatal(err)
					}

					sent := rec.last(t)
					var want []uint16
					switch {
					case edns && forwardECS:
						want = []uint16{dns.EDNS0SUBNET, dns.EDNS0NSID}
					case edns:
						want = []uint16{dns.EDNS0NSID}
					}
					if kind == "dot" {
						want = append(want, dns.EDNS0TCPKEEPALIVE)
					}
					if encrypted {
						want = append(want, dns.EDNS0PADDING)
					}
					if got := optionCodesOf(sent.msg); !slices.Equal(got, want) {
						t.Errorf("options sent %v, want %v", got, want)
					}
					opt := sent.msg.IsEdns0()
					switch {
					case !edns && !encrypted:
						if opt != nil {
							t.Errorf("an OPT record added on a plaintext hop: %v", opt)
						}
					case opt == nil:
						t.Fatal("no OPT record sent")
					case edns && (opt.UDPSize() != 4096 || !opt.Do()):
						t.Errorf("sent payload size %d DO %v, want the client's 4096 and DO", opt.UDPSize(), opt.Do())
					case !edns && (opt.UDPSize() != 1232 || opt.Do()):
						t.Errorf("added OPT record with payload size %d DO %v, want 1232 and no DO", opt.UDPSize(), opt.Do())
					}
					if encrypted && sent.size%dnswire.PadBlock != 0 {
						t.Errorf("query of %d bytes sent, not a multiple of %d", sent.size, dnswire.PadBlock)
					}
					if !sent.msg.RecursionDesired || sent.msg.Question[0] != m.Question[0] {
						t.Errorf("query sent as %v", sent.msg)
					}

					got := new(dns.Msg)
					if err := got.Unpack(ans.Wire()); err != nil {
						t.Fatal(err)
					}
					wantBack := []uint16(nil)
					if edns || encrypted {
						wantBack = []uint16{dns.EDNS0NSID}
					}
					if codes := optionCodesOf(got); !slices.Equal(codes, wantBack) {
						t.Errorf("answer's options %v, want %v", codes, wantBack)
					}
					if got.Id != m.Id || len(got.Answer) != 1 {
						t.Errorf("answer %v", got)
					}
				})
			}
		}
	}
}

// A query whose compression pointers reach into its OPT record cannot be
// rewritten, and is not sent as it is: its client's options would leave
// with it.
func TestHopEDNSUnrewritableQueryRefused(t *testing.T) {
	m := new(dns.Msg)
	m.SetQuestion("example.com.", dns.TypeA)
	m.SetEdns0(1232, false)
	m.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: []byte{198, 51, 100, 0}}}
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	// A TXT record after the OPT record, owned by a pointer to the OPT
	// record's root name.
	opt := len(b) - 11 - 11
	b = append(b, 0xC0|byte(opt>>8), byte(opt), 0, 16, 0, 1, 0, 0, 0, 0, 0, 1, 0)
	b[11] = 2
	q, err := dnswire.Parse(b)
	if err != nil || q.RewritableEDNS() {
		t.Fatalf("built %v, rewritable %v", err, q.RewritableEDNS())
	}
	for _, kind := range hopUpstreams {
		t.Run(kind, func(t *testing.T) {
			rec := new(recorder)
			u := newHopUpstream(t, kind, rec, dnstest.DefaultHandler, false)
			if _, err := u.Exchange(ctxTimeout(t, answerTimeout), q); err == nil || !errors.Is(err, ErrBadQuery) {
				t.Fatalf("Exchange: %v, want ErrBadQuery", err)
			}
		})
	}
}
