package dnstest

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m, func() error { return goleak.Find() }) }

func client(s *Server) *dns.Client {
	return &dns.Client{
		Net:       "tcp-tls",
		Timeout:   2 * time.Second,
		TLSConfig: &tls.Config{RootCAs: s.CAPool, ServerName: s.ServerName, MinVersion: tls.VersionTLS12},
	}
}

// The fake answers a third-party client (miekg/dns) correctly, IPv4 and IPv6.
func TestServesMiekgClient(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		name := map[bool]string{false: "IPv4", true: "IPv6"}[v6]
		t.Run(name, func(t *testing.T) {
			if v6 {
				if ln, err := net.Listen("tcp", "[::1]:0"); err != nil {
					t.Skip("no IPv6 loopback on this machine")
				} else {
					ln.Close()
				}
			}
			s := New(t, Options{IPv6: v6})
			if s.Addr.Addr().Is6() != v6 {
				t.Fatalf("listening on %s", s.Addr)
			}
			for _, tt := range []struct {
				qtype uint16
				want  string
			}{{dns.TypeA, AnswerA.String()}, {dns.TypeAAAA, AnswerAAAA.String()}} {
				q := new(dns.Msg)
				q.SetQuestion("x.example.", tt.qtype)
				q.SetEdns0(1400, false)
				r, _, err := client(s).Exchange(q, s.Addr.String())
				if err != nil {
					t.Fatal(err)
				}
				if len(r.Answer) != 1 {
					t.Fatalf("answer %v", r)
				}
				var got string
				switch rr := r.Answer[0].(type) {
				case *dns.A:
					got = rr.A.String()
				case *dns.AAAA:
					got = rr.AAAA.String()
				}
				if got != tt.want || r.IsEdns0() == nil || r.IsEdns0().UDPSize() != 1400 {
					t.Errorf("answer %v, want %s with EDNS echoed", r, tt.want)
				}
			}
			if s.Queries() != 2 || s.Handshakes() != 2 || s.Accepted() != 2 {
				t.Errorf("counters: queries %d handshakes %d accepted %d", s.Queries(), s.Handshakes(), s.Accepted())
			}
		})
	}
}

// Each CertKind presents the certificate it names, as a verifying client
// sees it.
func TestCertKinds(t *testing.T) {
	s := New(t, Options{})
	tests := []struct {
		kind        CertKind
		wantErr     any // pointer to the x509 error type expected, nil: verifies
		wantLeafPin bool
	}{
		{CertGood, nil, true},
		{CertOtherCA, new(x509.UnknownAuthorityError), false},
		{CertOtherName, new(x509.HostnameError), false},
		{CertOtherKey, nil, false},
	}
	for _, tt := range tests {
		s.Behavior.SetCert(tt.kind)
		conf := &tls.Config{RootCAs: s.CAPool, ServerName: s.ServerName}
		c, err := tls.Dial("tcp", s.Addr.String(), conf)
		if tt.wantErr != nil {
			if err == nil || !errors.As(err, tt.wantErr) {
				t.Errorf("kind %d: handshake error %v, want %T", tt.kind, err, tt.wantErr)
			}
			if c != nil {
				c.Close()
			}
			continue
		}
		if err != nil {
			t.Fatalf("kind %d: %v", tt.kind, err)
		}
		cs := c.ConnectionState()
		c.Close()
		leaf := cs.PeerCertificates[0]
		if got := sha256.Sum256(leaf.RawSubjectPublicKeyInfo) == s.LeafPinSum; got != tt.wantLeafPin {
			t.Errorf("kind %d: leaf pin matches = %v, want %v", tt.kind, got, tt.wantLeafPin)
		}
		chain := cs.VerifiedChains[0]
		if got := sha256.Sum256(chain[len(chain)-1].RawSubjectPublicKeyInfo); got != s.CAPinSum {
			t.Errorf("kind %d: chain does not end at the server's CA", tt.kind)
		}
	}
}

func TestBlackHole(t *testing.T) {
	s := New(t, Options{})
	s.Behavior.BlackHole.Store(true)
	d := net.Dialer{Timeout: time.Second}
	conf := &tls.Config{RootCAs: s.CAPool, ServerName: s.ServerName}
	raw, err := d.Dial("tcp", s.Addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(100 * time.Millisecond))
	var ne net.Error
	if err := tls.Client(raw, conf).Handshake(); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("handshake against a black hole: %v, want a timeout", err)
	}
	if s.Accepted() != 1 || s.Handshakes() != 0 {
		t.Errorf("accepted %d, handshakes %d", s.Accepted(), s.Handshakes())
	}
}

