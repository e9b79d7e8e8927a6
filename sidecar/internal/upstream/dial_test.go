package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/testpki"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// logLines decodes the JSON lines logged to buf so far whose msg is msg.
func logLines(t *testing.T, buf *testkit.Buffer, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line not JSON: %v: %s", err, line)
		}
		if m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// blackHole is a DoT server's address that accepts TCP connections and never
// answers the TLS handshake, as a firewall or a port that is not DoT would.
func blackHole(t *testing.T) netip.AddrPort {
	srv := dnstest.New(t, dnstest.Options{})
	srv.Behavior.BlackHole.Store(true)
	return srv.Addr
}

// TestDialStages: each way a dial fails says how far it got, in its error
// and in the stage field of its log line, so that an operator can tell a
// refused connection, a server that accepts and says nothing, and a
// certificate that does not verify apart.
func TestDialStages(t *testing.T) {
	srv := dnstest.New(t, dnstest.Options{})
	foreign := dnstest.New(t, dnstest.Options{})
	foreign.Behavior.SetCert(dnstest.CertOtherCA)
	// The black hole waits out dialTimeout; the other dials end by
	// themselves, and a handshake on a loaded machine can take longer.
	const dialTimeout = 200 * time.Millisecond
	tests := []struct {
		name    string
		mod     func(*DoTOptions)
		want    []error // errors.Is each
		notWant []error
		stage   string
		text    string // in the message
		logMsg  string
	}{
		{
			name:    "refused",
			mod:     func(o *DoTOptions) { o.Addr = closedPort(t) },
			want:    []error{ErrUnreachable},
			notWant: []error{ErrTLS},
			stage:   stageConnect, text: "connection refused", logMsg: "dialing upstream failed",
		},
		{
			name:    "accepted, never answered",
			mod:     func(o *DoTOptions) { o.Addr, o.DialTimeout = blackHole(t), dialTimeout },
			want:    []error{ErrUnreachable, context.DeadlineExceeded},
			notWant: []error{ErrTLS},
			stage:   stageHandshake, text: "TCP connected, TLS handshake not completed within DIAL_TIMEOUT (200ms)",
			logMsg: "dialing upstream failed",
		},
		{
			name:    "unknown CA",
			mod:     func(o *DoTOptions) { o.Addr = foreign.Addr },
			want:    []error{ErrTLS},
			notWant: []error{ErrUnreachable, ErrPinMismatch},
			stage:   stageVerify, text: "certificate signed by unknown authority", logMsg: "upstream certificate rejected",
		},
		{
			name:    "pin mismatch",
			mod:     func(o *DoTOptions) { o.Pins = [][32]byte{foreignPin} },
			want:    []error{ErrTLS, ErrPinMismatch},
			notWant: []error{ErrUnreachable},
			stage:   stageVerify, text: "no pinned key", logMsg: "upstream certificate rejected",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var sink testkit.Buffer
			d := newTestDoT(t, srv, func(o *DoTOptions) {
				o.DialTimeout = answerTimeout
				o.Logger = slog.New(slog.NewJSONHandler(&sink, &slog.HandlerOptions{Level: slog.LevelDebug}))
				tt.mod(o)
			})
			_, err := d.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, "d.example.", dns.TypeA))
			for _, w := range tt.want {
				if !errors.Is(err, w) {
					t.Errorf("error %v is not %v", err, w)
				}
			}
			for _, w := range tt.notWant {
				if errors.Is(err, w) {
					t.Errorf("error %v is %v", err, w)
				}
			}
			if err == nil || !strings.Contains(err.Error(), tt.text) {
				t.Errorf("error %v, want it to say %q", err, tt.text)
			}
			de, ok := errors.AsType[*dialError](err)
			if !ok || de.stage != tt.stage {
				t.Fatalf("error %#v, want a dial error at stage %s", err, tt.stage)
			}
			// The line is logged before the waiting query learns of the
			// failure, so it is there now.
			lines := logLines(t, &sink, tt.logMsg)
			if len(lines) == 0 {
				t.Fatalf("no %q log line", tt.logMsg)
			}
			if lines[0]["stage"] != tt.stage || !strings.Contains(lines[0]["error"].(string), tt.text) {
				t.Errorf("log line %v, want stage %s and the error", lines[0], tt.stage)
			}
		})
	}
}

