package server

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func packed(t testing.TB, m *dns.Msg) []byte {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatalf("packing: %v", err)
	}
	return b
}

// TestProtocolRules sends each kind of message the rules single out, over
// UDP and TCP, and checks the answer (or the silence) the rules demand.
func TestProtocolRules(t *testing.T) {
	ts := startServer(t, Options{})
	good := packed(t, newQuery("www.example.", dns.TypeA))

	withOpcode := func(op int) []byte {
		m := newQuery("www.example.", dns.TypeSOA)
		m.Opcode = op
		return packed(t, m)
	}
	withCounts := func(qd uint16) []byte {
		b := append([]byte(nil), good...)
		binary.BigEndian.PutUint16(b[4:], qd)
		return b
	}
	badvers := func() []byte {
		m := ednsQuery("www.example.", dns.TypeA, 1232)
		m.IsEdns0().SetVersion(1)
		return packed(t, m)
	}()
	twoOPT := func() []byte {
		m := ednsQuery("www.example.", dns.TypeA, 1232)
		m.Extra = append(m.Extra, m.Extra[0])
		return packed(t, m)
	}()
	badOPT := func() []byte {
		m := ednsQuery("www.example.", dns.TypeA, 1232)
		m.Extra[0].Header().Name = "www.example."
		return packed(t, m)
	}()
	optInAnswer := func() []byte {
		m := newQuery("www.example.", dns.TypeA)
		m.Answer = append(m.Answer, &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT, Class: 1232}})
		return packed(t, m)
	}()
	optOverrun := func() []byte {
		m := ednsQuery("www.example.", dns.TypeA, 1232)
		m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_LOCAL{Code: 65001, Data: []byte("data")})
		b := packed(t, m)
		b[len(b)-5]++ // the option's length, one past the RDATA
		return b
	}()
	// withRecord is good with one more record in the additional section,
	// whose owner name is the bytes given.
	withRecord := func(owner ...byte) []byte {
		b := append(append([]byte(nil), good...), owner...)
		b = append(b, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 192, 0, 2, 1)
		binary.BigEndian.PutUint16(b[10:], 1)
		return b
	}
	// withName is good with its question name replaced by the bytes given.
	withName := func(name ...byte) []byte {
		b := append([]byte(nil), good[:12]...)
		return append(append(b, name...), 0, 1, 0, 1)
	}
	long := bytes.Repeat(append([]byte{63}, bytes.Repeat([]byte("a"), 63)...), 4) // 256 bytes with the root
	response := func() []byte {
		m := newQuery("www.example.", dns.TypeA)
		m.Response = true
		return packed(t, m)
	}()

	tests := []struct {
		name       string
		msg        []byte
		silent     bool // no answer at all
		rcode      int
		wantOPT    bool
		wantQ      bool
		malformed  bool // counted in malformed_queries_total
		toUpstream bool
	}{
		{name: "response (QR set)", msg: response, silent: true, malformed: true},
		{name: "shorter than a header", msg: good[:11], silent: true, malformed: true},
		{name: "empty message", msg: []byte{}, silent: true, malformed: true},
		{name: "NOTIFY", msg: withOpcode(dns.OpcodeNotify), rcode: dns.RcodeNotImplemented, wantQ: true},
		{name: "UPDATE", msg: withOpcode(dns.OpcodeUpdate), rcode: dns.RcodeNotImplemented, wantQ: true},
		{name: "STATUS", msg: withOpcode(dns.OpcodeStatus), rcode: dns.RcodeNotImplemented, wantQ: true},
		{name: "EDNS version 1", msg: badvers, rcode: dns.RcodeBadVers, wantOPT: true, wantQ: true},
		{name: "QDCOUNT 0", msg: withCounts(0)[:12], rcode: dns.RcodeFormatError, malformed: true},
		{name: "QDCOUNT 2", msg: withCounts(2), rcode: dns.RcodeFormatError, malformed: true},
		{name: "question cut short", msg: good[:len(good)-2], rcode: dns.RcodeFormatError, malformed: true},
		{name: "garbage after the header", msg: append(append([]byte(nil), good[:12]...), 0xFF, 0xFF, 0xFF), rcode: dns.RcodeFormatError, malformed: true},
		// RFC 6891 §7: the FORMERR for a faulty OPT record carries one.
		{name: "two OPT records", msg: twoOPT, rcode: dns.RcodeFormatError, wantOPT: true, wantQ: true, malformed: true},
		{name: "OPT not owned by the root", msg: badOPT, rcode: dns.RcodeFormatError, wantOPT: true, wantQ: true, malformed: true},
		{name: "header of one byte", msg: good[:1], silent: true, malformed: true},
		{name: "unassigned opcode 3", msg: withOpcode(3), rcode: dns.RcodeNotImplemented, wantQ: true},
		{name: "unassigned opcode 15", msg: withOpcode(15), rcode: dns.RcodeNotImplemented, wantQ: true},
		{name: "compression loop in the question", msg: withName(0xC0, 12), rcode: dns.RcodeFormatError, malformed: true},
		{name: "forward pointer in the question", msg: withName(1, 'a', 0xC0, 20, 0, 1, 0, 1, 0), rcode: dns.RcodeFormatError, malformed: true},
		{name: "pointer out of the message", msg: withName(0xC0, 0xFF), rcode: dns.RcodeFormatError, malformed: true},
		// The records after the question are not forwarded, but they must
		// be sound: a pointer loop makes the message malformed.
		{name: "compression loop in a record", msg: withRecord(0xC0, byte(len(good))), rcode: dns.RcodeFormatError, wantQ: true, malformed: true},
		{name: "compression loop through a label", msg: withRecord(1, 'b', 0xC0, byte(len(good))), rcode: dns.RcodeFormatError, wantQ: true, malformed: true},
		{name: "label longer than 63 bytes", msg: withName(64, 'a', 0), rcode: dns.RcodeFormatError, malformed: true},
		{name: "name longer than 255 bytes", msg: withName(append(long, 0)...), rcode: dns.RcodeFormatError, malformed: true},
		{name: "OPT in the answer section", msg: optInAnswer, rcode: dns.RcodeFormatError, wantOPT: true, wantQ: true, malformed: true},
		{name: "OPT option overruns its RDATA", msg: optOverrun, rcode: dns.RcodeFormatError, wantOPT: true, wantQ: true, malformed: true},
		{name: "trailing bytes ignored", msg: append(append([]byte(nil), good...), 0, 0, 0), rcode: dns.RcodeSuccess, wantQ: true, toUpstream: true},
	}
	for _, network := range []string{"udp", "tcp"} {
		addr := ts.addr(t, network, loopback4)
		for _, tt := range tests {
			t.Run(network+"/"+tt.name, func(t *testing.T) {
				c, err := net.Dial(network, addr.String())
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				malformed := testutil.ToFloat64(ts.m.malformed)
				upstreamBefore := len(ts.up.received())
				if err := writeMsg(c, network, tt.msg); err != nil {
					t.Fatal(err)
				}
				if tt.silent {
					assertSilent(t, c, network, good)
				} else {
					raw, err := readMsg(c, network)
					if err != nil {
						t.Fatalf("no answer: %v", err)
					}
					r := new(dns.Msg)
					if err := r.Unpack(raw); err != nil {
						t.Fatalf("answer does not unpack: %v", err)
					}
					if r.Id != binary.BigEndian.Uint16(tt.msg) || !r.Response {
						t.Errorf("answer header %v: want the query's ID and QR", r.MsgHdr)
					}
					if r.Rcode != tt.rcode {
						t.Errorf("rcode %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[tt.rcode])
					}
					// Recursion is available for queries, not for messages
					// the server cannot serve as one (dnswire.AppendReply).
					wantRA := tt.rcode != dns.RcodeFormatError && tt.rcode != dns.RcodeNotImplemented
					if r.RecursionAvailable != wantRA || r.Authoritative || r.AuthenticatedData || r.Truncated {
						t.Errorf("answer flags %v, want RA=%v and no AA, AD or TC", r.MsgHdr, wantRA)
					}
					if (r.IsEdns0() != nil) != tt.wantOPT {
						t.Errorf("OPT %v, want present=%v", r.IsEdns0(), tt.wantOPT)
					}
					if opt := r.IsEdns0(); opt != nil && opt.Version() != 0 {
						t.Errorf("OPT version %d, want 0", opt.Version())
					}
					if (len(r.Question) == 1) != tt.wantQ {
						t.Errorf("question %v, want present=%v", r.Question, tt.wantQ)
					}
				}
				wantMalformed := malformed
				if tt.malformed {
					wantMalformed++
				}
				waitFor(t, "malformed_queries_total to count", func() bool { return testutil.ToFloat64(ts.m.malformed) == wantMalformed })
				want := 0
				if tt.toUpstream || (tt.silent && network == "udp") { // the UDP probe goes there
					want = 1
				}
				if got := len(ts.up.received()) - upstreamBefore; got != want {
					t.Errorf("%d queries reached the upstream, want %d", got, want)
				}
			})
		}
	}
}

