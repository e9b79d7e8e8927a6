package netnstest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BaseEnv is the whole environment of a command run in a namespace, unless
// the caller adds to it: nothing leaks in from the environment of go test
// (a BIND_PORT or LOG_LEVEL there must not change what a program under test
// does), and PATH holds the sbin directories where Debian keeps ip and
// iptables.
var BaseEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C"}

// RunTimeout bounds Run and Must.
const RunTimeout = 30 * time.Second

// AsUser is the argv prefix that runs a command as uid, with gid equal to
// uid, no supplementary groups and no capabilities, as a container with
// runAsUser and runAsGroup runs. Entering a namespace needs root (setns,
// and for `ip netns exec` a mount namespace), so the switch happens inside,
// after it.
func AsUser(uid int) []string {
	id := strconv.Itoa(uid)
	return []string{"setpriv", "--reuid=" + id, "--regid=" + id, "--clear-groups", "--"}
}

// Command returns a command that runs argv in the namespace, as root unless
// argv starts with a prefix such as AsUser's, with BaseEnv as environment
// (append to Env to add settings). ctx kills it; WaitDelay bounds the wait
// for its output after that.
func (n *Netns) Command(ctx context.Context, argv ...string) *exec.Cmd {
	full := append(n.Prefix(), argv...)
	c := exec.CommandContext(ctx, full[0], full[1:]...)
	c.Env = append([]string{}, BaseEnv...)
	c.WaitDelay = time.Second
	return c
}

// Prefix is the argv prefix that runs a command in the namespace, for
// helpers that take one (unboundtest.Options.Prefix). A command run through
// it inherits the caller's environment; Command gives it BaseEnv.
func (n *Netns) Prefix() []string { return []string{lookPath("ip"), "netns", "exec", n.Name} }

// Result is what a finished command printed, and how it ended.
type Result struct {
	Argv           string // for messages: the namespace and the command
	Stdout, Stderr string
	Err            error // nil when it exited 0
}

// Code is the exit code: 0 on success, -1 when it did not exit by itself
// (killed, timed out, not started).
func (r Result) Code() int {
	var ee *exec.ExitError
	switch {
	case r.Err == nil:
		return 0
	case errors.As(r.Err, &ee):
		return ee.ExitCode()
	default:
		return -1
	}
}

func (r Result) String() string {
	return fmt.Sprintf("%s: %v\nstdout:\n%s\nstderr:\n%s", r.Argv, r.Err, r.Stdout, r.Stderr)
}

// Run runs argv in the namespace with env added to BaseEnv, bounded by
// RunTimeout, and returns what it printed.
func (n *Netns) Run(env []string, argv ...string) Result {
	return n.RunInput(env, "", argv...)
}

// RunInput is Run with stdin (iptables-restore payloads, for example).
//
// Unless WriteEtc was used, the command is started straight from a thread
// inside the namespace, which it inherits, rather than through `ip netns
// exec`: the iptables tests run hundreds of short commands, and the wrapper
// (a mount namespace and a remount of /sys for each) was a third of their
// CPU time. The command sees the same network either way.
func (n *Netns) RunInput(env []string, stdin string, argv ...string) Result {
	ctx, cancel := context.WithTimeout(context.Background(), RunTimeout)
	defer cancel()
	var c *exec.Cmd
	start := func() error { return c.Start() }
	if n.etc.Load() {
		c = n.Command(ctx, argv...)
	} else {
		c = exec.CommandContext(ctx, lookPath(argv[0]), argv[1:]...)
		c.Env = append([]string{}, BaseEnv...)
		c.WaitDelay = time.Second
		start = func() error {
			var err error
			if eerr := n.enter(func() error { err = c.Start(); return nil }); eerr != nil {
				return eerr
			}
			return err
		}
	}
	c.Env = append(c.Env, env...)
	c.Stdin = strings.NewReader(stdin)
	return finish(ctx, "["+n.Name+"] "+strings.Join(argv, " "), c, start)
}

// Must runs argv in the namespace and fails t unless it exits 0; it
// returns stdout.
func (n *Netns) Must(t testing.TB, argv ...string) string {
	t.Helper()
	r := n.Run(nil, argv...)
	if r.Err != nil {
		t.Fatalf("%v", r)
	}
	return r.Stdout
}

// finish starts c with start (c.Start when nil), waits for it and returns
// what it printed.
func finish(ctx context.Context, argv string, c *exec.Cmd, start func() error) Result {
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	if start == nil {
		start = c.Start
	}
	err := start()
	if err == nil {
		err = c.Wait()
	}
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (timed out after %v)", err, RunTimeout)
	}
	return Result{Argv: argv, Stdout: out.String(), Stderr: errb.String(), Err: err}
}

// runHost runs argv in the test's own namespace: only the ip commands that
// make and delete namespaces and the links between them.
func runHost(argv ...string) Result {
	ctx, cancel := context.WithTimeout(context.Background(), RunTimeout)
	defer cancel()
	c := exec.CommandContext(ctx, lookPath(argv[0]), argv[1:]...)
	c.Env = BaseEnv
	return finish(ctx, strings.Join(argv, " "), c, nil)
}

func host(t testing.TB, argv ...string) {
	t.Helper()
	if r := runHost(argv...); r.Err != nil {
		t.Fatalf("%v", r)
	}
}

// lookPath finds a program in BaseEnv's PATH: go test may run with a PATH
// that lacks the sbin directories.
func lookPath(name string) string {
	for _, dir := range filepath.SplitList(strings.TrimPrefix(BaseEnv[0], "PATH=")) {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return name
}
