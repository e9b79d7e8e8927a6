package podmantest

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/netnstest"
)

// PlayTools are the programs `podman kube play` needs besides Tools:
// catatonit runs in the pod's infra container (podman builds that image
// locally from it), slirp4netns gives a pod a network of its own without a
// bridge or firewall rules on the machine.
var PlayTools = []string{"catatonit", "slirp4netns"}

// PlayTimeout bounds podman kube play, which returns once the pod's init
// containers have run and its containers have started.
const PlayTimeout = 3 * time.Minute

// Play writes manifest to a file and runs `podman kube play --replace` on
// it with flags, after checking PlayTools; it tears the pods down (`podman
// kube down`) when the test ends. --replace removes pods of the same names
// left by a killed run.
func (e *Engine) Play(t testing.TB, manifest []byte, flags ...string) netnstest.Result {
	t.Helper()
	testkit.RequireTools(t, PlayTools...)
	file := filepath.Join(t.TempDir(), "play.yaml")
	if err := os.WriteFile(file, manifest, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), CommandTimeout)
		defer cancel()
		if r := e.Exec(ctx, "kube", "down", file); r.Err != nil {
			t.Errorf("%v", r)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), PlayTimeout)
	defer cancel()
	args := append(append([]string{"kube", "play", "--replace"}, flags...), file)
	return e.Exec(ctx, args...)
}

// PodContainer is a container of a played pod, by its name (podman names
// them POD-CONTAINER).
func (e *Engine) PodContainer(name string) *Container { return &Container{Name: name, e: e} }
