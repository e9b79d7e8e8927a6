package testkit

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// Main runs the package's tests, then the functions given to AtExit, then,
// if the tests passed, each check (a goroutine leak check, say), and prints
// one line saying how many tests skipped for lack of a tool, of root or of a
// file, and why; it exits with the tests' status, or 1 when a check fails.
// Use it as the package's TestMain:
//
//	func TestMain(m *testing.M) { testkit.Main(m) }
//	func TestMain(m *testing.M) { testkit.Main(m, func() error { return goleak.Find() }) }
//
// The line names the package, for example
//
//	github.com/dot-sidecar/dot-sidecar/iptables: skipped 7 tests: missing tools "unbound" (Debian packages; see .ci/run)
//
// and is printed only when something skipped (never under CI, where a
// missing tool fails the test instead). A result go test replays from its
// cache does not repeat it; -count=1 runs the tests again.
func Main(m *testing.M, checks ...func() error) {
	pkg := callerPackage()
	mainState.mu.Lock()
	mainState.running = true
	mainState.mu.Unlock()

	code := m.Run()

	mainState.mu.Lock()
	exits := mainState.atExit
	mainState.atExit = nil
	mainState.mu.Unlock()
	for _, f := range slices.Backward(exits) {
		f()
	}
	for _, check := range checks {
		if code != 0 {
			break
		}
		if err := check(); err != nil {
			fmt.Fprintf(os.Stderr, "%s: after the tests: %v\n", pkg, err)
			code = 1
		}
	}
	if line := skips.summary(); line != "" {
		w, closeW := summaryWriter()
		fmt.Fprintf(w, "%s: %s\n", pkg, line)
		closeW()
	}
	os.Exit(code)
}

var mainState struct {
	mu      sync.Mutex
	running bool
	atExit  []func()
}

// AtExit registers f to run once every test of the package has finished,
// before Main exits (the last registered runs first): for what the tests
// share, such as a binary built once. It fails tb when the package's
// TestMain is not testkit.Main, since f would then never run.
func AtExit(tb testing.TB, f func()) {
	tb.Helper()
	RequireMain(tb)
	mainState.mu.Lock()
	defer mainState.mu.Unlock()
	mainState.atExit = append(mainState.atExit, f)
}

// RequireMain fails tb unless the package's TestMain is testkit.Main.
func RequireMain(tb testing.TB) {
	tb.Helper()
	mainState.mu.Lock()
	running := mainState.running
	mainState.mu.Unlock()
	if !running {
		tb.Fatal("this helper needs the package's TestMain to be testkit.Main: func TestMain(m *testing.M) { testkit.Main(m) }")
	}
}

// skips records the tests that Missing skipped, for Main's summary.
var skips skipLog

type skipLog struct {
	mu      sync.Mutex
	tests   map[string]bool // names of the skipped tests
	tools   map[string]bool // tools found missing
	reasons []string        // other reasons, in the order first seen
}

func (l *skipLog) add(test, reason string, tools []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.tests == nil {
		l.tests, l.tools = map[string]bool{}, map[string]bool{}
	}
	l.tests[test] = true
	for _, tool := range tools {
		l.tools[tool] = true
	}
	if len(tools) == 0 && !slices.Contains(l.reasons, reason) {
		l.reasons = append(l.reasons, reason)
	}
}

// summary is "skipped N tests: REASON; REASON", or "" when nothing skipped.
// Missing tools are merged into one reason naming each tool once.
func (l *skipLog) summary() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.tests) == 0 {
		return ""
	}
	var reasons []string
	if len(l.tools) > 0 {
		names := make([]string, 0, len(l.tools))
		for n := range l.tools {
			names = append(names, n)
		}
		slices.Sort(names)
		reasons = append(reasons, toolsReason(names))
	}
	reasons = append(reasons, l.reasons...)
	noun := "tests"
	if len(l.tests) == 1 {
		noun = "test"
	}
	return "skipped " + strconv.Itoa(len(l.tests)) + " " + noun + ": " + strings.Join(reasons, "; ")
}

// callerPackage is the import path of the package whose TestMain called
// Main (with "_test" for an external test package).
func callerPackage() string {
	pc, _, _, ok := runtime.Caller(2)
	if !ok {
		return filepath.Base(os.Args[0])
	}
	name := runtime.FuncForPC(pc).Name() // ".../iptables.TestMain"
	if i := strings.LastIndex(name, "."); i > strings.LastIndex(name, "/") {
		name = name[:i]
	}
	return name
}

// summaryWriter is where the summary line is seen. With -v (and -json)
// go test shows the test binary's output, so stdout is right. Without it,
// go test in package list mode (go test ./...) discards a passing package's
// output and prints only its "ok" line; the line then goes to the stderr of
// the go command that started this binary, which is the user's terminal or
// the CI log. Anything else gets stderr.
func summaryWriter() (io.Writer, func()) {
	if testing.Verbose() {
		return os.Stdout, func() {}
	}
	ppid := os.Getppid()
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", ppid))
	if err != nil || filepath.Base(exe) != "go" {
		return os.Stderr, func() {}
	}
	f, err := os.OpenFile(fmt.Sprintf("/proc/%d/fd/2", ppid), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return os.Stderr, func() {}
	}
	return f, func() { f.Close() }
}