// TestPinMismatchLogsPresentedPins: the operator learns from the log which
// pins would have matched: those of the certificates the upstream presented,
// leaf first, in the form TLS_PINS takes.
func TestPinMismatchLogsPresentedPins(t *testing.T) {
	srv := dnstest.New(t, dnstest.Options{})
	var sink testkit.Buffer
	d := newTestDoT(t, srv, func(o *DoTOptions) {
		o.Pins = [][32]byte{foreignPin}
		o.Logger = slog.New(slog.NewJSONHandler(&sink, &slog.HandlerOptions{Level: slog.LevelWarn}))
	})
	_, err := d.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, "p.example.", dns.TypeA))
	if !errors.Is(err, ErrPinMismatch) {
		t.Fatalf("Exchange error %v, want ErrPinMismatch", err)
	}
	want := []string{testpki.Pin(srv.Leaf.Cert), testpki.Pin(srv.CA.Cert)} // dnstest sends the leaf and its CA
	lines := logLines(t, &sink, "upstream certificate rejected")
	if len(lines) != 1 {
		t.Fatalf("%d warn lines for the rejected certificate, want 1", len(lines))
	}
	var got []string
	for _, p := range lines[0]["presented_pins"].([]any) {
		got = append(got, p.(string))
	}
	if !slices.Equal(got, want) {
		t.Errorf("presented_pins = %q, want %q", got, want)
	}
	if lines[0]["upstream"] != d.name || lines[0]["level"] != "WARN" {
		t.Errorf("log line %v, want WARN naming the upstream", lines[0])
	}

	// Pinning what the log showed makes the upstream usable.
	pin, err := config.ParsePin(got[0])
	if err != nil {
		t.Fatal(err)
	}
	trust := NewTrust(srv.CAPool, [][32]byte{pin})
	d2 := newTestDoT(t, srv, func(o *DoTOptions) {
		o.Trust = trust
		o.Logger = slog.New(slog.NewJSONHandler(&sink, &slog.HandlerOptions{Level: slog.LevelWarn}))
	})
	q := packQuery(t, "p.example.", dns.TypeA)
	resp, err := d2.Exchange(ctxTimeout(t, answerTimeout), q)
	if err != nil {
		t.Fatalf("Exchange with the logged leaf pin: %v", err)
	}
	if err := checkAnswer(resp, q); err != nil {
		t.Fatal(err)
	}

	// A trust update that no longer pins the key retires the open
	// connection, and that log line names the presented pins too.
	trust.Update(srv.CAPool, [][32]byte{foreignPin})
	if n := d2.Reverify(); n != 1 {
		t.Fatalf("Reverify retired %d connections, want 1", n)
	}
	lines = logLines(t, &sink, "retiring upstream connection that the updated trust rejects")
	if len(lines) != 1 {
		t.Fatalf("%d lines for the retired connection, want 1", len(lines))
	}
	got = got[:0]
	for _, p := range lines[0]["presented_pins"].([]any) {
		got = append(got, p.(string))
	}
	if !slices.Equal(got, want) {
		t.Errorf("presented_pins on reverification = %q, want %q", got, want)
	}
}

// closedPort is a loopback port nothing listens on.
func closedPort(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ap := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	return ap
}

// The line an operator sees at the default level when an upstream goes down
// carries the stage of the failed dial too.
func TestMarkedDownLogsDialStage(t *testing.T) {
	srv := dnstest.New(t, dnstest.Options{})
	var sink testkit.Buffer
	log := slog.New(slog.NewJSONHandler(&sink, &slog.HandlerOptions{Level: slog.LevelInfo}))
	d := newTestDoT(t, srv, func(o *DoTOptions) {
		o.Addr = blackHole(t)
		o.DialTimeout = 100 * time.Millisecond
		o.Logger = log
	})
	g, err := NewGroup(testGroupOptions(GroupOptions{Upstreams: []Upstream{d}, MaxFails: 1, MaxAttempts: 1,
		Logger: log, Metrics: NewMetrics(prometheus.NewRegistry())}))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if _, err := g.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, "m.example.", dns.TypeA)); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("Exchange error %v, want ErrUnreachable", err)
	}
	lines := logLines(t, &sink, "upstream marked down")
	if len(lines) != 1 || lines[0]["stage"] != stageHandshake ||
		!strings.Contains(lines[0]["err"].(string), "TCP connected, TLS handshake not completed within DIAL_TIMEOUT (100ms)") {
		t.Errorf("marked-down lines %v, want one with stage %s and the reason", lines, stageHandshake)
	}
}
