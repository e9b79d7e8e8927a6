package upstream

import (
	"strconv"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
)

// Metrics is one route's view of this package's collectors. The collectors
// are registered once (NewMetrics) and shared by every route and upstream;
// each series carries the route's name as its `route` label (ForRoute) and
// the upstream's Name() as its `upstream` label. A route's label is fixed in
// its view, so an upstream's code names only itself, as before routes.
type Metrics struct {
	RequestDuration     prometheus.ObserverVec // {upstream, rcode}: answered queries only
	ConnectionsOpen     *prometheus.GaugeVec   // {upstream}
	ConnectionsOpened   *prometheus.CounterVec // {upstream}: connections established (TLS: handshake completed and verified)
	TLSHandshakeFailure *prometheus.CounterVec // {upstream}: every failed handshake, pins included
	PinFailures         *prometheus.CounterVec // {upstream}
	MismatchedResponses *prometheus.CounterVec // {upstream}: dropped, no query in flight had that ID and question
	RequestsResent      *prometheus.CounterVec // {upstream}: in flight on a connection that died, sent again
	Retries             *prometheus.CounterVec // {upstream}: for the Group
	Failovers           *prometheus.CounterVec // {upstream}: for the Group (the upstream failed over from)
	HealthState         *prometheus.GaugeVec   // {upstream}: 1 up, 0 down; for the Group
	HealthCheckFailures *prometheus.CounterVec // {upstream}: for the Group
	MarkedDown          *prometheus.CounterVec // {upstream}: for the Group
	HTTPErrors          *prometheus.CounterVec // {upstream, reason}: DNS-over-HTTPS upstreams only
	KeepaliveTimeout    *prometheus.GaugeVec   // {upstream}: DoT upstreams' announced edns-tcp-keepalive
	PartialFailures     *prometheus.CounterVec // {upstream}: for the Group

	route string
	all   *collectors // every route's, as registered
}

// collectors are the registered vectors, labelled {route, upstream, ...}.
type collectors struct {
	duration                                                                *prometheus.HistogramVec
	open, health, keepalive                                                 *prometheus.GaugeVec
	opened, hsFailures, pinFailures, mismatched, resent, retries, failovers *prometheus.CounterVec
	hcFailures, markedDown, httpErrors, partial                             *prometheus.CounterVec
}

// DefaultRoute is the `route` label of UPSTREAMS, the upstreams of every
// name no route matches.
const DefaultRoute = "default"

const (
	namespace = "dot_sidecar"
	subsystem = "upstream"
)

// initRcodes are the response codes whose duration series exist from the
// start; others appear when first seen (the header holds only 16 values, so
// the label stays bounded).
var initRcodes = []int{
	dnswire.RcodeSuccess, dnswire.RcodeFormatError, dnswire.RcodeServerFailure,
	dnswire.RcodeNameError, dnswire.RcodeNotImplemented, dnswire.RcodeRefused,
}

