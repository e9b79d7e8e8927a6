package iptables

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// The helpers below mirror sidecar/internal/testenv, which Go's internal rule
// keeps out of reach of this directory (it sits outside sidecar/). Same
// contract: skip on a developer's machine, saying what is missing; fail under
// CI=true, where .ci/run installs everything.

func inCI() bool {
	v, err := strconv.ParseBool(os.Getenv("CI"))
	return err == nil && v
}

func missing(t testing.TB, what string) {
	t.Helper()
	if inCI() {
		t.Fatalf("%s (CI=true: .ci/run must provide it)", what)
	}
	t.Skipf("skipping: %s", what)
}

// requireTools returns the full paths of the named executables (PATH, then
// Debian's sbin directories), or skips/fails naming those not found.
func requireTools(t testing.TB, names ...string) map[string]string {
	t.Helper()
	paths := make(map[string]string, len(names))
	var lack []string
	for _, n := range names {
		p, err := exec.LookPath(n)
		if err != nil {
			for _, dir := range []string{"/usr/sbin/", "/sbin/"} {
				if _, serr := os.Stat(dir + n); serr == nil {
					p, err = dir+n, nil
					break
				}
			}
		}
		if err != nil {
			lack = append(lack, n)
			continue
		}
		paths[n] = p
	}
	if len(lack) > 0 {
		missing(t, "missing tools "+strconv.Quote(strings.Join(lack, ", "))+" (Debian packages; see .ci/run)")
	}
	return paths
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		missing(t, "this test needs root (network namespaces and iptables)")
	}
}