// assertSilent checks that the server sends nothing for the message just
// written. Over TCP the client then half-closes: the server answers what it
// read and closes, so everything it ever sent is read before EOF. Over UDP a
// good query follows on the same socket, and the first datagram back must
// answer it (the server handles datagrams in arrival order up to the
// upstream, and the bad one never goes there).
func assertSilent(t *testing.T, c net.Conn, network string, probe []byte) {
	t.Helper()
	if network == "tcp" {
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		raw, err := readMsg(c, network)
		if !errors.Is(err, io.EOF) {
			t.Fatalf("got %x (err %v), want no answer and EOF", raw, err)
		}
		return
	}
	if err := writeMsg(c, network, probe); err != nil {
		t.Fatal(err)
	}
	raw, err := readMsg(c, network)
	if err != nil {
		t.Fatalf("no answer to the probe query: %v", err)
	}
	if !bytes.Equal(raw[:2], probe[:2]) {
		t.Fatalf("first datagram back has ID %x, want the probe's %x: the bad message was answered", raw[:2], probe[:2])
	}
}

// TestUpstreamAnswersPassThrough checks that an upstream's SERVFAIL (with
// its own EDE) and NXDOMAIN reach the client as the upstream sent them.
func TestUpstreamAnswersPassThrough(t *testing.T) {
	ts := startServer(t, Options{})
	for _, network := range []string{"udp", "tcp"} {
		for _, tc := range []struct {
			qname string
			rcode int
		}{{"servfail.example.", dns.RcodeServerFailure}, {"nxdomain.example.", dns.RcodeNameError}} {
			t.Run(network+"/"+tc.qname, func(t *testing.T) {
				q := ednsQuery(tc.qname, dns.TypeA, 1232)
				r, raw := ask(t, network, ts.addr(t, network, loopback4), q)
				if r.Rcode != tc.rcode {
					t.Fatalf("rcode %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[tc.rcode])
				}
				want, err := ts.up.Exchange(t.Context(), mustParse(t, packed(t, q)))
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(raw, want.Wire()) {
					t.Errorf("answer\n% x\nwant the upstream's bytes\n% x", raw, want.Wire())
				}
				if tc.rcode == dns.RcodeServerFailure && (ede(r) == nil || ede(r).InfoCode != dns.ExtendedErrorCodeDNSBogus) {
					t.Errorf("EDE %v, want the upstream's own", ede(r))
				}
			})
		}
	}
}
