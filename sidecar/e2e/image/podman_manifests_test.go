package image

import (
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/podmantest"
)

// The containers of the podman tests are those of the rendered manifests:
// their users, capabilities, read-only root filesystems, volumes, settings
// and limits are read from what `kubectl apply -k` would send, and turned
// into podman run flags the way the kubelet turns them into a container's
// settings, so that the test and the manifests cannot drift apart.

// projectImageRepo is the repository the manifests name the image by.
const projectImageRepo = "ghcr.io/dot-sidecar/dot-sidecar"

// renderKustomization builds the kustomization in dir as `kubectl apply
// -k` would and returns its YAML.
func renderKustomization(t testing.TB, dir string) []byte {
	t.Helper()
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	y, err := m.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	return y
}

// manifestPod is the pod template of one rendered workload, with the
// ConfigMaps of its rendering.
type manifestPod struct {
	where      string
	spec       corev1.PodSpec
	configMaps map[string]map[string]string
}

// renderPod renders the kustomization dir (under manifests/) and returns
// the pod of workload (KIND/NAME, e.g. "Deployment/dns-client").
func renderPod(t testing.TB, dir, workload string) manifestPod {
	t.Helper()
	y := renderKustomization(t, filepath.Join(testkit.RepoRoot(t), "manifests", dir))
	p := manifestPod{where: "manifests/" + dir + " " + workload, configMaps: map[string]map[string]string{}}
	found := false
	for _, doc := range strings.Split(string(y), "\n---\n") {
		var head struct {
			Kind     string
			Metadata struct{ Name string }
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			t.Fatal(err)
		}
		switch head.Kind {
		case "ConfigMap":
			var cm corev1.ConfigMap
			mustDecode(t, doc, &cm)
			p.configMaps[cm.Name] = cm.Data
		case "Deployment", "DaemonSet":
			if head.Kind+"/"+head.Metadata.Name != workload {
				continue
			}
			found = true
			if head.Kind == "Deployment" {
				var d appsv1.Deployment
				mustDecode(t, doc, &d)
				p.spec = d.Spec.Template.Spec
			} else {
				var d appsv1.DaemonSet
				mustDecode(t, doc, &d)
				p.spec = d.Spec.Template.Spec
			}
		}
	}
	if !found {
		t.Fatalf("manifests/%s renders no %s", dir, workload)
	}
	return p
}

func mustDecode(t testing.TB, doc string, v any) {
	t.Helper()
	if err := yaml.UnmarshalStrict([]byte(doc), v); err != nil {
		t.Fatalf("decoding %T: %v", v, err)
	}
}

