package server

import (
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/upstream"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
	"github.com/miekg/dns"
)

// These tests put the real DNS-over-TLS client (upstream.DoT) between the
// server and an in-process DoT server (dnstest), as in production.

// dotRig is a started server relaying to a dnstest DoT server.
type dotRig struct {
	*testServer
	dot  *dnstest.Server
	seen *seenOptions
}

// seenOptions records the EDNS options of the queries the DoT server gets.
type seenOptions struct {
	mu   sync.Mutex
	opts map[string][]dns.EDNS0 // by lower-case query name
}

func (s *seenOptions) get(name string) []dns.EDNS0 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.opts[strings.ToLower(name)]
}

// startDoTRig starts a dnstest server answering like dnstest.DefaultHandler,
// plus big TXT answers for names starting "big", a DoT client with one
// connection toward it, and a server relaying to that client. mod adjusts
// the DoT options (nil: trust the test CA, no pins).
func startDoTRig(t *testing.T, opts Options, mod func(*dnstest.Server, *upstream.DoTOptions)) *dotRig {
	t.Helper()
	seen := &seenOptions{opts: map[string][]dns.EDNS0{}}
	handler := func(q *dns.Msg) *dns.Msg {
		r := dnstest.DefaultHandler(q)
		if len(q.Question) != 1 {
			return r
		}
		name := q.Question[0].Name
		if opt := q.IsEdns0(); opt != nil {
			seen.mu.Lock()
			seen.opts[strings.ToLower(name)] = opt.Option
			seen.mu.Unlock()
		}
		if opt := r.IsEdns0(); opt != nil && strings.HasPrefix(strings.ToLower(name), "hop") {
			// The options of the upstream's hop, which must not reach the
			// client, and one of the answer's own, which must.
			opt.Option = append(opt.Option, &dns.EDNS0_PADDING{Padding: make([]byte, 64)},
				&dns.EDNS0_TCP_KEEPALIVE{Code: dns.EDNS0TCPKEEPALIVE, Timeout: 300},
				&dns.EDNS0_NSID{Code: dns.EDNS0NSID, Nsid: "6e73"})
		}
		if strings.HasPrefix(strings.ToLower(name), "big") {
			for i := range 40 {
				r.Answer = append(r.Answer, &dns.TXT{
					Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60},
					Txt: []string{fmt.Sprintf("%03d-%s", i, strings.Repeat("y", 100))},
				})
			}
		}
		return r
	}
	ds := dnstest.New(t, dnstest.Options{Handler: handler})
	dopts := testDoTOptions(ds, testLogger(t))
	if mod != nil {
		mod(ds, &dopts)
	}
	d, err := upstream.NewDoT(dopts)
	if err != nil {
		t.Fatalf("NewDoT: %v", err)
	}
	t.Cleanup(func() { _ = d.Close() }) // runs after the server's Shutdown
	opts.Upstream = d
	return &dotRig{testServer: startServer(t, opts), dot: ds, seen: seen}
}

func optionCodes(opts []dns.EDNS0) []uint16 {
	var codes []uint16
	for _, o := range opts {
		codes = append(codes, o.Option())
	}
	return codes
}

