package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/admin"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
)

// waitFlags are the flags of wait that are not settings.
type waitFlags struct{ timeout time.Duration }

func (f *waitFlags) define(fs *flag.FlagSet) {
	fs.DurationVar(&f.timeout, "timeout", 60*time.Second, "how long to wait for /readyz to answer 200")
}

// runWait blocks until the sidecar's /readyz answers 200 (exit 0) or the
// timeout passes (exit 1). Clusters without native sidecars run it as the
// sidecar container's postStart hook, so the kubelet starts the application
// containers only once DNS works.
//
// It reads its settings through config.Load like serve, so that it shares
// the sidecar container's environment, and logs like serve: LOG_LEVEL,
// LOG_FORMAT, LOG_FILE. Each poll is logged at debug; the outcome at info
// (ready) or error (not ready, with what the last poll saw).
func runWait(ctx context.Context, args, environ []string, stdout, stderr io.Writer) int {
	var flags waitFlags
	withFlags := config.WithFlags(flags.define)
	cfg, err := config.Load(args, environ, withFlags)
	if errors.Is(err, config.ErrHelp) {
		waitUsage(stdout, flags.define)
		return exitOK
	}
	if err != nil {
		return fail(config.FallbackLogger(args, environ, stderr, withFlags), exitConfig, "cannot wait", err)
	}
	log, logCloser, err := cfg.NewLogger(stderr)
	if err != nil {
		return fail(config.FallbackLogger(args, environ, stderr, withFlags), exitConfig, "cannot wait", err)
	}
	defer logCloser.Close()
	report := cfg.ReportLogger(log, stderr)
	if flags.timeout <= 0 {
		return fail(report, exitConfig, "cannot wait",
			&config.SettingError{Name: "--timeout", Value: flags.timeout.String(), Reason: errors.New("must be greater than 0")})
	}
	if cfg.AdminAddress == "" {
		return fail(report, exitConfig, "cannot wait", cfg.Invalid("ADMIN_ADDRESS", errors.New("wait needs the admin listener")))
	}
	url, err := admin.ReadyURL(cfg.AdminAddress)
	if err != nil {
		return fail(report, exitConfig, "cannot wait", cfg.Invalid("ADMIN_ADDRESS", err))
	}
	begin := time.Now()
	err = admin.Wait(ctx, cfg.AdminAddress, flags.timeout, log)
	if nr, ok := errors.AsType[*admin.NotReadyError](err); ok {
		attrs := []any{"url", nr.URL, "waited", nr.Waited, "last", nr.Last}
		if nr.Err != nil {
			attrs = append(attrs, "err", nr.Err.Error())
		}
		report.Error("sidecar not ready", attrs...)
		return exitFail
	}
	if err != nil {
		return fail(report, exitFail, "cannot wait", err)
	}
	log.Info("sidecar ready", "url", url, "waited", time.Since(begin).Round(time.Millisecond))
	return exitOK
}