// container returns the container or init container named name.
func (p manifestPod) container(t testing.TB, name string) corev1.Container {
	t.Helper()
	for _, c := range slices.Concat(p.spec.InitContainers, p.spec.Containers) {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("%s has no container %s", p.where, name)
	return corev1.Container{}
}

// runOptions are what the test decides about a container beside its
// manifest: the image it runs, its network, the settings changed from the
// rendered ones (as an operator edits settings.env), and host files for
// hostPath volumes.
type runOptions struct {
	image    string
	network  string
	settings map[string]string
	hostPath map[string]string // volume name → path on this machine
	// volumes are more bind mounts, such as the upstream's CA for the
	// sidecar (a ConfigMap or Secret volume in a cluster).
	volumes []string
}

// runSpec turns container c of the pod into podman run settings. Whatever
// the manifest says that this cannot reproduce is an error, never ignored
// silently; probes, ports and lifecycle hooks are the kubelet's and the
// tests play their part themselves.
func (p manifestPod) runSpec(t testing.TB, c corev1.Container, o runOptions) podmantest.Spec {
	t.Helper()
	where := p.where + " " + c.Name
	s := podmantest.Spec{
		Name: c.Name, Image: o.image, Network: o.network,
		Entrypoint: c.Command, Args: c.Args, Volumes: o.volumes,
	}
	if strings.HasPrefix(c.Image, projectImageRepo+":") != strings.HasPrefix(o.image, podmantest.ProjectImageRef) {
		t.Fatalf("%s: image %s, run as %s: only the project's containers run the project's image", where, c.Image, o.image)
	}
	for _, from := range c.EnvFrom {
		if from.ConfigMapRef == nil || from.Prefix != "" {
			t.Fatalf("%s: envFrom %+v: only whole ConfigMaps are reproduced", where, from)
		}
		data, ok := p.configMaps[from.ConfigMapRef.Name]
		if !ok {
			t.Fatalf("%s: envFrom ConfigMap %s is not in the rendering", where, from.ConfigMapRef.Name)
		}
		merged := maps.Clone(data)
		maps.Copy(merged, o.settings)
		for _, k := range slices.Sorted(maps.Keys(merged)) {
			s.Env = append(s.Env, k+"="+merged[k])
		}
	}
	for _, e := range c.Env { // env wins over envFrom, as in a pod
		if e.ValueFrom != nil {
			t.Fatalf("%s: env %s from %+v is not reproduced", where, e.Name, e.ValueFrom)
		}
		s.Env = append(s.Env, e.Name+"="+e.Value)
	}
	p.security(t, where, c, &s)
	if m, ok := c.Resources.Limits[corev1.ResourceMemory]; ok {
		s.Memory = strconv.FormatInt(m.Value(), 10)
	}
	if cpu, ok := c.Resources.Limits[corev1.ResourceCPU]; ok {
		s.CPUs = strconv.FormatFloat(float64(cpu.MilliValue())/1000, 'f', 3, 64)
	}
	for _, m := range c.VolumeMounts {
		s.Tmpfs, s.Volumes = p.mount(t, where, m, o, s.Tmpfs, s.Volumes)
	}
	return s
}

// security applies the container's securityContext (the pod's where the
// container sets nothing).
func (p manifestPod) security(t testing.TB, where string, c corev1.Container, s *podmantest.Spec) {
	t.Helper()
	sc := c.SecurityContext
	if sc == nil {
		t.Fatalf("%s: no securityContext; every container of the manifests sets one", where)
	}
	pod := p.spec.SecurityContext
	if pod == nil {
		pod = &corev1.PodSecurityContext{}
	}
	uid, gid := first(sc.RunAsUser, pod.RunAsUser), first(sc.RunAsGroup, pod.RunAsGroup)
	if uid == nil || gid == nil {
		t.Fatalf("%s: runAsUser and runAsGroup must be set (the image's USER would apply otherwise)", where)
	}
	s.User = fmt.Sprintf("%d:%d", *uid, *gid)
	if nonRoot := first(sc.RunAsNonRoot, pod.RunAsNonRoot); nonRoot != nil && *nonRoot && *uid == 0 {
		t.Fatalf("%s: runAsNonRoot with runAsUser 0: the kubelet would refuse to start it", where)
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Fatalf("%s: privileged is not reproduced", where)
	}
	s.ReadOnly = sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem
	s.NoNewPrivileges = sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation
	if sc.Capabilities != nil {
		for _, c := range sc.Capabilities.Drop {
			s.CapDrop = append(s.CapDrop, string(c))
		}
		for _, c := range sc.Capabilities.Add {
			s.CapAdd = append(s.CapAdd, string(c))
		}
	}
	for _, prof := range []*corev1.SeccompProfile{sc.SeccompProfile, pod.SeccompProfile} {
		if prof != nil && prof.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Fatalf("%s: seccomp profile %s is not reproduced (podman's default is the runtime default)", where, prof.Type)
		}
	}
}

// mount reproduces a volume mount: an emptyDir is a tmpfs (world-writable,
// as the kubelet makes emptyDirs; its sizeLimit the size), a hostPath a
// bind mount of the host file the test named for it.
func (p manifestPod) mount(t testing.TB, where string, m corev1.VolumeMount, o runOptions, tmpfs, vols []string) ([]string, []string) {
	t.Helper()
	for _, v := range p.spec.Volumes {
		if v.Name != m.Name {
			continue
		}
		switch {
		case v.EmptyDir != nil:
			opts := "mode=1777"
			if v.EmptyDir.SizeLimit != nil {
				opts += ",size=" + strconv.FormatInt(v.EmptyDir.SizeLimit.Value(), 10)
			}
			if m.ReadOnly {
				opts += ",ro"
			}
			return append(tmpfs, m.MountPath+":"+opts), vols
		case v.HostPath != nil:
			host, ok := o.hostPath[v.Name]
			if !ok {
				t.Fatalf("%s: hostPath volume %s (%s): the test names no file of its own for it", where, v.Name, v.HostPath.Path)
			}
			opt := ""
			if m.ReadOnly {
				opt = ":ro"
			}
			return tmpfs, append(vols, host+":"+m.MountPath+opt)
		default:
			t.Fatalf("%s: volume %s is of a kind not reproduced", where, v.Name)
		}
	}
	t.Fatalf("%s: mounts volume %s, which the pod does not declare", where, m.Name)
	return nil, nil
}

// first is the first value set: the container's setting, else the pod's.
func first[T any](vs ...*T) *T {
	for _, v := range vs {
		if v != nil {
			return v
		}
	}
	return nil
}
