// Command dot-sidecar answers a pod's DNS on loopback and relays every query
// to DNS-over-TLS upstreams over verified, pipelined, long-lived connections.
//
//	dot-sidecar [flags]          serve (the default)
//	dot-sidecar wait [flags]     block until the sidecar's /readyz is 200
//	dot-sidecar check [flags]    prove that this pod's DNS reaches the sidecar
//	dot-sidecar version          print the version
//
// This file only wires packages together; see sidecar/internal/*.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is stamped at build time: -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	code := run(ctx, os.Args[1:], os.Environ(), os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit codes: 0 success, 1 failure at run time, 2 bad configuration or usage.
const (
	exitOK     = 0
	exitFail   = 1
	exitConfig = 2
)

func run(ctx context.Context, args, environ []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "wait":
			return runWait(ctx, args[1:], environ, stdout, stderr)
		case "check":
			return runCheck(ctx, args[1:], environ, stdout, stderr)
		case "version", "--version":
			fmt.Fprintln(stdout, "dot-sidecar", version)
			return exitOK
		case "serve":
			args = args[1:]
		}
	}
	return runServe(ctx, args, environ, stdout, stderr)
}

// fail prints one line and returns the exit code; config errors already name
// the variable or flag and the value.
func fail(stderr io.Writer, code int, err error) int {
	fmt.Fprintf(stderr, "dot-sidecar: %v\n", err)
	return code
}