// TestDoTPipelinedReverse pipelines 100 queries on one client TCP
// connection; the DoT server holds them until all 100 are in, then answers
// last first. All must come back right, over one upstream connection.
func TestDoTPipelinedReverse(t *testing.T) {
	const n = 100
	rig := startDoTRig(t, Options{QueryTimeout: 10 * time.Second, TCPMaxInFlight: n}, nil)
	rig.dot.Behavior.ReverseBatch.Store(n)
	c, err := net.Dial("tcp", rig.addr(t, "tcp", loopback4).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	names := map[uint16]string{}
	var batch []byte
	for i := range n {
		q := newQuery(fmt.Sprintf("q%d.example.", i), dns.TypeA)
		for names[q.Id] != "" { // IDs must tell the answers apart
			q.Id = dns.Id()
		}
		names[q.Id] = q.Question[0].Name
		b := packed(t, q)
		batch = append(batch, byte(len(b)>>8), byte(len(b)))
		batch = append(batch, b...)
	}
	if _, err := c.Write(batch); err != nil {
		t.Fatal(err)
	}
	for got := range n {
		raw, err := readMsg(c, "tcp")
		if err != nil {
			t.Fatalf("after %d answers: %v", got, err)
		}
		r := new(dns.Msg)
		if err := r.Unpack(raw); err != nil {
			t.Fatal(err)
		}
		name, ok := names[r.Id]
		if !ok {
			t.Fatalf("answer with unknown or repeated ID %d", r.Id)
		}
		delete(names, r.Id)
		if len(r.Question) != 1 || r.Question[0].Name != name || len(r.Answer) != 1 || r.Rcode != dns.RcodeSuccess {
			t.Fatalf("answer %v for ID %d, want one A record for %s", r, r.Id, name)
		}
	}
	if got := rig.dot.Accepted(); got != 1 {
		t.Errorf("DoT server accepted %d connections, want 1", got)
	}
	if got := rig.dot.MaxOutstanding(); got != n {
		t.Errorf("DoT server saw at most %d queries outstanding, want %d: not pipelined", got, n)
	}
}

// TestDoTRelay covers the path end to end for UDP and TCP clients: EDNS
// options reach the DoT server unharmed, a query without OPT gets an answer
// without one, big answers are truncated over UDP and whole over TCP.
func TestDoTRelay(t *testing.T) {
	rig := startDoTRig(t, Options{}, nil)
	unknown := &dns.EDNS0_LOCAL{Code: 65001, Data: []byte("opaque")}
	for _, network := range []string{"udp", "tcp"} {
		addr := rig.addr(t, network, loopback4)
		t.Run(network+"/unknown EDNS option", func(t *testing.T) {
			q := ednsQuery(network+"-opt.example.", dns.TypeA, 1232)
			q.IsEdns0().Option = append(q.IsEdns0().Option, unknown)
			r, _ := ask(t, network, addr, q)
			if r.Id != q.Id || len(r.Answer) != 1 || r.IsEdns0() == nil {
				t.Fatalf("answer %v", r)
			}
			found := false
			for _, o := range rig.seen.get(q.Question[0].Name) {
				if l, ok := o.(*dns.EDNS0_LOCAL); ok && l.Code == unknown.Code && string(l.Data) == string(unknown.Data) {
					found = true
				}
			}
			if !found {
				t.Fatalf("DoT server saw options %v, want %v among them", rig.seen.get(q.Question[0].Name), unknown)
			}
		})
		t.Run(network+"/no OPT", func(t *testing.T) {
			// The upstream sees an OPT record (the query is padded), and
			// answers with one, which the client must not get.
			q := newQuery("hop-"+network+"-plain.example.", dns.TypeAAAA)
			r, _ := ask(t, network, addr, q)
			if r.Id != q.Id || len(r.Answer) != 1 || r.IsEdns0() != nil || len(r.Extra) != 0 {
				t.Fatalf("answer %v, want one AAAA and no OPT", r)
			}
			if got := optionCodes(rig.seen.get(q.Question[0].Name)); !slices.Equal(got, []uint16{dns.EDNS0TCPKEEPALIVE, dns.EDNS0PADDING}) {
				t.Errorf("DoT server saw options %v, want the keepalive offer and padding", got)
			}
		})
		t.Run(network+"/hop options", func(t *testing.T) {
			q := ednsQuery("hop-"+network+".example.", dns.TypeA, 1232)
			q.IsEdns0().Option = append(q.IsEdns0().Option,
				&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"},
				&dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: []byte{198, 51, 100, 0}},
				&dns.EDNS0_TCP_KEEPALIVE{Code: dns.EDNS0TCPKEEPALIVE},
				&dns.EDNS0_PADDING{Padding: make([]byte, 9)}, unknown)
			r, _ := ask(t, network, addr, q)
			if got := optionCodes(rig.seen.get(q.Question[0].Name)); !slices.Equal(got, []uint16{unknown.Code, dns.EDNS0TCPKEEPALIVE, dns.EDNS0PADDING}) {
				t.Errorf("DoT server saw options %v, want the client's unknown one, then the keepalive offer and padding", got)
			}
			if r.IsEdns0() == nil {
				t.Fatalf("answer without OPT: %v", r)
			}
			if got := optionCodes(r.IsEdns0().Option); !slices.Equal(got, []uint16{dns.EDNS0NSID}) {
				t.Errorf("client got options %v, want the answer's NSID alone", got)
			}
		})
	}
	for _, edns := range []uint16{0, 4096} {
		t.Run(fmt.Sprintf("truncation EDNS %d then TCP", edns), func(t *testing.T) {
			q := newQuery(fmt.Sprintf("big-%d.example.", edns), dns.TypeTXT)
			limit := 512
			if edns != 0 {
				q.SetEdns0(edns, false)
				limit = testUDPMaxSize
			}
			r, raw := ask(t, "udp", rig.addr(t, "udp", loopback4), q)
			if !r.Truncated || len(raw) > limit || (edns != 0) != (r.IsEdns0() != nil) {
				t.Fatalf("UDP answer TC=%v, %d bytes (limit %d), OPT %v", r.Truncated, len(raw), limit, r.IsEdns0())
			}
			whole, _ := ask(t, "tcp", rig.addr(t, "tcp", loopback4), q)
			if whole.Truncated || len(whole.Answer) != 40 {
				t.Fatalf("TCP answer TC=%v with %d records, want 40", whole.Truncated, len(whole.Answer))
			}
		})
	}
}