func TestCloseIdempotentAndStopsServing(t *testing.T) {
	s, err := Start(Options{})
	if err != nil {
		t.Fatal(err)
	}
	q := new(dns.Msg)
	q.SetQuestion("x.example.", dns.TypeA)
	// Hold a connection open across Close: Close must end it too.
	conn, err := client(s).Dial(s.Addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, _, err := client(s).ExchangeWithConn(q, conn); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := net.DialTimeout("tcp", s.Addr.String(), time.Second); err == nil {
		t.Error("still accepting after Close")
	}
}

// CloseAfter closes a connection after the Nth answer has gone out, also
// when answers are delayed: queries behind the Nth are not answered.
func TestCloseAfterAnswersFirst(t *testing.T) {
	for _, delay := range []time.Duration{0, 50 * time.Millisecond} {
		t.Run(delay.String(), func(t *testing.T) {
			s := New(t, Options{})
			s.Behavior.CloseAfter.Store(2)
			s.Behavior.SetDelay(delay)
			conn, err := tls.Dial("tcp", s.Addr.String(), &tls.Config{RootCAs: s.CAPool, ServerName: s.ServerName})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			dc := &dns.Conn{Conn: conn}
			for i := range 3 {
				q := new(dns.Msg)
				q.SetQuestion(fmt.Sprintf("q%d.example.", i), dns.TypeA)
				if err := dc.WriteMsg(q); err != nil {
					t.Fatal(err)
				}
			}
			// Delayed answers may come in either order.
			got := map[string]bool{}
			for i := range 2 {
				r, err := dc.ReadMsg()
				if err != nil {
					t.Fatalf("answer %d: %v", i, err)
				}
				if len(r.Question) == 1 {
					got[r.Question[0].Name] = true
				}
			}
			if !got["q0.example."] || !got["q1.example."] {
				t.Fatalf("answers for %v, want q0 and q1", got)
			}
			if r, err := dc.ReadMsg(); err == nil {
				t.Fatalf("a third answer after CloseAfter 2: %v", r.Question)
			}
		})
	}
}

// ResetNextConns resets that many new connections on their first query, and
// only those.
func TestResetNextConns(t *testing.T) {
	s := New(t, Options{})
	s.Behavior.ResetNextConns.Store(2)
	for i, wantErr := range []bool{true, true, false, false} {
		q := new(dns.Msg)
		q.SetQuestion("r.example.", dns.TypeA)
		_, _, err := client(s).Exchange(q, s.Addr.String())
		if (err != nil) != wantErr {
			t.Fatalf("connection %d: error %v, want one: %v", i, err, wantErr)
		}
	}
	if got := s.Behavior.ResetNextConns.Load(); got != 0 {
		t.Errorf("ResetNextConns left at %d", got)
	}
}

// With a keepalive, the server announces it to clients that offer the
// option (only to them), and closes a connection idle that long, but not
// one with an answer still owed.
func TestKeepalive(t *testing.T) {
	s := New(t, Options{})
	s.Behavior.SetKeepalive(300 * time.Millisecond)
	conn, err := tls.Dial("tcp", s.Addr.String(), &tls.Config{RootCAs: s.CAPool, ServerName: s.ServerName})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	dc := &dns.Conn{Conn: conn}
	ask := func(offer bool) *dns.EDNS0_TCP_KEEPALIVE {
		t.Helper()
		q := new(dns.Msg)
		q.SetQuestion("k.example.", dns.TypeA)
		if offer {
			q.SetEdns0(1232, false)
			q.IsEdns0().Option = append(q.IsEdns0().Option, &dns.EDNS0_TCP_KEEPALIVE{Code: dns.EDNS0TCPKEEPALIVE})
		}
		if err := dc.WriteMsg(q); err != nil {
			t.Fatal(err)
		}
		r, err := dc.ReadMsg()
		if err != nil {
			t.Fatal(err)
		}
		if opt := r.IsEdns0(); opt != nil {
			for _, o := range opt.Option {
				if ka, ok := o.(*dns.EDNS0_TCP_KEEPALIVE); ok {
					return ka
				}
			}
		}
		return nil
	}
	if ka := ask(false); ka != nil {
		t.Errorf("keepalive %v announced to a client that did not offer it", ka)
	}
	if ka := ask(true); ka == nil || ka.Timeout != 3 {
		t.Fatalf("keepalive %v, want a timeout of 3 (300 ms)", ka)
	}
	// A slow answer keeps the connection open past the timeout.
	s.Behavior.SetDelay(500 * time.Millisecond)
	ask(true)
	s.Behavior.SetDelay(0)
	start := time.Now()
	if _, err := dc.ReadMsg(); err == nil {
		t.Fatal("read a message from an idle connection")
	}
	if took := time.Since(start); took < 250*time.Millisecond {
		t.Errorf("closed after %s idle, want about 300ms", took)
	}
	if got := s.IdleClosed(); got != 1 {
		t.Errorf("IdleClosed = %d, want 1", got)
	}
}
