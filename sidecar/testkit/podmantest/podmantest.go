// Package podmantest builds the project's image and runs its containers with
// podman, on a machine without a registry: the end-to-end tests of the image
// (sidecar/e2e/image) use it to run the image the way a cluster does.
//
//	e := podmantest.New(t)           // root, podman, runc, debootstrap; configured
//	img := e.ProjectImage(t)         // the repository's Dockerfile, built once
//	spec := podmantest.Spec{Name: "sidecar", Image: img.Ref, User: "10053:10053",
//		Network: podmantest.Netns(ns), ReadOnly: true, CapDrop: []string{"ALL"}}
//	c := e.Start(t, spec)            // podman run -d; removed at cleanup
//	res := c.Exec(ctx, nil, "id")    // podman exec
//	res = e.Run(ctx, t, spec)        // podman run --rm, to its exit
//	e.Play(t, yaml, "--network", "slirp4netns") // podman kube play; kube down at cleanup
//
// The machine's podman configuration and store are neither read nor
// changed: every command runs with CONTAINERS_CONF and
// CONTAINERS_STORAGE_CONF pointing at files this package writes under Dir,
// so the store (images, containers) is one of its own, and the settings are
// those that work on a bare Debian machine: runc as the runtime, cgroupfs,
// events in a file, container ulimits the test process may grant.
//
// There is no registry: the base images the Dockerfile names are made here.
// A Debian bookworm root filesystem comes from debootstrap (variant minbase,
// then trimmed like the official slim images) and is imported as an image;
// the Go build stage's image is the same root filesystem with the Go
// toolchain running the tests and the CA bundle this machine trusts (the Go
// module proxy may be reached through it). Both are kept between runs, in
// Dir (a tarball) and in the store (the images), under names carrying a hash
// of what they are made from; set DOT_SIDECAR_PODMAN_REFRESH=1 to make them
// again (a new Debian point release), or remove Dir to start from nothing.
//
// New skips the test (fails it under CI=true) without root or the tools.
// Containers a test starts are labelled with the test process's PID and
// removed when the test ends; those of a killed run are removed by the next
// run's New.
package podmantest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/netnstest"
)

// Settings read from the environment.
const (
	// DirEnv overrides DefaultDir.
	DirEnv = "DOT_SIDECAR_PODMAN_DIR"
	// RefreshEnv, set to 1, makes the base images again instead of reusing
	// those made by an earlier run.
	RefreshEnv = "DOT_SIDECAR_PODMAN_REFRESH"
	// MirrorEnv overrides DefaultMirror.
	MirrorEnv = "DOT_SIDECAR_DEBIAN_MIRROR"
)

// DefaultDir holds what outlives a run: the configuration, the store and
// the base images' root filesystems. /var/tmp survives reboots, unlike /tmp.
const DefaultDir = "/var/tmp/dot-sidecar-podman"

// RunDir holds podman's runtime state (run root, locks, exit files) for
// the store in DefaultDir: on tmpfs, cleared at boot like the containers it
// describes. Another Dir gets a run directory of its own beside it.
const RunDir = "/run/dot-sidecar-podman"

// runDir is RunDir for DefaultDir, RunDir-HASH for any other: two stores
// must never share run state.
func runDir(dir string) string {
	if dir == DefaultDir {
		return RunDir
	}
	return RunDir + "-" + hashKey(dir)
}

// Label marks every container started through this package; its value is
// the PID of the test process that started it.
const Label = "dot-sidecar-test.pid"

// CommandTimeout bounds a podman command that starts, stops or inspects
// something; builds and base images have longer bounds of their own.
const CommandTimeout = 2 * time.Minute

// Tools are the programs New requires (Debian packages podman, runc and
// debootstrap).
var Tools = []string{"podman", "runc", "conmon", "debootstrap", "tar"}

