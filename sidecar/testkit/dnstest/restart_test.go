package dnstest

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Stop ends a client's connection as its mode says (in order, which the
// client reads as EOF, or with a RST), refuses new ones until Restart, and Restart serves on the same
// address with the same certificate, counting on from where it was.
func TestStopRestart(t *testing.T) {
	for _, tt := range []struct {
		name    string
		mode    StopMode
		wantErr func(error) bool
	}{
		{"graceful", StopGraceful, func(err error) bool { return errors.Is(err, io.EOF) }},
		{"abort", StopAbort, func(err error) bool { return errors.Is(err, syscall.ECONNRESET) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := New(t, Options{})
			addr := s.Addr
			exchange := func() {
				t.Helper()
				q := new(dns.Msg)
				q.SetQuestion("r.example.", dns.TypeA)
				r, _, err := client(s).Exchange(q, s.Addr.String())
				if err != nil || len(r.Answer) != 1 {
					t.Fatalf("exchange: %v, %v", r, err)
				}
			}
			exchange()
			held, err := tls.Dial("tcp", s.Addr.String(), &tls.Config{RootCAs: s.CAPool, ServerName: s.ServerName})
			if err != nil {
				t.Fatal(err)
			}
			defer held.Close()
			// The handshake is done on the server's side too once it has
			// answered on this connection.
			dc := &dns.Conn{Conn: held}
			q := new(dns.Msg)
			q.SetQuestion("held.example.", dns.TypeA)
			_ = held.SetDeadline(time.Now().Add(5 * time.Second))
			if err := dc.WriteMsg(q); err != nil {
				t.Fatal(err)
			}
			if _, err := dc.ReadMsg(); err != nil {
				t.Fatal(err)
			}

			if err := s.Stop(tt.mode); err != nil {
				t.Fatal(err)
			}
			if s.Open() != 0 {
				t.Errorf("%d connections open after Stop", s.Open())
			}
			if _, err := held.Read(make([]byte, 1)); !tt.wantErr(err) {
				t.Errorf("the held connection read %v after Stop", err)
			}
			if c, err := net.DialTimeout("tcp", s.Addr.String(), time.Second); err == nil {
				c.Close()
				t.Error("accepting while stopped")
			}
			if err := s.Stop(tt.mode); err != nil {
				t.Errorf("second Stop: %v", err)
			}

			if err := s.Restart(); err != nil {
				t.Fatal(err)
			}
			if s.Addr != addr {
				t.Fatalf("restarted on %s, was %s", s.Addr, addr)
			}
			exchange()
			if s.Accepted() != 3 || s.Handshakes() != 3 {
				t.Errorf("accepted %d, handshakes %d; want 3 each", s.Accepted(), s.Handshakes())
			}
			if err := s.Restart(); err == nil {
				t.Error("Restart of a running server succeeded")
			}
		})
	}
}

// A server closed while stopped stays closed; Restart then fails.
func TestCloseWhileStopped(t *testing.T) {
	s, err := Start(Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(StopGraceful); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Restart(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Restart after Close: %v, want net.ErrClosed", err)
	}
}
