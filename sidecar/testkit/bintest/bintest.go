// Package bintest builds the dot-sidecar binary from this tree, the one way
// the project builds it: the release build the Dockerfile runs (static,
// without cgo, reproducible paths, stripped, version stamped). Tests use the
// binary that ships, the end-to-end packages build it once each, and the
// load harness (sidecar/bench) builds it the same way.
//
//	func TestMain(m *testing.M) { testkit.Main(m) }
//
//	bin := bintest.Binary(t)        // built on first use, once per package
//	s := bintest.Start(t, "UPSTREAMS=...", "TLS_CA_FILE=...")
//	code, body := s.Get("/readyz")
//
// The Dockerfile's build command is ShellCommand's text; sidecar/e2e/image
// holds the two to each other and checks what the build makes.
package bintest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
)

// MainPackage is the main package built, relative to the repository root.
const MainPackage = "./sidecar"

// TestVersion is the version stamped into the binary tests build.
const TestVersion = "0.0.0-test"

// buildEnv is what the release build sets in the environment: no cgo, so
// the binary needs no libc and runs on any base image.
var buildEnv = []string{"CGO_ENABLED=0"}

// ldflags strips the symbol table and DWARF (-s -w) and stamps the version.
func ldflags(version string) string { return "-s -w -X main.version=" + version }

// BuildArgs are the arguments of go for the release build of version into
// out, run from the repository root.
func BuildArgs(version, out string) []string {
	return []string{"build", "-trimpath", "-ldflags", ldflags(version), "-o", out, MainPackage}
}

// ShellCommand is the release build as a shell command line, as the
// Dockerfile's RUN writes it: version is a shell word such as ${VERSION}.
func ShellCommand(version, out string) string {
	args := BuildArgs(version, out)
	for i, a := range args {
		if strings.ContainsAny(a, " $") {
			args[i] = `"` + a + `"`
		}
	}
	return strings.Join(buildEnv, " ") + " go " + strings.Join(args, " ")
}

// Build runs the release build of version into out, in root (the
// repository's root), with the go found on PATH (go test puts the toolchain
// that runs the tests first).
func Build(ctx context.Context, root, out, version string) error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("building dot-sidecar: %w", err)
	}
	cmd := exec.CommandContext(ctx, goBin, BuildArgs(version, out)...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), buildEnv...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s (in %s): %w\n%s", ShellCommand(version, out), root, err, b)
	}
	return nil
}

var built struct {
	once sync.Once
	path string
	err  error
}

// Binary returns the path of the release build of this tree (TestVersion),
// made on the package's first call and shared by its tests. It lies in a
// directory every UID can read and enter, so that tests may run it as the
// sidecar's own UID, and is removed when the package's tests end: the
// package's TestMain must be testkit.Main.
func Binary(t testing.TB) string {
	t.Helper()
	testkit.RequireMain(t)
	root := testkit.RepoRoot(t)
	built.once.Do(func() {
		dir, err := os.MkdirTemp("", "dot-sidecar-bin-")
		if err == nil {
			err = os.Chmod(dir, 0o755)
		}
		if err != nil {
			built.err = err
			return
		}
		testkit.AtExit(t, func() { os.RemoveAll(dir) })
		built.path = filepath.Join(dir, "dot-sidecar")
		built.err = Build(context.Background(), root, built.path, TestVersion)
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.path
}
