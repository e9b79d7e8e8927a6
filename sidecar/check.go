package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/check"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
)

// runCheck proves, from inside the pod and as an application would, that
// every nameserver in resolv.conf is answered by the sidecar over UDP and
// TCP, and, when the sidecar routes the cluster's names, that the API
// server's Service name resolves through it. It exits 1 when any path is
// not intercepted or the cluster's names go astray, so an init container
// running it keeps applications from starting with leaking DNS or without
// Service discovery.
//
// It reads the sidecar's settings (the container loads the same ones) so
// that it decides the routes with the very code the sidecar runs
// (planRoutes); RESOLV_CONF (--resolv-conf) names the file it tests.
func runCheck(ctx context.Context, args, environ []string, stdout, stderr io.Writer) int {
	opts := check.Options{Out: stdout, Timeout: 2 * time.Second, SidecarUID: 10053}
	cfg, err := config.Load(args, environ, config.WithUsageOutput(stdout), config.WithFlags(func(fs *flag.FlagSet) {
		fs.DurationVar(&opts.Timeout, "timeout", opts.Timeout, "limit for each canary query, and for the cluster name's retries")
		fs.IntVar(&opts.SidecarUID, "sidecar-uid", opts.SidecarUID, "the sidecar's UID, which the rules exclude; check refuses to run as it (0 disables the guard)")
	}))
	if errors.Is(err, config.ErrHelp) {
		return exitOK
	}
	if err != nil {
		return fail(stderr, exitConfig, fmt.Errorf("check: %w", err))
	}
	opts.ResolvConf = cfg.ResolvConf
	if plan := planRoutes(cfg); plan.cluster != nil {
		opts.Cluster = &check.Cluster{Route: plan.cluster.name, Domain: plan.domain}
	} else if plan.missing != "" {
		opts.Cluster = &check.Cluster{Route: clusterRouteName, Domain: plan.domain, Missing: plan.missing}
	}
	ok, err := check.Run(ctx, opts)
	if err != nil {
		return fail(stderr, exitFail, fmt.Errorf("check: %w", err))
	}
	if !ok {
		fmt.Fprintln(stderr, "dot-sidecar check: FAILED (see the table above)")
		return exitFail
	}
	return exitOK
}