// TestDoTFailures checks the EDE codes clients get for real TLS failures.
// A TLS failure is known once the handshake ends, which under -race on a
// loaded machine can take longer than a short query deadline: the query
// would then time out waiting for the dial (22, not 23). So those cases get
// a deadline that only bounds a hang, and so does their dial; the cases
// about the deadline itself keep a short one.
func TestDoTFailures(t *testing.T) {
	const (
		short = 400 * time.Millisecond
		// long leaves the answer and lateSlack within the client's
		// ioTimeout.
		long = ioTimeout - 2*lateSlack
	)
	tests := []struct {
		name    string
		mod     func(*dnstest.Server, *upstream.DoTOptions)
		ede     uint16
		timeout time.Duration
	}{
		{"certificate from another CA", func(ds *dnstest.Server, _ *upstream.DoTOptions) { ds.Behavior.SetCert(dnstest.CertOtherCA) }, dns.ExtendedErrorCodeNetworkError, long},
		{"certificate for another name", func(ds *dnstest.Server, _ *upstream.DoTOptions) { ds.Behavior.SetCert(dnstest.CertOtherName) }, dns.ExtendedErrorCodeNetworkError, long},
		{"pin mismatch", func(ds *dnstest.Server, o *upstream.DoTOptions) { o.Pins = [][32]byte{{1, 2, 3}} }, dns.ExtendedErrorCodeNetworkError, long},
		{"upstream never answers", func(ds *dnstest.Server, _ *upstream.DoTOptions) { ds.Behavior.Drop.Store(true) }, dns.ExtendedErrorCodeNoReachableAuthority, short},
		{"TLS black hole", func(ds *dnstest.Server, _ *upstream.DoTOptions) { ds.Behavior.BlackHole.Store(true) }, dns.ExtendedErrorCodeNoReachableAuthority, short},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rig := startDoTRig(t, Options{QueryTimeout: tt.timeout}, func(ds *dnstest.Server, o *upstream.DoTOptions) {
				o.DialTimeout = max(o.DialTimeout, tt.timeout) // the handshake, too, has all of it
				tt.mod(ds, o)
			})
			for _, network := range []string{"udp", "tcp"} {
				q := ednsQuery("www.example.", dns.TypeA, 1232)
				start := time.Now()
				r, _ := ask(t, network, rig.addr(t, network, loopback4), q)
				elapsed := time.Since(start)
				if r.Rcode != dns.RcodeServerFailure || r.Id != q.Id {
					t.Fatalf("%s: answer %v, want SERVFAIL", network, r.MsgHdr)
				}
				if e := ede(r); e == nil || e.InfoCode != tt.ede {
					t.Fatalf("%s: EDE %v, want %d", network, e, tt.ede)
				}
				if elapsed > tt.timeout+lateSlack {
					t.Errorf("%s: SERVFAIL after %v, deadline %v", network, elapsed, tt.timeout)
				}
			}
		})
	}
}
