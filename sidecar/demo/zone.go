package main

import (
	"github.com/miekg/dns"
)

// zoneName is the demo zone. .test is reserved for testing (RFC 6761), so no
// real resolver will ever answer for it: an answer from this zone can only
// have come through the demo upstream.
const zoneName = "demo.dot-sidecar.test."

// zoneRecords is the whole zone. The addresses are documentation addresses
// (RFC 5737, RFC 3849). Every other name gets NXDOMAIN.
var zoneRecords = []string{
	zoneName + ` 3600 IN SOA ns.` + zoneName + ` hostmaster.` + zoneName + ` 1 3600 600 86400 60`,
	zoneName + ` 3600 IN NS ns.` + zoneName,
	zoneName + ` 60 IN TXT "dot-sidecar demo zone: ask www for A and AAAA, txt for TXT"`,
	`ns.` + zoneName + ` 3600 IN A 127.0.0.1`,
	`www.` + zoneName + ` 60 IN A 192.0.2.1`,
	`www.` + zoneName + ` 60 IN AAAA 2001:db8::1`,
	`txt.` + zoneName + ` 60 IN TXT "answered by the dot-sidecar demo upstream over verified DNS-over-TLS"`,
}

// zone answers from a fixed set of records, as an authoritative server
// would: answers with AA, NODATA and NXDOMAIN with the SOA for negative
// caching (RFC 2308).
type zone struct {
	soa   dns.RR
	names map[string][]dns.RR // lower-case owner name → its records
}

func newZone() (*zone, error) {
	z := &zone{names: make(map[string][]dns.RR)}
	for _, s := range zoneRecords {
		rr, err := dns.NewRR(s)
		if err != nil {
			return nil, err
		}
		name := dns.CanonicalName(rr.Header().Name)
		z.names[name] = append(z.names[name], rr)
		if rr.Header().Rrtype == dns.TypeSOA {
			z.soa = rr
		}
	}
	return z, nil
}

// answer builds the reply to one query.
func (z *zone) answer(q *dns.Msg) *dns.Msg {
	r := new(dns.Msg)
	r.SetReply(q)
	r.RecursionAvailable = true // it stands in for a recursive resolver
	if opt := q.IsEdns0(); opt != nil {
		r.SetEdns0(1232, opt.Do())
	}
	switch {
	case q.Opcode != dns.OpcodeQuery:
		r.Rcode = dns.RcodeNotImplemented
		return r
	case len(q.Question) != 1:
		r.Rcode = dns.RcodeFormatError
		return r
	}
	qq := q.Question[0]
	name := dns.CanonicalName(qq.Name)
	inZone := dns.IsSubDomain(zoneName, name)
	r.Authoritative = inZone
	rrs, exists := z.names[name]
	for _, rr := range rrs {
		if qq.Qclass == dns.ClassINET && (qq.Qtype == rr.Header().Rrtype || qq.Qtype == dns.TypeANY) {
			r.Answer = append(r.Answer, dns.Copy(rr))
		}
	}
	if !exists {
		r.Rcode = dns.RcodeNameError
	}
	if len(r.Answer) == 0 && inZone {
		r.Ns = append(r.Ns, dns.Copy(z.soa))
	}
	return r
}
