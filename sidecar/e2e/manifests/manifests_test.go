// Package manifests proves the Kubernetes manifests under manifests/. It
// renders every kustomization in process with the engine of
// `kubectl apply -k`, decodes every object strictly into its typed struct of
// k8s.io/api (an unknown or misplaced field fails), and checks what the docs
// promises of the pods against the repository itself: the image's Dockerfile,
// entrypoint.sh and iptables script, the sidecar's configuration loader, its
// admin listener and the metrics it registers.
//
// The package holds tests only.
package manifests

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
)

// The containers dot-sidecar brings into a pod, by name.
const (
	iptablesName = "dot-sidecar-iptables"  // init: redirects port 53 (entrypoint.sh init)
	sidecarName  = "dot-sidecar"           // the relay
	checkName    = "dot-sidecar-check"     // init: proves capture (entrypoint.sh check)
	nodeInitName = "dot-sidecar-node-init" // init of the node-level DaemonSet (dns-redirect.sh node-apply)
)

// expectation says what one overlay must render. Every workload of the
// rendering must be listed in exactly one of native, legacy, node and plain.
type expectation struct {
	native []string // "Kind/name": native sidecar, our three init containers first
	legacy []string // pre-1.29: sidecar first regular container, iptables last init container
	node   []string // node-level DaemonSet
	plain  []string // workloads the overlay must leave without dot-sidecar
	// ownInit lists, per workload, its own init containers in their order
	// (none when absent).
	ownInit map[string][]string
	// clusterDNS is the CLUSTER_DNS the overlay's pods set on purpose
	// (empty: auto, the sidecar finds the cluster's resolver itself), and
	// clusterCA the volume with its CA the sidecar mounts for it.
	clusterDNS, clusterCA string
	mesh                  string // "istio" or "linkerd": that mesh's annotations
	monitoring            bool   // the PodMonitor and the dashboard
	networkPolicy         bool   // the NetworkPolicy of the admin port
}

// overlays are all the kustomizations that `kubectl apply -k` takes; a test
// fails when one exists on disk and is missing here.
var overlays = map[string]expectation{
	"base": {native: []string{"Deployment/dns-client"}},
	"examples/inject-with-init-containers": {
		native:  []string{"Deployment/web"},
		ownInit: map[string][]string{"Deployment/web": {"wait-for-upstream-api", "render-config"}},
	},
	"examples/inject-without-init-containers": {
		native: []string{"StatefulSet/cache", "DaemonSet/agent"},
		plain:  []string{"Deployment/untouched"},
	},
	"examples/encrypted-cluster-dns": {
		native:     []string{"Deployment/api"},
		clusterDNS: "tls://10.96.0.10:853#kube-dns.kube-system.svc.cluster.local;ca=/etc/dot-sidecar/cluster-dns/ca.crt",
		clusterCA:  "cluster-dns-ca",
	},
	"examples/admin-network-policy": {networkPolicy: true},
	"examples/inject-legacy": {
		legacy:  []string{"Deployment/worker"},
		ownInit: map[string][]string{"Deployment/worker": {"fetch-settings"}},
	},
	"node":       {node: []string{"DaemonSet/dot-sidecar-node"}},
	"istio":      {native: []string{"Deployment/dns-client"}, mesh: "istio"},
	"linkerd":    {native: []string{"Deployment/dns-client"}, mesh: "linkerd"},
	"monitoring": {monitoring: true},
}

func overlayNames() []string { return sortedKeys(overlays) }

func TestEveryKustomizationIsCheckedAndEveryComponentUsed(t *testing.T) {
	t.Parallel()
	onDisk, components := kustomizationDirs(t)
	if !slices.Equal(onDisk, overlayNames()) {
		t.Errorf("kustomizations under manifests/: %v; this test's table: %v (add new ones with what they must render)",
			onDisk, overlayNames())
	}
	if len(components) == 0 {
		t.Fatal("no components found under manifests/")
	}
	seen := make(map[string]bool)
	for _, dir := range onDisk {
		reachedComponents(t, dir, seen)
	}
	for _, c := range components {
		if !seen[c] {
			t.Errorf("component manifests/%s is used by no overlay, so no rendering proves it", c)
		}
	}
}

