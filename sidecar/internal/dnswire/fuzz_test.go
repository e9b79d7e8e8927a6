package dnswire

import (
	"encoding/binary"
	"reflect"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// parsed is what Parse learned about m, without the buffer it shares.
func parsed(m Msg) Msg {
	m.wire = nil
	return m
}

// FuzzDNSWire feeds arbitrary bytes to Parse: it must never panic, the
// offsets it reports must lie inside the message, and where miekg/dns also
// decodes the message the two must agree on the question and OPT record.
func FuzzDNSWire(f *testing.F) {
	seeds := []*dns.Msg{
		query("example.com.", dns.TypeA),
		withEDNS(query("example.org.", dns.TypeAAAA), 1232, true, &dns.EDNS0_LOCAL{Code: 65001, Data: []byte{1, 2}}),
		withEDNS(query("canary.dot-sidecar.invalid.", dns.TypeTXT), 4096, false),
	}
	for _, m := range seeds {
		f.Add(pack(f, m))
	}
	f.Add([]byte{})
	f.Add([]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 0x0C, 0, 1, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Parse(b)
		// A reply built from what Parse found, valid or not, must be a
		// valid message.
		reply := AppendReply(nil, &m, Reply{Rcode: dns.RcodeServerFailure, EDNS: &EDNS{UDPSize: 1232, HasEDE: true, EDE: 22}})
		if err := new(dns.Msg).Unpack(reply); err != nil {
			t.Fatalf("reply built from a parsed message does not unpack: %v", err)
		}
		if err != nil {
			if m.Valid() {
				t.Fatalf("Parse failed (%v) but the Msg is Valid", err)
			}
			return
		}
		end := len(m.Wire())
		if !m.Valid() || end < HeaderLen || end > len(b) {
			t.Fatalf("end %d outside message of %d bytes", end, len(b))
		}
		// The message cut to its end (what a relay forwards) is the same
		// message.
		if cut, err := Parse(b[:end]); err != nil || !reflect.DeepEqual(parsed(cut), parsed(m)) {
			t.Fatalf("message cut to its end parses as %+v, %v; whole: %+v", cut, err, m)
		}
		if m.QDCount > 0 && !(HeaderLen < m.qNameEnd && m.qNameEnd+4 == m.qEnd && int(m.qEnd) <= end) {
			t.Fatalf("question span %d:%d:%d outside message", HeaderLen, m.qNameEnd, m.qEnd)
		}
		if m.HasOPT() && !(m.qEnd <= m.optStart && m.optStart+11 <= m.optEnd && int(m.optEnd) <= end) {
			t.Fatalf("OPT span %d:%d outside message", m.optStart, m.optEnd)
		}

		// The compact form of a query of one question is a message of its
		// own, with the same header flags, question and OPT record.
		if m.QDCount == 1 {
			c := m.AppendCompact(nil)
			p, err := Parse(c.Wire())
			if err != nil || !reflect.DeepEqual(parsed(p), parsed(c)) || len(c.Wire()) != m.CompactLen() {
				t.Fatalf("compact form parses as %+v, %v; AppendCompact said %+v", p, err, c)
			}
			if c.Flags != m.Flags || string(c.QName()) != string(m.QName()) || c.QType() != m.QType() ||
				c.HasOPT() != m.HasOPT() || c.UDPSize() != m.UDPSize() || c.DO() != m.DO() || c.Rcode() != m.Rcode() {
				t.Fatalf("compact form %+v differs from %+v", c, m)
			}
		}

		ref := new(dns.Msg)
		if ref.Unpack(b) != nil {
			return // miekg/dns is stricter about record data; nothing to compare
		}
		if len(ref.Question) > 0 && (ref.Question[0].Qtype != m.QType() || ref.Question[0].Qclass != m.QClass()) {
			t.Fatalf("question %v, parsed type %d class %d", ref.Question[0], m.QType(), m.QClass())
		}
		if opt := ref.IsEdns0(); opt != nil && m.HasOPT() {
			if opt.UDPSize() != m.UDPSize() || opt.Version() != m.EDNSVersion() || opt.Do() != m.DO() {
				t.Fatalf("OPT %v, parsed size %d version %d DO %v", opt, m.UDPSize(), m.EDNSVersion(), m.DO())
			}
		}
		// Removing the OPT record leaves a message that decodes as before,
		// less that record.
		if m.HasOPT() {
			want := len(ref.Extra) - 1
			if err := m.RemoveOPT(); err != nil {
				return // miekg/dns could not encode it again
			}
			out := new(dns.Msg)
			if err := out.Unpack(m.Wire()); err != nil || out.IsEdns0() != nil || len(out.Extra) != want || len(out.Answer) != len(ref.Answer) {
				t.Fatalf("after RemoveOPT: %v, %v", err, out)
			}
		}
	})
}

