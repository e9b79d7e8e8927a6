package manifests

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/admin"
)

// pod is one workload's pod template with what the checks need around it.
type pod struct {
	where string // overlay and workload, for messages
	dir   string // overlay
	mode  string // "native", "legacy" or "node"
	spec  corev1.PodSpec
	meta  corev1.PodTemplateSpec
	cms   map[string]map[string]string
}

// dotSidecarPods returns the pods of every overlay that carry dot-sidecar.
func dotSidecarPods(t *testing.T) []pod {
	t.Helper()
	var pods []pod
	for _, dir := range overlayNames() {
		want := overlays[dir]
		objs := render(t, dir)
		for mode, ids := range map[string][]string{"native": want.native, "legacy": want.legacy, "node": want.node} {
			for _, id := range ids {
				w := findWorkload(t, objs, id)
				pods = append(pods, pod{where: dir + ": " + id, dir: dir, mode: mode, spec: w.Template.Spec, meta: *w.Template, cms: configMaps(objs)})
			}
		}
	}
	if len(pods) == 0 {
		t.Fatal("no pod with dot-sidecar rendered")
	}
	return pods
}

func (p pod) container(t *testing.T, name string) corev1.Container {
	t.Helper()
	for _, c := range slices.Concat(p.spec.InitContainers, p.spec.Containers) {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("%s: no container %s", p.where, name)
	return corev1.Container{}
}

// env returns the environment the kubelet gives container c: the envFrom
// ConfigMaps first, then env, which wins (config.Load, like the process
// environment, lets later entries win).
func (p pod) env(t *testing.T, c corev1.Container) []string {
	t.Helper()
	var env []string
	for _, ef := range c.EnvFrom {
		if ef.ConfigMapRef == nil {
			t.Errorf("%s %s: envFrom other than a ConfigMap", p.where, c.Name)
			continue
		}
		data := p.cms[ef.ConfigMapRef.Name]
		for _, k := range sortedKeys(data) {
			env = append(env, ef.Prefix+k+"="+data[k])
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom != nil {
			t.Errorf("%s %s: env %s from a reference; the checks read literal values", p.where, c.Name, e.Name)
		}
		env = append(env, e.Name+"="+e.Value)
	}
	return env
}

func lookup(env []string, key string) (string, bool) {
	val, ok := "", false
	for _, kv := range env {
		if k, v, _ := strings.Cut(kv, "="); k == key {
			val, ok = v, true
		}
	}
	return val, ok
}

// restricted checks the restricted security context every dot-sidecar
// container shares; root says whether this one is the root init step.
func restricted(t *testing.T, where string, c corev1.Container, root bool) {
	t.Helper()
	sc := c.SecurityContext
	if sc == nil {
		t.Errorf("%s: no securityContext", where)
		return
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("%s: allowPrivilegeEscalation must be false", where)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("%s: readOnlyRootFilesystem must be true", where)
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("%s: capabilities must drop ALL", where)
	}
	// On the container itself: an injected container cannot count on the
	// pod-level setting of a workload it does not own.
	if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: seccompProfile must be RuntimeDefault", where)
	}
	if sc.RunAsUser == nil || sc.RunAsGroup == nil || sc.RunAsNonRoot == nil {
		t.Errorf("%s: runAsUser, runAsGroup and runAsNonRoot must be explicit", where)
		return
	}
	if root {
		if *sc.RunAsUser != 0 || *sc.RunAsNonRoot {
			t.Errorf("%s: runs as %d (runAsNonRoot %v), want root for iptables", where, *sc.RunAsUser, *sc.RunAsNonRoot)
		}
		return
	}
	if *sc.RunAsUser == 0 || *sc.RunAsGroup == 0 || !*sc.RunAsNonRoot {
		t.Errorf("%s: runs as %d:%d (runAsNonRoot %v), want a non-root numeric identity", where, *sc.RunAsUser, *sc.RunAsGroup, *sc.RunAsNonRoot)
	}
}

// limited checks that requests and limits of CPU and memory are all set and
// that no request exceeds its limit.
func limited(t *testing.T, where string, c corev1.Container) {
	t.Helper()
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		lim, hasLim := c.Resources.Limits[r]
		req, hasReq := c.Resources.Requests[r]
		if !hasLim || !hasReq || lim.IsZero() || req.IsZero() {
			t.Errorf("%s: %s request and limit must both be set", where, r)
			continue
		}
		if req.Cmp(lim) > 0 {
			t.Errorf("%s: %s request %s exceeds limit %s", where, r, req.String(), lim.String())
		}
	}
	if mem := c.Resources.Limits[corev1.ResourceMemory]; mem.Cmp(resource.MustParse("16Mi")) < 0 {
		t.Errorf("%s: memory limit %s is too small for a Go process", where, mem.String())
	}
}

