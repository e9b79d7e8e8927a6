package unboundtest

import (
	"context"
	"crypto/tls"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/testpki"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// TestShared: the same options get the same running server; other options
// another one.
func TestShared(t *testing.T) {
	a := Shared(t, Options{Names: 3})
	if b := Shared(t, Options{Names: 3}); b != a {
		t.Errorf("second Shared with the same options started another server (%s, %s)", a.Addr, b.Addr)
	}
	c := Shared(t, Options{Names: 4})
	if c == a || len(c.Names) != 4 {
		t.Errorf("Shared with other options returned %s with %d names", c.Addr, len(c.Names))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range []*Server{a, c} {
		m := new(dns.Msg)
		m.SetQuestion(s.Names[0].Name, dns.TypeA)
		r, err := s.Exchange(ctx, m)
		if err != nil || CheckA(r, s.Names[0]) != nil {
			t.Errorf("%s: %v %v", s.Addr, r, err)
		}
	}
}

func TestServerAnswersOverDoT(t *testing.T) {
	u := Start(t, Options{Names: 50, Plain: true, ExtraDoTPorts: 2})
	rec := u.Names[41]

	tests := []struct {
		name  string
		qname string
		qtype uint16
		rcode int
		check func(t *testing.T, rr dns.RR)
	}{
		{"A", rec.Name, dns.TypeA, dns.RcodeSuccess, func(t *testing.T, rr dns.RR) {
			if a, ok := rr.(*dns.A); !ok || !a.A.Equal(rec.A) {
				t.Errorf("got %v, want A %s", rr, rec.A)
			}
		}},
		{"AAAA", rec.Name, dns.TypeAAAA, dns.RcodeSuccess, func(t *testing.T, rr dns.RR) {
			if a, ok := rr.(*dns.AAAA); !ok || !a.AAAA.Equal(rec.AAAA) {
				t.Errorf("got %v, want AAAA %s", rr, rec.AAAA)
			}
		}},
		{"TXT", rec.Name, dns.TypeTXT, dns.RcodeSuccess, func(t *testing.T, rr dns.RR) {
			if txt, ok := rr.(*dns.TXT); !ok || strings.Join(txt.Txt, "") != rec.TXT {
				t.Errorf("got %v, want TXT %q", rr, rec.TXT)
			}
		}},
		{"unknown name in zone", "nosuch.bench.test.", dns.TypeA, dns.RcodeNameError, nil},
		{"name outside zone, not recursed", "example.com.", dns.TypeA, dns.RcodeNameError, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			m := new(dns.Msg)
			m.SetQuestion(tt.qname, tt.qtype)
			for _, via := range []string{"dot", "dot-extra-0", "dot-extra-1", "udp", "tcp"} {
				var r *dns.Msg
				var err error
				switch via {
				case "dot":
					r, err = u.Exchange(ctx, m)
				case "dot-extra-0":
					r, err = u.ExchangeAt(ctx, u.ExtraAddrs[0], m)
				case "dot-extra-1":
					r, err = u.ExchangeAt(ctx, u.ExtraAddrs[1], m)
				default:
					r, _, err = (&dns.Client{Net: via}).ExchangeContext(ctx, m, u.PlainAddr)
				}
				if err != nil {
					t.Fatalf("%s: %v", via, err)
				}
				if r.Rcode != tt.rcode {
					t.Fatalf("%s: rcode %s, want %s", via, dns.RcodeToString[r.Rcode], dns.RcodeToString[tt.rcode])
				}
				if tt.check == nil {
					continue
				}
				if len(r.Answer) != 1 {
					t.Fatalf("%s: %d answers, want 1: %v", via, len(r.Answer), r.Answer)
				}
				tt.check(t, r.Answer[0])
			}
		})
	}

	t.Run("stats count DoT queries", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := u.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// The readiness probe plus the DoT queries above (three listeners).
		if got := st["num.query.tls"]; got < float64(3*len(tests)+1) {
			t.Errorf("num.query.tls = %v, want >= %d", got, 3*len(tests)+1)
		}
	})
}

