package server

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
)

const (
	namespace = "dot_sidecar"
	subsystem = "server"
)

// initRcodes are the response codes whose series exist from the start. The
// label stays bounded: codes are named by rcodeName, unknown ones "OTHER".
var initRcodes = []int{
	dnswire.RcodeSuccess, dnswire.RcodeFormatError, dnswire.RcodeServerFailure, dnswire.RcodeNameError,
	dnswire.RcodeNotImplemented, dnswire.RcodeRefused, dnswire.RcodeBadVers,
}

const maxRcode = dnswire.RcodeBadCookie // highest code with a name of its own

type metrics struct {
	queries      *prometheus.CounterVec
	byRcode      [numProtos][maxRcode + 1]prometheus.Counter // resolved once; nil: look up
	duration     [numProtos]prometheus.Observer
	truncated    [numProtos]prometheus.Counter
	refused      prometheus.Counter
	malformed    prometheus.Counter
	overloaded   prometheus.Counter
	unreadClosed prometheus.Counter
}

// newMetrics builds the collectors on reg. The gauges read s's counters at
// scrape time, which keeps them off the per-query path.
func newMetrics(reg prometheus.Registerer, s *Server) (*metrics, error) {
	m := &metrics{
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "queries_total",
			Help: "Queries answered, by transport and response code of the answer.",
		}, []string{"proto", "rcode"}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "tcp_connections_refused_total",
			Help: "TCP connections closed at once because TCP_MAX_CONNS were open.",
		}),
		malformed: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "malformed_queries_total",
			Help: "Messages that were not well-formed queries (answered FORMERR, or dropped when no header could be read or QR was set).",
		}),
		overloaded: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "overloaded_queries_total",
			Help: "Queries answered SERVFAIL at once because the limit of queries in flight was reached.",
		}),
		unreadClosed: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "tcp_connections_closed_unread_total",
			Help: "TCP client connections closed because the client left TCP_MAX_UNREAD bytes of answers unread and more came.",
		}),
	}
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Subsystem: subsystem, Name: "request_duration_seconds",
		Help: "Time from reading a query to having its answer ready, by transport.",
		// 0.25 ms to 8 s: cached upstream answers to the query deadline.
		Buckets: prometheus.ExponentialBuckets(0.00025, 2, 16),
	}, []string{"proto"})
	truncated := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: subsystem, Name: "truncated_total",
		Help: "Answers truncated (TC set) to fit the client's UDP payload size.",
	}, []string{"proto"})
	for p := range numProtos {
		m.duration[p] = duration.WithLabelValues(p.String())
		m.truncated[p] = truncated.WithLabelValues(p.String())
		for _, rc := range initRcodes {
			m.byRcode[p][rc] = m.queries.WithLabelValues(p.String(), rcodeName(rc))
		}
	}
	collectors := []prometheus.Collector{
		m.queries, duration, truncated, m.refused, m.malformed, m.overloaded, m.unreadClosed,
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "jostled_queries_total",
			Help: "Queries in flight for 200ms or more given up on (SERVFAIL) to make room for new ones at the limit of queries in flight.",
		}, func() float64 { return float64(s.adm.jostled.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "tcp_connections_open",
			Help: "TCP client connections open.",
		}, func() float64 { return float64(s.tcpOpen.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "inflight_queries",
			Help: "Queries read and not yet answered.",
		}, func() float64 { return float64(s.adm.inflight.Load()) }),
	}
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

// done accounts for one message handled over p since start.
func (m *metrics) done(p proto, start time.Time, r *result) {
	if r.malformed {
		m.malformed.Inc()
	}
	if r.reply == nil {
		return
	}
	if r.rcode >= 0 && r.rcode <= maxRcode && m.byRcode[p][r.rcode] != nil {
		m.byRcode[p][r.rcode].Inc()
	} else {
		m.queries.WithLabelValues(p.String(), rcodeName(r.rcode)).Inc()
	}
	m.duration[p].Observe(time.Since(start).Seconds())
	if r.truncated {
		m.truncated[p].Inc()
	}
}

func rcodeName(rc int) string {
	if n, ok := dnswire.RcodeName(rc); ok && rc <= maxRcode {
		return n
	}
	return "OTHER"
}
