// Package admin is the operators' HTTP listener (ADMIN_ADDRESS, default
// ":9253") and the client of the `dot-sidecar wait` command.
//
// The listener answers four paths, each with one meaning so that no probe can
// turn an upstream outage into restarts or stalled rollouts:
//
//   - /livez: the process's own machinery works (Options.Live). Never tied to
//     upstream health: a failing liveness probe restarts the container, and
//     every pod shares the same upstreams.
//   - /startupz: 200 once the DNS listeners are bound (SetStarted).
//   - /readyz: 200 while serving; 503 before SetStarted, while Live fails and
//     from SetShuttingDown on. Upstream health counts only when
//     Options.UpstreamHealthy is set (READY_REQUIRES_UPSTREAM), and then
//     damped so that it does not flap.
//   - /metrics: Prometheus exposition of the injected Gatherer.
//
// Wait is the other side: it polls /readyz until the sidecar is ready, for
// clusters without native sidecar containers (a postStart hook).
package admin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Defaults applied by New to zero Options fields.
const (
	DefaultAddr                  = ":9253"
	DefaultReadyFailThreshold    = 3
	DefaultReadySuccessThreshold = 1
	DefaultCheckInterval         = time.Second
)

// Options configures an Admin. Logger, Registerer and Gatherer are required.
type Options struct {
	// Addr is the TCP address to listen on, ADMIN_ADDRESS form (":9253",
	// "127.0.0.1:9253", "[::]:9253"). Empty means DefaultAddr.
	Addr string

	// Registerer receives the admin package's own collectors and promhttp's
	// scrape counters. Gatherer is what /metrics serves. Both are normally the
	// same *prometheus.Registry of our own, never the global default one.
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer

	// Logger is never nil.
	Logger *slog.Logger

	// Version is exported as dot_sidecar_build_info{version}. Empty means
	// "unknown".
	Version string

	// Live reports whether the process's own machinery works (for example the
	// DNS servers' accept and read loops are running). nil means always live.
	// It is called on every /livez and /readyz request and every scrape, so it
	// must be quick; a Live that blocks makes the kubelet's probe time out,
	// which counts as a failure, which is what a deadlock deserves. It must
	// never look at upstream health.
	Live func() error

	// UpstreamHealthy reports whether at least one upstream can answer. Set it
	// only when READY_REQUIRES_UPSTREAM is on; nil keeps upstream health out
	// of readiness entirely.
	UpstreamHealthy func() bool

	// ReadyFailThreshold is how many consecutive unhealthy evaluations of
	// UpstreamHealthy make /readyz 503; ReadySuccessThreshold how many
	// consecutive healthy ones make it 200 again. CheckInterval is the time
	// between evaluations. Zero means the Default* value.
	ReadyFailThreshold    int
	ReadySuccessThreshold int
	CheckInterval         time.Duration
}

// Admin is the operators' HTTP listener. Its methods are safe for concurrent
// use.
type Admin struct {
	opts    Options
	log     *slog.Logger
	srv     *http.Server
	metrics *metrics

	started      atomic.Bool
	shuttingDown atomic.Bool

	// mu protects damper, the damped upstream state.
	mu     sync.Mutex
	damper damper

	// lifeMu serialises Start and Shutdown and protects ln, stop.
	lifeMu  sync.Mutex
	ln      net.Listener
	stop    chan struct{}
	stopped bool
	shutErr error
	wg      sync.WaitGroup
	boundTo atomic.Pointer[string]
}

