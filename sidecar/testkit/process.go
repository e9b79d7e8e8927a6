package testkit

import (
	"bytes"
	"errors"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Buffer collects a process's output while tests read it.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Process is a long-running program a test started (a sidecar, tcpdump, a
// DNS server in a namespace). It is stopped when the test ends.
type Process struct {
	Name           string
	Cmd            *exec.Cmd
	Stdout, Stderr *Buffer

	done   chan struct{}
	err    error     // exit status, once done is closed
	exitAt time.Time // when it exited, once done is closed
}

// StopGrace is a grace period for Stop long enough for any process the
// tests run to shut down cleanly.
const StopGrace = 5 * time.Second

// StartProcess starts cmd, whose Stdout and Stderr it sets, in a process
// group of its own (so that a kill reaches children a wrapper such as
// `ip netns exec` or setpriv leaves, although both exec in place). At the
// test's end a process still running is killed at once, group and all (a
// test that cares how it stops calls Stop itself: waiting out a graceful
// stop nobody checks, of a sidecar told to drain for 20 s, say, only makes
// the suite slower), and if the test failed, the tail of what it printed
// is logged.
func StartProcess(t testing.TB, name string, cmd *exec.Cmd) *Process {
	t.Helper()
	p := &Process{Name: name, Cmd: cmd, Stdout: new(Buffer), Stderr: new(Buffer), done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.Stdout, p.Stderr
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		p.exitAt = time.Now()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("--- %s stdout ---\n%s\n--- %s stderr ---\n%s", name, Tail(p.Stdout.String(), 60), name, Tail(p.Stderr.String(), 60))
		}
	})
	return p
}

// Stop sends SIGTERM and waits up to grace, then kills the process group.
// It returns an error only when the process had to be killed; its exit
// status is Err. It is safe to call more than once.
func (p *Process) Stop(grace time.Duration) error {
	if p.Exited() {
		return nil
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	p.kill()
	return errors.New("ignored SIGTERM; killed")
}

// kill kills the process group and waits for the process to exit.
func (p *Process) kill() {
	if !p.Exited() {
		_ = syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
	}
	<-p.done
}

// Wait waits up to timeout for the process to exit by itself and returns
// its exit status; it fails t if the process is still running then.
func (p *Process) Wait(t testing.TB, timeout time.Duration) error {
	t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		t.Fatalf("%s still running %v later", p.Name, timeout)
		return nil
	}
}

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err is the exit status (nil for exit code 0); valid once Done is closed.
func (p *Process) Err() error {
	<-p.done
	return p.err
}

// ExitAt is when the process exited; valid once Done is closed.
func (p *Process) ExitAt() time.Time {
	<-p.done
	return p.exitAt
}

// Output is what the process printed so far, stdout then stderr.
func (p *Process) Output() string { return p.Stdout.String() + p.Stderr.String() }

// Tail returns the last n lines of s.
func Tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