// NewMetrics builds the collectors, registers them on reg, and returns the
// view of DefaultRoute. It panics if they are registered already (a wiring
// bug).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	counter := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: subsystem, Name: name, Help: help,
		}, []string{"route", "upstream"})
	}
	gauge := func(name, help string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: subsystem, Name: name, Help: help,
		}, []string{"route", "upstream"})
	}
	c := &collectors{
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "request_duration_seconds",
			Help: "Time from sending a query upstream to its answer, by response code (resends included).",
			// 0.25 ms to 8 s: loopback resolvers to slow recursion.
			Buckets: prometheus.ExponentialBuckets(0.00025, 2, 16),
		}, []string{"route", "upstream", "rcode"}),
		open:        gauge("connections_open", "Connections currently open to the upstream (TLS, or TCP for plaintext)."),
		opened:      counter("connections_opened_total", "Connections established (for TLS: handshake completed and verified)."),
		hsFailures:  counter("tls_handshake_failures_total", "TLS handshakes that failed or were rejected, pin mismatches included."),
		pinFailures: counter("pin_failures_total", "Handshakes rejected because no pinned key was in the verified chain."),
		mismatched:  counter("mismatched_responses_total", "Responses dropped because no query in flight had their ID and question."),
		resent:      counter("requests_resent_total", "Queries sent again because their connection died while they were in flight."),
		retries:     counter("retries_total", "Queries retried after a failure."),
		failovers:   counter("failovers_total", "Queries that moved from this upstream to another."),
		health:      gauge("health_state", "1 when the upstream is considered up, 0 when down."),
		hcFailures:  counter("health_check_failures_total", "Health probes that failed."),
		markedDown: counter("marked_down_total", "Times the upstream was taken out of rotation: failures in a row, "+
			"or partial failure."),
		keepalive: gauge("keepalive_timeout_seconds", "Idle timeout the DNS-over-TLS upstream last announced "+
			"in edns-tcp-keepalive (RFC 7828); 0 until it announces one."),
		partial: counter("partial_failures_total", "Times the upstream was taken out of rotation for partial "+
			"failure: more than half of a window's distinct names timed out while it answered others."),
		httpErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "http_errors_total",
			Help: "DNS-over-HTTPS responses without a usable answer, by reason: status (not 200), content_type, " +
				"body (truncated, oversized or not a DNS message), question (an answer to another query), stream_reset.",
		}, []string{"route", "upstream", "reason"}),
	}
	reg.MustRegister(c.duration, c.open, c.opened, c.hsFailures, c.pinFailures, c.mismatched, c.resent,
		c.retries, c.failovers, c.health, c.hcFailures, c.markedDown, c.httpErrors, c.keepalive, c.partial)
	return c.view(DefaultRoute)
}

// ForRoute returns the view of the named route over the same collectors.
func (m *Metrics) ForRoute(route string) *Metrics { return m.all.view(route) }

// Route is the `route` label of the view.
func (m *Metrics) Route() string { return m.route }

func (c *collectors) view(route string) *Metrics {
	l := prometheus.Labels{"route": route}
	return &Metrics{
		RequestDuration:     c.duration.MustCurryWith(l),
		ConnectionsOpen:     c.open.MustCurryWith(l),
		ConnectionsOpened:   c.opened.MustCurryWith(l),
		TLSHandshakeFailure: c.hsFailures.MustCurryWith(l),
		PinFailures:         c.pinFailures.MustCurryWith(l),
		MismatchedResponses: c.mismatched.MustCurryWith(l),
		RequestsResent:      c.resent.MustCurryWith(l),
		Retries:             c.retries.MustCurryWith(l),
		Failovers:           c.failovers.MustCurryWith(l),
		HealthState:         c.health.MustCurryWith(l),
		HealthCheckFailures: c.hcFailures.MustCurryWith(l),
		MarkedDown:          c.markedDown.MustCurryWith(l),
		HTTPErrors:          c.httpErrors.MustCurryWith(l),
		KeepaliveTimeout:    c.keepalive.MustCurryWith(l),
		PartialFailures:     c.partial.MustCurryWith(l),
		route:               route,
		all:                 c,
	}
}

// Init creates every series of upstream at zero, so dashboards and rate()
// see the upstream from the start rather than after its first event.
// HealthState starts at 1: an upstream is up until the Group says otherwise.
func (m *Metrics) Init(upstream string) {
	for _, rc := range initRcodes {
		m.RequestDuration.WithLabelValues(upstream, rcodeLabel(rc))
	}
	m.ConnectionsOpen.WithLabelValues(upstream)
	for _, c := range []*prometheus.CounterVec{m.ConnectionsOpened, m.TLSHandshakeFailure, m.PinFailures,
		m.MismatchedResponses, m.RequestsResent, m.Retries, m.Failovers, m.HealthCheckFailures, m.MarkedDown,
		m.PartialFailures} {
		c.WithLabelValues(upstream)
	}
	m.HealthState.WithLabelValues(upstream).Set(1)
}

