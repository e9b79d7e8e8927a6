// Command dot-sidecar answers a pod's DNS on loopback and relays every query
// to DNS-over-TLS upstreams over verified, pipelined, long-lived connections.
//
//	dot-sidecar [serve] [flags]  serve (the default)
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
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
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
	cmd, rest := splitCommand(args)
	switch cmd {
	case "serve":
		return runServe(ctx, rest, environ, stdout, stderr)
	case "wait":
		return runWait(ctx, rest, environ, stdout, stderr)
	case "check":
		return runCheck(ctx, rest, environ, stdout, stderr)
	case "version":
		return runVersion(rest, environ, stdout, stderr)
	case "help":
		return runHelp(rest, environ, stdout, stderr)
	}
	return unknownCommand(cmd, environ, stderr)
}

// unknownCommand reports a first argument that is neither a flag nor a
// command. A typo in a manifest's args ("serv") would otherwise be taken for
// a stray argument of serve.
func unknownCommand(cmd string, environ []string, stderr io.Writer) int {
	config.FallbackLogger(nil, environ, stderr).Error("unknown command",
		"command", cmd, "commands", commandNames(), "help", "dot-sidecar --help")
	return exitConfig
}

// splitCommand takes the command off the arguments. Without one (no
// arguments, or a flag first) the command is serve, so that a container's
// args can be settings alone.
func splitCommand(args []string) (cmd string, rest []string) {
	switch {
	case len(args) == 0:
		return "serve", nil
	case args[0] == "--version" || args[0] == "-version":
		return "version", args[1:]
	case strings.HasPrefix(args[0], "-"):
		return "serve", args
	}
	return args[0], args[1:]
}

func runVersion(args, environ []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		if isHelp(args[0]) {
			fmt.Fprint(stdout, "Usage: dot-sidecar version\n\nPrints the version of this build (also: dot-sidecar --version).\n")
			return exitOK
		}
		return fail(config.FallbackLogger(nil, environ, stderr), exitConfig, "invalid command line",
			fmt.Errorf("version takes no arguments, got %q", args[0]))
	}
	fmt.Fprintln(stdout, "dot-sidecar", version)
	return exitOK
}

func isHelp(arg string) bool {
	switch arg {
	case "-h", "-help", "--help":
		return true
	}
	return false
}

// fail logs why the command stops, at error level, and returns code. Each bad
// setting gets a line of its own whose fields name it and its value, so that
// a log query finds "setting=BIND_PORT" as readily as a person does.
func fail(log *slog.Logger, code int, msg string, err error) int {
	errs := []error{err}
	if multi, ok := err.(interface{ Unwrap() []error }); ok {
		errs = multi.Unwrap()
	}
	for _, e := range errs {
		if se, ok := e.(*config.SettingError); ok {
			log.Error("invalid setting", "setting", se.Name, "value", se.Value, "reason", se.Reason.Error())
			continue
		}
		log.Error(msg, "err", e.Error())
	}
	return code
}
