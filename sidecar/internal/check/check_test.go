package check

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Loopback addresses of the fake nameservers. Linux routes all of
// 127.0.0.0/8 to lo, so each behaviour gets its own address on one port.
const (
	sidecarV4 = "127.0.0.2" // answers the canary like the sidecar
	otherV4   = "127.0.0.3" // a resolver that is not the sidecar
	silentV4  = "127.0.0.4" // reads queries, never answers
	closedV4  = "127.0.0.5" // nothing listens: refused
	liarV4    = "127.0.0.6" // answers the canary with a TXT that is not ours
	garbageV4 = "127.0.0.7" // answers with bytes that do not parse
	sidecarV6 = "::1"       // the sidecar's IPv6 listener
	testTTL   = uint32(5)   // arbitrary
	quick     = time.Second // timeout for paths that should answer at once
	silentFor = 300 * time.Millisecond
)

type behaviour func(w dns.ResponseWriter, r *dns.Msg)

func canaryTXT(text string) behaviour {
	return func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if len(r.Question) == 1 && strings.EqualFold(r.Question[0].Name, CanaryName) && r.Question[0].Qtype == dns.TypeTXT {
			m.Answer = append(m.Answer, &dns.TXT{
				Hdr: dns.RR_Header{Name: CanaryName, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: testTTL},
				Txt: []string{text},
			})
		} else {
			m.Rcode = dns.RcodeRefused
		}
		_ = w.WriteMsg(m)
	}
}

// nxdomain is what any honest resolver says about a name under .invalid.
func nxdomain(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetRcode(r, dns.RcodeNameError)
	_ = w.WriteMsg(m)
}

func garbage(w dns.ResponseWriter, r *dns.Msg) {
	// The query's ID and then nothing: shorter than a DNS header.
	b := []byte{byte(r.Id >> 8), byte(r.Id), 0x81}
	_, _ = w.Write(b)
}

// fakeNameservers starts the fake nameservers on one port shared by all
// their addresses, over UDP and TCP, and returns that port.
func fakeNameservers(t *testing.T) int {
	t.Helper()
	servers := map[string]behaviour{
		sidecarV4: canaryTXT("dot-sidecar test"),
		sidecarV6: canaryTXT("dot-sidecar test v6"),
		otherV4:   nxdomain,
		liarV4:    canaryTXT("v=spf1 -all"),
		garbageV4: garbage,
	}
	for attempt := 0; attempt < 20; attempt++ {
		port, pcs, lns, ok := bindAll(t, servers)
		if !ok {
			continue
		}
		for addr, h := range servers {
			serve(t, &dns.Server{PacketConn: pcs[addr], Handler: dns.HandlerFunc(h)})
			serve(t, &dns.Server{Listener: lns[addr], Handler: dns.HandlerFunc(h)})
		}
		silent(t, pcs[silentV4], lns[silentV4])
		return port
	}
	t.Fatal("no port free on all loopback test addresses after 20 attempts")
	return 0
}

// bindAll binds UDP and TCP on one port for every address (plus the silent
// one), or closes everything and reports !ok when that port is taken
// somewhere.
func bindAll(t *testing.T, servers map[string]behaviour) (int, map[string]net.PacketConn, map[string]net.Listener, bool) {
	t.Helper()
	first, err := net.ListenPacket("udp", net.JoinHostPort(silentV4, "0"))
	if err != nil {
		t.Fatalf("listening on %s: %v", silentV4, err)
	}
	port := first.LocalAddr().(*net.UDPAddr).Port
	pcs := map[string]net.PacketConn{silentV4: first}
	lns := map[string]net.Listener{}
	closeAll := func() {
		for _, c := range pcs {
			c.Close()
		}
		for _, l := range lns {
			l.Close()
		}
	}
	addrs := []string{silentV4}
	for a := range servers {
		addrs = append(addrs, a)
	}
	for _, a := range addrs {
		hp := net.JoinHostPort(a, strconv.Itoa(port))
		if a != silentV4 {
			pc, err := net.ListenPacket("udp", hp)
			if err != nil {
				closeAll()
				return 0, nil, nil, false
			}
			pcs[a] = pc
		}
		ln, err := net.Listen("tcp", hp)
		if err != nil {
			closeAll()
			return 0, nil, nil, false
		}
		lns[a] = ln
	}
	return port, pcs, lns, true
}

func serve(t *testing.T, srv *dns.Server) {
	t.Helper()
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	errc := make(chan error, 1)
	go func() { errc <- srv.ActivateAndServe() }()
	select {
	case <-started:
	case err := <-errc:
		t.Fatalf("starting fake nameserver: %v", err)
	}
	t.Cleanup(func() {
		_ = srv.Shutdown()
		<-errc
	})
}

