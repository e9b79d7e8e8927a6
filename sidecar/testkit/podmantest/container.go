package podmantest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/netnstest"
)

// Spec describes a container: the podman run flags for what a Kubernetes
// container spec says. The zero value of each field is podman's default,
// except Network: no network at all unless one is named.
type Spec struct {
	// Name is the container's role ("sidecar"); the container's name adds
	// a prefix unique to the test.
	Name  string
	Image string
	// Entrypoint replaces the image's (a container's command); Args are
	// its arguments.
	Entrypoint []string
	Args       []string
	// User is "UID:GID" (runAsUser, runAsGroup).
	User string
	// Network is a podman network mode: "ns:" + a namespace's path (see
	// Netns), "none" (the default), or "container:NAME".
	Network string
	// Pod runs the container in a pod (of `podman kube play`).
	Pod string
	// Env are NAME=VALUE settings.
	Env []string
	// CapDrop and CapAdd change the capabilities, drops first
	// (capabilities.drop, capabilities.add).
	CapDrop, CapAdd []string
	// ReadOnly makes the root filesystem read-only, without the tmpfs
	// podman would otherwise mount on /run, /tmp and /var/tmp
	// (readOnlyRootFilesystem: only the declared volumes are writable).
	ReadOnly bool
	// NoNewPrivileges is allowPrivilegeEscalation: false.
	NoNewPrivileges bool
	// Tmpfs mounts, "PATH[:OPTIONS]" (emptyDir volumes in memory).
	Tmpfs []string
	// Volumes are bind mounts, "HOST:CONTAINER[:OPTIONS]" (hostPath).
	Volumes []string
	// DNS, DNSSearch and DNSOptions write the container's resolv.conf, as
	// the kubelet does from the cluster's DNS settings.
	DNS, DNSSearch, DNSOptions []string
	// Memory and CPUs are resource limits ("128m", "0.1").
	Memory, CPUs string
	// Extra are more podman run flags, before the image.
	Extra []string
}

// Netns is the Network mode of a container that joins ns: a pod's
// containers share one network namespace the same way.
func Netns(ns *netnstest.Netns) string { return "ns:" + ns.Path() }

// RunArgs are the podman run flags for s, up to and including its image
// and arguments.
func (s Spec) RunArgs() ([]string, error) {
	var a []string
	add := func(flag string, values ...string) {
		for _, v := range values {
			a = append(a, flag, v)
		}
	}
	network := s.Network
	if network == "" && s.Pod == "" {
		network = "none"
	}
	if network != "" {
		add("--network", network)
	}
	if s.Pod != "" {
		add("--pod", s.Pod)
	}
	if s.User != "" {
		add("--user", s.User)
	}
	add("--cap-drop", s.CapDrop...)
	add("--cap-add", s.CapAdd...)
	if s.ReadOnly {
		a = append(a, "--read-only", "--read-only-tmpfs=false")
	}
	if s.NoNewPrivileges {
		add("--security-opt", "no-new-privileges")
	}
	add("--tmpfs", s.Tmpfs...)
	add("-v", s.Volumes...)
	add("--env", s.Env...)
	add("--dns", s.DNS...)
	add("--dns-search", s.DNSSearch...)
	add("--dns-option", s.DNSOptions...)
	if s.Memory != "" {
		add("--memory", s.Memory)
	}
	if s.CPUs != "" {
		add("--cpus", s.CPUs)
	}
	if s.Entrypoint != nil {
		ep, err := json.Marshal(s.Entrypoint)
		if err != nil {
			return nil, err
		}
		add("--entrypoint", string(ep))
	}
	a = append(a, s.Extra...)
	if s.Image == "" {
		return nil, fmt.Errorf("container %q: no image", s.Name)
	}
	a = append(a, s.Image)
	return append(a, s.Args...), nil
}

// Container is a container a test started.
type Container struct {
	// Name is the container's name in the store.
	Name string
	e    *Engine
}

// containerName is unique across tests, packages and runs.
func containerName(t testing.TB, role string) string {
	return netnstest.UniqueName(t) + "-" + role
}

func (e *Engine) runArgs(name string, s Spec, flags ...string) ([]string, error) {
	args, err := s.RunArgs()
	if err != nil {
		return nil, err
	}
	head := append([]string{"run", "--name", name, "--label", Label + "=" + strconv.Itoa(os.Getpid())}, flags...)
	return append(head, args...), nil
}

// Start starts s in the background (podman run -d) and removes the
// container when the test ends, logging what it printed if the test failed.
func (e *Engine) Start(t testing.TB, s Spec) *Container {
	t.Helper()
	c := &Container{Name: containerName(t, s.Name), e: e}
	args, err := e.runArgs(c.Name, s, "-d")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- container %s (%s) output ---\n%s", s.Name, c.Name, testkit.Tail(c.Logs(), 60))
		}
		e.remove(c.Name)
	})
	e.Must(t, args...)
	return c
}

// Run runs s to its end (podman run --rm, attached) and returns what it
// printed and how it exited; ctx bounds it, and a container ctx outlives is
// removed.
func (e *Engine) Run(ctx context.Context, t testing.TB, s Spec) netnstest.Result {
	t.Helper()
	name := containerName(t, s.Name)
	args, err := e.runArgs(name, s, "--rm")
	if err != nil {
		t.Fatal(err)
	}
	r := e.Exec(ctx, args...)
	if ctx.Err() != nil {
		e.remove(name)
	}
	return r
}

func (e *Engine) remove(name string) {
	ctx, cancel := context.WithTimeout(context.Background(), CommandTimeout)
	defer cancel()
	_ = e.Exec(ctx, "rm", "-f", "-t", "0", name)
}

// Exec runs argv in the container (podman exec) with env added.
func (c *Container) Exec(ctx context.Context, env []string, argv ...string) netnstest.Result {
	args := []string{"exec"}
	for _, v := range env {
		args = append(args, "--env", v)
	}
	return c.e.Exec(ctx, append(append(args, c.Name), argv...)...)
}

// Stop stops the container, SIGTERM then, after timeout, SIGKILL, and
// fails t if it is still running afterwards.
func (c *Container) Stop(t testing.TB, timeout time.Duration) {
	t.Helper()
	c.e.Must(t, "stop", "-t", strconv.Itoa(int(timeout.Seconds())), c.Name)
	if c.Running(t) {
		t.Fatalf("container %s still running after podman stop", c.Name)
	}
}

// Running reports whether the container is running.
func (c *Container) Running(t testing.TB) bool {
	t.Helper()
	return c.Inspect(t, "{{.State.Running}}") == "true"
}

// Inspect returns a field of podman inspect, by Go template.
func (c *Container) Inspect(t testing.TB, format string) string {
	t.Helper()
	return c.e.Must(t, "container", "inspect", "--format", format, c.Name)
}

// Logs returns what the container printed, stdout and stderr.
func (c *Container) Logs() string {
	ctx, cancel := context.WithTimeout(context.Background(), CommandTimeout)
	defer cancel()
	r := c.e.Exec(ctx, "logs", c.Name)
	if r.Err != nil {
		return r.String()
	}
	return strings.TrimRight(r.Stdout+r.Stderr, "\n")
}
