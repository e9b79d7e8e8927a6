package upstream

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/sethvargo/go-retry"
)

// member is one upstream of a Group with its health.
type member struct {
	up      Upstream
	fails   atomic.Int32 // consecutive transport failures
	down    atomic.Bool
	probing atomic.Bool // at most one probe per upstream
}

// failed counts a transport failure and, at MaxFails in a row, takes the
// upstream out of rotation and starts probing it.
func (g *Group) failed(m *member, err error) {
	if int(m.fails.Add(1)) < g.opts.MaxFails || m.down.Swap(true) {
		return
	}
	name := m.up.Name()
	g.opts.Metrics.HealthState.WithLabelValues(name).Set(0)
	g.opts.Logger.Warn("upstream marked down", "upstream", name, "consecutive_failures", m.fails.Load(), "err", err)
	if m.probing.Swap(true) {
		return
	}
	g.probes.Add(1)
	go g.probe(m)
}

// probe sends "NS ." until the upstream answers, backing off up to
// ProbeInterval, then puts it back. Any well-formed answer counts: the probe
// asks whether the upstream is reachable, not whether the root zone resolves.
func (g *Group) probe(m *member) {
	defer g.probes.Done()
	defer m.probing.Store(false)
	name := m.up.Name()
	b := retry.WithCappedDuration(g.opts.ProbeInterval,
		retry.WithJitterPercent(20, retry.NewExponential(g.opts.ProbeInterval/8)))
	for {
		wait, _ := b.Next()
		t := time.NewTimer(wait)
		select {
		case <-g.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(g.ctx, g.opts.ProbeTimeout)
		_, err := m.up.Exchange(ctx, probeQuery())
		cancel()
		if g.ctx.Err() != nil {
			return
		}
		if err == nil {
			m.fails.Store(0)
			m.down.Store(false)
			g.opts.Metrics.HealthState.WithLabelValues(name).Set(1)
			g.opts.Logger.Info("upstream is back", "upstream", name)
			return
		}
		g.opts.Metrics.HealthCheckFailures.WithLabelValues(name).Inc()
		g.opts.Logger.Debug("health probe failed", "upstream", name, "err", err)
	}
}

func probeQuery() []byte {
	m := new(dns.Msg)
	m.SetQuestion(".", dns.TypeNS)
	m.Id = dns.Id()
	b, err := m.Pack()
	if err != nil {
		panic(err) // a fixed, valid message always packs
	}
	return b
}