// silent reads UDP queries and accepts TCP connections but never answers, as
// a dropped packet or a wedged resolver would look.
func silent(t *testing.T, pc net.PacketConn, ln net.Listener) {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		buf := make([]byte, 512)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
		}
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		pc.Close()
		ln.Close()
		wg.Wait()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
}

func writeResolvConf(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

type want struct {
	ns      string
	proto   string
	outcome Outcome
	detail  string // substring
}

func TestProbe(t *testing.T) {
	port := fakeNameservers(t)
	tests := []struct {
		name    string
		conf    string
		timeout time.Duration
		want    []want
		ok      bool
	}{
		{
			name:    "all intercepted, dual stack",
			conf:    "search svc.cluster.local\nnameserver " + sidecarV4 + "\nnameserver " + sidecarV6 + "\noptions ndots:5\n",
			timeout: quick,
			want: []want{
				{sidecarV4, "udp", Intercepted, "dot-sidecar test"},
				{sidecarV4, "tcp", Intercepted, "dot-sidecar test"},
				{sidecarV6, "udp", Intercepted, "dot-sidecar test v6"},
				{sidecarV6, "tcp", Intercepted, "dot-sidecar test v6"},
			},
			ok: true,
		},
		{
			name:    "IPv6 answered by the real resolver",
			conf:    "nameserver " + sidecarV4 + "\nnameserver " + otherV4 + "\n",
			timeout: quick,
			want: []want{
				{sidecarV4, "udp", Intercepted, ""},
				{sidecarV4, "tcp", Intercepted, ""},
				{otherV4, "udp", AnsweredElsewhere, "NXDOMAIN"},
				{otherV4, "tcp", AnsweredElsewhere, "NXDOMAIN"},
			},
		},
		{
			name:    "TXT that is not the sidecar's",
			conf:    "nameserver " + liarV4 + "\n",
			timeout: quick,
			want: []want{
				{liarV4, "udp", AnsweredElsewhere, "v=spf1"},
				{liarV4, "tcp", AnsweredElsewhere, "v=spf1"},
			},
		},
		{
			name:    "malformed reply",
			conf:    "nameserver " + garbageV4 + "\n",
			timeout: quick,
			want: []want{
				{garbageV4, "udp", AnsweredElsewhere, "malformed"},
				{garbageV4, "tcp", AnsweredElsewhere, "malformed"},
			},
		},
		{
			name:    "silent nameserver times out",
			conf:    "nameserver " + silentV4 + "\nnameserver " + sidecarV4 + "\n",
			timeout: silentFor,
			want: []want{
				{silentV4, "udp", NoAnswer, "timeout"},
				{silentV4, "tcp", NoAnswer, "timeout"},
				{sidecarV4, "udp", Intercepted, ""},
				{sidecarV4, "tcp", Intercepted, ""},
			},
		},
		{
			name:    "nothing listening (fail-closed rules, sidecar down)",
			conf:    "nameserver " + closedV4 + "\n",
			timeout: quick,
			want: []want{
				{closedV4, "udp", NoAnswer, "refused"},
				{closedV4, "tcp", NoAnswer, "refused"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := Options{ResolvConf: writeResolvConf(t, tt.conf), Port: port, Timeout: tt.timeout}
			start := time.Now()
			rep, err := Probe(context.Background(), opts)
			if err != nil {
				t.Fatalf("Probe: %v", err)
			}
			// Paths are probed concurrently: failing paths cost one timeout,
			// not one each.
			if took := time.Since(start); took > 2*tt.timeout {
				t.Errorf("Probe took %v, want about one timeout (%v)", took, tt.timeout)
			}
			if len(rep.Results) != len(tt.want) {
				t.Fatalf("got %d results %+v, want %d", len(rep.Results), rep.Results, len(tt.want))
			}
			for i, w := range tt.want {
				r := rep.Results[i]
				if r.Nameserver != netip.MustParseAddr(w.ns) || r.Proto != w.proto || r.Port != port {
					t.Errorf("result %d is path %s, want %s/%s", i, r.Path(), w.ns, w.proto)
				}
				if r.Outcome != w.outcome || !strings.Contains(r.Detail, w.detail) {
					t.Errorf("%s: outcome %v (%q), want %v (containing %q)", r.Path(), r.Outcome, r.Detail, w.outcome, w.detail)
				}
			}
			if rep.OK() != tt.ok {
				t.Errorf("OK() = %v, want %v", rep.OK(), tt.ok)
			}
		})
	}
}

func TestRunTable(t *testing.T) {
	port := fakeNameservers(t)
	tests := []struct {
		name     string
		conf     string
		ok       bool
		contains []string
	}{
		{
			name: "pass",
			conf: "nameserver " + sidecarV4 + "\nnameserver " + sidecarV6 + "\n",
			ok:   true,
			contains: []string{
				"NAMESERVER", "PROTO", "RESULT", "RTT",
				"OK: all 4 paths intercepted",
			},
		},
		{
			name: "fail names the path",
			conf: "nameserver " + sidecarV4 + "\nnameserver " + otherV4 + "\nnameserver not-an-ip\n",
			contains: []string{
				`ignoring nameserver "not-an-ip"`,
				"NOT intercepted: answered by something else (rcode NXDOMAIN)",
				"FAIL: 2 of 4 paths NOT intercepted: " + otherV4 + ":" + strconv.Itoa(port) + "/udp, " +
					otherV4 + ":" + strconv.Itoa(port) + "/tcp",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			ok, err := Run(context.Background(), Options{
				ResolvConf: writeResolvConf(t, tt.conf), Port: port, Timeout: quick, Out: &out,
			})
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if ok != tt.ok {
				t.Errorf("ok = %v, want %v\n%s", ok, tt.ok, out.String())
			}
			for _, s := range tt.contains {
				if !strings.Contains(out.String(), s) {
					t.Errorf("output lacks %q:\n%s", s, out.String())
				}
			}
			// One header, one line per path, the verdict (plus ignored lines).
			lines := strings.Count(out.String(), "\n")
			if want := 1 + 4 + 1 + strings.Count(tt.conf, "not-an-ip"); lines != want {
				t.Errorf("%d lines, want %d:\n%s", lines, want, out.String())
			}
		})
	}
}

func TestRunErrors(t *testing.T) {
	tests := []struct {
		name    string
		opts    func(t *testing.T) Options
		wantIs  error
		wantMsg string
	}{
		{
			name:    "unreadable resolv.conf",
			opts:    func(t *testing.T) Options { return Options{ResolvConf: filepath.Join(t.TempDir(), "missing")} },
			wantIs:  fs.ErrNotExist,
			wantMsg: "reading resolv.conf",
		},
		{
			name:    "no nameserver",
			opts:    func(t *testing.T) Options { return Options{ResolvConf: writeResolvConf(t, "search example.org\n")} },
			wantIs:  ErrNoNameservers,
			wantMsg: "resolv.conf: no nameserver",
		},
		{
			name: "run as the sidecar",
			opts: func(t *testing.T) Options {
				return Options{ResolvConf: writeResolvConf(t, "nameserver 127.0.0.1\n"), SidecarUID: 10053, euid: func() int { return 10053 }}
			},
			wantIs:  ErrRunAsSidecar,
			wantMsg: "uid 10053",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			opts := tt.opts(t)
			opts.Out = &out
			ok, err := Run(context.Background(), opts)
			if ok || !errors.Is(err, tt.wantIs) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("Run = %v, %v; want false and an error wrapping %v containing %q", ok, err, tt.wantIs, tt.wantMsg)
			}
			if out.Len() != 0 {
				t.Errorf("printed a table for a check that could not run:\n%s", out.String())
			}
		})
	}
}

