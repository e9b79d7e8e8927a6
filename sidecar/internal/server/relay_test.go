package server

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
)

// TestRelay sends queries over UDP and TCP on IPv4 and IPv6 and checks the
// answer comes from the upstream with the client's ID, and that the OPT
// record is there exactly when the query had one.
func TestRelay(t *testing.T) {
	addrs := []netip.Addr{loopback4}
	if have6() {
		addrs = append(addrs, loopback6)
	}
	ts := startServer(t, Options{BindAddrs: addrs, BindExplicit: true})
	unknown := &dns.EDNS0_LOCAL{Code: 65001, Data: []byte("opaque")}
	tests := []struct {
		name  string
		query func() *dns.Msg
	}{
		{"plain", func() *dns.Msg { return newQuery("www.example.com.", dns.TypeA) }},
		{"EDNS with DO and an unknown option", func() *dns.Msg {
			m := ednsQuery("www.example.com.", dns.TypeA, 1232)
			m.IsEdns0().Option = append(m.IsEdns0().Option, unknown)
			m.IsEdns0().SetZ(0x1234) // flags nobody defined yet
			return m
		}},
		{"no OPT in, upstream adds one as last record", func() *dns.Msg { return newQuery("addopt.example.com.", dns.TypeA) }},
		{"no OPT in, upstream adds one before another record", func() *dns.Msg { return newQuery("optmid.example.com.", dns.TypeA) }},
	}
	for _, network := range []string{"udp", "tcp"} {
		for _, ip := range []netip.Addr{loopback4, loopback6} {
			for _, tt := range tests {
				t.Run(network+"/"+ip.String()+"/"+tt.name, func(t *testing.T) {
					if ip.Is6() {
						need6(t)
					}
					q := tt.query()
					wire, err := q.Pack()
					if err != nil {
						t.Fatal(err)
					}
					before := len(ts.up.received())
					r, _ := ask(t, network, ts.addr(t, network, ip), q)
					if r.Id != q.Id || !r.Response || r.Rcode != dns.RcodeSuccess {
						t.Fatalf("answer header %v, want ID %d NOERROR", r.MsgHdr, q.Id)
					}
					if len(r.Question) != 1 || r.Question[0] != q.Question[0] {
						t.Errorf("question %v, want %v", r.Question, q.Question)
					}
					if len(r.Answer) != 1 {
						t.Errorf("answer section %v, want one A record", r.Answer)
					}
					if (q.IsEdns0() == nil) != (r.IsEdns0() == nil) {
						t.Errorf("query OPT %v, answer OPT %v: want both or neither", q.IsEdns0(), r.IsEdns0())
					}
					if q.IsEdns0() == nil && len(r.Extra) != 0 && tt.name != "no OPT in, upstream adds one before another record" {
						t.Errorf("additional section %v, want empty", r.Extra)
					}
					got := ts.up.received()
					if len(got) != before+1 || !bytes.Equal(got[len(got)-1], wire) {
						t.Errorf("upstream received % x, want the client's bytes % x", got[len(got)-1:], wire)
					}
				})
			}
		}
	}
}