// Engine runs podman with this package's configuration and store.
type Engine struct {
	// Dir is DefaultDir or the directory DirEnv names.
	Dir string
	// Podman is the podman executable.
	Podman string

	env   []string
	tools map[string]string // Tools, by name
}

var shared struct {
	once sync.Once
	e    *Engine
	err  error
}

// New returns the engine, configuring it on the process's first call. It
// skips the test (fails it under CI=true) without root or Tools.
func New(t testing.TB) *Engine {
	t.Helper()
	testkit.RequireRoot(t)
	paths := testkit.RequireTools(t, Tools...)
	shared.once.Do(func() { shared.e, shared.err = configure(paths) })
	if shared.err != nil {
		t.Fatalf("configuring podman: %v", shared.err)
	}
	return shared.e
}

func configure(tools map[string]string) (*Engine, error) {
	dir := os.Getenv(DirEnv)
	if dir == "" {
		dir = DefaultDir
	}
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("%s=%s: want an absolute path", DirEnv, dir)
	}
	e := &Engine{Dir: dir, Podman: tools["podman"], tools: tools}
	conf, err := e.writeConfig()
	if err != nil {
		return nil, err
	}
	e.env = append(os.Environ(), "CONTAINERS_CONF="+conf.containers, "CONTAINERS_STORAGE_CONF="+conf.storage)
	e.removeStale()
	return e, nil
}

// Command returns podman with args, in this package's configuration.
func (e *Engine) Command(ctx context.Context, args ...string) *exec.Cmd {
	c := exec.CommandContext(ctx, e.Podman, args...)
	c.Env = e.env
	c.WaitDelay = time.Second
	return c
}

// Exec runs podman with args, bounded by ctx, and returns what it printed.
func (e *Engine) Exec(ctx context.Context, args ...string) netnstest.Result {
	return e.ExecInput(ctx, nil, args...)
}

// ExecInput is Exec with stdin.
func (e *Engine) ExecInput(ctx context.Context, stdin []byte, args ...string) netnstest.Result {
	c := e.Command(ctx, args...)
	if stdin != nil {
		c.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	err := c.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (%v)", err, ctx.Err())
	}
	return netnstest.Result{Argv: "podman " + strings.Join(args, " "), Stdout: out.String(), Stderr: errb.String(), Err: err}
}

// Must runs podman with args, bounded by CommandTimeout, fails t unless it
// exits 0, and returns its stdout without the trailing newline.
func (e *Engine) Must(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), CommandTimeout)
	defer cancel()
	r := e.Exec(ctx, args...)
	if r.Err != nil {
		t.Fatalf("%v", r)
	}
	return strings.TrimRight(r.Stdout, "\n")
}

// ImageExists reports whether the store holds ref.
func (e *Engine) ImageExists(ctx context.Context, ref string) (bool, error) {
	r := e.Exec(ctx, "image", "exists", ref)
	switch r.Code() {
	case 0:
		return true, nil
	case 1:
		return false, nil
	default:
		return false, fmt.Errorf("%v", r)
	}
}

// removeStale removes the containers of test processes that are gone (a
// run killed before its cleanups): they would hold names, namespaces and
// images.
func (e *Engine) removeStale() {
	ctx, cancel := context.WithTimeout(context.Background(), CommandTimeout)
	defer cancel()
	r := e.Exec(ctx, "ps", "-a", "--filter", "label="+Label, "--format", `{{.ID}} {{index .Labels "`+Label+`"}}`)
	if r.Err != nil {
		return // a store that does not exist yet has nothing stale
	}
	for _, l := range strings.Split(strings.TrimSpace(r.Stdout), "\n") {
		id, pid, ok := strings.Cut(l, " ")
		if !ok || processAlive(pid) {
			continue
		}
		_ = e.Exec(ctx, "rm", "-f", "-t", "0", id)
	}
}

func processAlive(pid string) bool {
	_, err := os.Stat(filepath.Join("/proc", pid))
	return !errors.Is(err, os.ErrNotExist)
}
