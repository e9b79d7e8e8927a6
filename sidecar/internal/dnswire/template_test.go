package dnswire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"testing"

	"github.com/miekg/dns"
)

func rr(t testing.TB, s string) dns.RR {
	t.Helper()
	r, err := dns.NewRR(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// answer is a reply to q with the given records; the OPT record, when q
// has one, is in the additional section after extra.
func answer(t testing.TB, q *dns.Msg, rcode int, an, ns, extra []dns.RR) *dns.Msg {
	t.Helper()
	r := new(dns.Msg)
	r.SetRcode(q, rcode)
	r.RecursionAvailable = true
	r.Answer, r.Ns, r.Extra = an, ns, extra
	if opt := q.IsEdns0(); opt != nil {
		r.SetEdns0(1232, opt.Do())
	}
	return r
}

func TestRecords(t *testing.T) {
	q := withEDNS(query("www.example.com.", dns.TypeA), 1232, false)
	r := answer(t, q, dns.RcodeSuccess,
		[]dns.RR{rr(t, "www.example.com. 300 IN CNAME web.example.com."), rr(t, "web.example.com. 60 IN A 192.0.2.1")},
		[]dns.RR{rr(t, "example.com. 3600 IN SOA ns.example.com. host.example.com. 1 7200 900 1209600 86")},
		[]dns.RR{rr(t, "ns.example.com. 120 IN AAAA 2001:db8::53")})
	r.Compress = true
	m := mustParse(t, pack(t, r))
	type got struct {
		sec  Section
		typ  uint16
		ttl  uint32
		wire uint32 // the TTL as the bytes at TTLOff say
	}
	var recs []got
	for rr := range m.Records() {
		recs = append(recs, got{rr.Section, rr.Type, rr.TTL, binary.BigEndian.Uint32(m.Wire()[rr.TTLOff:])})
		if rr.Type == TypeSOA {
			minimum, ok := m.SOAMinimum(rr)
			if !ok || minimum != 86 {
				t.Errorf("SOAMinimum = %d, %v; want 86", minimum, ok)
			}
		} else if _, ok := m.SOAMinimum(rr); ok {
			t.Errorf("SOAMinimum of a %d record reports a value", rr.Type)
		}
	}
	want := []got{
		{SectionAnswer, dns.TypeCNAME, 300, 300},
		{SectionAnswer, dns.TypeA, 60, 60},
		{SectionAuthority, dns.TypeSOA, 3600, 3600},
		{SectionAdditional, dns.TypeAAAA, 120, 120},
		{SectionAdditional, dns.TypeOPT, 0, 0},
	}
	if len(recs) != len(want) {
		t.Fatalf("Records yielded %v, want %v", recs, want)
	}
	for i := range want {
		if recs[i] != want[i] {
			t.Errorf("record %d: %+v, want %+v", i, recs[i], want[i])
		}
	}
	// Stopping early stops.
	n := 0
	for range m.Records() {
		n++
		break
	}
	if n != 1 {
		t.Errorf("break after the first record: %d yielded", n)
	}
	// Nothing for a message that is not Valid.
	bad, _ := Parse(pack(t, r)[:40])
	for range bad.Records() {
		t.Fatal("Records of a message Parse rejected yielded a record")
	}
}

func TestOptionAndKey(t *testing.T) {
	ecs := &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.IPv4(198, 51, 100, 0)}
	cookie := &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0123456789abcdef"}
	m := mustParse(t, pack(t, withEDNS(query("Www.Example.COM.", dns.TypeA), 1232, true, cookie, ecs)))
	if _, ok := m.Option(OptionECS); !ok {
		t.Error("Option(ECS) not found")
	}
	if data, ok := m.Option(OptionCookie); !ok || len(data) != 8 {
		t.Errorf("Option(COOKIE) = %x, %v", data, ok)
	}
	if _, ok := m.Option(OptionEDE); ok {
		t.Error("Option(EDE) found in a query without one")
	}
	plain := mustParse(t, pack(t, query("www.example.com.", dns.TypeA)))
	if _, ok := plain.Option(OptionECS); ok {
		t.Error("Option found without an OPT record")
	}

	key := func(name string, qtype, class uint16, do, cd bool) string {
		q := query(name, qtype)
		q.Question[0].Qclass = class
		q.CheckingDisabled = cd
		if do {
			q.SetEdns0(512, true)
		}
		m := mustParse(t, pack(t, q))
		return string(m.AppendKey(nil))
	}
	base := key("www.example.com.", dns.TypeA, dns.ClassINET, false, false)
	if got := key("WWW.EXAMPLE.com.", dns.TypeA, dns.ClassINET, false, false); got != base {
		t.Error("the key depends on letter case")
	}
	for name, other := range map[string]string{
		"type":  key("www.example.com.", dns.TypeAAAA, dns.ClassINET, false, false),
		"class": key("www.example.com.", dns.TypeA, dns.ClassCHAOS, false, false),
		"DO":    key("www.example.com.", dns.TypeA, dns.ClassINET, true, false),
		"CD":    key("www.example.com.", dns.TypeA, dns.ClassINET, false, true),
		"name":  key("www.example.org.", dns.TypeA, dns.ClassINET, false, false),
	} {
		if other == base {
			t.Errorf("queries differing in %s have the same key", name)
		}
	}
	if allocs := testing.AllocsPerRun(100, func() { _ = m.AppendKey(make([]byte, 0, MaxKeyLen)[:0]) }); allocs > 1 {
		t.Errorf("AppendKey allocates %v times beyond its buffer", allocs-1)
	}
}

// decode unpacks b, failing the test if it does not.
func decode(t testing.TB, b []byte) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		t.Fatalf("does not unpack: %v\n% x", err, b)
	}
	return m
}

