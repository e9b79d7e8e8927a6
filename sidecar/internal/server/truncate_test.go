package server

import (
	"testing"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestTruncation checks that UDP answers never exceed what the client can
// take, that cut answers carry TC (and their OPT record for EDNS queries),
// and that the same question over TCP then gets the whole answer.
func TestTruncation(t *testing.T) {
	ts := startServer(t, Options{UDPMaxSize: 1232})
	udp, tcp := ts.addr(t, "udp", loopback4), ts.addr(t, "tcp", loopback4)
	tests := []struct {
		name      string
		qname     string
		edns      uint16 // 0: no OPT
		wantLimit int
		wantTC    bool
	}{
		{name: "no EDNS: 512", qname: "big.example.", wantLimit: 512, wantTC: true},
		{name: "EDNS 4096 capped by UDPMaxSize", qname: "big.example.", edns: 4096, wantLimit: 1232, wantTC: true},
		{name: "EDNS below 512 counts as 512", qname: "big.example.", edns: 100, wantLimit: 512, wantTC: true},
		{name: "EDNS 1000 honoured", qname: "big.example.", edns: 1000, wantLimit: 1000, wantTC: true},
		{name: "60 KB answer", qname: "huge.example.", edns: 4096, wantLimit: 1232, wantTC: true},
		{name: "small answer untouched", qname: "www.example.", edns: 1232, wantLimit: 1232},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := newQuery(tt.qname, dns.TypeTXT)
			if tt.edns != 0 {
				q.SetEdns0(tt.edns, false)
			}
			before := testutil.ToFloat64(ts.m.truncated[protoUDP])
			r, raw := ask(t, "udp", udp, q)
			if len(raw) > tt.wantLimit {
				t.Errorf("UDP answer of %d bytes, limit %d", len(raw), tt.wantLimit)
			}
			if r.Truncated != tt.wantTC {
				t.Errorf("TC=%v, want %v", r.Truncated, tt.wantTC)
			}
			if r.Id != q.Id || r.Rcode != dns.RcodeSuccess || len(r.Question) != 1 {
				t.Errorf("truncated answer header %v question %v", r.MsgHdr, r.Question)
			}
			if (tt.edns != 0) != (r.IsEdns0() != nil) {
				t.Errorf("OPT in answer: %v, want %v", r.IsEdns0() != nil, tt.edns != 0)
			}
			wantCount := before
			if tt.wantTC {
				wantCount++
			}
			if got := testutil.ToFloat64(ts.m.truncated[protoUDP]); got != wantCount {
				t.Errorf("truncated_total{proto=udp} = %v, want %v", got, wantCount)
			}

			whole, raw := ask(t, "tcp", tcp, q)
			if whole.Truncated || whole.Id != q.Id {
				t.Errorf("TCP answer header %v", whole.MsgHdr)
			}
			if tt.wantTC && (len(whole.Answer) <= len(r.Answer) || len(raw) <= tt.wantLimit) {
				t.Errorf("TCP answer has %d records in %d bytes, UDP had %d: want the whole answer", len(whole.Answer), len(raw), len(r.Answer))
			}
			if (tt.edns != 0) != (whole.IsEdns0() != nil) {
				t.Errorf("OPT in TCP answer: %v, want %v", whole.IsEdns0() != nil, tt.edns != 0)
			}
		})
	}
}

// TestTruncateFallback covers answers that cannot be cut record by record:
// the client still gets TC and its question.
func TestTruncateFallback(t *testing.T) {
	s := newUnstarted(t, Options{})
	q := ednsQuery("x.example.", dns.TypeA, 1232)
	qm := mustParse(t, packed(t, q))
	// An answer whose structure is sound but whose TXT data miekg/dns
	// cannot decode: the last character-string claims more than is left.
	r := new(dns.Msg)
	r.SetReply(q)
	rb := packed(t, r)
	rb[7] = 1 // ANCOUNT
	rdata := make([]byte, 600)
	rdata[0], rdata[256], rdata[512] = 255, 255, 255
	rb = append(rb, 0xC0, 12, 0, byte(dns.TypeTXT), 0, 1, 0, 0, 0, 60, byte(len(rdata)>>8), byte(len(rdata)))
	rb = append(rb, rdata...)
	ans := mustParse(t, rb)
	out, tc := s.truncate(&qm, ans.Wire(), ans.Rcode(), 512)
	got := new(dns.Msg)
	if err := got.Unpack(out); err != nil {
		t.Fatalf("fallback answer does not unpack: %v", err)
	}
	if !tc || !got.Truncated || got.Id != q.Id || len(got.Question) != 1 || got.IsEdns0() == nil || len(out) > 512 {
		t.Fatalf("fallback answer %v (%d bytes, TC %v), want TC, the question and OPT", got, len(out), tc)
	}
}

// TestTruncateOnlyWhenCut covers an upstream answer that is too big for the
// client only because the upstream did not compress it: compressed, every
// record fits, so the client gets them all, without TC, and nothing counts
// as truncated.
func TestTruncateOnlyWhenCut(t *testing.T) {
	const name = "a-rather-long-label-for-compression.example."
	q := newQuery(name, dns.TypeA)
	r := new(dns.Msg)
	r.SetReply(q)
	for i := range 12 {
		r.Answer = append(r.Answer, &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: []byte{192, 0, 2, byte(i)}})
	}
	r.Compress = false
	up := &answerUpstream{resp: packed(t, r)}
	if len(up.resp) <= 512 {
		t.Fatalf("uncompressed answer of %d bytes: want more than 512", len(up.resp))
	}
	s := newUnstarted(t, Options{Upstream: up})
	res := s.answer(packed(t, q), protoUDP)
	got := new(dns.Msg)
	if err := got.Unpack(res.reply); err != nil {
		t.Fatal(err)
	}
	if len(res.reply) > 512 || got.Truncated || len(got.Answer) != len(r.Answer) || res.truncated {
		t.Fatalf("answer of %d bytes, TC=%v, %d of %d records, counted as truncated: %v; want all records in 512 bytes, no TC, not counted",
			len(res.reply), got.Truncated, len(got.Answer), len(r.Answer), res.truncated)
	}
}
