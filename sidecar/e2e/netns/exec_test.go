package netns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Fixed project facts: the UIDs of the sidecar, of the check init container
// and of the example applications.
const (
	sidecarUID = 10053
	checkUID   = 10054
	appUID     = 10100
	rootUID    = 0
)

// cmdEnv is the whole environment of every command: nothing leaks in from
// the environment of `go test` (a LOG_LEVEL or BIND_PORT there must not
// change what the sidecar does).
var cmdEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C"}

// node is a network namespace made by the test.
type node struct {
	name string
}

// command builds argv run inside the namespace as uid. `ip netns exec` needs
// root (setns, and a mount namespace in which it bind-mounts
// /etc/netns/<name>/* over /etc), so the switch to an unprivileged uid happens
// after it, with setpriv: the same effect as exec.Cmd's Credential
// {Uid, Gid, no supplementary groups}, applied inside the namespace, and the
// process keeps no capability.
func (n *node) command(ctx context.Context, uid int, env []string, argv ...string) *exec.Cmd {
	full := []string{lookPath("ip"), "netns", "exec", n.name}
	if uid != rootUID {
		id := strconv.Itoa(uid)
		full = append(full, lookPath("setpriv"), "--reuid="+id, "--regid="+id, "--clear-groups", "--")
	}
	full = append(full, argv...)
	c := exec.CommandContext(ctx, full[0], full[1:]...)
	c.Env = append(append([]string{}, cmdEnv...), env...)
	c.WaitDelay = time.Second
	return c
}

// result is what a finished command printed.
type result struct {
	argv           string
	stdout, stderr string
	err            error
}

func (r result) String() string {
	return fmt.Sprintf("%s: %v\nstdout:\n%s\nstderr:\n%s", r.argv, r.err, r.stdout, r.stderr)
}

// exec runs argv in the namespace as uid, bounded by timeout.
func (n *node) exec(uid int, env []string, timeout time.Duration, argv ...string) result {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c := n.command(ctx, uid, env, argv...)
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	err := c.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (timed out after %v)", err, timeout)
	}
	return result{argv: fmt.Sprintf("[%s as uid %d] %s", n.name, uid, strings.Join(argv, " ")), stdout: out.String(), stderr: errb.String(), err: err}
}

// must runs argv as root in the namespace and fails the test on error.
func (n *node) must(t testing.TB, argv ...string) string {
	t.Helper()
	r := n.exec(rootUID, nil, 20*time.Second, argv...)
	if r.err != nil {
		t.Fatalf("%v", r)
	}
	return r.stdout
}

// host runs argv in the test's own namespace (only for `ip` commands that
// create or delete the test's namespaces and links).
func host(t testing.TB, argv ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := exec.CommandContext(ctx, lookPath(argv[0]), argv[1:]...)
	c.Env = cmdEnv
	if out, err := c.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
}

// process is a long-running command (sidecar, tcpdump) the test started and
// must stop. Its output goes to a file that is shown when the test fails.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	log     *os.File
	done    chan struct{}
	err     error
}

// start launches argv in the namespace as uid, its output to logPath.
func (n *node) start(t testing.TB, name string, uid int, env []string, logPath string, argv ...string) *process {
	t.Helper()
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	c := n.command(context.Background(), uid, env, argv...)
	c.Stdout, c.Stderr = f, f
	// Its own process group, so that stop can reach children a wrapper may
	// have left; `ip netns exec` and setpriv exec in place, so the pid is the
	// program's own and SIGTERM reaches it directly.
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.Start(); err != nil {
		f.Close()
		t.Fatalf("starting %s: %v", name, err)
	}
	p := &process{name: name, cmd: c, logPath: logPath, log: f, done: make(chan struct{})}
	go func() {
		p.err = c.Wait()
		f.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		if err := p.stop(5 * time.Second); err != nil {
			t.Logf("stopping %s: %v", name, err)
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("--- %s output (%s) ---\n%s", name, logPath, tail(string(b), 60))
		}
	})
	return p
}

// stop sends SIGTERM and waits up to grace, then kills the process group.
// It is safe to call more than once.
func (p *process) stop(grace time.Duration) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
	return errors.New("ignored SIGTERM; killed")
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *process) output() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitFor polls cond until it returns nil or timeout passes; the last error
// explains a failure. Polling a condition, never sleeping for a guess.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting %v for %s: %v", timeout, what, err)
		}
		<-tick.C
	}
}