func TestTemplate(t *testing.T) {
	stored := withEDNS(query("www.example.com.", dns.TypeA), 4096, false)
	stored.AuthenticatedData = true
	r := answer(t, stored, dns.RcodeSuccess,
		[]dns.RR{rr(t, "www.example.com. 300 IN CNAME web.example.com."), rr(t, "web.example.com. 60 IN A 192.0.2.1")},
		nil, nil)
	r.AuthenticatedData = true
	opt := r.IsEdns0()
	opt.Option = append(opt.Option,
		&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0123456789abcdef0123456789abcdef"},
		&dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeForgedAnswer, ExtraText: "filtered"},
		&dns.EDNS0_PADDING{Padding: make([]byte, 40)})
	a := mustParse(t, pack(t, r))
	tpl, err := NewTemplate(&a, 200)
	if err != nil {
		t.Fatal(err)
	}
	if tpl.Rcode() != dns.RcodeSuccess {
		t.Errorf("Rcode = %d", tpl.Rcode())
	}

	tests := []struct {
		name    string
		q       *dns.Msg
		o       WriteOptions
		ttls    []uint32
		opt     bool
		ad      bool
		ede     []uint16
		udpSize uint16
	}{
		{name: "EDNS client, aged", q: withEDNS(query("WWW.example.COM.", dns.TypeA), 1232, false),
			o: WriteOptions{Age: 10, UDPSize: 1232}, ttls: []uint32{190, 50}, opt: true, ede: []uint16{dns.ExtendedErrorCodeForgedAnswer}, udpSize: 1232},
		{name: "client without EDNS gets no OPT", q: query("www.example.com.", dns.TypeA),
			o: WriteOptions{Age: 100, UDPSize: 1232}, ttls: []uint32{100, 0}},
		{name: "AD for a client that set AD", q: func() *dns.Msg { m := query("www.example.com.", dns.TypeA); m.AuthenticatedData = true; return m }(),
			o: WriteOptions{}, ttls: []uint32{200, 60}, ad: true},
		{name: "AD for a client that set DO", q: withEDNS(query("www.example.com.", dns.TypeA), 512, true),
			o: WriteOptions{UDPSize: 1400}, ttls: []uint32{200, 60}, opt: true, ad: true, ede: []uint16{dns.ExtendedErrorCodeForgedAnswer}, udpSize: 1400},
		{name: "stale", q: withEDNS(query("www.example.com.", dns.TypeA), 1232, false),
			o:    WriteOptions{Age: 5000, FixTTL: true, TTL: 30, UDPSize: 1232, HasEDE: true, EDE: EDEStaleAnswer},
			ttls: []uint32{30, 30}, opt: true, ede: []uint16{dns.ExtendedErrorCodeForgedAnswer, EDEStaleAnswer}, udpSize: 1232},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.q.RecursionDesired = false
			tt.q.CheckingDisabled = true
			q := mustParse(t, pack(t, tt.q))
			out := tpl.AppendTo([]byte("prefix"), &q, tt.o)
			if !bytes.HasPrefix(out, []byte("prefix")) {
				t.Fatal("AppendTo overwrote dst")
			}
			got := decode(t, out[len("prefix"):])
			if got.Id != tt.q.Id || got.Question[0].Name != tt.q.Question[0].Name || got.RecursionDesired || !got.CheckingDisabled {
				t.Errorf("header or question not the client's: %v %v", got.MsgHdr, got.Question)
			}
			if got.AuthenticatedData != tt.ad {
				t.Errorf("AD = %v, want %v", got.AuthenticatedData, tt.ad)
			}
			if len(got.Answer) != len(tt.ttls) {
				t.Fatalf("answer %v", got.Answer)
			}
			for i, rr := range got.Answer {
				if rr.Header().Ttl != tt.ttls[i] {
					t.Errorf("TTL of %v = %d, want %d", rr, rr.Header().Ttl, tt.ttls[i])
				}
			}
			gotOPT := got.IsEdns0()
			if (gotOPT != nil) != tt.opt {
				t.Fatalf("OPT %v, want one: %v", gotOPT, tt.opt)
			}
			if gotOPT == nil {
				return
			}
			if gotOPT.UDPSize() != tt.udpSize || gotOPT.Do() != tt.q.IsEdns0().Do() {
				t.Errorf("OPT %v: want size %d, the query's DO", gotOPT, tt.udpSize)
			}
			var codes []uint16
			for _, o := range gotOPT.Option {
				switch o := o.(type) {
				case *dns.EDNS0_EDE:
					codes = append(codes, o.InfoCode)
				default:
					t.Errorf("option %v kept; only EDE should be", o)
				}
			}
			if len(codes) != len(tt.ede) {
				t.Fatalf("EDE codes %v, want %v", codes, tt.ede)
			}
			for i := range codes {
				if codes[i] != tt.ede[i] {
					t.Errorf("EDE codes %v, want %v", codes, tt.ede)
				}
			}
		})
	}
	q := mustParse(t, pack(t, withEDNS(query("www.example.com.", dns.TypeA), 1232, false)))
	buf := make([]byte, 0, 512)
	if allocs := testing.AllocsPerRun(100, func() { buf = tpl.AppendTo(buf[:0], &q, WriteOptions{Age: 1}) }); allocs != 0 {
		t.Errorf("AppendTo allocates %v times", allocs)
	}
}

