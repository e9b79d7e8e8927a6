package upstream

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sethvargo/go-retry"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
)

// member is one upstream of a Group with its health.
//
// An upstream is up until HEALTH_MAX_FAILS transport failures in a row mark
// it down. Queries then skip it, and one background probe per upstream asks
// it its Probe with a backoff capped at ProbeInterval until it answers; any
// answer, to the probe, to a query still in flight on it, or to a trial
// query (Group.trial), puts it back.
type member struct {
	up    Upstream
	name  string
	probe Probe

	down    atomic.Bool  // read lock-free on every query
	fails   atomic.Int32 // consecutive counted failures
	trial   atomic.Bool  // a real query is in flight as a probe (Group.trial)
	partial partialWindow

	lastPartialWarn atomic.Int64 // unix nanos of the last "kept in rotation" warning

	// mu guards the fields below and every change of down, so that the
	// health gauge and the probe always follow the last transition.
	mu         sync.Mutex
	probing    bool      // at most one probe per upstream
	lastErr    error     // the last failure counted
	lastFailAt time.Time // when it was counted
	// partialOut: down for partial failure (partial.go), back only after
	// partialProbes probes answered in a row (probeOK), and not before
	// partialUntil.
	partialOut   bool
	partialUntil time.Time
	probeOK      int

	retries, failovers, hcFailures, partialFailures, markedDown prometheus.Counter
	state                                                       prometheus.Gauge
}

func newMember(u Upstream, m *Metrics, p Probe) *member {
	name := u.Name()
	// Init makes every series of the upstream exist at zero (health_state at
	// 1); a DoT has done so already, another Upstream may not have.
	m.Init(name)
	return &member{
		up:         u,
		name:       name,
		probe:      p,
		retries:    m.Retries.WithLabelValues(name),
		failovers:  m.Failovers.WithLabelValues(name),
		hcFailures: m.HealthCheckFailures.WithLabelValues(name),
		markedDown: m.MarkedDown.WithLabelValues(name),
		state:      m.HealthState.WithLabelValues(name),

		partialFailures: m.PartialFailures.WithLabelValues(name),
	}
}

// succeeded records an answer: the failure streak ends and, should the
// upstream have been marked down meanwhile, it is back (it just answered).
// One taken out for partial failure answers some queries by definition: it
// comes back through its probes, unless every upstream is down, when any
// answer is worth having.
func (g *Group) succeeded(m *member) {
	if m.fails.Load() != 0 { // keep the common case free of shared writes
		m.fails.Store(0)
	}
	if m.down.Load() {
		m.mu.Lock()
		if !m.partialOut || g.healthyCount() == 0 {
			g.markUpLocked(m, "answered a query")
		}
		m.mu.Unlock()
	}
}

// failed counts a transport failure of an attempt begun at started and, at
// MaxFails in a row, marks the upstream down and starts probing it.
//
// A DoT hands the error of one failed dial to every query that was waiting
// for that dial. That is one observation of the upstream, not one per
// query: otherwise a single refused or timed-out dial under load would mark
// an upstream down at once, and with one upstream turn a blip into SERVFAIL
// for everyone. So the same error value, seen by an attempt begun before it
// was counted, is not counted again (a connection that dies before
// answering anything hands one error value to all its queries too).
// Timeouts are each query's own observation and each count, unless the
// connection answered other queries while this one waited (ErrSlowAnswer,
// not counted): an upstream that lets every query time out is down, and
// must leave the rotation quickly; one that answers everything but a slow
// name is up.
func (g *Group) failed(m *member, err error, started time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if sameError(err, m.lastErr) && started.Before(m.lastFailAt) {
		return
	}
	m.lastErr, m.lastFailAt = err, time.Now()
	n := m.fails.Add(1)
	if int(n) < g.opts.MaxFails || m.down.Load() {
		return
	}
	g.log.Warn("upstream marked down", append([]any{"upstream", m.name, "consecutive_failures", n, "err", err}, dialLogAttrs(err)...)...)
	g.markDownLocked(m)
}

