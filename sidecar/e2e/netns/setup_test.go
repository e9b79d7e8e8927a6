package netns

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// lookPath finds a program in cmdEnv's PATH: `go test` may run with a PATH
// that lacks the sbin directories where Debian keeps ip and iptables.
func lookPath(name string) string {
	for _, dir := range strings.Split(strings.TrimPrefix(cmdEnv[0], "PATH="), ":") {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return name
}

// sharedDir is a directory the unprivileged UIDs of the test can read and
// traverse (t.TempDir is 0700 under a 0700 parent, unreadable to the
// sidecar's UID, which must load its CA file and binary from it). With keep,
// it outlives a failed test so that its logs and captures can be read.
func sharedDir(t *testing.T, keep bool) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "dot-sidecar-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if keep && t.Failed() {
			t.Logf("keeping %s for inspection", dir)
			return
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("removing %s: %v", dir, err)
		}
	})
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// buildSidecar builds pkg (./sidecar) the way the Dockerfile does (static,
// no cgo) into dir.
func buildSidecar(t *testing.T, root, pkg, dir string) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go not on PATH (go test puts GOROOT/bin there): %v", err)
	}
	bin := filepath.Join(dir, "dot-sidecar")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-o", bin, pkg)
	c.Dir = root
	c.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := c.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

// copyFile copies src to dst with mode (readable by the sidecar's UID).
func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dst, mode); err != nil { // WriteFile's mode is masked by umask
		t.Fatal(err)
	}
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}
