// Package testkit decides what a test does when the machine lacks something it
// needs. On a developer's machine with only Go, such tests skip and say what is
// missing; under CI (CI=true) a missing tool or privilege is a failure, never a
// skip, because CI installs everything the suite needs.
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
func Missing(t testing.TB, what string) {
	t.Helper()
	if InCI() {
		t.Fatalf("%s (CI=true: .ci/run must provide it)", what)
	}
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
		Missing(t, "missing tools "+strconv.Quote(strings.Join(missing, ", "))+" (Debian packages; see .ci/run)")
	}
	return paths
}

// RequireRoot skips (fails under CI) unless the test runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "this test needs root (network namespaces and iptables)")
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
