package admin

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

const (
	namespace = "dot_sidecar"
	subsystem = "admin"
)

type metrics struct {
	upstreamReadinessChanges prometheus.Counter
	connsEvicted             prometheus.Counter
}

// newMetrics registers the admin collectors on reg. The probe gauges are
// computed at scrape time from the same functions the endpoints use, so a
// scrape and a probe can never disagree.
func newMetrics(reg prometheus.Registerer, a *Admin, version string) (*metrics, error) {
	b2f := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	m := &metrics{
		upstreamReadinessChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: subsystem,
			Name: "upstream_readiness_changes_total",
			Help: "Times the damped upstream health behind /readyz changed (only with READY_REQUIRES_UPSTREAM).",
		}),
		connsEvicted: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: subsystem,
			Name: "connections_evicted_total",
			Help: fmt.Sprintf("Admin connections closed to make room for a new one while %d were open: the oldest not being answered.", maxConns),
		}),
	}
	cs := []prometheus.Collector{
		m.upstreamReadinessChanges, m.connsEvicted,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: subsystem,
			Name: "live",
			Help: "1 when /livez answers 200.",
		}, func() float64 { return b2f(a.live() == nil) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: subsystem,
			Name: "started",
			Help: "1 when /startupz answers 200 (DNS listeners bound).",
		}, func() float64 { return b2f(a.started.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: subsystem,
			Name: "ready",
			Help: "1 when /readyz answers 200.",
		}, func() float64 { ok, _ := a.readiness(); return b2f(ok) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace:   namespace,
			Name:        "build_info",
			Help:        "Always 1; the version label says which dot-sidecar build is running.",
			ConstLabels: prometheus.Labels{"version": version},
		}, func() float64 { return 1 }),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("admin: registering metrics: %w", err)
		}
	}
	return m, nil
}

// RegisterRuntimeCollectors adds the Go runtime collector (go_*: goroutines,
// GC, memory) and the process collector (process_*: CPU seconds, resident
// memory, open file descriptors) to reg. main calls it once on the registry
// it hands to New.
func RegisterRuntimeCollectors(reg prometheus.Registerer) error {
	err := errors.Join(
		reg.Register(collectors.NewGoCollector()),
		reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})),
	)
	if err != nil {
		return fmt.Errorf("admin: registering runtime collectors: %w", err)
	}
	return nil
}