func TestServerCertificate(t *testing.T) {
	u := Start(t, Options{Names: 1})
	tests := []struct {
		name    string
		cfg     *tls.Config
		wantErr bool
	}{
		{"CA and server name", u.TLSConfig(), false},
		{"wrong server name", &tls.Config{RootCAs: u.CAPool, ServerName: "other.test"}, true},
		{"system roots", &tls.Config{ServerName: u.ServerName}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := tls.Dialer{Config: tt.cfg, NetDialer: &net.Dialer{Timeout: 3 * time.Second}}
			c, err := d.DialContext(context.Background(), "tcp", u.Addr)
			if (err != nil) != tt.wantErr {
				t.Fatalf("dial error = %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			defer c.Close()
			state := c.(*tls.Conn).ConnectionState()
			leaf := state.PeerCertificates[0]
			if got := testpki.Pin(leaf); got != u.Pin {
				t.Errorf("leaf pin %s, Server.Pin %s", got, u.Pin)
			}
		})
	}
}

func TestStopEndsProcess(t *testing.T) {
	u := Start(t, Options{Names: 1})
	if err := u.Stop(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-u.Exited():
	default:
		t.Fatal("Stop returned before unbound exited")
	}
	c, err := net.DialTimeout("tcp", u.Addr, time.Second)
	if err == nil {
		c.Close()
		t.Fatalf("%s still accepts connections after Stop", u.Addr)
	}
	if err := u.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
}

func TestMakeRecordsDistinct(t *testing.T) {
	recs := makeRecords("bench.test.", 70000)
	seenA, seenAAAA := map[string]bool{}, map[string]bool{}
	for _, r := range recs {
		if seenA[r.A.String()] || seenAAAA[r.AAAA.String()] {
			t.Fatalf("duplicate address for %s: %s %s", r.Name, r.A, r.AAAA)
		}
		seenA[r.A.String()], seenAAAA[r.AAAA.String()] = true, true
		if !benchNet.Contains(r.A) || !docNet.Contains(r.AAAA) {
			t.Fatalf("%s: %s or %s outside the reserved ranges", r.Name, r.A, r.AAAA)
		}
	}
	if recs[0].Name != "name1.bench.test." {
		t.Errorf("first name %q", recs[0].Name)
	}
}

var (
	_, benchNet, _ = net.ParseCIDR("198.18.0.0/15")
	_, docNet, _   = net.ParseCIDR("2001:db8::/32")
)

func TestParseStats(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    map[string]float64
		wantErr bool
	}{
		{"counters", "thread0.num.queries=5\nnum.query.tls=3\ntotal.recursion.time.avg=0.000000\n",
			map[string]float64{"thread0.num.queries": 5, "num.query.tls": 3, "total.recursion.time.avg": 0}, false},
		{"empty", "", nil, true},
		{"garbage value", "num.query.tls=abc\n", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStats(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("%s = %v, want %v", k, got[k], v)
				}
			}
		})
	}
}

// TestQueries: with LogQueries, every query answered is listed, whatever
// its rcode, and nothing else is.
func TestQueries(t *testing.T) {
	u := Start(t, Options{Names: 1, LogQueries: true, Plain: true})
	before, err := u.Queries()
	if err != nil {
		t.Fatal(err)
	}
	asked := []struct {
		name  string
		qtype uint16
	}{{u.Names[0].Name, dns.TypeAAAA}, {"Missing.Bench.Test.", dns.TypeA}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, q := range asked {
		m := new(dns.Msg)
		m.SetQuestion(q.name, q.qtype)
		if _, _, err := (&dns.Client{}).ExchangeContext(ctx, m, u.PlainAddr); err != nil {
			t.Fatal(err)
		}
	}
	after, err := u.Queries()
	if err != nil {
		t.Fatal(err)
	}
	got := after[len(before):]
	want := []Query{{"127.0.0.1", u.Names[0].Name, "AAAA"}, {"127.0.0.1", "Missing.Bench.Test.", "A"}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("queries logged %v, want %v", got, want)
	}
	if _, err := Start(t, Options{Names: 1}).Queries(); err == nil {
		t.Error("Queries without LogQueries: no error")
	}
}

func TestParseQueryLog(t *testing.T) {
	log := "[1796188898] unbound[30830:0] info: start of service (unbound 1.17.1).\n" +
		"[1796188899] unbound[30830:0] info: 192.0.2.10 api.example.com. A IN\n" +
		"[1796188899] unbound[30830:0] info: 192.0.2.10 api.example.com. A IN NOERROR 0.000000 1 49\n" +
		"[1796188899] unbound[30830:0] info: 2001:db8::10 x.test. AAAA IN\n"
	got := parseQueryLog(log)
	want := []Query{{"192.0.2.10", "api.example.com.", "A"}, {"2001:db8::10", "x.test.", "AAAA"}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("parseQueryLog = %v, want %v", got, want)
	}
}

// The DoH listeners answer RFC 8484 requests over HTTP/2 (Go's client, and
// kdig +https as a second one), verified like the DoT ones, and Unbound
// counts them apart from DoT.
func TestServerAnswersOverDoH(t *testing.T) {
	tools := testkit.RequireTools(t, "kdig")
	u := Start(t, Options{Names: 5, HTTPS: true, ExtraHTTPS: 2})
	if len(u.ExtraHTTPSAddrs) != 2 || u.ExtraHTTPSAddrs[1] != "127.0.0.3:"+portOf(u.HTTPSAddr) {
		t.Fatalf("extra DoH listeners %v beside %s", u.ExtraHTTPSAddrs, u.HTTPSAddr)
	}
	rec := u.Names[2]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m := new(dns.Msg)
	m.SetQuestion(rec.Name, dns.TypeA)
	for _, addr := range append([]string{u.HTTPSAddr}, u.ExtraHTTPSAddrs...) {
		r, err := u.ExchangeHTTPSAt(ctx, addr, m)
		if err != nil {
			t.Fatal(err)
		}
		if err := CheckA(r, rec); err != nil {
			t.Fatalf("%s: %v", addr, err)
		}
		host, port, _ := net.SplitHostPort(addr)
		out, err := exec.CommandContext(ctx, tools["kdig"], "@"+host, "-p", port, "+https="+HTTPPath, "+tls-ca="+u.CAFile,
			"+tls-hostname="+u.ServerName, "+short", "+timeout=3", "+retry=0", rec.Name, "A").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != rec.A.String() {
			t.Fatalf("kdig +https %s: %v: %q, want %s", addr, err, out, rec.A)
		}
	}
	st, err := u.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Three listeners, two clients each, and the readiness probe.
	if got := st["num.query.https"]; got < 7 {
		t.Errorf("num.query.https = %v, want at least 7", got)
	}
}
