package admin

import (
	"fmt"
	"time"
)

// damper turns raw upstream-health observations into a readiness state that
// changes only after failAfter consecutive unhealthy or recoverAfter
// consecutive healthy observations, so one slow health check does not pull
// the pod out of its Services and put it back a second later.
type damper struct {
	failAfter, recoverAfter int

	known   bool // false until the first observation
	healthy bool // the damped state
	fails   int  // consecutive unhealthy observations, 0 after a healthy one
	oks     int  // consecutive healthy observations, 0 after an unhealthy one
}

// observe records one raw observation and reports whether the damped state
// changed. The first observation sets the state directly: there is nothing to
// damp yet, and an optimistic guess would advertise a pod that cannot resolve.
func (d *damper) observe(ok bool) (changed bool) {
	if ok {
		d.oks++
		d.fails = 0
	} else {
		d.fails++
		d.oks = 0
	}
	switch {
	case !d.known:
		d.known, d.healthy = true, ok
		return true
	case d.healthy && d.fails >= d.failAfter:
		d.healthy = false
		return true
	case !d.healthy && d.oks >= d.recoverAfter:
		d.healthy = true
		return true
	}
	return false
}

// reason explains an unhealthy damped state for the /readyz body.
func (d *damper) reason() string {
	switch {
	case !d.known:
		return "upstream health not evaluated yet"
	case d.oks > 0:
		return fmt.Sprintf("no healthy upstream; recovering (%d of %d consecutive healthy checks)", d.oks, d.recoverAfter)
	default:
		return fmt.Sprintf("no healthy upstream (%d consecutive failed checks)", d.fails)
	}
}

// evaluate asks UpstreamHealthy once and feeds the damper. Start calls it
// once, then evaluateLoop every CheckInterval; tests call it directly to step
// through the damping without a clock.
func (a *Admin) evaluate() {
	ok := a.opts.UpstreamHealthy()
	a.mu.Lock()
	changed := a.damper.observe(ok)
	healthy, reason := a.damper.healthy, a.damper.reason()
	a.mu.Unlock()
	if !changed {
		return
	}
	a.metrics.upstreamReadinessChanges.Inc()
	if healthy {
		a.log.Info("upstreams healthy: readiness no longer held back by upstreams")
	} else {
		a.log.Warn("upstreams unhealthy: readyz 503 (READY_REQUIRES_UPSTREAM)", "reason", reason)
	}
}

func (a *Admin) evaluateLoop(stop <-chan struct{}, every time.Duration) {
	defer a.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			a.evaluate()
		}
	}
}

// readiness is the single decision behind /readyz and dot_sidecar_admin_ready.
func (a *Admin) readiness() (ready bool, reason string) {
	switch {
	case a.shuttingDown.Load():
		return false, "shutting down"
	case !a.started.Load():
		return false, "starting: DNS listeners not bound yet"
	}
	if err := a.live(); err != nil {
		return false, "not serving: " + err.Error()
	}
	if a.opts.UpstreamHealthy != nil {
		a.mu.Lock()
		defer a.mu.Unlock()
		if !a.damper.known || !a.damper.healthy {
			return false, a.damper.reason()
		}
	}
	return true, "ok"
}

func (a *Admin) live() error {
	if a.opts.Live == nil {
		return nil
	}
	return a.opts.Live()
}
