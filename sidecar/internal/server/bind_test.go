package server

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// missingAddr is an address no test host has (RFC 3849 documentation
// prefix); binding it fails with EADDRNOTAVAIL.
var missingAddr = netip.MustParseAddr("2001:db8::53")

// syncBuffer is a log sink that tests read after the server wrote to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestBind(t *testing.T) {
	taken, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	takenPort := taken.LocalAddr().(*net.UDPAddr).Port

	tests := []struct {
		name      string
		addrs     []netip.Addr
		explicit  bool
		port      int
		proto     string
		wantErr   string // substring; "" means Start succeeds
		wantAddrs []string
		wantWarn  bool
	}{
		{name: "default list skips a missing address", addrs: []netip.Addr{loopback4, missingAddr}, wantAddrs: []string{"udp 127.0.0.1", "tcp 127.0.0.1"}, wantWarn: true},
		{name: "explicit list fails on a missing address", addrs: []netip.Addr{loopback4, missingAddr}, explicit: true, wantErr: "2001:db8::53"},
		{name: "default list with no address left", addrs: []netip.Addr{missingAddr}, wantErr: "none of the bind addresses"},
		{name: "port taken is fatal even for the default list", addrs: []netip.Addr{loopback4}, port: takenPort, wantErr: "address already in use"},
		{name: "udp only", addrs: []netip.Addr{loopback4}, explicit: true, proto: "udp", wantAddrs: []string{"udp 127.0.0.1"}},
		{name: "tcp only", addrs: []netip.Addr{loopback4}, explicit: true, proto: "tcp", wantAddrs: []string{"tcp 127.0.0.1"}},
		{name: "IPv4-mapped address binds IPv4", addrs: []netip.Addr{netip.MustParseAddr("::ffff:127.0.0.1")}, explicit: true, wantAddrs: []string{"udp 127.0.0.1", "tcp 127.0.0.1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logs := &syncBuffer{}
			s := newUnstarted(t, Options{
				BindAddrs: tt.addrs, BindExplicit: tt.explicit, Port: tt.port, Proto: tt.proto,
				Logger: slog.New(slog.NewTextHandler(logs, nil)),
			})
			err := s.Start()
			defer s.Shutdown(context.Background())
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Start = %v, want an error containing %q", err, tt.wantErr)
				}
				if len(s.Addrs()) != 0 {
					t.Fatalf("failed Start left listeners %v", s.Addrs())
				}
				return
			}
			if err != nil {
				t.Fatalf("Start: %v", err)
			}
			var got []string
			ports := map[int]bool{}
			for _, a := range s.Addrs() {
				switch a := a.(type) {
				case *net.UDPAddr:
					got = append(got, "udp "+a.IP.String())
					ports[a.Port] = true
				case *net.TCPAddr:
					got = append(got, "tcp "+a.IP.String())
					ports[a.Port] = true
				}
			}
			if strings.Join(got, ",") != strings.Join(tt.wantAddrs, ",") {
				t.Fatalf("bound %v, want %v", got, tt.wantAddrs)
			}
			if len(ports) != 1 {
				t.Errorf("listeners on ports %v, want one port for all", ports)
			}
			if warned := strings.Contains(logs.String(), "level=WARN") && strings.Contains(logs.String(), "2001:db8::53"); warned != tt.wantWarn {
				t.Errorf("warning logged: %v, want %v; logs:\n%s", warned, tt.wantWarn, logs)
			}
		})
	}
}

// TestBindDefaultList uses the real default list (127.0.0.1 and ::1): both
// answer where the host has IPv6, and 127.0.0.1 alone answers where it has
// not.
func TestBindDefaultList(t *testing.T) {
	ts := startServer(t, Options{BindAddrs: []netip.Addr{}})
	r, _ := ask(t, "udp", ts.addr(t, "udp", loopback4), newQuery("www.example.", dns.TypeA))
	if r.Rcode != dns.RcodeSuccess {
		t.Fatalf("answer %v", r.MsgHdr)
	}
	if !have6() {
		return // the default list skipped ::1, as it must
	}
	r, _ = ask(t, "tcp", ts.addr(t, "tcp", loopback6), newQuery("www.example.", dns.TypeA))
	if r.Rcode != dns.RcodeSuccess {
		t.Fatalf("answer over IPv6 %v", r.MsgHdr)
	}
}

func TestNewValidates(t *testing.T) {
	up := newLocalUpstream()
	log := slog.New(slog.DiscardHandler)
	tests := []struct {
		name string
		opts Options
	}{
		{"no upstream", Options{Logger: log}},
		{"no logger", Options{Upstream: up}},
		{"bad proto", Options{Upstream: up, Logger: log, Proto: "sctp"}},
		{"bad port", Options{Upstream: up, Logger: log, Port: 70000}},
		{"UDP size below 512", Options{Upstream: up, Logger: log, UDPMaxSize: 511}},
		{"UDP size above 65535", Options{Upstream: up, Logger: log, UDPMaxSize: 65536}},
		{"negative timeout", Options{Upstream: up, Logger: log, QueryTimeout: -1}},
		{"negative conns", Options{Upstream: up, Logger: log, TCPMaxConns: -1}},
		{"invalid address", Options{Upstream: up, Logger: log, BindAddrs: []netip.Addr{{}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.opts); err == nil {
				t.Fatal("New accepted invalid options")
			}
		})
	}
	s, err := New(Options{Upstream: up, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	o := s.opts
	if o.Proto != "both" || o.QueryTimeout != DefaultQueryTimeout || o.UDPMaxSize != DefaultUDPMaxSize ||
		o.TCPIdleTimeout != DefaultTCPIdleTimeout || o.TCPMaxConns != DefaultTCPMaxConns ||
		o.TCPMaxInFlight != DefaultTCPMaxInFlight || len(o.BindAddrs) != 2 || o.BindExplicit {
		t.Fatalf("defaults not applied: %+v", o)
	}
}