func TestRunAsOtherUID(t *testing.T) {
	// The UID guard must not refuse an application's UID.
	port := fakeNameservers(t)
	ok, err := Run(context.Background(), Options{
		ResolvConf: writeResolvConf(t, "nameserver "+sidecarV4+"\n"), Port: port, Timeout: quick,
		SidecarUID: 10053, euid: func() int { return 10054 },
	})
	if !ok || err != nil {
		t.Fatalf("Run = %v, %v; want true, nil", ok, err)
	}
}

func TestContextCancelStopsProbes(t *testing.T) {
	port := fakeNameservers(t)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	rep, err := Probe(ctx, Options{ResolvConf: writeResolvConf(t, "nameserver "+silentV4+"\n"), Port: port, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("Probe ignored its context: took %v", took)
	}
	for _, r := range rep.Results {
		if r.Outcome != NoAnswer {
			t.Errorf("%s: %v, want no answer", r.Path(), r.Outcome)
		}
	}
}

func FuzzClassify(f *testing.F) {
	q := new(dns.Msg)
	q.SetQuestion(CanaryName, dns.TypeTXT)
	good := new(dns.Msg)
	good.SetReply(q)
	good.Answer = []dns.RR{&dns.TXT{Hdr: dns.RR_Header{Name: CanaryName, Rrtype: dns.TypeTXT, Class: dns.ClassINET}, Txt: []string{"dot-sidecar x"}}}
	b, err := good.Pack()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte{0, 0, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		reply := new(dns.Msg)
		if err := reply.Unpack(b); err != nil {
			return
		}
		outcome, detail := classify(q, reply, nil)
		if outcome == NoAnswer {
			t.Fatalf("a reply classified as no answer: %v", reply)
		}
		if outcome == Intercepted && !strings.HasPrefix(detail, CanaryPrefix) {
			t.Fatalf("intercepted without the canary text: %q", detail)
		}
	})
}
