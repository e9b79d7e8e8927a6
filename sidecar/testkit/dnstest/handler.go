package dnstest

import (
	"encoding/binary"
	"net"

	"github.com/miekg/dns"
)

// DefaultHandler answers A queries with AnswerA and AAAA queries with
// AnswerAAAA (TTL 60), anything else with NOERROR and no records. An OPT
// record in the query is echoed with the same UDP size and DO bit.
func DefaultHandler(q *dns.Msg) *dns.Msg {
	r := new(dns.Msg)
	r.SetReply(q)
	r.RecursionAvailable = true
	if len(q.Question) == 1 {
		qq := q.Question[0]
		hdr := dns.RR_Header{Name: qq.Name, Rrtype: qq.Qtype, Class: dns.ClassINET, Ttl: 60}
		switch qq.Qtype {
		case dns.TypeA:
			r.Answer = append(r.Answer, &dns.A{Hdr: hdr, A: net.IP(AnswerA.AsSlice())})
		case dns.TypeAAAA:
			r.Answer = append(r.Answer, &dns.AAAA{Hdr: hdr, AAAA: net.IP(AnswerAAAA.AsSlice())})
		}
	}
	if opt := q.IsEdns0(); opt != nil {
		r.SetEdns0(opt.UDPSize(), opt.Do())
	}
	return r
}

// ReflectRaw is a RawHandler for benchmarks: it answers a query of one
// question with that question and one A record of AnswerA, without decoding
// beyond the question, and drops anything else.
func ReflectRaw(dst, query []byte) []byte {
	if len(query) < 12 || binary.BigEndian.Uint16(query[4:]) != 1 {
		return dst
	}
	end := 12
	for end < len(query) && query[end] != 0 {
		if query[end]&0xc0 != 0 {
			return dst
		}
		end += int(query[end]) + 1
	}
	end += 5 // root label, QTYPE, QCLASS
	if end > len(query) {
		return dst
	}
	start := len(dst)
	dst = append(dst, query[:end]...)
	h := dst[start:]
	h[2] |= 0x80                         // QR
	h[3] = 0x80                          // RA, NOERROR
	binary.BigEndian.PutUint16(h[6:], 1) // ANCOUNT
	binary.BigEndian.PutUint16(h[8:], 0)
	binary.BigEndian.PutUint16(h[10:], 0)
	a := AnswerA.As4()
	return append(dst,
		0xc0, 12, // the question's name
		0, 1, 0, 1, // A, IN
		0, 0, 0, 60, // TTL
		0, 4, a[0], a[1], a[2], a[3])
}