// FuzzSameQuestion checks the matching of answers to queries on arbitrary
// bytes: it never panics, a query's own echo (QR set) always matches it,
// and it agrees with miekg/dns wherever miekg can decode both messages.
func FuzzSameQuestion(f *testing.F) {
	q := new(dns.Msg)
	q.SetQuestion("www.example.com.", dns.TypeA)
	q.SetEdns0(1232, true)
	query, _ := q.Pack()
	r := new(dns.Msg)
	r.SetReply(q)
	r.Question[0].Name = "WWW.example.COM."
	resp, _ := r.Pack()
	f.Add(query, resp)
	f.Add(query, query)
	f.Add([]byte{0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 1, 'a', 0, 0, 1, 0, 1, 0xc0, 12, 0, 1, 0, 1},
		[]byte{0, 1, 0x80, 0, 0, 2, 0, 0, 0, 0, 0, 0, 1, 'A', 0, 0, 1, 0, 1, 1, 'a', 0, 0, 1, 0, 1})
	f.Fuzz(func(t *testing.T, query, resp []byte) {
		qm, err := Parse(query)
		rm, _ := Parse(resp)
		got := rm.Answers(&qm)
		if err != nil || qm.QDCount != 1 {
			if got && qm.QDCount != 1 {
				t.Fatalf("matched a query of %d questions", qm.QDCount)
			}
			return
		}

		echo := append([]byte(nil), qm.Wire()...)
		echo[2] |= flagQR >> 8
		em, err := Parse(echo)
		if err != nil || !em.Answers(&qm) {
			t.Fatalf("query does not match its own echo (%v): %x", err, query)
		}

		// miekg/dns stops quietly where a message ends; compare only
		// messages both parsers read in full.
		var qd, rd dns.Msg
		if qd.Unpack(query) != nil || rd.Unpack(resp) != nil || len(rd.Question) != int(rm.QDCount) || !rm.Valid() {
			return
		}
		want := rd.Response && len(rd.Question) == 1 &&
			qd.Question[0].Qtype == rd.Question[0].Qtype && qd.Question[0].Qclass == rd.Question[0].Qclass &&
			strings.EqualFold(qd.Question[0].Name, rd.Question[0].Name)
		if got != want {
			t.Fatalf("Answers = %v, miekg/dns says %v\nquery %x\nresp  %x\n%v\n%v", got, want, query, resp, qd.Question, rd.Question)
		}
	})
}

// FuzzRecords checks the record walk and the Template built on it on
// arbitrary bytes: the walk never panics, visits exactly the records the
// header counts, each inside the message, and reads the TTLs miekg/dns
// reads; a Template written for a query of the same question is a valid
// message whose TTLs are the originals, capped and counted down, never
// more.
func FuzzRecords(f *testing.F) {
	q := withEDNS(query("www.example.com.", dns.TypeA), 1232, true)
	r := new(dns.Msg)
	r.SetReply(q)
	r.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: "www.example.com.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: []byte{192, 0, 2, 1}}}
	r.Ns = []dns.RR{&dns.SOA{Hdr: dns.RR_Header{Name: "example.com.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 900},
		Ns: "ns.example.com.", Mbox: "h.example.com.", Serial: 1, Refresh: 2, Retry: 3, Expire: 4, Minttl: 60}}
	r.Compress = true
	f.Add(pack(f, r), uint32(100), uint32(10))
	f.Add(pack(f, q), uint32(0), uint32(0))
	f.Fuzz(func(t *testing.T, b []byte, maxTTL, age uint32) {
		m, err := Parse(b)
		if err != nil {
			return
		}
		var ttls []uint32
		prev := 0
		for rr := range m.Records() {
			if rr.Start < prev || rr.TTLOff+4 > rr.RData || rr.RData > rr.End || rr.End > len(m.Wire()) {
				t.Fatalf("record %+v outside the message or out of order", rr)
			}
			if got := binary.BigEndian.Uint32(m.Wire()[rr.TTLOff:]); got != rr.TTL {
				t.Fatalf("TTL %d at TTLOff, %d reported", got, rr.TTL)
			}
			prev = rr.End
			_, _ = m.SOAMinimum(rr)
			if rr.Type != TypeOPT {
				ttls = append(ttls, rr.TTL)
			}
		}
		ref := new(dns.Msg)
		if ref.Unpack(b) == nil {
			var want []uint32
			for _, rr := range append(append(append([]dns.RR(nil), ref.Answer...), ref.Ns...), ref.Extra...) {
				if rr.Header().Rrtype != dns.TypeOPT {
					want = append(want, rr.Header().Ttl)
				}
			}
			if !reflect.DeepEqual(ttls, want) && len(ttls)+len(want) > 0 {
				t.Fatalf("TTLs walked %v, miekg/dns reads %v", ttls, want)
			}
		}

		tpl, err := NewTemplate(&m, maxTTL)
		if err != nil {
			return
		}
		cq, err := Parse(append([]byte{0xAB, 0xCD, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0}, m.Wire()[HeaderLen:m.qEnd]...))
		if err != nil {
			t.Fatalf("the answer's question is not a query: %v", err)
		}
		out := tpl.AppendTo(nil, &cq, WriteOptions{Age: age})
		om, err := Parse(out)
		if err != nil || om.ID != 0xABCD || om.HasOPT() || !om.Answers(&cq) && m.Response() {
			t.Fatalf("written answer: %v, %+v", err, om.Header)
		}
		i := 0
		for rr := range om.Records() {
			if i >= len(ttls) {
				t.Fatalf("written answer has more records than the original")
			}
			if want := min(ttls[i], maxTTL) - min(min(ttls[i], maxTTL), age); rr.TTL != want {
				t.Fatalf("record %d: TTL %d, want %d (original %d, cap %d, age %d)", i, rr.TTL, want, ttls[i], maxTTL, age)
			}
			i++
		}
	})
}
