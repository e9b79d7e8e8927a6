package main

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/upstream"
)

// startTrustReload watches TLS_CA_FILE and TLS_PINS_FILE every
// TRUST_RELOAD_INTERVAL and applies changes to trust, then has group retire
// the connections the new trust rejects. Its metrics are registered on reg
// whether or not a file is watched, so dashboards see zeros rather than
// gaps. The returned channel is closed once the watcher has stopped, after
// ctx ends.
func startTrustReload(ctx context.Context, cfg *config.Config, trust *upstream.Trust, group *upstream.Group,
	reg prometheus.Registerer, log *slog.Logger) <-chan struct{} {
	metrics := upstream.NewReloadMetrics(reg)
	done := make(chan struct{})
	idle := func() <-chan struct{} {
		go func() {
			<-ctx.Done()
			close(done)
		}()
		return done
	}
	if cfg.TLSCAFile == "" && cfg.TLSPinsFile == "" {
		return idle()
	}
	r, err := upstream.NewTrustReloader(upstream.ReloaderOptions{
		Trust:    trust,
		CAFile:   cfg.TLSCAFile,
		PinsFile: cfg.TLSPinsFile,
		LoadCA:   config.LoadCAFile,
		LoadPins: config.LoadPinsFile,
		Interval: cfg.TrustReloadInterval,
		Reverify: group.Reverify,
		Logger:   log,
		Metrics:  metrics,
	})
	if err != nil {
		// Only a wiring bug gets here; serving on the trust loaded at
		// start-up beats not serving.
		log.Error("trust files will not be reloaded", "err", err)
		return idle()
	}
	log.Info("watching trust files for changes", "ca_file", cfg.TLSCAFile, "pins_file", cfg.TLSPinsFile,
		"interval", cfg.TrustReloadInterval)
	go func() {
		defer close(done)
		r.Run(ctx)
	}()
	return done
}
