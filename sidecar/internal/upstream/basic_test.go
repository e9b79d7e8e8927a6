package upstream

import (
	"fmt"
	"net"
	"testing"

	"github.com/miekg/dns"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
)

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }

func TestExchangeBasic(t *testing.T) {
	srv := dnstest.New(t, dnstest.Options{})
	d := newTestDoT(t, srv, nil)
	if got, want := d.Name(), srv.Addr.String()+"#dns.test"; got != want {
		t.Errorf("Name() = %q, want %q", got, want)
	}
	q := new(dns.Msg)
	q.SetQuestion("Example.COM.", dns.TypeA)
	q.SetEdns0(1232, true)
	query := parseMsg(t, q)
	resp, err := d.Exchange(ctxTimeout(t, answerTimeout), query)
	if err != nil {
		t.Fatalf("Exchange: %v", err)
	}
	if err := checkAnswer(resp, query); err != nil {
		t.Fatal(err)
	}
	r := new(dns.Msg)
	_ = r.Unpack(resp.Wire())
	if opt := r.IsEdns0(); opt == nil || opt.UDPSize() != 1232 || !opt.Do() {
		t.Errorf("EDNS not echoed: %v", r.Extra)
	}
}

func TestExchangeIPv6Upstream(t *testing.T) {
	if ln, err := net.Listen("tcp", "[::1]:0"); err != nil {
		t.Skip("no IPv6 loopback on this machine")
	} else {
		_ = ln.Close()
	}
	srv := dnstest.New(t, dnstest.Options{IPv6: true})
	d := newTestDoT(t, srv, nil)
	if want := fmt.Sprintf("[::1]:%d#dns.test", srv.Addr.Port()); d.Name() != want {
		t.Errorf("Name() = %q, want %q", d.Name(), want)
	}
	q := packQuery(t, "v6.example.", dns.TypeA)
	resp, err := d.Exchange(ctxTimeout(t, answerTimeout), q)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkAnswer(resp, q); err != nil {
		t.Fatal(err)
	}
}
