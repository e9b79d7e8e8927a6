package netns

import (
	"os"
	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// sharedDir is a directory the unprivileged UIDs of the test can read and
// traverse (t.TempDir is 0700 under a 0700 parent, unreadable to the
// sidecar's UID, which must load its CA file and binary from it). With keep,
// it outlives a failed test so that its logs and captures can be read.
func sharedDir(t testing.TB, keep bool) string {
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

// copyFile copies src to dst with mode (readable by the sidecar's UID).
func copyFile(t testing.TB, src, dst string, mode os.FileMode) {
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