func TestNewTemplateRefuses(t *testing.T) {
	q := query("www.example.com.", dns.TypeA)
	tsig := answer(t, q, dns.RcodeSuccess, []dns.RR{rr(t, "www.example.com. 60 IN A 192.0.2.1")}, nil, nil)
	tsig.SetTsig("key.", dns.HmacSHA256, 300, 0)
	tsig.Extra = append(tsig.Extra, &dns.TSIG{Hdr: dns.RR_Header{Name: "key.", Rrtype: dns.TypeTSIG, Class: dns.ClassANY},
		Algorithm: dns.HmacSHA256, TimeSigned: 1, Fudge: 300, MAC: "00", OrigId: 1})
	two := query("www.example.com.", dns.TypeA)
	two.Question = append(two.Question, two.Question[0])
	ext := answer(t, withEDNS(query("www.example.com.", dns.TypeA), 512, false), dns.RcodeBadCookie, nil, nil, nil)
	for name, m := range map[string]*dns.Msg{"TSIG": tsig, "two questions": two, "extended rcode": ext} {
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		msg, _ := Parse(b)
		if _, err := NewTemplate(&msg, 60); err == nil && name != "extended rcode" {
			t.Errorf("%s: NewTemplate accepted it", name)
		}
	}
	// An extended rcode is kept, for clients with EDNS.
	b, _ := ext.Pack()
	msg := mustParse(t, b)
	tpl, err := NewTemplate(&msg, 60)
	if err != nil || tpl.Rcode() != dns.RcodeBadCookie {
		t.Fatalf("extended rcode: %v, %d", err, tpl.Rcode())
	}
	cq := mustParse(t, pack(t, withEDNS(query("www.example.com.", dns.TypeA), 512, false)))
	if got := decode(t, tpl.AppendTo(nil, &cq, WriteOptions{})); got.Rcode != dns.RcodeBadCookie {
		t.Errorf("rcode written %d, want BADCOOKIE", got.Rcode)
	}
}

