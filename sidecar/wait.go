package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/admin"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
)

// runWait blocks until the sidecar's /readyz answers 200 (exit 0) or the
// timeout passes (exit 1). Clusters without native sidecars run it as the
// sidecar container's postStart hook, so the kubelet starts the application
// containers only once DNS works.
func runWait(ctx context.Context, args, environ []string, stdout, stderr io.Writer) int {
	timeout := 60 * time.Second
	cfg, err := config.Load(args, environ, config.WithUsageOutput(stdout), config.WithFlags(func(fs *flag.FlagSet) {
		fs.DurationVar(&timeout, "timeout", timeout, "how long to wait for /readyz to answer 200")
	}))
	if errors.Is(err, config.ErrHelp) {
		return exitOK
	}
	if err != nil {
		return fail(stderr, exitConfig, err)
	}
	if cfg.AdminAddress == "" {
		return fail(stderr, exitConfig, errors.New("wait needs the admin listener, but ADMIN_ADDRESS is empty"))
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if err := admin.Wait(ctx, cfg.AdminAddress, timeout, log); err != nil {
		return fail(stderr, exitFail, err)
	}
	fmt.Fprintln(stdout, "dot-sidecar is ready")
	return exitOK
}
