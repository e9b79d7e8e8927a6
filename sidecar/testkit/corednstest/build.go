package corednstest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
)

// Version is the CoreDNS release the tests build, the one sidecar/bench's
// setup.sh installs.
const Version = "v1.14.7"

// Plugins are the only plugins compiled in, in no particular order (CoreDNS
// runs them in the order of its own core/dnsserver/zdirectives.go, whatever the
// order of their imports). Leaving out kubernetes, the cloud backends and
// the rest keeps client-go and the cloud SDKs out of the build: on two
// shared cores, with empty module and build caches, it took 17 s of module
// downloads and 200 s of compilation, against about ten minutes for a full
// `go install github.com/coredns/coredns`; with the modules cached, 90 s.
var Plugins = []string{
	"bind",    // listen on the test's address only
	"errors",  // plugin errors on stderr
	"log",     // the query log Queries reads
	"tls",     // the tls:// server block's certificate
	"file",    // the cluster's zones, as kube-dns would answer them
	"erratic", // SlowZone: answers after a delay
	"template",
}

// CacheRoot holds one directory per build (version, plugins, Go version and
// platform), kept between runs: only the first run on a machine pays the
// build.
var CacheRoot = filepath.Join(os.TempDir(), "dot-sidecar-coredns")

func init() {
	// /var/tmp survives reboots where /tmp may not; prefer it when present.
	if fi, err := os.Stat("/var/tmp"); err == nil && fi.IsDir() && os.Getenv("TMPDIR") == "" {
		CacheRoot = "/var/tmp/dot-sidecar-coredns"
	}
}

// BuildTimeout bounds a cold build: module downloads and compilation.
const BuildTimeout = 20 * time.Minute

// errModules marks a failure to resolve the modules (no module proxy, no
// network): a machine that cannot build, not a broken build.
var errModules = errors.New("resolving CoreDNS's modules")

var built struct {
	once sync.Once
	path string
	took time.Duration // zero when the cached binary was used
	err  error
}

// Binary returns the path of the CoreDNS binary, building it on the first
// call on this machine and reusing it afterwards. It skips the test (fails
// it under CI=true) when the modules cannot be fetched, and fails it when
// the build itself breaks.
func Binary(t testing.TB) string {
	t.Helper()
	testkit.RequireTools(t, "go")
	built.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), BuildTimeout)
		defer cancel()
		start := time.Now()
		var fresh bool
		built.path, fresh, built.err = Build(ctx)
		if fresh {
			built.took = time.Since(start)
		}
	})
	switch {
	case errors.Is(built.err, errModules):
		testkit.Missing(t, "CoreDNS "+Version+" cannot be built here: "+built.err.Error())
	case built.err != nil:
		t.Fatalf("building CoreDNS %s: %v", Version, built.err)
	}
	if built.took > 0 {
		t.Logf("built CoreDNS %s in %v (cached in %s)", Version, built.took.Round(time.Second), filepath.Dir(built.path))
	}
	return built.path
}

// Build makes the binary unless the cache already holds it, and returns its
// path and whether it was built now. Concurrent builds (test packages run
// in parallel) wait on a lock file, so only one of them compiles.
func Build(ctx context.Context) (path string, fresh bool, err error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", false, fmt.Errorf("%w: %w", errModules, err)
	}
	goVersion, err := goEnv(ctx, goBin, "GOVERSION")
	if err != nil {
		return "", false, err
	}
	dir := filepath.Join(CacheRoot, buildKey(goVersion))
	path = filepath.Join(dir, "coredns")
	if _, err := os.Stat(path); err == nil {
		return path, false, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", false, err
	}
	unlock, err := lockDir(ctx, dir)
	if err != nil {
		return "", false, err
	}
	defer unlock()
	if _, err := os.Stat(path); err == nil { // built while we waited
		return path, false, nil
	}
	if err := writeModule(dir, goVersion); err != nil {
		return "", false, err
	}
	// go mod tidy writes go.sum from the module proxy (checked against the
	// checksum database), so the build is reproducible from the pinned
	// version alone.
	if out, err := goCmd(ctx, goBin, dir, "mod", "tidy"); err != nil {
		return "", false, fmt.Errorf("%w: go mod tidy in %s: %w\n%s", errModules, dir, err, out)
	}
	tmp := path + ".tmp"
	if out, err := goCmd(ctx, goBin, dir, "build", "-trimpath", "-ldflags=-s -w", "-o", tmp, "."); err != nil {
		return "", false, fmt.Errorf("go build in %s: %w\n%s", dir, err, out)
	}
	// Renamed into place once complete, so that a build killed halfway
	// never leaves a binary that later runs would trust.
	if err := os.Rename(tmp, path); err != nil {
		return "", false, err
	}
	return path, true, nil
}

// buildKey names a build by everything that changes the binary.
func buildKey(goVersion string) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%s\n%s/%s\n", Version, strings.Join(Plugins, ","), goVersion, runtime.GOOS, runtime.GOARCH)
	h.Write([]byte(mainGo()))
	return Version + "-" + hex.EncodeToString(h.Sum(nil))[:16]
}

// mainGo is the generated program: CoreDNS's own main package, with its
// import of core/plugin, which lists every plugin, replaced by Plugins.
func mainGo() string {
	var b strings.Builder
	b.WriteString("// Code generated by corednstest; DO NOT EDIT.\n\n")
	b.WriteString("// CoreDNS with only the plugins dot-sidecar's tests use.\npackage main\n\nimport (\n")
	for _, p := range Plugins {
		fmt.Fprintf(&b, "\t_ \"github.com/coredns/coredns/plugin/%s\"\n", p)
	}
	b.WriteString("\n\t\"github.com/coredns/coredns/coremain\"\n)\n\nfunc main() { coremain.Run() }\n")
	return b.String()
}

func writeModule(dir, goVersion string) error {
	// The go line is the toolchain's own language version ("go1.26.8" →
	// "go 1.26"); go mod tidy raises it if CoreDNS needs more.
	lang := strings.TrimPrefix(goVersion, "go")
	if parts := strings.SplitN(lang, ".", 3); len(parts) >= 2 {
		lang = parts[0] + "." + parts[1]
	}
	gomod := "module dot-sidecar.test/coredns\n\ngo " + lang + "\n\nrequire github.com/coredns/coredns " + Version + "\n"
	for name, data := range map[string]string{"go.mod": gomod, "main.go": mainGo()} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			return err
		}
	}
	_ = os.Remove(filepath.Join(dir, "go.sum"))
	return nil
}

// goCmd runs go in dir, isolated from the environment's module settings: no
// workspace, no toolchain download, no -mod flag meant for this repository.
func goCmd(ctx context.Context, goBin, dir string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOTOOLCHAIN=local", "GOFLAGS=", "CGO_ENABLED=0")
	return cmd.CombinedOutput()
}

func goEnv(ctx context.Context, goBin, name string) (string, error) {
	out, err := exec.CommandContext(ctx, goBin, "env", name).Output()
	if err != nil {
		return "", fmt.Errorf("go env %s: %w", name, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// lockDir takes an exclusive lock on dir's lock file, waiting for another
// process's build to finish, and returns its release.
func lockDir(ctx context.Context, dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", dir, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for another process's CoreDNS build in %s: %w", dir, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}
