package image

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/podmantest"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/unboundtest"
)

// What podman can play: `podman kube play` (4.3, Debian bookworm's) plays
// Deployments but not DaemonSets (manifests/node), and refuses an init
// container with a probe or a lifecycle hook, which is what a native
// sidecar is (an init container with restartPolicy: Always and a startup
// probe): manifests/base, components/inject and the examples built on it
// cannot be played. components/inject-legacy, for clusters before 1.29, has
// only regular containers and one plain init container, and is played
// here, applied to an application of the test's own as an operator applies
// it to theirs, with one change for podman: the pod's restartPolicy is
// OnFailure. Podman 4.3 applies the pod's policy to init containers too;
// with Always, a Deployment's only value, it restarts the iptables init
// container as soon as it exits, and kube play then fails removing it
// ("cannot remove container ... as it is running"). Podman does not run the
// postStart hook (the sidecar's `dot-sidecar wait`) nor the startup and
// readiness probes; the test waits for readiness itself.

// slirpHost is the address at which a pod on slirp4netns with
// allow_host_loopback reaches this machine's loopback.
const slirpHost = "10.0.2.2"

// playKustomization is an operator's own kustomization: their workload,
// components/inject-legacy, and a component of theirs after it with the
// settings for their upstream (here the test's Unbound), its CA mounted
// into the sidecar, and their copy of the image. A component changes what
// the components before it made; the kustomization's own generators and
// patches would run before them.
func playKustomization(t *testing.T, dir, component, appImage, caDir string, u *unboundtest.Server) {
	t.Helper()
	_, port, _ := strings.Cut(u.Addr, ":")
	i := strings.LastIndex(podmantest.ProjectImageRef, ":")
	imageName, imageTag := podmantest.ProjectImageRef[:i], podmantest.ProjectImageRef[i+1:]
	files := map[string]string{
		"kustomization.yaml": fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- app.yaml
components:
- %s
- ours
`, component),
		"ours/kustomization.yaml": fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1alpha1
kind: Component
configMapGenerator:
- name: dot-sidecar
  behavior: merge
  literals:
  - UPSTREAMS=tls://%s:%s#%s
  - TLS_CA_FILE=%s
patches:
- path: upstream-ca.yaml
- path: restart-policy.yaml
images:
- name: %s
  newName: %s
  newTag: %s
`, slirpHost, port, u.ServerName, caInContainer, projectImageRepo, imageName, imageTag),
		"app.yaml": fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: podman-play
  labels:
    dot-sidecar/enabled: "true"
spec:
  replicas: 1
  selector:
    matchLabels: {app: podman-play}
  template:
    metadata:
      labels: {app: podman-play}
    spec:
      containers:
      - name: app
        image: %s
        command: ["/bin/sleep", "infinity"]
        securityContext:
          runAsUser: 10100
          runAsGroup: 10100
          runAsNonRoot: true
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities:
            drop: ["ALL"]
`, appImage),
		"ours/restart-policy.yaml": `apiVersion: apps/v1
kind: Deployment
metadata:
  name: podman-play
spec:
  template:
    spec:
      restartPolicy: OnFailure
`,
		"ours/upstream-ca.yaml": fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: podman-play
spec:
  template:
    spec:
      containers:
      - name: dot-sidecar
        volumeMounts:
        - name: upstream-ca
          mountPath: %s
          readOnly: true
      volumes:
      - name: upstream-ca
        hostPath:
          path: %s
          type: Directory
`, filepath.Dir(caInContainer), caDir),
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPodmanKubePlay plays components/inject-legacy, applied to an
// application, with `podman kube play` and the image built from the
// Dockerfile: podman runs the iptables init container, then the sidecar and
// the application with the manifests' security settings; the application's
// lookups over UDP and TCP are answered over DoT by Unbound on this
// machine's loopback, and `dot-sidecar check` run in the pod by hand (the
// legacy component's advice) passes.
func TestPodmanKubePlay(t *testing.T) {
	t.Parallel()
	e := podmantest.New(t)
	tools := testkit.RequireTools(t, append([]string{"nsenter", "iptables-save"}, podmantest.PlayTools...)...)
	img := e.ProjectImage(t)
	base := e.BaseImages(t)
	t.Logf("podman %s", e.Must(t, "version", "--format", "{{.Client.Version}}"))

	u := unboundtest.Start(t, unboundtest.Options{Names: 8})
	caDir := sharedDir(t)
	if err := os.WriteFile(filepath.Join(caDir, filepath.Base(caInContainer)), u.CAPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	component, err := filepath.Rel(dir, filepath.Join(testkit.RepoRoot(t), "manifests", "components", "inject-legacy"))
	if err != nil {
		t.Fatal(err)
	}
	playKustomization(t, dir, component, base.Debian, caDir, u)
	manifest := renderKustomization(t, dir)

	start := time.Now()
	if r := e.Play(t, manifest, "--network", "slirp4netns:allow_host_loopback=true"); r.Err != nil {
		t.Fatalf("%v\n--- played ---\n%s", r, manifest)
	}
	t.Logf("podman kube play took %v", time.Since(start).Round(time.Second))
	podName := e.Must(t, "pod", "ps", "--filter", "name=^podman-play", "--format", "{{.Name}}")
	if podName == "" || strings.Contains(podName, "\n") {
		t.Fatalf("want one pod podman-play*, have %q", podName)
	}
	sidecar, app := e.PodContainer(podName+"-dot-sidecar"), e.PodContainer(podName+"-app")

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if r := sidecar.Exec(ctx, nil, "/opt/dot-sidecar/entrypoint.sh", "wait"); r.Err != nil {
		t.Fatalf("%v\n%s", r, sidecar.Logs())
	}

	t.Run("the manifests' security settings applied", func(t *testing.T) {
		for c, want := range map[*podmantest.Container]string{sidecar: "10053:10053", app: "10100:10100"} {
			got := c.Inspect(t, "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}} {{.EffectiveCaps}} {{.HostConfig.SecurityOpt}}")
			if got != want+" true [] [no-new-privileges]" {
				t.Errorf("%s: user, read-only root, capabilities, options = %q; want %s, true, none, no-new-privileges", c.Name, got, want)
			}
		}
	})

	t.Run("the init container's rules are in the pod", func(t *testing.T) {
		infra := e.Must(t, "pod", "inspect", "--format", "{{.InfraContainerID}}", podName)
		pid := e.Must(t, "container", "inspect", "--format", "{{.State.Pid}}", infra)
		out, err := exec.CommandContext(ctx, tools["nsenter"], "-t", pid, "-n", tools["iptables-save"], "-t", "nat").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "-A OUTPUT -m comment --comment \"dot-sidecar/capture-dns\" -j DOT_SIDECAR_OUTPUT") {
			t.Errorf("the pod's nat table has no jump to DOT_SIDECAR_OUTPUT (%v):\n%s", err, out)
		}
	})

	t.Run("application lookups answered through DoT", func(t *testing.T) {
		before := queriesOverTLS(t, u)
		for i, env := range [][]string{nil, {"RES_OPTIONS=use-vc"}} {
			rec := u.Names[i]
			name := strings.TrimSuffix(rec.Name, ".")
			if r := app.Exec(ctx, env, "getent", "ahosts", name); r.Err != nil || !strings.Contains(r.Stdout, rec.A.String()+" ") {
				t.Errorf("getent ahosts %s %v: want %s:\n%v", name, env, rec.A, r)
			}
		}
		if got := queriesOverTLS(t, u) - before; got < 2 {
			t.Errorf("Unbound received %v queries over TLS for 2 lookups", got)
		}
	})

	t.Run("check passes in the pod", func(t *testing.T) {
		basePod := renderPod(t, "base", "Deployment/dns-client")
		check := basePod.runSpec(t, basePod.container(t, "dot-sidecar-check"), runOptions{image: img.Ref})
		check.Network, check.Pod = "", podName
		r := e.Run(ctx, t, check)
		if r.Err != nil || !strings.Contains(r.Stdout, "OK: all") {
			t.Fatalf("check: %v", r)
		}
		t.Logf("check in the played pod:\n%s", r.Stdout)
	})
}

func queriesOverTLS(t *testing.T, u *unboundtest.Server) float64 {
	t.Helper()
	return (&upstream{unbound: u}).dotQueries(t)
}