// HTTP error reasons: the `reason` label of HTTPErrors.
const (
	httpStatus      = "status"
	httpContentType = "content_type"
	httpBody        = "body"
	httpQuestion    = "question"
	httpStreamReset = "stream_reset"
)

var httpReasons = []string{httpStatus, httpContentType, httpBody, httpQuestion, httpStreamReset}

func rcodeLabel(rc int) string {
	if s, ok := dnswire.RcodeName(rc); ok {
		return s
	}
	return strconv.Itoa(rc)
}

// upstreamMetrics is one upstream's view of Metrics with the label lookups
// done once, so the query path never hashes label values.
type upstreamMetrics struct {
	m          *Metrics
	name       string
	open       prometheus.Gauge
	opened     prometheus.Counter
	hsFailures prometheus.Counter
	pinFails   prometheus.Counter
	mismatched prometheus.Counter
	resent     prometheus.Counter
	keepalive  prometheus.Gauge // a DoT upstream's only (initKeepalive)
	// httpErrs are HTTPErrors by reason, for a DoH upstream only (initHTTP).
	httpErrs map[string]prometheus.Counter

	// duration holds one observer per header rcode, filled on first use so
	// that only initRcodes exist before they are seen.
	duration [16]atomic.Pointer[prometheus.Observer]
}

func newUpstreamMetrics(m *Metrics, name string) *upstreamMetrics {
	m.Init(name)
	um := &upstreamMetrics{
		m:          m,
		name:       name,
		open:       m.ConnectionsOpen.WithLabelValues(name),
		opened:     m.ConnectionsOpened.WithLabelValues(name),
		hsFailures: m.TLSHandshakeFailure.WithLabelValues(name),
		pinFails:   m.PinFailures.WithLabelValues(name),
		mismatched: m.MismatchedResponses.WithLabelValues(name),
		resent:     m.RequestsResent.WithLabelValues(name),
	}
	for _, rc := range initRcodes {
		o := m.RequestDuration.WithLabelValues(name, rcodeLabel(rc))
		um.duration[rc].Store(&o)
	}
	return um
}

// InitHTTP creates the HTTPErrors series of upstream, a DNS-over-HTTPS one,
// at zero, one per reason; other upstreams have none.
func (m *Metrics) InitHTTP(upstream string) {
	for _, r := range httpReasons {
		m.HTTPErrors.WithLabelValues(upstream, r)
	}
}

// initHTTP creates the upstream's HTTPErrors series (InitHTTP) and keeps
// them for the query path.
func (um *upstreamMetrics) initHTTP() {
	um.m.InitHTTP(um.name)
	um.httpErrs = make(map[string]prometheus.Counter, len(httpReasons))
	for _, r := range httpReasons {
		um.httpErrs[r] = um.m.HTTPErrors.WithLabelValues(um.name, r)
	}
}

// InitKeepalive creates the KeepaliveTimeout series of upstream, a
// DNS-over-TLS one, at 0: the others offer no edns-tcp-keepalive and have
// none.
func (m *Metrics) InitKeepalive(upstream string) { m.KeepaliveTimeout.WithLabelValues(upstream) }

// initKeepalive creates the upstream's KeepaliveTimeout series
// (InitKeepalive) and keeps it for the reader.
func (um *upstreamMetrics) initKeepalive() {
	um.m.InitKeepalive(um.name)
	um.keepalive = um.m.KeepaliveTimeout.WithLabelValues(um.name)
}

func (um *upstreamMetrics) observe(rc int, seconds float64) {
	p := um.duration[rc&0x0f].Load()
	if p == nil {
		o := um.m.RequestDuration.WithLabelValues(um.name, rcodeLabel(rc&0x0f))
		um.duration[rc&0x0f].Store(&o)
		p = &o
	}
	(*p).Observe(seconds)
}
