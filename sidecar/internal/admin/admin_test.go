package admin_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/admin"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// startAdmin starts an Admin on 127.0.0.1:0 with a registry of its own and
// shuts it down when the test ends.
func startAdmin(t *testing.T, opts admin.Options) (*admin.Admin, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	opts.Registerer, opts.Gatherer, opts.Logger = reg, reg, testLogger(t)
	a, err := admin.New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := a.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := a.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return a, reg
}

// do sends one request on a fresh connection (no keep-alive, so nothing
// outlives the test for goleak to find).
func do(t *testing.T, method, url string) (int, string, error) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, url, err)
	}
	return resp.StatusCode, string(b), nil
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	code, body, err := do(t, http.MethodGet, url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return code, body
}

type want struct {
	code int
	body string // substring of the body
}

func checkEndpoints(t *testing.T, base string, wants map[string]want) {
	t.Helper()
	for path, w := range wants {
		code, body := get(t, base+path)
		if code != w.code || !strings.Contains(body, w.body) {
			t.Errorf("GET %s = %d %q, want %d containing %q", path, code, body, w.code, w.body)
		}
	}
}

func TestProbeLifecycle(t *testing.T) {
	a, _ := startAdmin(t, admin.Options{})
	base := "http://" + a.Addr()

	steps := []struct {
		name  string
		do    func()
		wants map[string]want
	}{
		{"bound, DNS listeners not yet", func() {}, map[string]want{
			"/livez":    {200, "ok"},
			"/startupz": {503, "DNS listeners not bound yet"},
			"/readyz":   {503, "starting"},
		}},
		{"started", a.SetStarted, map[string]want{
			"/livez":    {200, "ok"},
			"/startupz": {200, "ok"},
			"/readyz":   {200, "ok"},
		}},
		{"started twice changes nothing", a.SetStarted, map[string]want{
			"/readyz": {200, "ok"},
		}},
		{"shutting down", a.SetShuttingDown, map[string]want{
			// Liveness and startup stay green: a draining container must not
			// be restarted by the kubelet.
			"/livez":    {200, "ok"},
			"/startupz": {200, "ok"},
			"/readyz":   {503, "shutting down"},
		}},
		{"started again cannot undo shutting down", a.SetStarted, map[string]want{
			"/readyz": {503, "shutting down"},
		}},
	}
	for _, s := range steps {
		s.do()
		t.Run(s.name, func(t *testing.T) { checkEndpoints(t, base, s.wants) })
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := a.Shutdown(ctx); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	if _, _, err := do(t, http.MethodGet, base+"/livez"); err == nil {
		t.Fatal("GET /livez after Shutdown succeeded, want a connection error")
	}
}

func TestMethods(t *testing.T) {
	a, _ := startAdmin(t, admin.Options{})
	a.SetStarted()
	base := "http://" + a.Addr()
	tests := []struct {
		method, path string
		code         int
	}{
		{http.MethodHead, "/livez", 200},
		{http.MethodHead, "/readyz", 200},
		{http.MethodPost, "/readyz", 405},
		{http.MethodGet, "/", 404},
		{http.MethodGet, "/healthz", 404},
	}
	for _, tt := range tests {
		code, _, err := do(t, tt.method, base+tt.path)
		if err != nil || code != tt.code {
			t.Errorf("%s %s = %d, %v; want %d", tt.method, tt.path, code, err, tt.code)
		}
	}
}

func TestLivezFollowsLive(t *testing.T) {
	var broken atomic.Pointer[error]
	a, _ := startAdmin(t, admin.Options{Live: func() error {
		if p := broken.Load(); p != nil {
			return *p
		}
		return nil
	}})
	a.SetStarted()
	base := "http://" + a.Addr()

	checkEndpoints(t, base, map[string]want{"/livez": {200, "ok"}, "/readyz": {200, "ok"}})

	err := errors.New("udp read loop on 127.0.0.1:5053 exited")
	broken.Store(&err)
	checkEndpoints(t, base, map[string]want{
		"/livez":    {503, "not live: udp read loop on 127.0.0.1:5053 exited"},
		"/readyz":   {503, "not serving: udp read loop"},
		"/startupz": {200, "ok"}, // startup happened; it is not re-judged
	})

	broken.Store(nil)
	checkEndpoints(t, base, map[string]want{"/livez": {200, "ok"}, "/readyz": {200, "ok"}})
}

// Without UpstreamHealthy (READY_REQUIRES_UPSTREAM off, the default) nothing
// about upstreams can make the pod unready; with it, liveness and startup
// still never look at upstreams.
func TestUpstreamHealthNeverReachesLiveness(t *testing.T) {
	a, _ := startAdmin(t, admin.Options{
		UpstreamHealthy:    func() bool { return false },
		ReadyFailThreshold: 1,
	})
	a.SetStarted()
	checkEndpoints(t, "http://"+a.Addr(), map[string]want{
		"/livez":    {200, "ok"},
		"/startupz": {200, "ok"},
		"/readyz":   {503, "no healthy upstream"},
	})
}

// The background loop really re-evaluates every CheckInterval: flipping the
// upstream state is seen on /readyz without anyone calling into the Admin.
func TestReadinessLoopFollowsUpstream(t *testing.T) {
	var healthy atomic.Bool
	healthy.Store(true)
	a, _ := startAdmin(t, admin.Options{
		UpstreamHealthy:       healthy.Load,
		ReadyFailThreshold:    2,
		ReadySuccessThreshold: 2,
		CheckInterval:         5 * time.Millisecond,
	})
	a.SetStarted()
	url := "http://" + a.Addr() + "/readyz"
	awaitStatus(t, url, 200)

	healthy.Store(false)
	awaitStatus(t, url, 503)
	if code, _ := get(t, "http://"+a.Addr()+"/livez"); code != 200 {
		t.Errorf("/livez = %d during an upstream outage, want 200", code)
	}
	healthy.Store(true)
	awaitStatus(t, url, 200)
}

// awaitStatus polls url until it answers code, failing after 5 s.
func awaitStatus(t *testing.T, url string, code int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		got, body := get(t, url)
		if got == code {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s still %d %q after 5s, want %d", url, got, body, code)
		}
		<-tick.C
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	reg := prometheus.NewRegistry()
	log := slog.New(slog.DiscardHandler)
	tests := []struct {
		name string
		opts admin.Options
		want string
	}{
		{"nil logger", admin.Options{Registerer: reg, Gatherer: reg}, "Logger is nil"},
		{"nil registerer", admin.Options{Gatherer: reg, Logger: log}, "Registerer is nil"},
		{"nil gatherer", admin.Options{Registerer: reg, Logger: log}, "Gatherer is nil"},
		{"negative fail threshold", admin.Options{Registerer: reg, Gatherer: reg, Logger: log, ReadyFailThreshold: -1}, "negative"},
		{"negative success threshold", admin.Options{Registerer: reg, Gatherer: reg, Logger: log, ReadySuccessThreshold: -1}, "negative"},
		{"negative interval", admin.Options{Registerer: reg, Gatherer: reg, Logger: log, CheckInterval: -time.Second}, "negative check interval"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := admin.New(tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New = %v, %v; want error containing %q", a, err, tt.want)
			}
		})
	}
}

