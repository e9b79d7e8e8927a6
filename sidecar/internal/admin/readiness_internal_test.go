package admin

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestDamper(t *testing.T) {
	type step struct {
		ok          bool
		wantHealthy bool
		wantChanged bool
	}
	tests := []struct {
		name        string
		fail, recov int
		steps       []step
	}{
		{"first observation healthy is taken as is", 3, 2, []step{{true, true, true}}},
		{"first observation unhealthy is taken as is", 3, 2, []step{{false, false, true}}},
		{"failures below threshold keep it healthy", 3, 2, []step{
			{true, true, true}, {false, true, false}, {false, true, false}, {true, true, false},
			{false, true, false}, {false, true, false}, {true, true, false},
		}},
		{"threshold consecutive failures flip it", 3, 2, []step{
			{true, true, true}, {false, true, false}, {false, true, false}, {false, false, true},
			{false, false, false},
		}},
		{"recovery needs consecutive successes", 3, 2, []step{
			{false, false, true}, {true, false, false}, {false, false, false}, {true, false, false},
			{true, true, true}, {true, true, false},
		}},
		{"thresholds of one follow every observation", 1, 1, []step{
			{true, true, true}, {false, false, true}, {true, true, true}, {false, false, true},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := damper{failAfter: tt.fail, recoverAfter: tt.recov}
			for i, s := range tt.steps {
				changed := d.observe(s.ok)
				if d.healthy != s.wantHealthy || changed != s.wantChanged {
					t.Fatalf("step %d observe(%v): healthy=%v changed=%v, want %v %v",
						i, s.ok, d.healthy, changed, s.wantHealthy, s.wantChanged)
				}
			}
		})
	}
}

// TestReadyzDamping drives the evaluations by hand (CheckInterval is an hour,
// so the loop never ticks) and checks /readyz over real HTTP after each one.
func TestReadyzDamping(t *testing.T) {
	var healthy atomic.Bool
	healthy.Store(true)
	reg := prometheus.NewRegistry()
	a, err := New(Options{
		Addr:                  "127.0.0.1:0",
		Registerer:            reg,
		Gatherer:              reg,
		Logger:                slog.New(slog.NewTextHandler(t.Output(), nil)),
		UpstreamHealthy:       healthy.Load,
		ReadyFailThreshold:    3,
		ReadySuccessThreshold: 2,
		CheckInterval:         time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(); err != nil { // evaluates once: healthy
		t.Fatal(err)
	}
	defer a.Shutdown(context.Background())
	a.SetStarted()
	url := "http://" + a.Addr() + "/readyz"
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

	steps := []struct {
		upstream bool
		code     int
		body     string
	}{
		{false, 200, "ok"},
		{false, 200, "ok"},
		{true, 200, "ok"}, // the streak is broken
		{false, 200, "ok"},
		{false, 200, "ok"},
		{false, 503, "no healthy upstream (3 consecutive failed checks)"},
		{false, 503, "no healthy upstream (4 consecutive failed checks)"},
		{true, 503, "recovering (1 of 2 consecutive healthy checks)"},
		{false, 503, "no healthy upstream (1 consecutive failed checks)"},
		{true, 503, "recovering (1 of 2"},
		{true, 200, "ok"},
		{false, 200, "ok"},
	}
	for i, s := range steps {
		healthy.Store(s.upstream)
		a.evaluate()
		resp, err := client.Get(url)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != s.code || !strings.Contains(string(b), s.body) {
			t.Fatalf("step %d (upstream healthy=%v): /readyz = %d %q, want %d containing %q",
				i, s.upstream, resp.StatusCode, b, s.code, s.body)
		}
	}
	if got := testutil.ToFloat64(a.metrics.upstreamReadinessChanges); got != 3 { // initial + down + up
		t.Errorf("upstream_readiness_changes_total = %v, want 3", got)
	}
	a.SetShuttingDown()
	healthy.Store(true)
	a.evaluate()
	if resp, err := client.Get(url); err != nil || resp.StatusCode != 503 {
		t.Fatalf("/readyz while shutting down with healthy upstreams = %v, %v; want 503", resp, err)
	} else {
		resp.Body.Close()
	}
}

// With the upstreams down at start, the pod is not advertised even briefly.
func TestReadyzUnhealthyAtStart(t *testing.T) {
	reg := prometheus.NewRegistry()
	a, err := New(Options{
		Addr: "127.0.0.1:0", Registerer: reg, Gatherer: reg,
		Logger:          slog.New(slog.DiscardHandler),
		UpstreamHealthy: func() bool { return false },
		CheckInterval:   time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	defer a.Shutdown(context.Background())
	a.SetStarted()
	if ok, reason := a.readiness(); ok || !strings.Contains(reason, "no healthy upstream") {
		t.Fatalf("readiness = %v %q, want unready for lack of upstreams", ok, reason)
	}
}
