package server

import (
	"bytes"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Answers released together leave through the batch writer: more of them
// than one system call carries (udpBatch), to clients on several sockets,
// and each reaches its own client with its own ID and question.
func TestUDPAnswersReleasedTogether(t *testing.T) {
	const clients, perClient = 4, 3 * udpBatch / 4
	ts := startServer(t, Options{})
	addr := net.UDPAddrFromAddrPort(ts.addr(t, "udp", loopback4))
	conns := make([]*net.UDPConn, clients)
	want := make([]map[uint16]string, clients)
	for c := range conns {
		conn, err := net.DialUDP("udp", nil, addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conns[c], want[c] = conn, map[uint16]string{}
		for i := range perClient {
			m := newQuery(fmt.Sprintf("hold-%d-%d.example.", c, i), dns.TypeA)
			m.Id = uint16(c*1000 + i)
			b, err := m.Pack()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := conn.Write(b); err != nil {
				t.Fatal(err)
			}
			want[c][m.Id] = m.Question[0].Name
		}
	}
	rel := &releaser{hs: ts.up.awaitHeld(t, clients*perClient)}
	rel.all()
	for c, conn := range conns {
		buf := make([]byte, 2048)
		for range perClient {
			_ = conn.SetReadDeadline(time.Now().Add(ioTimeout))
			n, err := conn.Read(buf)
			if err != nil {
				t.Fatalf("client %d: %d answers missing: %v", c, len(want[c]), err)
			}
			r := new(dns.Msg)
			if err := r.Unpack(buf[:n]); err != nil {
				t.Fatalf("client %d: %v", c, err)
			}
			name, ok := want[c][r.Id]
			if !ok || len(r.Question) != 1 || r.Question[0].Name != name || len(r.Answer) != 1 {
				t.Fatalf("client %d: unexpected answer %v", c, r)
			}
			delete(want[c], r.Id)
		}
	}
}

// A datagram is read whole whatever its size (up to the 65,507 bytes UDP
// carries over IPv4), and what a relay needs of it is relayed: a query
// followed by bytes that are not part of it goes upstream without them; one
// whose OPT record alone is larger than maxQuerySize gets FORMERR, with its
// question and an EDE saying why, not a cut-off read.
func TestUDPLargeQueryReadWhole(t *testing.T) {
	ts := startServer(t, Options{})
	addr := ts.addr(t, "udp", loopback4)

	m := ednsQuery("trailing.example.", dns.TypeA, 1232)
	q := packed(t, m)
	r := new(dns.Msg)
	if err := r.Unpack(exchange(t, "udp", addr, append(bytes.Clone(q), make([]byte, 60000)...))); err != nil {
		t.Fatal(err)
	}
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("answer to a query followed by 60,000 bytes: %v", r)
	}
	if got := ts.up.received(); len(got) != 1 || !bytes.Equal(got[0], q) {
		t.Fatalf("upstream received %d queries, the first of %d bytes; want the query alone, %d bytes", len(got), len(got[0]), len(q))
	}

	m = ednsQuery("padded.example.", dns.TypeA, 1232)
	m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_PADDING{Padding: make([]byte, 20000)})
	r, _ = ask(t, "udp", addr, m)
	if e := ede(r); r.Rcode != dns.RcodeFormatError || len(r.Question) != 1 || r.Question[0].Name != "padded.example." ||
		e == nil || e.InfoCode != dns.ExtendedErrorCodeOther || e.ExtraText != "query too large" {
		t.Fatalf("answer to a query of 20,000 bytes of OPT record: %v", r)
	}
	if got := ts.up.received(); len(got) != 1 {
		t.Fatalf("upstream received %d queries, want still 1", len(got))
	}
}
