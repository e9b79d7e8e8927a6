package cache

import "github.com/prometheus/client_golang/prometheus"

// The metrics are named as CoreDNS's cache plugin names its own
// (coredns_cache_*), so that a dashboard built for one ports to the other by
// changing the prefix.
const (
	namespace = "dot_sidecar"
	subsystem = "cache"
)

// kind is what an entry holds, the `type` label: CoreDNS's two caches.
type kind uint8

const (
	success kind = iota // a positive answer
	denial              // NXDOMAIN, NODATA, or an upstream's SERVFAIL
	numKinds
)

func (k kind) String() string {
	if k == denial {
		return "denial"
	}
	return "success"
}

type metrics struct {
	requests  prometheus.Counter
	hits      [numKinds]prometheus.Counter
	entries   [numKinds]prometheus.Gauge
	evictions [numKinds]prometheus.Counter
	prefetch  prometheus.Counter
	stale     prometheus.Counter
	drops     prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	opts := func(name, help string) prometheus.Opts {
		return prometheus.Opts{Namespace: namespace, Subsystem: subsystem, Name: name, Help: help}
	}
	m := &metrics{
		requests: prometheus.NewCounter(prometheus.CounterOpts(opts("requests_total",
			"Queries the cache looked up (hits, stale answers and misses)."))),
		prefetch: prometheus.NewCounter(prometheus.CounterOpts(opts("prefetch_total",
			"Entries refreshed in the background before they expired, because they were asked for often."))),
		stale: prometheus.NewCounter(prometheus.CounterOpts(opts("served_stale_total",
			"Expired answers given, with EDE 3, because the upstreams failed or were slow (RFC 8767)."))),
		drops: prometheus.NewCounter(prometheus.CounterOpts(opts("drops_total",
			"Answers not kept because they were malformed or did not answer the query's question."))),
	}
	entries := prometheus.NewGaugeVec(prometheus.GaugeOpts(opts("entries",
		"Answers in the cache, by type: success, or denial (NXDOMAIN, NODATA and SERVFAIL).")), []string{"type"})
	hits := prometheus.NewCounterVec(prometheus.CounterOpts(opts("hits_total",
		"Queries answered from a fresh entry, by type.")), []string{"type"})
	evictions := prometheus.NewCounterVec(prometheus.CounterOpts(opts("evictions_total",
		"Entries removed before they expired to keep the cache within CACHE_SIZE, by type.")), []string{"type"})
	for k := range numKinds {
		m.entries[k] = entries.WithLabelValues(k.String())
		m.hits[k] = hits.WithLabelValues(k.String())
		m.evictions[k] = evictions.WithLabelValues(k.String())
	}
	collectors := []prometheus.Collector{m.requests, hits, entries, evictions, m.prefetch, m.stale, m.drops}
	for i, c := range collectors {
		if err := reg.Register(c); err != nil {
			for _, done := range collectors[:i] {
				reg.Unregister(done)
			}
			return nil, err
		}
	}
	return m, nil
}
