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
	ts := startServer(t, Options{BindAddrs: defaultBindAddrs})
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

// TestNewValidates: New takes no defaults of its own, so a zero it cannot
// use is refused like any other bad value.
func TestNewValidates(t *testing.T) {
	valid := func() Options {
		return testOptions(Options{BindAddrs: defaultBindAddrs, Upstream: newLocalUpstream(), Logger: slog.New(slog.DiscardHandler)})
	}
	tests := []struct {
		name string
		mod  func(*Options)
	}{
		{"no upstream", func(o *Options) { o.Upstream = nil }},
		{"no logger", func(o *Options) { o.Logger = nil }},
		{"no bind address", func(o *Options) { o.BindAddrs = nil }},
		{"invalid address", func(o *Options) { o.BindAddrs = []netip.Addr{{}} }},
		{"no proto", func(o *Options) { o.Proto = "" }},
		{"bad proto", func(o *Options) { o.Proto = "sctp" }},
		{"bad port", func(o *Options) { o.Port = 70000 }},
		{"no UDP size", func(o *Options) { o.UDPMaxSize = 0 }},
		{"UDP size below 512", func(o *Options) { o.UDPMaxSize = 511 }},
		{"UDP size above 65535", func(o *Options) { o.UDPMaxSize = 65536 }},
		{"no query timeout", func(o *Options) { o.QueryTimeout = 0 }},
		{"negative timeout", func(o *Options) { o.QueryTimeout = -1 }},
		{"no TCP idle timeout", func(o *Options) { o.TCPIdleTimeout = 0 }},
		{"negative conns", func(o *Options) { o.TCPMaxConns = -1 }},
		{"no TCP in-flight limit", func(o *Options) { o.TCPMaxInFlight = 0 }},
		{"no in-flight limit", func(o *Options) { o.MaxInFlight = 0 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := valid()
			tt.mod(&o)
			if _, err := New(o); err == nil {
				t.Fatalf("New accepted %+v", o)
			}
		})
	}
	if _, err := New(valid()); err != nil {
		t.Fatalf("valid options refused: %v", err)
	}
}