// probePort resolves a probe's port (by number or by the container's port
// name).
func probePort(t *testing.T, where string, c corev1.Container, p *corev1.Probe) int32 {
	t.Helper()
	if p == nil || p.HTTPGet == nil {
		t.Fatalf("%s: want an HTTP probe, got %+v", where, p)
	}
	if p.HTTPGet.Port.StrVal == "" {
		return p.HTTPGet.Port.IntVal
	}
	for _, cp := range c.Ports {
		if cp.Name == p.HTTPGet.Port.StrVal {
			return cp.ContainerPort
		}
	}
	t.Fatalf("%s: probe port %q is not a port of the container", where, p.HTTPGet.Port.StrVal)
	return 0
}

// TestSidecarContainer checks the relay container of every pod: restricted,
// limited, probed on the admin port at the paths the sidecar serves, with
// settings its own loader accepts.
func TestSidecarContainer(t *testing.T) {
	t.Parallel()
	defaults := loadSettings(t, nil)
	if defaults.AdminAddress != admin.DefaultAddr {
		t.Fatalf("config's ADMIN_ADDRESS default %q differs from admin.DefaultAddr %q", defaults.AdminAddress, admin.DefaultAddr)
	}
	defaultAdminPort := portOf(t, defaults.AdminAddress)
	for _, p := range dotSidecarPods(t) {
		t.Run(p.where, func(t *testing.T) {
			c := p.container(t, sidecarName)
			where := p.where + " " + c.Name
			if c.Image != projectImage {
				t.Errorf("%s: image %q, want %q", where, c.Image, projectImage)
			}
			if len(c.Command) != 1 {
				t.Fatalf("%s: command %v, want the image's entrypoint alone", where, c.Command)
			}
			restricted(t, where, c, false)
			limited(t, where, c)
			cfg := loadSettings(t, p.env(t, c))

			adminPort := portOf(t, cfg.AdminAddress)
			switch {
			case p.mode == "node" && adminPort == nodeLocalDNSMetricsPort:
				t.Errorf("%s: admin port %d on the host network, where NodeLocal DNSCache's metrics listen", where, adminPort)
			case p.mode != "node" && adminPort != defaultAdminPort:
				t.Errorf("%s: admin port %d, want the sidecar's default %d", where, adminPort, defaultAdminPort)
			}
			checkClusterDNS(t, p, c, cfg)
			if host := strings.Trim(cfg.AdminAddress[:strings.LastIndex(cfg.AdminAddress, ":")], "[]"); host != "" && host != "0.0.0.0" && host != "::" {
				t.Errorf("%s: ADMIN_ADDRESS %q: the kubelet probes the pod IP, so listen on every address", where, cfg.AdminAddress)
			}
			for _, pr := range []struct {
				name  string
				probe *corev1.Probe
				path  string
			}{
				{"startupProbe", c.StartupProbe, "/startupz"},
				{"livenessProbe", c.LivenessProbe, "/livez"},
				{"readinessProbe", c.ReadinessProbe, "/readyz"},
			} {
				pw := where + " " + pr.name
				if port := probePort(t, pw, c, pr.probe); port != adminPort {
					t.Errorf("%s: port %d, want the admin port %d", pw, port, adminPort)
				}
				if g := pr.probe.HTTPGet; g.Path != pr.path || g.Host != "" || (g.Scheme != "" && g.Scheme != corev1.URISchemeHTTP) {
					t.Errorf("%s: %s://%s%s, want plain HTTP to the pod IP at %s", pw, g.Scheme, g.Host, g.Path, pr.path)
				}
			}

			var caps []corev1.Capability
			if c.SecurityContext != nil && c.SecurityContext.Capabilities != nil {
				caps = c.SecurityContext.Capabilities.Add
			}
			switch p.mode {
			case "native":
				if c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways || c.Lifecycle != nil {
					t.Errorf("%s: want a native sidecar (restartPolicy Always, no hooks)", where)
				}
			case "legacy":
				if c.Lifecycle == nil || c.Lifecycle.PostStart == nil || c.Lifecycle.PostStart.Exec == nil ||
					!slices.Equal(c.Lifecycle.PostStart.Exec.Command, []string{c.Command[0], "wait"}) {
					t.Errorf("%s: want postStart exec [%s wait], got %+v", where, c.Command[0], c.Lifecycle)
				}
			case "node":
				addrs := cfg.BindAddress
				if !cfg.BindAddressExplicit() || len(addrs) != 1 || !addrs[0].IsLinkLocalUnicast() {
					t.Errorf("%s: BIND_ADDRESS %v, want one node-local (link-local) address set explicitly", where, addrs)
				}
				ni := p.container(t, nodeInitName)
				if v, _ := lookup(p.env(t, ni), "NODE_LOCAL_ADDRESS"); len(addrs) == 1 && v != addrs[0].String() {
					t.Errorf("%s: %s gives the node %q, the sidecar binds %v", where, nodeInitName, v, addrs)
				}
			}
			// No sidecar gets a capability, the node-level one included: a
			// non-root process cannot use an added capability (Kubernetes
			// grants no ambient ones, and no_new_privs voids file
			// capabilities), so every sidecar listens on an unprivileged port
			// (the node-level mode DNATs port 53 to it: TestInitSteps).
			if len(caps) > 0 {
				t.Errorf("%s: adds capabilities %v; a non-root sidecar could not use them", where, caps)
			}
			if cfg.BindPort < 1024 {
				t.Errorf("%s: listens on port %d; without capabilities a non-root process cannot bind below 1024", where, cfg.BindPort)
			}
		})
	}
}

