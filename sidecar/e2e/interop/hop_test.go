package interop

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/bintest"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/unboundtest"
)

// The EDNS of the hop to a real resolver. Unbound pads its answers to padded
// queries over TLS (pad-responses, to 468-byte blocks), announces its idle
// timeout to queries that offer edns-tcp-keepalive, and here sends an NSID:
// the binary's queries are padded and offer keepalive, its clients get
// neither the padding nor the keepalive (nor their own options back), the
// NSID goes through, and the announced timeout is in the metrics.
func TestHopEDNSWithUnbound(t *testing.T) {
	t.Parallel()
	u := unboundtest.Shared(t, unboundtest.Options{Names: 3, ExtraConfig: []string{
		"edns-tcp-keepalive: yes",
		"edns-tcp-keepalive-timeout: 3000",
		"pad-responses: yes",
		`nsid: "ascii_unbound-interop"`,
	}})
	rec := u.Names[1]

	// Unbound itself, asked directly with a padded query: it pads its
	// answer, so that the checks on the binary's answers below bite.
	direct := new(dns.Msg)
	direct.SetQuestion(rec.Name, dns.TypeA)
	direct.SetEdns0(1232, false)
	direct.IsEdns0().Option = append(direct.IsEdns0().Option, &dns.EDNS0_PADDING{Padding: make([]byte, 60)})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := u.Exchange(ctx, direct)
	if err != nil {
		t.Fatal(err)
	}
	if codes := optionCodes(r); !slices.Contains(codes, dns.EDNS0PADDING) {
		t.Fatalf("Unbound answered a padded query with options %v, without padding", codes)
	}

	s := bintest.Start(t, fmt.Sprintf("UPSTREAMS=tls://%s#%s", u.Addr, u.ServerName), "TLS_CA_FILE="+u.CAFile)
	for _, netw := range []string{"udp", "tcp"} {
		t.Run(netw, func(t *testing.T) {
			c := &dns.Client{Net: netw, Timeout: 3 * time.Second}
			m := new(dns.Msg)
			m.SetQuestion(rec.Name, dns.TypeA)
			m.SetEdns0(1232, false)
			m.IsEdns0().Option = append(m.IsEdns0().Option,
				&dns.EDNS0_NSID{Code: dns.EDNS0NSID},
				&dns.EDNS0_PADDING{Padding: make([]byte, 11)},
				&dns.EDNS0_TCP_KEEPALIVE{Code: dns.EDNS0TCPKEEPALIVE},
				&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
			resp, _, err := c.Exchange(m, s.DNS)
			if err != nil {
				t.Fatal(err)
			}
			if err := unboundtest.CheckA(resp, rec); err != nil {
				t.Fatal(err)
			}
			if codes := optionCodes(resp); !slices.Equal(codes, []uint16{dns.EDNS0NSID}) {
				t.Errorf("the client got options %v, want Unbound's NSID alone", codes)
			}

			plain := new(dns.Msg)
			plain.SetQuestion(rec.Name, dns.TypeA)
			resp, _, err = c.Exchange(plain, s.DNS)
			if err != nil {
				t.Fatal(err)
			}
			if err := unboundtest.CheckA(resp, rec); err != nil {
				t.Fatal(err)
			}
			if resp.IsEdns0() != nil || len(resp.Extra) != 0 {
				t.Errorf("a client without EDNS got %v", resp.Extra)
			}
		})
	}

	_, body := s.Get("/metrics")
	want := regexp.MustCompile(`(?m)^dot_sidecar_upstream_keepalive_timeout_seconds\{route="default",upstream="` +
		regexp.QuoteMeta(u.Addr+"#"+u.ServerName) + `"\} 3$`)
	if !want.MatchString(body) {
		t.Errorf("/metrics does not show the 3 s keepalive Unbound announced:\n%s", grepLines(body, "keepalive"))
	}
}

func optionCodes(m *dns.Msg) []uint16 {
	var codes []uint16
	if opt := m.IsEdns0(); opt != nil {
		for _, o := range opt.Option {
			codes = append(codes, o.Option())
		}
	}
	return codes
}
