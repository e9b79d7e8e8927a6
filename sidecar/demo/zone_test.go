package main

import (
	"fmt"
	"testing"

	"github.com/miekg/dns"
)

func TestZoneAnswers(t *testing.T) {
	z, err := newZone()
	if err != nil {
		t.Fatal(err)
	}
	soa := z.soa.String()
	for _, tc := range []struct {
		name   string
		qtype  uint16
		rcode  int
		aa     bool
		answer []string // rdata of each answer, in zone order
		ns     []string
	}{
		{"www." + zoneName, dns.TypeA, dns.RcodeSuccess, true, []string{"192.0.2.1"}, nil},
		{"www." + zoneName, dns.TypeAAAA, dns.RcodeSuccess, true, []string{"2001:db8::1"}, nil},
		{"WwW.Demo.DOT-sidecar.test.", dns.TypeA, dns.RcodeSuccess, true, []string{"192.0.2.1"}, nil},
		{"txt." + zoneName, dns.TypeTXT, dns.RcodeSuccess, true, []string{`"answered by the dot-sidecar demo upstream over verified DNS-over-TLS"`}, nil},
		{"www." + zoneName, dns.TypeANY, dns.RcodeSuccess, true, []string{"192.0.2.1", "2001:db8::1"}, nil},
		{"www." + zoneName, dns.TypeTXT, dns.RcodeSuccess, true, nil, []string{soa}},     // NODATA
		{"nothing." + zoneName, dns.TypeA, dns.RcodeNameError, true, nil, []string{soa}}, // NXDOMAIN
		{"x.www." + zoneName, dns.TypeA, dns.RcodeNameError, true, nil, []string{soa}},
		{zoneName, dns.TypeSOA, dns.RcodeSuccess, true, []string{"ns." + zoneName + " hostmaster." + zoneName + " 1 3600 600 86400 60"}, nil},
		{"example.com.", dns.TypeA, dns.RcodeNameError, false, nil, nil}, // not ours: no authority
		{".", dns.TypeNS, dns.RcodeNameError, false, nil, nil},           // the sidecar's health probe
	} {
		t.Run(fmt.Sprintf("%s/%s", tc.name, dns.TypeToString[tc.qtype]), func(t *testing.T) {
			q := new(dns.Msg)
			q.SetQuestion(tc.name, tc.qtype)
			r := z.answer(q)
			if r.Rcode != tc.rcode || r.Authoritative != tc.aa || !r.Response || r.Id != q.Id {
				t.Errorf("rcode %s aa %v qr %v id %d, want %s aa %v qr true id %d",
					dns.RcodeToString[r.Rcode], r.Authoritative, r.Response, r.Id, dns.RcodeToString[tc.rcode], tc.aa, q.Id)
			}
			var got []string
			for _, rr := range r.Answer {
				got = append(got, rdata(rr))
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.answer) {
				t.Errorf("answer %q, want %q", got, tc.answer)
			}
			if fmt.Sprint(r.Ns) != fmt.Sprint(tc.ns) {
				t.Errorf("authority %v, want %v", r.Ns, tc.ns)
			}
		})
	}
}

func rdata(rr dns.RR) string {
	s := rr.String()
	return s[len(rr.Header().String()):]
}

func TestZoneMalformedAndEDNS(t *testing.T) {
	z, err := newZone()
	if err != nil {
		t.Fatal(err)
	}
	notify := new(dns.Msg)
	notify.SetNotify(zoneName)
	if r := z.answer(notify); r.Rcode != dns.RcodeNotImplemented {
		t.Errorf("NOTIFY: %s, want NOTIMP", dns.RcodeToString[r.Rcode])
	}
	empty := new(dns.Msg)
	if r := z.answer(empty); r.Rcode != dns.RcodeFormatError {
		t.Errorf("no question: %s, want FORMERR", dns.RcodeToString[r.Rcode])
	}
	q := new(dns.Msg)
	q.SetQuestion("www."+zoneName, dns.TypeA)
	q.SetEdns0(4096, true)
	opt := z.answer(q).IsEdns0()
	if opt == nil || !opt.Do() || opt.UDPSize() != 1232 {
		t.Errorf("EDNS query: answer OPT %v, want one with DO and size 1232", opt)
	}
	q.Extra = nil
	if z.answer(q).IsEdns0() != nil {
		t.Error("query without EDNS got an OPT record")
	}
}
