package router

import (
	"context"
	"testing"

	"github.com/miekg/dns"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
)

// TestLocalAnswers: what the router answers for the special-use names, as
// a stub or cache reads it: flags, rcode, records, the SOA of negative
// answers and the TTLs.
func TestLocalAnswers(t *testing.T) {
	r, _ := testRouter(t, true)
	tests := []struct {
		name   string
		qtype  uint16
		class  uint16
		rcode  int
		answer string // the answer section's record type and data, "" for none
		soa    string // the SOA owner in the authority section, "" for none
	}{
		{"localhost.", dns.TypeA, dns.ClassINET, dns.RcodeSuccess, "A 127.0.0.1", ""},
		{"LocalHost.", dns.TypeAAAA, dns.ClassINET, dns.RcodeSuccess, "AAAA ::1", ""},
		{"db.app.localhost.", dns.TypeA, dns.ClassINET, dns.RcodeSuccess, "A 127.0.0.1", ""},
		{"db.localhost.", dns.TypeAAAA, dns.ClassINET, dns.RcodeSuccess, "AAAA ::1", ""},
		{"db.localhost.", dns.TypeMX, dns.ClassINET, dns.RcodeSuccess, "", "localhost."},
		{"localhost.", dns.TypeSOA, dns.ClassINET, dns.RcodeSuccess, "SOA localhost.", ""},
		{"localhost.", dns.TypeA, dns.ClassCHAOS, dns.RcodeRefused, "", ""},
		{"printer.local.", dns.TypeA, dns.ClassINET, dns.RcodeNameError, "", "local."},
		{"local.", dns.TypeA, dns.ClassINET, dns.RcodeSuccess, "", "local."},
		{"local.", dns.TypeSOA, dns.ClassINET, dns.RcodeSuccess, "SOA local.", ""},
		{"x.dot-sidecar.invalid.", dns.TypeTXT, dns.ClassINET, dns.RcodeNameError, "", "invalid."},
		{"duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion.", dns.TypeA, dns.ClassINET, dns.RcodeNameError, "", "onion."},
		{"nas.home.arpa.", dns.TypeAAAA, dns.ClassINET, dns.RcodeNameError, "", "home.arpa."},
		{"10.0.168.192.in-addr.arpa.", dns.TypePTR, dns.ClassINET, dns.RcodeNameError, "", "168.192.in-addr.arpa."},
		{"168.192.in-addr.arpa.", dns.TypeSOA, dns.ClassINET, dns.RcodeSuccess, "SOA 168.192.in-addr.arpa.", ""},
	}
	for _, tt := range tests {
		for _, edns := range []bool{false, true} {
			m := new(dns.Msg)
			m.SetQuestion(tt.name, tt.qtype)
			m.Question[0].Qclass = tt.class
			m.CheckingDisabled = true
			if edns {
				m.SetEdns0(4096, true)
			}
			b, err := m.Pack()
			if err != nil {
				t.Fatal(err)
			}
			q, err := dnswire.Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			ans, err := r.Exchange(context.Background(), q)
			if err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
			if !ans.Valid() || !ans.Answers(&q) || ans.ID != q.ID {
				t.Fatalf("%s: not an answer to the query", tt.name)
			}
			a := new(dns.Msg)
			if err := a.Unpack(ans.Wire()); err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
			what := tt.name + " " + dns.TypeToString[tt.qtype]
			if a.Rcode != tt.rcode {
				t.Errorf("%s: rcode %s, want %s", what, dns.RcodeToString[a.Rcode], dns.RcodeToString[tt.rcode])
			}
			wantAA := tt.rcode != dns.RcodeRefused
			if !a.Response || a.Authoritative != wantAA || !a.RecursionAvailable || !a.RecursionDesired || !a.CheckingDisabled || a.Truncated {
				t.Errorf("%s: flags %v", what, a.MsgHdr)
			}
			if a.Question[0].Name != tt.name {
				t.Errorf("%s: question %q: the client's spelling must be kept", what, a.Question[0].Name)
			}
			var got string
			switch {
			case len(a.Answer) > 1:
				t.Errorf("%s: answer %v", what, a.Answer)
			case len(a.Answer) == 1:
				rr := a.Answer[0]
				if rr.Header().Ttl != localTTL {
					t.Errorf("%s: TTL %d, want %d", what, rr.Header().Ttl, localTTL)
				}
				switch rr := rr.(type) {
				case *dns.A:
					got = "A " + rr.A.String()
				case *dns.AAAA:
					got = "AAAA " + rr.AAAA.String()
				case *dns.SOA:
					got = "SOA " + rr.Hdr.Name
				}
			}
			if got != tt.answer {
				t.Errorf("%s: answer %q, want %q", what, got, tt.answer)
			}
			if tt.soa == "" {
				if len(a.Ns) != 0 {
					t.Errorf("%s: authority %v", what, a.Ns)
				}
			} else if len(a.Ns) != 1 {
				t.Errorf("%s: authority %v, want the SOA of %s", what, a.Ns, tt.soa)
			} else if soa, ok := a.Ns[0].(*dns.SOA); !ok || soa.Hdr.Name != tt.soa || soa.Hdr.Ttl != localTTL ||
				soa.Minttl != localTTL || soa.Ns != tt.soa || soa.Mbox != "nobody.invalid." || soa.Serial != 1 {
				t.Errorf("%s: authority %v, want the SOA of %s", what, a.Ns[0], tt.soa)
			}
			opt := a.IsEdns0()
			if edns != (opt != nil) || (opt != nil && (opt.UDPSize() != 1232 || !opt.Do())) {
				t.Errorf("%s (EDNS %v): OPT %v, want one echoing DO with our size only when asked", what, edns, opt)
			}
		}
	}
}
