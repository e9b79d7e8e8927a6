package dnswire

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func mustParse(t testing.TB, b []byte) Msg {
	t.Helper()
	m, err := Parse(b)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return m
}

func TestAnswers(t *testing.T) {
	q := withEDNS(query("www.Example.com.", dns.TypeAAAA), 1232, false)
	qm := mustParse(t, pack(t, q))
	reply := func(mod func(r *dns.Msg)) []byte {
		r := new(dns.Msg)
		r.SetReply(q)
		if mod != nil {
			mod(r)
		}
		return pack(t, r)
	}
	twoQuestions := mustParse(t, []byte{
		0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0,
		3, 'w', 'w', 'w', 0, 0, 28, 0, 1,
		4, 'm', 'a', 'i', 'l', 0, 0, 1, 0, 1,
	})
	badRecords := reply(func(r *dns.Msg) {
		r.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: "www.example.com.", Rrtype: dns.TypeA, Class: dns.ClassINET}, A: []byte{1, 2, 3, 4}}}
	})
	badRecords = badRecords[:len(badRecords)-2] // the A record's data cut short

	tests := []struct {
		name  string
		query Msg
		resp  []byte
		want  bool
	}{
		{"same", qm, reply(nil), true},
		{"name in other case (0x20)", qm, reply(func(r *dns.Msg) { r.Question[0].Name = "WWW.EXAMPLE.COM." }), true},
		{"other name", qm, reply(func(r *dns.Msg) { r.Question[0].Name = "www.example.net." }), false},
		{"longer name", qm, reply(func(r *dns.Msg) { r.Question[0].Name = "www.example.com.x." }), false},
		{"other type", qm, reply(func(r *dns.Msg) { r.Question[0].Qtype = dns.TypeA }), false},
		{"other class", qm, reply(func(r *dns.Msg) { r.Question[0].Qclass = dns.ClassCHAOS }), false},
		{"no question", qm, reply(func(r *dns.Msg) { r.Question = nil }), false},
		{"not a response", qm, pack(t, q), false},
		{"question cut short", qm, reply(nil)[:20], false},
		{"header only", qm, reply(nil)[:12], false},
		{"malformed records after the question: still its answer", qm, badRecords, true},
		{"query of two questions", twoQuestions, reply(nil), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rm, _ := Parse(tt.resp)
			if got := rm.Answers(&tt.query); got != tt.want {
				t.Errorf("Answers = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestAppendToAndSetID(t *testing.T) {
	b := pack(t, query("a.example.", dns.TypeA))
	orig := append([]byte(nil), b...)
	m := mustParse(t, append(b, 9, 9)) // trailing bytes are not the message's
	out := m.AppendTo([]byte{0xEE}, 0xBEEF)
	if out[0] != 0xEE || !bytes.Equal(out[3:], orig[2:]) || out[1] != 0xBE || out[2] != 0xEF {
		t.Fatalf("AppendTo = % x, want ee, then the message with ID beef", out)
	}
	if !bytes.Equal(m.Wire(), orig) || m.ID != 0x1234 {
		t.Fatalf("AppendTo changed the message: % x", m.Wire())
	}
	m.SetID(0x0102)
	if m.ID != 0x0102 || m.Wire()[0] != 1 || m.Wire()[1] != 2 {
		t.Errorf("SetID left ID %#x, wire % x", m.ID, m.Wire()[:2])
	}
}

func TestNewQuery(t *testing.T) {
	for _, tt := range []struct {
		name  string
		qtype uint16
		want  string // "" for ErrName
	}{
		{".", dns.TypeNS, "."},
		{"", dns.TypeNS, "."},
		{"Example.COM.", dns.TypeA, "Example.COM."},
		{"example.com", dns.TypeAAAA, "example.com."},
		{"a..b.", dns.TypeA, ""},
		{strings.Repeat("a", 64) + ".", dns.TypeA, ""},
		{strings.Repeat(strings.Repeat("a", 63)+".", 4), dns.TypeA, ""},
		{`a\.b.`, dns.TypeA, ""},
	} {
		m, err := NewQuery(0x4242, tt.name, tt.qtype)
		if tt.want == "" {
			if !errors.Is(err, ErrName) {
				t.Errorf("NewQuery(%q) = %v, want ErrName", tt.name, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("NewQuery(%q): %v", tt.name, err)
			continue
		}
		r := new(dns.Msg)
		if err := r.Unpack(m.Wire()); err != nil {
			t.Fatal(err)
		}
		if r.Id != 0x4242 || r.Response || !r.RecursionDesired || r.Opcode != dns.OpcodeQuery || len(r.Question) != 1 ||
			r.Question[0] != (dns.Question{Name: tt.want, Qtype: tt.qtype, Qclass: dns.ClassINET}) || len(r.Extra) != 0 {
			t.Errorf("NewQuery(%q) = %v", tt.name, r)
		}
		if m.QNameText() != tt.want {
			t.Errorf("QNameText = %q, want %q", m.QNameText(), tt.want)
		}
	}
}

func TestTruncate(t *testing.T) {
	big := withEDNS(query("big.example.", dns.TypeTXT), 1232, false)
	big.Response = true
	for i := range 20 {
		big.Answer = append(big.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: "big.example.", Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60},
			Txt: []string{strings.Repeat(string(rune('a'+i)), 100)}})
	}
	m := mustParse(t, pack(t, big))
	out, tc, ok := m.Truncate(512)
	if !ok || !tc || len(out) > 512 {
		t.Fatalf("Truncate(512) = %d bytes, TC %v, ok %v", len(out), tc, ok)
	}
	r := new(dns.Msg)
	if err := r.Unpack(out); err != nil || !r.Truncated || r.IsEdns0() == nil || len(r.Answer) == 0 || len(r.Answer) == 20 {
		t.Fatalf("truncated answer %v (%v): want TC, the OPT record and some whole records", r, err)
	}

	// Uncompressed, it is over the limit; compressed, it fits whole.
	small := query("www.example.", dns.TypeA)
	small.Response = true
	for i := range 40 {
		small.Answer = append(small.Answer, &dns.A{Hdr: dns.RR_Header{Name: "www.example.", Rrtype: dns.TypeA, Class: dns.ClassINET}, A: []byte{192, 0, 2, byte(i)}})
	}
	wire := pack(t, small)
	m = mustParse(t, wire)
	out, tc, ok = m.Truncate(len(wire) - 1)
	if !ok || tc || len(out) >= len(wire) {
		t.Fatalf("compressible answer: %d bytes, TC %v, ok %v; want it whole, compressed", len(out), tc, ok)
	}
}

func TestRcodeName(t *testing.T) {
	for rc, want := range map[int]string{0: "NOERROR", 2: "SERVFAIL", 16: "BADVERS", 23: "BADCOOKIE", 4000: ""} {
		got, ok := RcodeName(rc)
		if got != want || ok != (want != "") {
			t.Errorf("RcodeName(%d) = %q, %v; want %q", rc, got, ok, want)
		}
	}
}

// TestAppendReplyRecords: the records a relay writes itself (localhost's
// addresses, a negative answer's SOA) decode as a third party reads them.
func TestAppendReplyRecords(t *testing.T) {
	qm := mustParse(t, pack(t, withEDNS(query("Web.LocalHost.", dns.TypeAAAA), 1232, false)))
	zone, err := AppendName(nil, "localhost.")
	if err != nil {
		t.Fatal(err)
	}
	mname := zone
	rname, _ := AppendName(nil, "nobody.invalid.")
	soa := SOA(zone, 60, SOAData{MName: mname, RName: rname, Serial: 1, Refresh: 3600, Retry: 1200, Expire: 604800, Minimum: 60})
	out := AppendReply(nil, &qm, Reply{
		Authoritative: true,
		Answer:        []Record{A(60, netip.MustParseAddr("127.0.0.1")), AAAA(30, netip.MustParseAddr("::1"))},
		Authority:     []Record{soa},
		EDNS:          &EDNS{UDPSize: 1232},
	})
	r := new(dns.Msg)
	if err := r.Unpack(out); err != nil {
		t.Fatalf("reply does not unpack: %v (% x)", err, out)
	}
	if len(r.Answer) != 2 || len(r.Ns) != 1 || len(r.Extra) != 1 || !r.Authoritative {
		t.Fatalf("sections: %v", r)
	}
	a, ok := r.Answer[0].(*dns.A)
	if !ok || a.Hdr.Name != "Web.LocalHost." || a.Hdr.Ttl != 60 || a.A.String() != "127.0.0.1" {
		t.Errorf("A record %v", r.Answer[0])
	}
	aaaa, ok := r.Answer[1].(*dns.AAAA)
	if !ok || aaaa.Hdr.Ttl != 30 || aaaa.AAAA.String() != "::1" {
		t.Errorf("AAAA record %v", r.Answer[1])
	}
	s, ok := r.Ns[0].(*dns.SOA)
	if !ok || s.Hdr.Name != "localhost." || s.Hdr.Class != dns.ClassINET || s.Hdr.Ttl != 60 || s.Ns != "localhost." ||
		s.Mbox != "nobody.invalid." || s.Serial != 1 || s.Refresh != 3600 || s.Retry != 1200 || s.Expire != 604800 || s.Minttl != 60 {
		t.Errorf("SOA record %v", r.Ns[0])
	}
	// And the message parses as what the relay hands on.
	if m, err := Parse(out); err != nil || !m.Answers(&qm) || m.NSCount != 1 {
		t.Errorf("Parse: %v, answers %v", err, m.Answers(&qm))
	}
}

func TestTypeName(t *testing.T) {
	for qt, want := range map[uint16]string{1: "A", 28: "AAAA", 65: "HTTPS", 255: "ANY", 65280: "TYPE65280"} {
		if got := TypeName(qt); got != want {
			t.Errorf("TypeName(%d) = %q, want %q", qt, got, want)
		}
	}
}
