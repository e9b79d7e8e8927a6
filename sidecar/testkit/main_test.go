package testkit

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	Main(m, func() error {
		if os.Getenv(childFailCheck) != "" {
			return errors.New("the check failed")
		}
		return nil
	})
}

// childFailCheck makes the check TestMain passes to Main fail, in a child.
const childFailCheck = "DOT_SIDECAR_TESTKIT_FAIL_CHECK"

// childEnv selects, in a copy of this test binary, the tests that skip for
// lack of tools, so that TestSummaryLine can read what Main prints.
const childEnv = "DOT_SIDECAR_TESTKIT_CHILD"

func TestChildSkips(t *testing.T) {
	if os.Getenv(childEnv) == "" {
		t.Skip("run by TestSummaryLine in a child process")
	}
	AtExit(t, func() { os.Stderr.WriteString("registered first\n") })
	AtExit(t, func() { os.Stderr.WriteString("registered second\n") })
	for _, tc := range []struct {
		name  string
		tools []string
	}{
		{"one", []string{"dot-sidecar-no-such-tool-a"}},
		{"two", []string{"dot-sidecar-no-such-tool-b", "dot-sidecar-no-such-tool-a"}},
		{"found", []string{"sh"}},
	} {
		t.Run(tc.name, func(t *testing.T) { RequireTools(t, tc.tools...) })
	}
	t.Run("file", func(t *testing.T) { Missing(t, "testdata/nothing.txt does not exist") })
}

// TestSummaryLine runs TestChildSkips in a child outside CI and checks what
// Main adds after the tests: the AtExit functions, last registered first,
// then one line: how many tests skipped, each missing tool named once, and
// the other reasons.
func TestSummaryLine(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "-test.run=^TestChildSkips$")
	cmd.Env = []string{childEnv + "=1", "PATH=/usr/bin:/bin", "CI=false"}
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("child: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	want := "registered second\nregistered first\n" +
		"github.com/dot-sidecar/dot-sidecar/sidecar/testkit: skipped 3 tests: " +
		`missing tools "dot-sidecar-no-such-tool-a, dot-sidecar-no-such-tool-b" (Debian packages; see .ci/run); ` +
		"testdata/nothing.txt does not exist\n"
	if stderr.String() != want {
		t.Errorf("stderr:\n%q\nwant\n%q", stderr.String(), want)
	}
	if strings.Contains(stdout.String(), "skipped") {
		t.Errorf("the summary went to stdout as well:\n%s", stdout.String())
	}
}

// TestCheckFails: a check that fails after passing tests makes the package
// fail, naming the package and the check's error.
func TestCheckFails(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "-test.run=^TestWaitFor$")
	cmd.Env = []string{childFailCheck + "=1", "PATH=/usr/bin:/bin"}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 ||
		!strings.Contains(string(out), "github.com/dot-sidecar/dot-sidecar/sidecar/testkit: after the tests: the check failed") {
		t.Errorf("child: %v\n%s\nwant exit 1 naming the failed check", err, out)
	}
}

func TestSummaryNothingSkipped(t *testing.T) {
	var l skipLog
	if got := l.summary(); got != "" {
		t.Errorf("summary with nothing skipped: %q", got)
	}
	l.add("TestRoot", needsRoot, nil)
	if got, want := l.summary(), "skipped 1 test: "+needsRoot; got != want {
		t.Errorf("summary %q, want %q", got, want)
	}
}

func TestWaitFor(t *testing.T) {
	n := 0
	WaitFor(t, "the third call", time.Second, func() error {
		n++
		if n < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if n != 3 {
		t.Errorf("cond called %d times, want 3", n)
	}
	start := time.Now()
	err := poll(50*time.Millisecond, func() error { return errors.New("never") })
	if err == nil || err.Error() != "never" {
		t.Errorf("Poll = %v, want cond's last error", err)
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Errorf("Poll gave up after %v, before its timeout", d)
	}
	calls := 0
	err = poll(time.Minute, func() error { calls++; return Permanent(errors.New("exited")) })
	if err == nil || err.Error() != "exited" || calls != 1 {
		t.Errorf("Poll on a permanent error = %v after %d calls, want it at once", err, calls)
	}
}