// TestRenderedObjectsAreValid renders each overlay (strict decoding happens in
// render) and checks what the API server would refuse and kustomize does not.
func TestRenderedObjectsAreValid(t *testing.T) {
	t.Parallel()
	for _, dir := range overlayNames() {
		t.Run(dir, func(t *testing.T) {
			objs := render(t, dir)
			if len(objs) == 0 {
				t.Fatal("renders nothing")
			}
			want := overlays[dir]
			listed := make(map[string]bool)
			for _, ids := range [][]string{want.native, want.legacy, want.node, want.plain} {
				for _, id := range ids {
					listed[id] = true
				}
			}
			for _, w := range workloads(objs) {
				if !listed[w.ID] {
					t.Errorf("%s is rendered but the test's table does not say what it must be", w.ID)
				}
			}
			cms := configMaps(objs)
			for _, o := range objs {
				checkObjectMeta(t, o)
			}
			for _, w := range workloads(objs) {
				checkPodSpec(t, w, cms)
			}
		})
	}
}

func checkObjectMeta(t *testing.T, o object) {
	t.Helper()
	var meta metav1.ObjectMeta
	switch v := o.Typed.(type) {
	case interface{ GetObjectMeta() metav1.Object }:
		m := v.GetObjectMeta()
		meta = metav1.ObjectMeta{Name: m.GetName(), Namespace: m.GetNamespace(), Labels: m.GetLabels(), Annotations: m.GetAnnotations()}
	default:
		return // custom resources: monitoring_test.go
	}
	for _, msg := range validation.IsDNS1123Subdomain(meta.Name) {
		t.Errorf("%s: name: %s", o.id(), msg)
	}
	// No namespace in the manifests: `kubectl apply -k DIR -n NS` (or a
	// namespace: line in the user's own kustomization) decides.
	if meta.Namespace != "" {
		t.Errorf("%s: namespace %q is set; leave it to the user", o.id(), meta.Namespace)
	}
	checkLabelsAndAnnotations(t, o.id(), meta.Labels, meta.Annotations)
}

func checkLabelsAndAnnotations(t *testing.T, where string, ls, as map[string]string) {
	t.Helper()
	for k, v := range ls {
		for _, msg := range append(validation.IsQualifiedName(k), validation.IsValidLabelValue(v)...) {
			t.Errorf("%s: label %s=%s: %s", where, k, v, msg)
		}
	}
	for k := range as {
		for _, msg := range validation.IsQualifiedName(k) {
			t.Errorf("%s: annotation %s: %s", where, k, msg)
		}
	}
}

