package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/check"
)

// runCheck proves, from inside the pod and as an application would, that
// every nameserver in resolv.conf is answered by the sidecar over UDP and
// TCP. It exits 1 when any path is not intercepted, so an init container
// running it keeps applications from starting with leaking DNS.
//
// It takes flags only: the check container need not carry the sidecar's
// settings.
func runCheck(ctx context.Context, args, _ []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dot-sidecar check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	opts := check.Options{Out: stdout}
	fs.StringVar(&opts.ResolvConf, "resolv-conf", "/etc/resolv.conf", "file naming the nameservers to probe")
	fs.DurationVar(&opts.Timeout, "timeout", 2*time.Second, "limit for each canary query")
	fs.IntVar(&opts.SidecarUID, "sidecar-uid", 10053, "the sidecar's UID, which the rules exclude; check refuses to run as it (0 disables the guard)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitConfig
	}
	if fs.NArg() > 0 {
		return fail(stderr, exitConfig, fmt.Errorf("check: unexpected argument %q", fs.Arg(0)))
	}
	ok, err := check.Run(ctx, opts)
	if err != nil {
		return fail(stderr, exitFail, fmt.Errorf("check: %w", err))
	}
	if !ok {
		fmt.Fprintln(stderr, "dot-sidecar check: DNS is NOT fully intercepted (see the table above)")
		return exitFail
	}
	return exitOK
}
