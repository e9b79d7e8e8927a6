package upstream

import (
	"testing"

	"github.com/miekg/dns"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
)

func TestDoHExchangeBasic(t *testing.T) {
	for _, get := range []bool{false, true} {
		t.Run(map[bool]string{false: "POST", true: "GET"}[get], func(t *testing.T) {
			srv, d := newTestDoH(t, dnstest.Options{}, func(o *DoHOptions) { o.GET = get })
			if got, want := d.Name(), "https://"+srv.Addr.String()+"/dns-query#dns.test"; got != want {
				t.Errorf("Name() = %q, want %q", got, want)
			}
			q := new(dns.Msg)
			q.SetQuestion("Example.COM.", dns.TypeA)
			q.SetEdns0(1232, true)
			query := parseMsg(t, q)
			for range 3 {
				resp, err := d.Exchange(ctxTimeout(t, answerTimeout), query)
				if err != nil {
					t.Fatalf("Exchange: %v", err)
				}
				if err := checkAnswer(resp, query); err != nil {
					t.Fatal(err)
				}
			}
			if srv.Accepted() != 1 || srv.Queries() != 3 {
				t.Errorf("accepted %d connections, %d queries; want 1 and 3", srv.Accepted(), srv.Queries())
			}
			if a := srv.Authorities(); len(a) != 1 || a[0] != "dns.test:"+itoa(srv.Addr.Port()) {
				t.Errorf(":authority %v", a)
			}
			if s := srv.SNIs(); len(s) != 1 || s[0] != "dns.test" {
				t.Errorf("SNI %v", s)
			}
		})
	}
}