// checkPodSpec checks a workload's pod template for what the API server
// validates: the selector matches the template, names are unique and well
// formed, references resolve.
func checkPodSpec(t *testing.T, w workload, cms map[string]map[string]string) {
	t.Helper()
	sel, err := metav1.LabelSelectorAsSelector(w.Selector)
	if err != nil || sel.Empty() {
		t.Errorf("%s: selector %v: %v", w.ID, w.Selector, err)
	} else if !sel.Matches(labels.Set(w.Template.Labels)) {
		t.Errorf("%s: selector %v does not match the pod template's labels %v", w.ID, w.Selector, w.Template.Labels)
	}
	checkLabelsAndAnnotations(t, w.ID+" pod template", w.Template.Labels, w.Template.Annotations)
	spec := w.Template.Spec
	volumes := make(map[string]bool)
	for _, v := range spec.Volumes {
		if volumes[v.Name] {
			t.Errorf("%s: volume %s declared twice", w.ID, v.Name)
		}
		volumes[v.Name] = true
	}
	names := make(map[string]bool)
	ports := make(map[string]bool)
	all := slices.Concat(spec.InitContainers, spec.Containers)
	for i, c := range all {
		where := w.ID + " container " + c.Name
		for _, msg := range validation.IsDNS1123Label(c.Name) {
			t.Errorf("%s: name: %s", where, msg)
		}
		if names[c.Name] {
			t.Errorf("%s: container name used twice in the pod", where)
		}
		names[c.Name] = true
		if c.Image == "" {
			t.Errorf("%s: no image", where)
		}
		if i >= len(spec.InitContainers) && c.RestartPolicy != nil {
			t.Errorf("%s: restartPolicy is for init containers only", where)
		}
		if c.RestartPolicy != nil && *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
			t.Errorf("%s: restartPolicy %q: only Always is allowed", where, *c.RestartPolicy)
		}
		own := make(map[string]bool)
		for _, p := range c.Ports {
			if p.Name == "" {
				continue
			}
			for _, msg := range validation.IsValidPortName(p.Name) {
				t.Errorf("%s: port name %q: %s", where, p.Name, msg)
			}
			if ports[p.Name] {
				t.Errorf("%s: port name %q used twice in the pod", where, p.Name)
			}
			ports[p.Name], own[p.Name] = true, true
		}
		for _, p := range []*corev1.Probe{c.StartupProbe, c.LivenessProbe, c.ReadinessProbe} {
			if p != nil && p.HTTPGet != nil && p.HTTPGet.Port.StrVal != "" && !own[p.HTTPGet.Port.StrVal] {
				t.Errorf("%s: probe on port %q, which the container does not name", where, p.HTTPGet.Port.StrVal)
			}
		}
		for _, m := range c.VolumeMounts {
			if !volumes[m.Name] {
				t.Errorf("%s: mounts volume %s, which the pod does not declare", where, m.Name)
			}
		}
		for _, ef := range c.EnvFrom {
			if ef.ConfigMapRef != nil && cms[ef.ConfigMapRef.Name] == nil {
				t.Errorf("%s: envFrom ConfigMap %q is not rendered alongside", where, ef.ConfigMapRef.Name)
			}
		}
		if c.SecurityContext == nil || c.SecurityContext.Privileged != nil && *c.SecurityContext.Privileged {
			t.Errorf("%s: every container must have a securityContext and none is privileged", where)
		}
	}
	if spec.HostPID || spec.HostIPC {
		t.Errorf("%s: hostPID/hostIPC", w.ID)
	}
}

// TestInitContainerOrder checks, in every overlay, where our containers sit
// in each pod: the order is what makes the promises hold.
func TestInitContainerOrder(t *testing.T) {
	t.Parallel()
	for _, dir := range overlayNames() {
		want := overlays[dir]
		t.Run(dir, func(t *testing.T) {
			objs := render(t, dir)
			for _, id := range want.native {
				spec := findWorkload(t, objs, id).Template.Spec
				got := containerNames(spec.InitContainers)
				wantNames := append([]string{iptablesName, sidecarName, checkName}, want.ownInit[id]...)
				if !slices.Equal(got, wantNames) {
					t.Errorf("%s: init containers %v, want %v (ours first, then the workload's own in their order)", id, got, wantNames)
					continue
				}
				for i, c := range spec.InitContainers {
					native := c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways
					if native != (i == 1) {
						t.Errorf("%s: init container %s restartPolicy %v; only %s is a native sidecar", id, c.Name, c.RestartPolicy, sidecarName)
					}
				}
				noneOfOurs(t, id, spec.Containers)
			}
			for _, id := range want.legacy {
				spec := findWorkload(t, objs, id).Template.Spec
				got := containerNames(spec.InitContainers)
				wantNames := append(slices.Clone(want.ownInit[id]), iptablesName)
				if !slices.Equal(got, wantNames) {
					t.Errorf("%s: init containers %v, want %v (the workload's own first: they run before the sidecar exists)", id, got, wantNames)
				}
				if len(spec.Containers) < 2 || spec.Containers[0].Name != sidecarName {
					t.Errorf("%s: containers %v, want %s first, then the workload's", id, containerNames(spec.Containers), sidecarName)
				}
				noneOfOurs(t, id, spec.Containers[1:])
				for _, c := range slices.Concat(spec.InitContainers, spec.Containers) {
					if c.RestartPolicy != nil {
						t.Errorf("%s: %s has restartPolicy; clusters before 1.29 reject it", id, c.Name)
					}
				}
			}
			for _, id := range want.node {
				spec := findWorkload(t, objs, id).Template.Spec
				if got := containerNames(spec.InitContainers); !slices.Equal(got, []string{nodeInitName}) {
					t.Errorf("%s: init containers %v, want [%s]", id, got, nodeInitName)
				}
				if got := containerNames(spec.Containers); !slices.Equal(got, []string{sidecarName}) {
					t.Errorf("%s: containers %v, want [%s]", id, got, sidecarName)
				}
				if !spec.HostNetwork || spec.DNSPolicy != corev1.DNSDefault {
					t.Errorf("%s: hostNetwork %v dnsPolicy %q, want host network and the node's resolver (Default)", id, spec.HostNetwork, spec.DNSPolicy)
				}
			}
			for _, id := range want.plain {
				spec := findWorkload(t, objs, id).Template.Spec
				noneOfOurs(t, id, slices.Concat(spec.InitContainers, spec.Containers))
				if len(spec.Volumes) > 0 && spec.Volumes[0].Name == "dot-sidecar-run" {
					t.Errorf("%s: got our volume although not opted in", id)
				}
			}
			for _, w := range workloads(objs) {
				if slices.Contains(want.node, w.ID) {
					continue
				}
				if w.Template.Spec.HostNetwork {
					t.Errorf("%s: host network outside the node-level mode", w.ID)
				}
			}
		})
	}
}

