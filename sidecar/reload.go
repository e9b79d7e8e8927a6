package main

import (
	"context"
	"log/slog"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/upstream"
)

// startTrustReload watches TLS_CA_FILE and TLS_PINS_FILE. Placeholder until
// the reloader lands: it returns a channel closed when ctx ends.
func startTrustReload(ctx context.Context, cfg *config.Config, trust *upstream.Trust, group *upstream.Group, log *slog.Logger) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		<-ctx.Done()
		close(done)
	}()
	return done
}
