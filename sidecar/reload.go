package main

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/upstream"
)

// startTrustReload watches the files trusts were loaded from (TLS_CA_FILE,
// TLS_PINS_FILE, the ;ca= files of routes) every TRUST_RELOAD_INTERVAL and
// applies changes to them, then has every group retire the connections the
// new trust rejects (reverify). Its metrics are
// registered on reg whether or not a file is watched, so dashboards see
// zeros rather than gaps. The returned channel is closed once the watcher
// has stopped: after ctx ends, or at once when there is nothing to watch.
func startTrustReload(ctx context.Context, cfg *config.Config, trusts []*upstream.Trust, reverify func() int,
	reg prometheus.Registerer, log *slog.Logger) <-chan struct{} {
	done := make(chan struct{})
	r, err := upstream.NewTrustReloader(upstream.ReloaderOptions{
		Trusts:   trusts,
		Interval: cfg.TrustReloadInterval,
		Reverify: reverify,
		Logger:   log,
		Metrics:  upstream.NewReloadMetrics(reg),
	})
	if err != nil {
		// Only a wiring bug gets here; serving on the trust loaded at
		// start-up beats not serving.
		log.Error("trust files will not be reloaded", "err", err)
		close(done)
		return done
	}
	if files := r.Files(); len(files) > 0 {
		log.Info("watching trust files for changes", "files", files, "interval", cfg.TrustReloadInterval)
	}
	go func() {
		defer close(done)
		r.Run(ctx)
	}()
	return done
}