func containerNames(cs []corev1.Container) []string {
	var names []string
	for _, c := range cs {
		names = append(names, c.Name)
	}
	return names
}

func noneOfOurs(t *testing.T, id string, cs []corev1.Container) {
	t.Helper()
	for _, c := range cs {
		if strings.HasPrefix(c.Name, sidecarName) || c.Image == projectImage {
			t.Errorf("%s: unexpected dot-sidecar container %s here", id, c.Name)
		}
	}
}

// TestInjectedContainersEqualBase: the components carry their own copies of
// the containers of base/ (a component cannot read another's files); they
// must not drift apart.
func TestInjectedContainersEqualBase(t *testing.T) {
	t.Parallel()
	baseSpec := findWorkload(t, render(t, "base"), "Deployment/dns-client").Template.Spec
	ref := make(map[string]corev1.Container)
	for _, c := range baseSpec.InitContainers[:3] {
		ref[c.Name] = c
	}
	refVolume := baseSpec.Volumes[slices.IndexFunc(baseSpec.Volumes, func(v corev1.Volume) bool { return v.Name == "dot-sidecar-run" })]
	same := func(t *testing.T, where string, got, want any) {
		t.Helper()
		if !equality.Semantic.DeepEqual(got, want) {
			t.Errorf("%s differs from base/:\n got  %+v\n want %+v", where, got, want)
		}
	}
	for _, dir := range overlayNames() {
		want := overlays[dir]
		if dir == "base" || len(want.native)+len(want.legacy) == 0 {
			continue
		}
		t.Run(dir, func(t *testing.T) {
			objs := render(t, dir)
			for _, id := range slices.Concat(want.native, want.legacy) {
				spec := findWorkload(t, objs, id).Template.Spec
				for _, c := range slices.Concat(spec.InitContainers, spec.Containers) {
					r, ours := ref[c.Name]
					if !ours {
						continue
					}
					if want.clusterDNS != "" {
						// Settings of their own (CLUSTER_DNS), so another
						// ConfigMap; the sidecar mounts the cluster's CA
						// (TestClusterDNSOverTLS checks both).
						c.EnvFrom = r.EnvFrom
						if c.Name == sidecarName {
							c.VolumeMounts = slices.DeleteFunc(slices.Clone(c.VolumeMounts), func(m corev1.VolumeMount) bool { return m.Name == want.clusterCA })
						}
					}
					if slices.Contains(want.legacy, id) && c.Name == sidecarName {
						// The one intended difference: a regular container that
						// holds the next ones back with its postStart hook.
						c.Lifecycle = nil
						c.RestartPolicy = r.RestartPolicy
					}
					same(t, id+" "+c.Name, c, r)
				}
				i := slices.IndexFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == refVolume.Name })
				if i < 0 {
					t.Errorf("%s: volume %s missing", id, refVolume.Name)
					continue
				}
				same(t, id+" volume", spec.Volumes[i], refVolume)
			}
		})
	}
}
