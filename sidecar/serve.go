package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/admin"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/server"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/upstream"
)

// runServe is the sidecar proper: load settings, build the routes and their
// upstream groups, bind the listeners, serve until SIGTERM, then shut down
// in order.
func runServe(ctx context.Context, args, environ []string, stdout, stderr io.Writer) int {
	cfg, err := config.Load(args, environ)
	if errors.Is(err, config.ErrHelp) {
		usage(stdout)
		return exitOK
	}
	if err != nil {
		return fail(config.FallbackLogger(args, environ, stderr), exitConfig, "cannot start", err)
	}
	log, logCloser, err := cfg.NewLogger(stderr)
	if err != nil {
		return fail(config.FallbackLogger(args, environ, stderr), exitConfig, "cannot start", err)
	}
	defer logCloser.Close()
	// stop reports, on the log (and on stderr with LOG_FILE), why the
	// sidecar stops before serving.
	stop := func(code int, err error) int {
		return fail(cfg.ReportLogger(log, stderr), code, "cannot start", err)
	}
	trust, err := loadTrust(cfg)
	if err != nil {
		return stop(exitConfig, err)
	}
	setProcs(environ)
	for _, w := range cfg.Warnings() {
		log.Warn(w)
	}

	reg := prometheus.NewRegistry()
	if err := admin.RegisterRuntimeCollectors(reg); err != nil {
		return stop(exitFail, err)
	}
	plan := planRoutes(cfg)
	plan.log(log)
	rt, err := newRouting(cfg, plan, trust, log, reg)
	if err != nil {
		return stop(exitConfig, err)
	}
	rt.log(log)
	front, hits, err := newFront(cfg, rt, log, reg)
	if err != nil {
		_ = rt.router.Close()
		return stop(exitConfig, err)
	}
	closeUpstreams := func() {
		if err := front.Close(); err != nil {
			log.Warn("closing upstream connections", "err", err)
		}
	}

	srv, err := server.New(server.Options{
		BindAddrs:      cfg.BindAddress,
		BindExplicit:   cfg.BindAddressExplicit(),
		Port:           cfg.BindPort,
		Proto:          cfg.Proto,
		Upstream:       front,
		Cache:          hits,
		QueryTimeout:   cfg.QueryTimeout,
		UDPMaxSize:     cfg.UDPMaxSize,
		TCPIdleTimeout: cfg.TCPIdleTimeout,
		TCPMaxConns:    cfg.TCPMaxConns,
		TCPMaxInFlight: cfg.TCPMaxInflight,
		TCPMaxUnread:   cfg.TCPMaxUnread,
		MaxInFlight:    cfg.MaxInflight,
		Logger:         log,
		Registerer:     reg,
	})
	if err != nil {
		closeUpstreams()
		return stop(exitConfig, err)
	}

	var adm *admin.Admin
	if cfg.AdminAddress != "" {
		aopts := admin.Options{
			Addr:                  cfg.AdminAddress,
			Registerer:            reg,
			Gatherer:              reg,
			Logger:                log,
			Version:               version,
			Live:                  srv.Alive,
			ReadyFailThreshold:    cfg.ReadyFailThreshold,
			ReadySuccessThreshold: cfg.ReadySuccessThreshold,
		}
		if cfg.ReadyRequiresUpstream {
			// UPSTREAMS' group: a route's outage leaves the pod ready.
			aopts.UpstreamHealthy = rt.def.Healthy
		}
		if adm, err = admin.New(aopts); err != nil {
			closeUpstreams()
			return stop(exitConfig, err)
		}
		// The admin listener comes first so that /livez and /startupz answer
		// (503 "starting") while the DNS listeners bind.
		if err := adm.Start(); err != nil {
			closeUpstreams()
			return stop(exitFail, fmt.Errorf("admin listener on ADMIN_ADDRESS %q: %w", cfg.AdminAddress, err))
		}
	}
	if err := srv.Start(); err != nil {
		closeUpstreams()
		shutdownAdmin(adm, log)
		return stop(exitFail, err)
	}
	if adm != nil {
		adm.SetStarted()
	}
	log.Info("dot-sidecar serving", "version", version, "listen", listeners(srv.Addrs()),
		"upstreams", rt.def.Name(), "policy", cfg.UpstreamPolicy, "admin", adminAddr(adm))

	reloadDone := startTrustReload(ctx, cfg, rt.trusts, rt.reverify, reg, log)

	<-ctx.Done()
	shutdown(cfg, srv, closeUpstreams, adm, log)
	<-reloadDone
	return exitOK
}

// shutdown runs the SIGTERM sequence within SHUTDOWN_GRACE: readiness off at
// once, a lame-duck period in which the listeners still answer (endpoints
// controllers and kube-proxy take a moment to notice), then the listeners
// stop and in-flight queries finish or get SERVFAIL, then the upstream
// connections close.
func shutdown(cfg *config.Config, srv *server.Server, closeUpstreams func(), adm *admin.Admin, log *slog.Logger) {
	start := time.Now()
	log.Info("shutting down", "lameduck", cfg.ShutdownLameduck, "grace", cfg.ShutdownGrace)
	if adm != nil {
		adm.SetShuttingDown()
	}
	if cfg.ShutdownLameduck > 0 {
		t := time.NewTimer(cfg.ShutdownLameduck)
		<-t.C
	}
	ctx, cancel := context.WithDeadline(context.Background(), start.Add(cfg.ShutdownGrace))
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Warn("DNS listeners did not stop cleanly", "err", err)
	}
	closeUpstreams()
	shutdownAdmin(adm, log)
	log.Info("stopped", "took", time.Since(start).Round(time.Millisecond))
}

func shutdownAdmin(adm *admin.Admin, log *slog.Logger) {
	if adm == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := adm.Shutdown(ctx); err != nil {
		log.Warn("admin listener did not stop cleanly", "err", err)
	}
}

// listeners names each listener once with its protocol, "udp 127.0.0.1:5053",
// grouped by address.
func listeners(addrs []net.Addr) []string {
	out := make([]string, len(addrs))
	for i, a := range addrs {
		out[i] = a.Network() + " " + a.String()
	}
	slices.SortStableFunc(out, func(a, b string) int {
		_, aa, _ := strings.Cut(a, " ")
		_, ba, _ := strings.Cut(b, " ")
		return strings.Compare(aa, ba)
	})
	return out
}

func adminAddr(adm *admin.Admin) string {
	if adm == nil {
		return "off"
	}
	return adm.Addr()
}

// trustSettings names the setting of each kind of trust file.
var trustSettings = map[string]string{upstream.TrustFileCA: "TLS_CA_FILE", upstream.TrustFilePins: "TLS_PINS_FILE"}

// loadTrust reads the Trust every upstream shares: TLS_CA_FILE's roots (the
// system's without it) and the default pins, TLS_PINS or TLS_PINS_FILE's. A
// file that cannot be used is reported like any bad setting.
func loadTrust(cfg *config.Config) (*upstream.Trust, error) {
	trust, err := upstream.LoadTrust(upstream.TrustSource{CAFile: cfg.TLSCAFile, Pins: cfg.TLSPins, PinsFile: cfg.TLSPinsFile})
	if fe, ok := errors.AsType[*upstream.FileError](err); ok {
		return nil, cfg.Invalid(trustSettings[fe.Kind], fe.Err)
	}
	return trust, err
}
