// Command demo starts a DNS-over-TLS upstream on loopback, so that the
// sidecar can be tried without Internet access:
//
//	go run ./sidecar/demo [--listen 127.0.0.1:8853] [--sidecar-port 5053]
//
// It makes a throwaway CA and a certificate for demo.dot-sidecar.test,
// writes the CA certificate to a temporary file, serves a small zone (A, AAAA
// and TXT answers, NXDOMAIN for every other name) and prints the exact
// settings that point the sidecar at it, the kdig commands that ask the
// sidecar over UDP and TCP, and the pin of its key. Each query it answers is
// logged on stderr. It runs until Ctrl-C, then removes its files.
//
// The demo is for trying dot-sidecar out; nothing in it belongs in
// production (its CA's key lives in memory for a day at most).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
)

// Exit codes, as the sidecar's: 1 failure at run time, 2 bad usage.
const (
	exitFail  = 1
	exitUsage = 2
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	var usage usageError
	switch {
	case err == nil:
	case errors.As(err, &usage):
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(exitUsage)
	default:
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(exitFail)
	}
}

// options are the demo's flags, validated.
type options struct {
	listen      netip.AddrPort // where the upstream listens
	sidecarPort int            // where the sidecar will listen, for the printed commands
}

// defaultSidecarPort is the sidecar's own BIND_PORT default.
const defaultSidecarPort = 5053

type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

func parseFlags(args []string, stderr io.Writer) (options, error) {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:8853", "`IP:PORT` of the DNS-over-TLS upstream; port 0 picks a free one")
	port := fs.Int("sidecar-port", defaultSidecarPort, "`port` the sidecar will listen on (its BIND_PORT), used in the printed commands")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: go run ./sidecar/demo [flags]\n\nStarts a local DNS-over-TLS upstream and prints how to point the sidecar at it.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return options{}, err
		}
		return options{}, usageError{err}
	}
	if fs.NArg() > 0 {
		return options{}, usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	var o options
	ap, err := netip.ParseAddrPort(*listen)
	if err != nil {
		// UPSTREAMS takes IP literals only: a hostname would need a plaintext
		// DNS lookup, which the sidecar exists to prevent.
		return options{}, usageError{fmt.Errorf("invalid --listen %q: must be IP:PORT with an IP literal, as UPSTREAMS requires", *listen)}
	}
	o.listen = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	if *port < 1 || *port > 65535 {
		return options{}, usageError{fmt.Errorf("invalid --sidecar-port \"%d\": must be 1-65535", *port)}
	}
	o.sidecarPort = *port
	return o, nil
}

// run serves until ctx ends. Instructions go to stdout, the query log and
// the final message to stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	z, err := newZone()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "dot-sidecar-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	log := slog.New(slog.NewTextHandler(stderr, nil))
	up, err := startUpstream(o.listen, dir, z, log)
	if err != nil {
		return err
	}
	writeInstructions(stdout, instructionsFor(up, o.sidecarPort, dir))
	select {
	case <-ctx.Done():
	case err := <-up.Done():
		return fmt.Errorf("the upstream stopped: %w", err)
	}
	if err := up.Close(); err != nil {
		log.Warn("stopping the upstream", "err", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "demo stopped; removed %s\n", dir)
	return nil
}
