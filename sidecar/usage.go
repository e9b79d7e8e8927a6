package main

import (
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
)

// commands are the subcommands, in the order the help lists them.
var commands = []struct{ name, about string }{
	{"serve", "answer DNS until SIGTERM (the default when no command is given)"},
	{"wait", "block until the sidecar's /readyz answers 200, or time out"},
	{"check", "prove, from inside the pod, that its DNS reaches the sidecar"},
	{"version", "print the version (also --version)"},
	{"help", "print this help, or a command's: dot-sidecar help wait"},
}

func commandNames() string {
	names := make([]string, len(commands))
	for i, c := range commands {
		names[i] = c.name
	}
	return strings.Join(names, ", ")
}

// usage is the help of dot-sidecar and of dot-sidecar serve.
func usage(w io.Writer) {
	var b strings.Builder
	b.WriteString(`Usage: dot-sidecar [COMMAND] [--flag=value ...]

dot-sidecar answers plain DNS on loopback by relaying every query to
DNS-over-TLS upstreams over verified, pipelined TLS connections.

Commands:
`)
	for _, c := range commands {
		fmt.Fprintf(&b, "  %-9s %s\n", c.name, c.about)
	}
	b.WriteString(`
dot-sidecar wait --help and dot-sidecar check --help list the flags of
those commands. The settings below are serve's.

`)
	config.Usage(&b)
	io.WriteString(w, b.String())
}

// waitSettings are the settings wait reads; it accepts the others, so that
// it can share the sidecar container's environment, but ignores them.
var waitSettings = []string{"ADMIN_ADDRESS", "LOG_LEVEL", "LOG_FORMAT", "LOG_FILE"}

func waitUsage(w io.Writer, define func(*flag.FlagSet)) {
	var b strings.Builder
	b.WriteString(`Usage: dot-sidecar wait [--timeout=60s] [--admin-address=[IP]:PORT]

Polls the sidecar's /readyz until it answers 200 (exit 0) or the timeout
passes (exit 1, saying what the last poll saw). Without native sidecars, run
it as the sidecar container's postStart hook: the kubelet then starts the
next container only once DNS works.

Flags:
`)
	config.WriteFlags(&b, flagSet("wait", define))
	b.WriteString(`
Settings it reads (variables or flags, as for serve):
`)
	config.WriteSettings(&b, waitSettings...)
	io.WriteString(w, b.String())
}

// checkSettings are the settings check reads to decide, as the sidecar does,
// which routes exist; it accepts the others, so that it can share the
// sidecar container's environment, but ignores them.
var checkSettings = []string{"RESOLV_CONF", "CLUSTER_DNS", "CLUSTER_DOMAIN", "ROUTES", "BIND_ADDRESS", "BIND_PORT"}

func checkUsage(w io.Writer, define func(*flag.FlagSet)) {
	var b strings.Builder
	b.WriteString(`Usage: dot-sidecar check [--timeout=2s] [--sidecar-uid=UID] [--resolv-conf=FILE]

Sends a canary query, as an application would, to every nameserver in
resolv.conf over UDP and over TCP, and prints a table saying which of these
paths reach the sidecar; when the sidecar routes the cluster's names, it also
resolves kubernetes.default.svc.<domain> through it. Exits 0 when all pass,
1 when any does not, 2 on a bad command line or setting.

Flags:
`)
	config.WriteFlags(&b, flagSet("check", define))
	b.WriteString(`
Settings it reads (variables or flags, as for serve), to decide the routes
with the sidecar's own code:
`)
	config.WriteSettings(&b, checkSettings...)
	io.WriteString(w, b.String())
}

// flagSet returns a set holding the flags define defines, for help.
func flagSet(name string, define func(*flag.FlagSet)) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	define(fs)
	return fs
}

// runHelp is dot-sidecar help [COMMAND].
func runHelp(args, environ []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stdout)
		return exitOK
	}
	switch args[0] {
	case "serve", "help":
		usage(stdout)
	case "wait":
		waitUsage(stdout, new(waitFlags).define)
	case "check":
		checkUsage(stdout, new(checkFlags).define)
	case "version":
		return runVersion([]string{"--help"}, environ, stdout, stderr)
	default:
		return unknownCommand(args[0], environ, stderr)
	}
	return exitOK
}
