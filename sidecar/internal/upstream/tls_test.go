package upstream

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/testpki"
	"github.com/miekg/dns"
)

var foreignPin = sha256.Sum256([]byte("a key nobody has"))

func TestCertificateVerification(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			srv := newTestServer(t, tr, dnstest.Options{})
			otherCA, err := testpki.NewCA("unrelated CA")
			if err != nil {
				t.Fatal(err)
			}
			otherRoots := x509.NewCertPool()
			otherRoots.AddCert(otherCA.Cert)

			tests := []struct {
				name       string
				cert       dnstest.CertKind
				pins       [][32]byte     // the upstream's own
				trustPins  [][32]byte     // the Trust's defaults
				roots      *x509.CertPool // nil: srv.CAPool
				serverName string         // "": srv.ServerName
				wantErr    error          // nil: the query is answered
				wantPinErr bool
			}{
				{name: "no pins", cert: dnstest.CertGood},
				{name: "pin on leaf", cert: dnstest.CertGood, pins: [][32]byte{srv.LeafPinSum}},
				{name: "pin on CA", cert: dnstest.CertGood, pins: [][32]byte{srv.CAPinSum}},
				{name: "one of several pins", cert: dnstest.CertGood, pins: [][32]byte{foreignPin, srv.CAPinSum}},
				{name: "foreign pin", cert: dnstest.CertGood, pins: [][32]byte{foreignPin}, wantErr: ErrPinMismatch, wantPinErr: true},
				{name: "trust default pin applies", cert: dnstest.CertGood, trustPins: [][32]byte{foreignPin}, wantErr: ErrPinMismatch, wantPinErr: true},
				{name: "own pins override trust pins", cert: dnstest.CertGood, pins: [][32]byte{srv.LeafPinSum}, trustPins: [][32]byte{foreignPin}},
				{name: "rekeyed leaf, leaf pin", cert: dnstest.CertOtherKey, pins: [][32]byte{srv.LeafPinSum}, wantErr: ErrPinMismatch, wantPinErr: true},
				{name: "rekeyed leaf, CA pin", cert: dnstest.CertOtherKey, pins: [][32]byte{srv.CAPinSum}},
				{name: "wrong CA", cert: dnstest.CertOtherCA, wantErr: ErrTLS},
				// A pin must never stand in for chain verification.
				{name: "wrong CA with its leaf pinned", cert: dnstest.CertOtherCA, pins: [][32]byte{srv.LeafPinSum}, wantErr: ErrTLS},
				{name: "wrong name", cert: dnstest.CertOtherName, wantErr: ErrTLS},
				{name: "wrong name, CA pinned", cert: dnstest.CertOtherName, pins: [][32]byte{srv.CAPinSum}, wantErr: ErrTLS},
				{name: "server name not in certificate", cert: dnstest.CertGood, serverName: "elsewhere.test", wantErr: ErrTLS},
				{name: "untrusted roots", cert: dnstest.CertGood, roots: otherRoots, wantErr: ErrTLS},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					srv.Behavior.SetCert(tt.cert)
					before := srv.Queries()
					roots := tt.roots
					if roots == nil {
						roots = srv.CAPool
					}
					d := newTestUpstream(t, srv, func(o *DoTOptions) {
						o.Pins = tt.pins
						o.Trust = NewTrust(roots, tt.trustPins)
						if tt.serverName != "" {
							o.ServerName = tt.serverName
						}
					})
					q := packQuery(t, "v.example.", dns.TypeA)
					resp, err := d.Exchange(ctxTimeout(t, answerTimeout), q)
					if tt.wantErr == nil {
						if err != nil {
							t.Fatalf("Exchange: %v", err)
						}
						if err := checkAnswer(resp, q); err != nil {
							t.Fatal(err)
						}
						if counterValue(d.core().m.opened) != 1 {
							t.Errorf("connections_opened_total = %v, want 1", counterValue(d.core().m.opened))
						}
						return
					}
					if !errors.Is(err, tt.wantErr) {
						t.Fatalf("Exchange error %v, want %v", err, tt.wantErr)
					}
					if errors.Is(err, ErrPinMismatch) != tt.wantPinErr {
						t.Errorf("errors.Is(err, ErrPinMismatch) = %v, want %v", !tt.wantPinErr, tt.wantPinErr)
					}
					if errors.Is(err, ErrUnreachable) {
						t.Errorf("a certificate failure reported as unreachable: %v", err)
					}
					if got := srv.Queries() - before; got != 0 {
						t.Errorf("server received %d queries over a rejected connection", got)
					}
					if counterValue(d.core().m.hsFailures) < 1 {
						t.Error("tls_handshake_failures_total not counted")
					}
					if got, want := counterValue(d.core().m.pinFails) >= 1, tt.wantPinErr; got != want {
						t.Errorf("pin_failures_total counted: %v, want %v", got, want)
					}
				})
			}
			srv.Behavior.SetCert(dnstest.CertGood)
		})
	}
}

