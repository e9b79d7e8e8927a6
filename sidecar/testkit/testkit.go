package testkit

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// InCI reports whether the tests run under CI, where nothing may be skipped
// for lack of a tool.
func InCI() bool {
	v, err := strconv.ParseBool(os.Getenv("CI"))
	return err == nil && v
}

// Missing skips the test, or fails it under CI, explaining what is missing.
// Main counts the skip in the package's summary line.
func Missing(t testing.TB, what string) {
	t.Helper()
	missing(t, what, nil)
}

func missing(t testing.TB, what string, tools []string) {
	t.Helper()
	if InCI() {
		t.Fatalf("%s (CI=true: .ci/run must provide it)", what)
	}
	skips.add(t.Name(), what, tools)
	t.Skipf("skipping: %s", what)
}

// RequireTools returns the full paths of the named executables, or skips (fails
// under CI) naming the ones not found on PATH.
func RequireTools(t testing.TB, names ...string) map[string]string {
	t.Helper()
	paths := make(map[string]string, len(names))
	var missing []string
	for _, n := range names {
		p, err := exec.LookPath(n)
		if err != nil {
			// Debian keeps daemons in sbin, which a non-login PATH may lack.
			for _, dir := range []string{"/usr/sbin/", "/sbin/"} {
				if _, serr := os.Stat(dir + n); serr == nil {
					p, err = dir+n, nil
					break
				}
			}
		}
		if err != nil {
			missing = append(missing, n)
			continue
		}
		paths[n] = p
	}
	if len(missing) > 0 {
		missingTools(t, missing)
	}
	return paths
}

const needsRoot = "this test needs root (network namespaces and iptables)"

// toolsReason is the reason given for missing tools, in a test's skip
// message and in the package's summary line alike.
func toolsReason(names []string) string {
	return "missing tools " + strconv.Quote(strings.Join(names, ", ")) + " (Debian packages; see .ci/run)"
}

func missingTools(t testing.TB, names []string) {
	t.Helper()
	missing(t, toolsReason(names), names)
}

// RequireRoot skips (fails under CI) unless the test runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, needsRoot)
	}
}

// RepoRoot returns the directory holding go.mod, found upwards from the
// test's working directory (the package's own directory under go test), so
// tests can read the README, the scripts and the manifests they check.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test's directory")
		}
		dir = parent
	}
}