// TestTemplateNameThroughTTL: a name that a compression pointer makes run
// through a TTL field would change with the TTLs each copy writes, so such
// an answer is not made a Template; well-compressed answers, names in
// RDATA pointing back included, are.
func TestTemplateNameThroughTTL(t *testing.T) {
	q := query("www.example.com.", dns.TypeA)
	r := answer(t, q, dns.RcodeSuccess,
		[]dns.RR{rr(t, "www.example.com. 300 IN CNAME web.example.com."), rr(t, "web.example.com. 60 IN A 192.168.0.12")},
		[]dns.RR{rr(t, "example.com. 3600 IN SOA ns.example.com. host.example.com. 1 7200 900 1209600 86")},
		[]dns.RR{rr(t, "ns.example.com. 120 IN A 192.168.192.12")})
	r.Compress = true
	good := pack(t, r)
	m := mustParse(t, good)
	if _, err := NewTemplate(&m, 3600); err != nil {
		t.Fatalf("a well-compressed answer: %v", err)
	}

	// The answer's owner points at the low byte of the class of the
	// record after it (4), which makes its TTL the label "\x00\x00\x0e\x10"
	// and the high byte of its RDATA length the root: a name that every
	// TTL written in a copy would change.
	b := pack(t, query("www.example.com.", dns.TypeA))
	b[2] |= 0x80
	binary.BigEndian.PutUint16(b[6:], 1)  // ANCOUNT
	binary.BigEndian.PutUint16(b[10:], 1) // ARCOUNT
	next := len(b) + 2 + 10 + 4           // where the additional record starts
	b = append(b, 0xC0, byte(next+4))
	b = append(b, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1) // A, IN, TTL 60
	b = append(b, 0, 0, 16, 0, 4, 0, 0, 0x0e, 0x10, 0, 0)      // root, TXT, class 4, TTL 3600, no RDATA
	if err := new(dns.Msg).Unpack(b); err != nil {
		t.Fatalf("the crafted answer must decode: %v", err)
	}
	m = mustParse(t, b)
	if _, err := NewTemplate(&m, 60); !errors.Is(err, ErrNameInTTL) {
		t.Fatalf("NewTemplate = %v, want ErrNameInTTL", err)
	}

	// The owner points at the third byte of the record's own TTL, 0x01
	// 0x30 0x00: the label "0" and the root, as the answer came. Capped to
	// 3600 (00 00 0e 10), that byte becomes a label length of 14 running
	// past the message's end, which must not read as "no name here".
	b = pack(t, query("www.example.", dns.TypeTXT))
	b[2] |= 0x80
	binary.BigEndian.PutUint16(b[6:], 1) // ANCOUNT
	ttlAt := len(b) + 2 + 4
	b = append(b, 0xC0, byte(ttlAt+2))
	b = append(b, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x01, 0x30, 0, 0) // type and class 0x3030, TTL 0x30300130, no RDATA
	if err := new(dns.Msg).Unpack(b); err != nil {
		t.Fatalf("the crafted answer must decode: %v", err)
	}
	m = mustParse(t, b)
	if _, err := NewTemplate(&m, 3600); !errors.Is(err, ErrNameInTTL) {
		t.Fatalf("owner in its own TTL: NewTemplate = %v, want ErrNameInTTL", err)
	}
}

// TestTemplateOPTInTheMiddle: an OPT record that is not last is removed by
// encoding the message again, and the records after it keep their TTLs.
func TestTemplateOPTInTheMiddle(t *testing.T) {
	q := withEDNS(query("www.example.com.", dns.TypeA), 1232, false)
	r := answer(t, q, dns.RcodeSuccess, []dns.RR{rr(t, "www.example.com. 60 IN A 192.0.2.1")}, nil, nil)
	r.Extra = append(r.Extra, rr(t, "ns.example.com. 99 IN A 192.0.2.53"))
	a := mustParse(t, pack(t, r))
	tpl, err := NewTemplate(&a, 3600)
	if err != nil {
		t.Fatal(err)
	}
	cq := mustParse(t, pack(t, query("www.example.com.", dns.TypeA)))
	got := decode(t, tpl.AppendTo(nil, &cq, WriteOptions{Age: 9}))
	if got.IsEdns0() != nil || len(got.Extra) != 1 || got.Extra[0].Header().Ttl != 90 || got.Answer[0].Header().Ttl != 51 {
		t.Fatalf("got %v", got)
	}
}