func TestStartErrors(t *testing.T) {
	a, _ := startAdmin(t, admin.Options{})
	if err := a.Start(); !errors.Is(err, admin.ErrStarted) {
		t.Errorf("second Start = %v, want ErrStarted", err)
	}

	reg := prometheus.NewRegistry()
	b, err := admin.New(admin.Options{Addr: a.Addr(), Registerer: reg, Gatherer: reg, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	err = b.Start()
	if err == nil || !strings.Contains(err.Error(), "listening on "+a.Addr()) {
		t.Fatalf("Start on a taken address = %v, want a bind error naming it", err)
	}
	if b.Addr() != "" {
		t.Errorf("Addr after failed Start = %q, want empty", b.Addr())
	}
	if err := b.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown of a never-started Admin: %v", err)
	}
}

// A flood of connections that send half a request header and wait holds
// neither the probes up nor more than a bounded number of connections.
func TestConnectionFlood(t *testing.T) {
	a, reg := startAdmin(t, admin.Options{})
	base := "http://" + a.Addr()
	var held []net.Conn
	defer func() {
		for _, c := range held {
			_ = c.Close()
		}
	}()
	// From another address than the probes', as a flood from a pod comes
	// from another than the kubelet's.
	flooder := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	for i := range 500 {
		c, err := flooder.Dial("tcp", a.Addr())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		if _, err := c.Write([]byte("GET /livez HTTP/1.1\r\nHost: flood\r\n")); err != nil {
			t.Fatal(err)
		}
		if i%50 == 0 {
			start := time.Now()
			if code, body := get(t, base+"/livez"); code != http.StatusOK {
				t.Fatalf("/livez during the flood: %d %q", code, body)
			}
			if took := time.Since(start); took > time.Second {
				t.Fatalf("/livez took %s during the flood", took)
			}
		}
	}
	// The kernel completes a dial before the listener accepts it: wait for
	// the listener to catch up with the last ones.
	const want = 500 - 64
	deadline := time.Now().Add(5 * time.Second)
	for {
		evicted := gathered(t, reg, "dot_sidecar_admin_connections_evicted_total")
		if evicted >= want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("connections_evicted_total = %v 5s after 500 half-open connections, want at least %d", evicted, want)
		}
		time.Sleep(5 * time.Millisecond) // polling interval
	}
}

// gathered returns the value of the counter name on reg.
func gathered(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no counter %s", name)
	return 0
}