// TestInitSteps checks the iptables and check init containers (and the
// node-level mode's init step): what they run, their identity, and that they
// agree with the sidecar on the port, the address and the UID that matter.
func TestInitSteps(t *testing.T) {
	t.Parallel()
	for _, p := range dotSidecarPods(t) {
		t.Run(p.where, func(t *testing.T) {
			side := p.container(t, sidecarName)
			sideCfg := loadSettings(t, p.env(t, side))
			sideUID := *side.SecurityContext.RunAsUser
			if p.mode == "node" {
				checkNodeInit(t, p, sideCfg)
				return
			}

			ipt := p.container(t, iptablesName)
			where := p.where + " " + ipt.Name
			restricted(t, where, ipt, true)
			limited(t, where, ipt)
			if !slices.Equal(ipt.Args, []string{"init"}) || !slices.Equal(ipt.Command, side.Command) {
				t.Errorf("%s: runs %v %v, want the sidecar's entrypoint %v with [init]", where, ipt.Command, ipt.Args, side.Command)
			}
			env := p.env(t, ipt)
			// The redirect must land where the sidecar listens.
			if port, _ := lookup(env, "BIND_PORT"); port != strconv.Itoa(sideCfg.BindPort) {
				t.Errorf("%s: redirects to BIND_PORT %q, the sidecar listens on %d", where, port, sideCfg.BindPort)
			}
			if uid, ok := lookup(env, "SIDECAR_UID"); ok && uid != strconv.FormatInt(sideUID, 10) {
				t.Errorf("%s: SIDECAR_UID %s, but the sidecar runs as %d: its queries would loop", where, uid, sideUID)
			}
			runMounted := false
			for _, m := range ipt.VolumeMounts {
				if m.MountPath == "/run" && !m.ReadOnly {
					v := p.spec.Volumes[slices.IndexFunc(p.spec.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name })]
					runMounted = v.EmptyDir != nil
				}
			}
			if !runMounted {
				t.Errorf("%s: needs a writable emptyDir on /run for the xtables lock (its root filesystem is read-only)", where)
			}
			if ipt.TerminationMessagePolicy != corev1.TerminationMessageFallbackToLogsOnError {
				t.Errorf("%s: terminationMessagePolicy %q, want FallbackToLogsOnError so failures show in kubectl describe", where, ipt.TerminationMessagePolicy)
			}

			if p.mode == "legacy" {
				for _, c := range slices.Concat(p.spec.InitContainers, p.spec.Containers) {
					if c.Name == checkName {
						t.Errorf("%s: a check step cannot gate the application without native sidecars", p.where)
					}
				}
				return
			}
			chk := p.container(t, checkName)
			where = p.where + " " + chk.Name
			restricted(t, where, chk, false)
			limited(t, where, chk)
			if chk.SecurityContext.Capabilities != nil && len(chk.SecurityContext.Capabilities.Add) > 0 {
				t.Errorf("%s: adds capabilities %v", where, chk.SecurityContext.Capabilities.Add)
			}
			if !slices.Equal(chk.Args, []string{"check"}) || !slices.Equal(chk.Command, side.Command) {
				t.Errorf("%s: runs %v %v, want the sidecar's entrypoint %v with [check]", where, chk.Command, chk.Args, side.Command)
			}
			// The sidecar's UID is exempt from the redirect: a check running
			// as it would see plaintext DNS and prove nothing.
			if uid := chk.SecurityContext.RunAsUser; uid == nil || *uid == sideUID {
				t.Errorf("%s: runs as the sidecar's UID %d", where, sideUID)
			}
			if chk.TerminationMessagePolicy != corev1.TerminationMessageFallbackToLogsOnError {
				t.Errorf("%s: terminationMessagePolicy %q, want FallbackToLogsOnError so the check's table shows in kubectl describe", where, chk.TerminationMessagePolicy)
			}
		})
	}
}

