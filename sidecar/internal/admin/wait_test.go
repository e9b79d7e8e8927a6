package admin_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/admin"
)

func TestReadyURL(t *testing.T) {
	tests := []struct {
		addr    string
		want    string
		wantErr bool
	}{
		{":9253", "http://127.0.0.1:9253/readyz", false},
		{"0.0.0.0:9253", "http://127.0.0.1:9253/readyz", false},
		{"[::]:9253", "http://127.0.0.1:9253/readyz", false},
		{"[0:0::0]:9253", "http://127.0.0.1:9253/readyz", false},
		{"127.0.0.1:9253", "http://127.0.0.1:9253/readyz", false},
		{"[::1]:9253", "http://[::1]:9253/readyz", false},
		{"127.0.0.2:19253", "http://127.0.0.2:19253/readyz", false},
		{"localhost:9253", "http://localhost:9253/readyz", false},
		{"[fe80::1%eth0]:9253", "http://[fe80::1%25eth0]:9253/readyz", false},
		{"9253", "", true},
		{"", "", true},
		{":", "", true},
		{":0", "", true},
		{":http", "", true},
		{":70000", "", true},
		{"::1:9253", "", true},
	}
	for _, tt := range tests {
		got, err := admin.ReadyURL(tt.addr)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ReadyURL(%q) = %q, %v; want %q, error %v", tt.addr, got, err, tt.want, tt.wantErr)
		}
	}
}

func port(t *testing.T, addr string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestWaitReady(t *testing.T) {
	a, _ := startAdmin(t, admin.Options{})
	a.SetStarted()
	p := port(t, a.Addr())
	// The admin listens on 127.0.0.1 only; the wildcard forms must still find
	// it, because they mean "ask loopback".
	for _, addr := range []string{a.Addr(), ":" + p, "0.0.0.0:" + p, "[::]:" + p} {
		if err := admin.Wait(context.Background(), addr, 5*time.Second, testLogger(t)); err != nil {
			t.Errorf("Wait(%q) against a ready sidecar: %v", addr, err)
		}
	}
}

// A server that answers 503 to its first three polls and 200 after: Wait must
// keep polling through the 503s and return as soon as it sees the 200.
func TestWaitBecomesReady(t *testing.T) {
	var polls atomic.Int32
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" {
			http.NotFound(w, r)
			return
		}
		if polls.Add(1) <= 3 {
			http.Error(w, "starting: DNS listeners not bound yet", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})}
	var wg sync.WaitGroup
	wg.Go(func() { srv.Serve(ln) })
	defer func() { srv.Close(); wg.Wait() }()

	begin := time.Now()
	if err := admin.Wait(context.Background(), ln.Addr().String(), 10*time.Second, testLogger(t)); err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if n := polls.Load(); n != 4 {
		t.Errorf("server saw %d polls, want 4 (three 503s, then the 200)", n)
	}
	// Backoff 100, 200, 400 ms: the 200 is seen well within two seconds.
	if d := time.Since(begin); d > 2*time.Second {
		t.Errorf("Wait took %s for three retries; the backoff is not capped small", d)
	}
}

// A port that was just bound and released: nothing listens there.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestWaitGivesUp(t *testing.T) {
	const timeout = 300 * time.Millisecond
	tests := []struct {
		name  string
		addr  func(t *testing.T) string
		wants string // the end of the message
	}{
		{"listeners not bound", func(t *testing.T) string {
			a, _ := startAdmin(t, admin.Options{})
			return a.Addr()
		}, "status 503: starting: DNS listeners not bound yet"},
		{"shutting down", func(t *testing.T) string {
			a, _ := startAdmin(t, admin.Options{})
			a.SetStarted()
			a.SetShuttingDown()
			return a.Addr()
		}, "status 503: shutting down"},
		{"nothing listening", closedPort, "connect: connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := tt.addr(t)
			begin := time.Now()
			err := admin.Wait(context.Background(), addr, timeout, testLogger(t))
			elapsed := time.Since(begin)
			if !errors.Is(err, admin.ErrNotReady) {
				t.Fatalf("Wait = %v, want ErrNotReady", err)
			}
			prefix := "sidecar not ready at http://" + addr + "/readyz after 300ms: "
			if msg := err.Error(); !strings.HasPrefix(msg, prefix) || !strings.HasSuffix(msg, tt.wants) {
				t.Errorf("Wait error = %q\nwant %q...%q", msg, prefix, tt.wants)
			}
			nr, ok := errors.AsType[*admin.NotReadyError](err)
			if !ok || nr.URL != "http://"+addr+"/readyz" || nr.Waited != timeout || nr.Err != nil || !strings.HasSuffix(nr.Last, tt.wants) {
				t.Errorf("Wait error = %#v, want the URL, the timeout and what was seen last", err)
			}
			if elapsed < timeout || elapsed > timeout+2*time.Second {
				t.Errorf("Wait gave up after %s, want just after %s", elapsed, timeout)
			}
		})
	}
}

func TestWaitCanceled(t *testing.T) {
	addr := closedPort(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := admin.Wait(ctx, addr, time.Minute, testLogger(t))
	if !errors.Is(err, admin.ErrNotReady) || !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait with a canceled context = %v, want ErrNotReady and context.Canceled", err)
	}
	if nr, ok := errors.AsType[*admin.NotReadyError](err); !ok || nr.Err != context.Canceled || nr.Waited >= time.Minute {
		t.Errorf("Wait with a canceled context = %#v, want Err context.Canceled and the time it took", err)
	}
}

func TestWaitRejectsBadArguments(t *testing.T) {
	if err := admin.Wait(context.Background(), "9253", time.Second, nil); err == nil {
		t.Error("Wait accepted an address without a port")
	}
	if err := admin.Wait(context.Background(), ":9253", 0, nil); err == nil {
		t.Error("Wait accepted a zero timeout")
	}
}

// go-retryablehttp's own log lines (including its "request failed" at its
// error level) go to slog at Debug, so an Info-level `wait` stays quiet.
func TestWaitLogsRetriesAtDebug(t *testing.T) {
	addr := closedPort(t)
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if err := admin.Wait(context.Background(), addr, 250*time.Millisecond, log); err == nil {
		t.Fatal("Wait succeeded with nothing listening")
	}
	out := buf.String()
	for _, want := range []string{`level=DEBUG msg="request failed"`, `level=DEBUG msg="retrying request"`, "retryablehttp_level=error",
		`level=DEBUG msg="sidecar not ready yet" url=http://` + addr + `/readyz attempt=1 saw="dial tcp ` + addr + `: connect: connection refused"`} {
		if !strings.Contains(out, want) {
			t.Errorf("debug log lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "level=ERROR") || strings.Contains(out, "level=INFO") {
		t.Errorf("retry chatter above debug level:\n%s", out)
	}
}