// markDownLocked takes m out of rotation and starts probing it. Called with
// m.mu held.
func (g *Group) markDownLocked(m *member) {
	m.down.Store(true)
	m.state.Set(0)
	m.markedDown.Inc()
	if m.probing {
		return
	}
	g.mu.Lock()
	if !g.closed {
		m.probing = true
		g.probes.Add(1)
		go g.probe(m)
	}
	g.mu.Unlock()
}

// sameError reports whether a and b are the very same error value. Only
// pointers are compared: == on an interface holding an uncomparable value
// would panic, and two equal values of a non-pointer type are not
// necessarily one event.
func sameError(a, b error) bool {
	if a == nil || b == nil {
		return false
	}
	return reflect.TypeOf(a).Kind() == reflect.Pointer && a == b
}

// markUpLocked puts m back into rotation. Called with m.mu held.
func (g *Group) markUpLocked(m *member, why string) {
	if !m.down.Load() {
		return
	}
	m.fails.Store(0)
	m.lastErr = nil
	m.partialOut, m.probeOK = false, 0
	m.down.Store(false)
	m.state.Set(1)
	g.log.Info("upstream is back", "upstream", m.name, "because", why)
}

// probe sends m's Probe until the upstream answers, backing off
// exponentially with jitter from ProbeInterval/8 up to ProbeInterval, then
// puts it back. Any answer to the probe counts, whatever its rcode, even one
// that does not parse: the probe asks whether the upstream is reachable,
// not whether the name resolves. Once the
// backoff has reached its cap, an upstream that returns is seen within
// ProbeInterval plus one round trip, and the probe leaves a verified
// connection in its pool for the first query.
func (g *Group) probe(m *member) {
	defer g.probes.Done()
	b := retry.WithCappedDuration(g.opts.ProbeInterval,
		retry.WithJitterPercent(20, retry.NewExponential(max(g.opts.ProbeInterval/8, time.Millisecond))))
	t := time.NewTimer(0)
	defer t.Stop()
	<-t.C
	for {
		wait, _ := b.Next()
		t.Reset(wait)
		select {
		case <-g.ctx.Done():
			g.stopProbing(m)
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(g.ctx, g.opts.ProbeTimeout)
		q, _ := m.probe.query() // NewGroup has checked it encodes
		_, err := m.up.Exchange(ctx, q)
		cancel()
		if errors.Is(err, ErrBadResponse) {
			err = nil // an answer all the same: the upstream is reachable
		}
		if g.ctx.Err() != nil || errors.Is(err, ErrClosed) {
			g.stopProbing(m)
			return
		}
		m.mu.Lock()
		if err == nil && m.down.Load() && m.partialOut {
			// Taken out for partial failure: back after partialProbes
			// answers in a row, and not within its hold.
			if m.probeOK++; m.probeOK < partialProbes || time.Now().Before(m.partialUntil) {
				m.mu.Unlock()
				continue
			}
		}
		if err == nil || !m.down.Load() {
			// Answered, or a query's answer already brought it back.
			if err == nil {
				g.markUpLocked(m, "answered a health probe")
			}
			m.probing = false
			m.mu.Unlock()
			return
		}
		m.probeOK = 0
		m.mu.Unlock()
		m.hcFailures.Inc()
		g.log.Debug("health probe failed", "upstream", m.name, "err", err)
	}
}

func (g *Group) stopProbing(m *member) {
	m.mu.Lock()
	m.probing = false
	m.mu.Unlock()
}

// Probe is the question a health probe asks: Name (presentation form) and
// Type, class IN, with RD set.
type Probe struct {
	Name string
	Type uint16
}

// defaultProbe asks "NS .": a recursive resolver with Internet access has
// the root's NS set primed, and answers it at once.
var defaultProbe = Probe{Name: ".", Type: dnswire.TypeNS}

// query builds the probe query. Its ID is the probe's own: each connection
// puts an ID of its own on the wire.
func (p Probe) query() (dnswire.Msg, error) {
	return dnswire.NewQuery(uint16(rand.Uint32()), p.Name, p.Type)
}

func (p Probe) String() string { return fmt.Sprintf("%s %d", p.Name, p.Type) }