// New checks opts, registers the admin metrics on opts.Registerer and returns
// an Admin that is not listening yet (see Start).
func New(opts Options) (*Admin, error) {
	switch {
	case opts.Logger == nil:
		return nil, errors.New("admin: Logger is nil")
	case opts.Registerer == nil:
		return nil, errors.New("admin: Registerer is nil")
	case opts.Gatherer == nil:
		return nil, errors.New("admin: Gatherer is nil")
	case opts.ReadyFailThreshold < 0, opts.ReadySuccessThreshold < 0:
		return nil, fmt.Errorf("admin: readiness thresholds must not be negative (fail %d, success %d)",
			opts.ReadyFailThreshold, opts.ReadySuccessThreshold)
	case opts.CheckInterval < 0:
		return nil, fmt.Errorf("admin: negative check interval %s", opts.CheckInterval)
	}
	if opts.Addr == "" {
		opts.Addr = DefaultAddr
	}
	if opts.ReadyFailThreshold == 0 {
		opts.ReadyFailThreshold = DefaultReadyFailThreshold
	}
	if opts.ReadySuccessThreshold == 0 {
		opts.ReadySuccessThreshold = DefaultReadySuccessThreshold
	}
	if opts.CheckInterval == 0 {
		opts.CheckInterval = DefaultCheckInterval
	}
	if opts.Version == "" {
		opts.Version = "unknown"
	}

	a := &Admin{
		opts:   opts,
		log:    opts.Logger.With("component", "admin"),
		damper: damper{failAfter: opts.ReadyFailThreshold, recoverAfter: opts.ReadySuccessThreshold},
	}
	m, err := newMetrics(opts.Registerer, a, opts.Version)
	if err != nil {
		return nil, err
	}
	a.metrics = m
	a.srv = &http.Server{
		Handler:     markBusy(a.routes()),
		ConnContext: connContext,
		// Probes and scrapes are small and sent at once; bound everything
		// so a stuck client cannot pin a goroutine for long (conns.go).
		ReadHeaderTimeout: readHeaderTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ReadTimeout:       5 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       90 * time.Second,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelDebug),
	}
	return a, nil
}

// Start binds Addr and serves in the background. It returns once the socket
// is bound, or the bind error. With UpstreamHealthy set, it evaluates upstream
// health once before returning (that first result is taken as is, without
// damping) and then every CheckInterval.
func (a *Admin) Start() error {
	a.lifeMu.Lock()
	defer a.lifeMu.Unlock()
	if a.ln != nil || a.stopped {
		return ErrStarted
	}
	ln, err := net.Listen("tcp", a.opts.Addr)
	if err != nil {
		return fmt.Errorf("admin: listening on %s: %w", a.opts.Addr, err)
	}
	a.ln = ln
	addr := ln.Addr().String()
	a.boundTo.Store(&addr)
	a.stop = make(chan struct{})

	if a.opts.UpstreamHealthy != nil {
		a.evaluate()
		a.wg.Add(1)
		go a.evaluateLoop(a.stop, a.opts.CheckInterval)
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		limited := newLimitListener(ln, maxConns, a.metrics.connsEvicted.Inc)
		if err := a.srv.Serve(limited); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("admin listener stopped", "addr", addr, "err", err)
		}
	}()
	a.log.Info("admin listener started", "addr", addr,
		"ready_requires_upstream", a.opts.UpstreamHealthy != nil)
	return nil
}

// SetStarted records that the DNS listeners are bound: /startupz turns 200,
// and /readyz too unless something else holds it back.
func (a *Admin) SetStarted() {
	if !a.started.Swap(true) {
		a.log.Info("DNS listeners bound: startupz 200")
	}
}

// SetShuttingDown turns /readyz 503 at once and for good: the first step of the
// lame-duck shutdown, so that Services stop sending new clients here while the
// listeners still answer. /livez and /startupz are unaffected, so the kubelet
// does not restart a container that is merely draining.
//
// Before SetStarted it logs nothing: /readyz was 503 already, and a sidecar
// that failed to start was never serving, so a line saying it is shutting
// down would mislead.
func (a *Admin) SetShuttingDown() {
	if !a.shuttingDown.Swap(true) && a.started.Load() {
		a.log.Info("shutting down: readyz 503")
	}
}

// Shutdown marks the Admin shutting down, stops the evaluation loop and shuts
// the HTTP server down gracefully within ctx. Call it last in the shutdown
// sequence so that /livez keeps answering during the lame-duck period. Calls
// after the first return the first one's result.
func (a *Admin) Shutdown(ctx context.Context) error {
	a.SetShuttingDown()
	a.lifeMu.Lock()
	defer a.lifeMu.Unlock()
	if a.stopped {
		return a.shutErr
	}
	a.stopped = true
	if a.ln == nil {
		return nil
	}
	close(a.stop)
	err := a.srv.Shutdown(ctx)
	if err != nil {
		// Out of time: cut the remaining connections rather than leak them.
		_ = a.srv.Close()
		err = fmt.Errorf("admin: shutting down: %w", err)
	}
	a.wg.Wait()
	a.shutErr = err
	return err
}

// Addr returns the bound address ("127.0.0.1:9253"), or "" before Start. With
// port 0 in Options.Addr it tells which port the kernel chose.
func (a *Admin) Addr() string {
	if p := a.boundTo.Load(); p != nil {
		return *p
	}
	return ""
}
