package server

import (
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestFailures checks that every way the upstream can fail gives SERVFAIL,
// with the Extended DNS Error the failure calls for when the query carried
// EDNS and no OPT record at all when it did not.
func TestFailures(t *testing.T) {
	const timeout = 300 * time.Millisecond
	ts := startServer(t, Options{QueryTimeout: timeout})
	tests := []struct {
		label string
		ede   uint16
	}{
		{"err-unreachable", dns.ExtendedErrorCodeNoReachableAuthority},
		{"err-alldown", dns.ExtendedErrorCodeNoReachableAuthority},
		{"err-connclosed", dns.ExtendedErrorCodeNoReachableAuthority},
		{"err-timeout", dns.ExtendedErrorCodeNoReachableAuthority},
		{"err-bad", dns.ExtendedErrorCodeNoReachableAuthority},
		{"err-closed", dns.ExtendedErrorCodeNoReachableAuthority},
		{"err-unknown", dns.ExtendedErrorCodeNoReachableAuthority},
		{"err-tls", dns.ExtendedErrorCodeNetworkError},
		{"err-pin", dns.ExtendedErrorCodeNetworkError},
		{"garbage", dns.ExtendedErrorCodeNoReachableAuthority}, // not a DNS message
		{"slow", dns.ExtendedErrorCodeNoReachableAuthority},    // the query's deadline
	}
	for _, network := range []string{"udp", "tcp"} {
		for _, tt := range tests {
			for _, edns := range []bool{true, false} {
				name := network + "/" + tt.label + "/no EDNS"
				if edns {
					name = network + "/" + tt.label + "/EDNS"
				}
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					q := newQuery(tt.label+".example.", dns.TypeA)
					if edns {
						q.SetEdns0(1232, true)
					}
					start := time.Now()
					r, _ := ask(t, network, ts.addr(t, network, loopback4), q)
					elapsed := time.Since(start)
					if r.Rcode != dns.RcodeServerFailure || r.Id != q.Id || len(r.Question) != 1 {
						t.Fatalf("answer %v, want SERVFAIL to the question", r.MsgHdr)
					}
					if !edns {
						if r.IsEdns0() != nil {
							t.Fatalf("OPT %v in the answer to a query without one", r.IsEdns0())
						}
						return
					}
					e := ede(r)
					if e == nil || e.InfoCode != tt.ede {
						t.Fatalf("EDE %v, want %d", e, tt.ede)
					}
					if !r.IsEdns0().Do() {
						t.Errorf("DO bit not echoed")
					}
					if tt.label == "slow" && (elapsed < timeout || elapsed > timeout+500*time.Millisecond) {
						t.Errorf("SERVFAIL after %v, want just after the %v deadline", elapsed, timeout)
					}
				})
			}
		}
	}
}