// The pin check runs on resumed sessions too: VerifyConnection, not
// VerifyPeerCertificate, which TLS skips on resumption.
func TestPinCheckedOnResumedSession(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			srv := newTestServer(t, tr, dnstest.Options{})
			trust := NewTrust(srv.CAPool, [][32]byte{srv.LeafPinSum})
			d := newTestUpstream(t, srv, func(o *DoTOptions) { o.Trust = trust })
			var (
				mu      sync.Mutex
				resumed []bool
			)
			d.core().verifyHook = func(cs tls.ConnectionState) {
				mu.Lock()
				resumed = append(resumed, cs.DidResume)
				mu.Unlock()
			}
			exchange := func() error {
				q := packQuery(t, "r.example.", dns.TypeA)
				resp, err := d.Exchange(ctxTimeout(t, answerTimeout), q)
				if err == nil {
					err = checkAnswer(resp, q)
				}
				return err
			}
			if err := exchange(); err != nil {
				t.Fatalf("first exchange: %v", err)
			}

			// Pinned to the CA now, which the chain still holds: nothing to retire.
			// Retire the connection anyway to make the next handshake a resumption,
			// which must pass.
			trust.Update(srv.CAPool, [][32]byte{srv.CAPinSum})
			if n := d.Reverify(); n != 0 {
				t.Fatalf("Reverify retired %d connections, want 0", n)
			}
			d.retireAll()
			if err := exchange(); err != nil {
				t.Fatalf("exchange with the CA pinned: %v", err)
			}
			if srv.Resumed() != 1 {
				t.Fatalf("server saw %d resumed handshakes, want 1", srv.Resumed())
			}

			// The pin changes to a key the server lacks: the open connection is
			// retired and the next handshake, resumed from the cached session, must
			// be rejected.
			trust.Update(srv.CAPool, [][32]byte{foreignPin})
			if n := d.Reverify(); n != 1 {
				t.Fatalf("Reverify retired %d connections, want 1", n)
			}
			if err := exchange(); !errors.Is(err, ErrPinMismatch) {
				t.Fatalf("exchange after the pin change: %v, want ErrPinMismatch", err)
			}
			mu.Lock()
			got := append([]bool(nil), resumed...)
			mu.Unlock()
			if want := []bool{false, true, true}; !slices.Equal(got, want) {
				t.Fatalf("handshakes resumed = %v, want %v: the rejected handshake must be a resumed one", got, want)
			}
		})
	}
}

func TestHandshakeBlackHole(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			srv := newTestServer(t, tr, dnstest.Options{})
			srv.Behavior.BlackHole.Store(true)
			tests := []struct {
				name        string
				dialTimeout time.Duration
				ctxTimeout  time.Duration
				want        error
			}{
				// DialTimeout ends the handshake: the upstream is unreachable.
				{"dial timeout first", 150 * time.Millisecond, 3 * time.Second, ErrUnreachable},
				// The query's deadline comes first: the caller waits no longer.
				{"query deadline first", 3 * time.Second, 150 * time.Millisecond, context.DeadlineExceeded},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					d := newTestUpstream(t, srv, func(o *DoTOptions) { o.DialTimeout = tt.dialTimeout })
					start := time.Now()
					_, err := d.Exchange(ctxTimeout(t, tt.ctxTimeout), packQuery(t, "h.example.", dns.TypeA))
					took := time.Since(start)
					if !errors.Is(err, tt.want) {
						t.Fatalf("Exchange error %v, want %v", err, tt.want)
					}
					if limit := min(tt.dialTimeout, tt.ctxTimeout) + time.Second; took > limit {
						t.Errorf("Exchange took %s, want under %s", took, limit)
					}
				})
			}
		})
	}
}

func TestReverifyRetiresConnections(t *testing.T) {
	otherCA, err := testpki.NewCA("replacement CA")
	if err != nil {
		t.Fatal(err)
	}
	otherRoots := x509.NewCertPool()
	otherRoots.AddCert(otherCA.Cert)

	tests := []struct {
		name         string
		roots        func(srv *dnstest.Server) *x509.CertPool
		pins         func(srv *dnstest.Server) [][32]byte
		callReverify bool // false: housekeeping notices the Update on its own
		wantRetired  bool
		wantErr      error // of the next query
	}{
		{"foreign pin", same, func(*dnstest.Server) [][32]byte { return [][32]byte{foreignPin} }, true, true, ErrPinMismatch},
		{"foreign pin, housekeeping", same, func(*dnstest.Server) [][32]byte { return [][32]byte{foreignPin} }, false, true, ErrPinMismatch},
		{"CA no longer trusted", func(*dnstest.Server) *x509.CertPool { return otherRoots }, noPins, true, true, ErrTLS},
		{"still trusted with CA pin", same, func(s *dnstest.Server) [][32]byte { return [][32]byte{s.CAPinSum} }, true, false, nil},
	}
	for _, tr := range transports {
		for _, tt := range tests {
			t.Run(tr+"/"+tt.name, func(t *testing.T) {
				srv := newTestServer(t, tr, dnstest.Options{})
				trust := NewTrust(srv.CAPool, nil)
				d := newTestUpstream(t, srv, func(o *DoTOptions) { o.Trust = trust; o.IdleTimeout = time.Hour })
				if _, err := d.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, "a.example.", dns.TypeA)); err != nil {
					t.Fatal(err)
				}
				trust.Update(tt.roots(srv), tt.pins(srv))
				if tt.callReverify {
					n := d.Reverify()
					if (n == 1) != tt.wantRetired {
						t.Fatalf("Reverify retired %d, want retired=%v", n, tt.wantRetired)
					}
				}
				if tt.wantRetired {
					eventually(t, 3*time.Second, "the connection to close", func() bool { return srv.Open() == 0 })
				}
				_, err := d.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, "b.example.", dns.TypeA))
				if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
					t.Fatalf("next Exchange: %v, want %v", err, tt.wantErr)
				}
				if !tt.wantRetired && srv.Accepted() != 1 {
					t.Errorf("server accepted %d connections, want 1 (connection kept)", srv.Accepted())
				}
			})
		}
	}
}

func same(s *dnstest.Server) *x509.CertPool { return s.CAPool }
func noPins(*dnstest.Server) [][32]byte     { return nil }