// TestOnlyTheNetworkStepsGetPrivileges goes through every container of every
// overlay: the iptables step and the node-level init step add exactly
// NET_ADMIN and NET_RAW (NET_RAW for nodes on the legacy iptables backend), and
// no other container, the node-level sidecar included, adds any capability or
// runs as root.
func TestOnlyTheNetworkStepsGetPrivileges(t *testing.T) {
	t.Parallel()
	for _, dir := range overlayNames() {
		t.Run(dir, func(t *testing.T) {
			for _, w := range workloads(render(t, dir)) {
				nodeMode := slices.Contains(overlays[dir].node, w.ID)
				for _, c := range slices.Concat(w.Template.Spec.InitContainers, w.Template.Spec.Containers) {
					where := fmt.Sprintf("%s %s", w.ID, c.Name)
					var add []corev1.Capability
					var root bool
					if sc := c.SecurityContext; sc != nil {
						if sc.Capabilities != nil {
							add = sc.Capabilities.Add
							if !slices.Contains(sc.Capabilities.Drop, "ALL") {
								t.Errorf("%s: does not drop ALL capabilities", where)
							}
						}
						root = sc.RunAsUser == nil || *sc.RunAsUser == 0 || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot
					}
					ours := c.Image == projectImage
					var want []corev1.Capability
					switch {
					case ours && c.Name == iptablesName:
						want = []corev1.Capability{"NET_ADMIN", "NET_RAW"}
					case ours && nodeMode && c.Name == nodeInitName:
						want = []corev1.Capability{"NET_ADMIN", "NET_RAW"}
					}
					if !slices.Equal(add, want) {
						t.Errorf("%s: adds capabilities %v, want %v", where, add, want)
					}
					if root && len(want) == 0 || root && c.Name == sidecarName {
						t.Errorf("%s: may run as root; only the network steps do", where)
					}
				}
			}
		})
	}
}
