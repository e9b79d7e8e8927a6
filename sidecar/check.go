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

// checkFlags are the flags of check that are not settings.
type checkFlags struct {
	timeout    time.Duration
	sidecarUID int
}

func (f *checkFlags) define(fs *flag.FlagSet) {
	fs.DurationVar(&f.timeout, "timeout", check.DefaultTimeout, "limit for each canary query, and for the cluster name's retries")
	fs.IntVar(&f.sidecarUID, "sidecar-uid", 10053, "the sidecar's UID, which the rules exclude; check refuses to run as it (0 disables the guard)")
}

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
// (planRoutes); RESOLV_CONF (--resolv-conf) names the file it tests. Its
// output is a report for a person reading the init container's output, not
// a log: the table on stdout, a verdict or an error line on stderr.
func runCheck(ctx context.Context, args, environ []string, stdout, stderr io.Writer) int {
	var flags checkFlags
	cfg, err := config.Load(args, environ, config.WithFlags(flags.define))
	if errors.Is(err, config.ErrHelp) {
		checkUsage(stdout, flags.define)
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "dot-sidecar check: %v\n", err)
		return exitConfig
	}
	opts := check.Options{Out: stdout, Timeout: flags.timeout, SidecarUID: flags.sidecarUID, ResolvConf: cfg.ResolvConf}
	if plan := planRoutes(cfg); plan.cluster != nil {
		opts.Cluster = &check.Cluster{Route: plan.cluster.name, Domain: plan.domain}
	} else if plan.missing != "" {
		opts.Cluster = &check.Cluster{Route: clusterRouteName, Domain: plan.domain, Missing: plan.missing}
	}
	ok, err := check.Run(ctx, opts)
	if err != nil {
		fmt.Fprintf(stderr, "dot-sidecar check: %v\n", err)
		return exitFail
	}
	if !ok {
		fmt.Fprintln(stderr, "dot-sidecar check: FAILED (see the table above)")
		return exitFail
	}
	return exitOK
}
