package server

import (
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// TestCanary checks that the server answers the canary name itself, in any
// letter case, over UDP and TCP, without asking the upstream.
func TestCanary(t *testing.T) {
	ts := startServer(t, Options{})
	tests := []struct {
		name    string
		qname   string
		qtype   uint16
		edns    bool
		wantTXT bool
	}{
		{"TXT", "canary.dot-sidecar.invalid.", dns.TypeTXT, false, true},
		{"TXT with EDNS", "canary.dot-sidecar.invalid.", dns.TypeTXT, true, true},
		{"mixed case", "CaNaRy.Dot-Sidecar.INVALID.", dns.TypeTXT, false, true},
		{"A: NODATA", "canary.dot-sidecar.invalid.", dns.TypeA, false, false},
		{"AAAA with EDNS: NODATA", "canary.dot-sidecar.invalid.", dns.TypeAAAA, true, false},
	}
	for _, network := range []string{"udp", "tcp"} {
		for _, tt := range tests {
			t.Run(network+"/"+tt.name, func(t *testing.T) {
				q := newQuery(tt.qname, tt.qtype)
				if tt.edns {
					q.SetEdns0(1232, false)
				}
				before := len(ts.up.received())
				r, _ := ask(t, network, ts.addr(t, network, loopback4), q)
				if len(ts.up.received()) != before {
					t.Errorf("the canary query reached the upstream")
				}
				if r.Rcode != dns.RcodeSuccess || r.Id != q.Id || len(r.Question) != 1 || r.Question[0] != q.Question[0] {
					t.Fatalf("answer %v, want NOERROR echoing the question as sent", r)
				}
				if (r.IsEdns0() != nil) != tt.edns {
					t.Errorf("OPT %v, want present=%v", r.IsEdns0(), tt.edns)
				}
				if !tt.wantTXT {
					if len(r.Answer) != 0 {
						t.Fatalf("answer section %v, want none", r.Answer)
					}
					return
				}
				if len(r.Answer) != 1 {
					t.Fatalf("answer section %v, want one TXT", r.Answer)
				}
				txt, ok := r.Answer[0].(*dns.TXT)
				if !ok || txt.Hdr.Ttl != 0 || len(txt.Txt) != 1 || !strings.HasPrefix(txt.Txt[0], "dot-sidecar ") {
					t.Fatalf("answer %v, want a TXT with TTL 0 starting %q", r.Answer[0], "dot-sidecar ")
				}
			})
		}
	}
	// A name below the canary is an ordinary name.
	r, _ := ask(t, "udp", ts.addr(t, "udp", loopback4), newQuery("x.canary.dot-sidecar.invalid.", dns.TypeTXT))
	if len(r.Answer) != 1 || r.Answer[0].Header().Rrtype != dns.TypeA {
		t.Fatalf("a name under the canary was not relayed: %v", r)
	}
}
