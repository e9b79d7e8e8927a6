package manifests

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
)

// object is one rendered Kubernetes object, decoded strictly into its typed
// struct (Typed), or, for the custom resources we allow, into a generic map.
type object struct {
	APIVersion, Kind, Name string
	YAML                   []byte
	Typed                  any
}

func (o object) id() string { return o.Kind + "/" + o.Name }

// typedKinds are the kinds the manifests may contain, each with the struct
// of k8s.io/api it must decode into without an unknown field.
var typedKinds = map[string]func() any{
	"apps/v1/Deployment":  func() any { return new(appsv1.Deployment) },
	"apps/v1/StatefulSet": func() any { return new(appsv1.StatefulSet) },
	"apps/v1/DaemonSet":   func() any { return new(appsv1.DaemonSet) },
	"v1/ConfigMap":        func() any { return new(corev1.ConfigMap) },
	"v1/Service":          func() any { return new(corev1.Service) },

	"networking.k8s.io/v1/NetworkPolicy": func() any { return new(networkingv1.NetworkPolicy) },
}

// customKinds are custom resources without a Go type here; checks of their
// own (monitoring_test.go) go through every field by an allow-list.
var customKinds = map[string]bool{
	"monitoring.coreos.com/v1/PodMonitor": true,
}

func manifestsDir(t testing.TB) string { return filepath.Join(testkit.RepoRoot(t), "manifests") }

type rendering struct {
	once    sync.Once
	objects []object
	err     error
}

// renders caches each kustomization's rendering: many tests look at the same
// objects, and rendering is the slow part.
var renders sync.Map // dir relative to manifests/ → *rendering

// render builds the kustomization in manifests/<dir> in process, with the
// engine and default options of `kubectl apply -k` (load restrictions
// included: a kustomization may not read files outside its root), and
// decodes every object strictly.
func render(t testing.TB, dir string) []object {
	t.Helper()
	v, _ := renders.LoadOrStore(dir, new(rendering))
	r := v.(*rendering)
	r.once.Do(func() { r.objects, r.err = renderNow(filepath.Join(manifestsDir(t), dir)) })
	if r.err != nil {
		t.Fatalf("kustomize build manifests/%s: %v", dir, r.err)
	}
	return r.objects
}

func renderNow(abs string) ([]object, error) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), abs)
	if err != nil {
		return nil, err
	}
	var objs []object
	for _, res := range m.Resources() {
		y, err := res.AsYAML()
		if err != nil {
			return nil, err
		}
		o := object{APIVersion: res.GetApiVersion(), Kind: res.GetKind(), Name: res.GetName(), YAML: y}
		key := o.APIVersion + "/" + o.Kind
		switch {
		case typedKinds[key] != nil:
			o.Typed = typedKinds[key]()
			// Strict: a field the typed struct does not know (a typo, a field
			// of another API version, a patch that landed at the wrong path)
			// fails, as does a value of the wrong type.
			if err := yaml.UnmarshalStrict(y, o.Typed); err != nil {
				return nil, fmt.Errorf("%s does not decode strictly into %T: %w", o.id(), o.Typed, err)
			}
		case customKinds[key]:
			var generic map[string]any
			if err := yaml.UnmarshalStrict(y, &generic); err != nil {
				return nil, fmt.Errorf("%s: %w", o.id(), err)
			}
			o.Typed = generic
		default:
			return nil, fmt.Errorf("%s: kind %s is not one the manifests are checked for; add it to typedKinds", o.id(), key)
		}
		objs = append(objs, o)
	}
	return objs, nil
}

// workload is a Deployment, StatefulSet or DaemonSet seen through what they
// share.
type workload struct {
	ID       string
	Meta     metav1.ObjectMeta
	Selector *metav1.LabelSelector
	Template *corev1.PodTemplateSpec
}

func workloads(objs []object) []workload {
	var ws []workload
	for _, o := range objs {
		switch v := o.Typed.(type) {
		case *appsv1.Deployment:
			ws = append(ws, workload{o.id(), v.ObjectMeta, v.Spec.Selector, &v.Spec.Template})
		case *appsv1.StatefulSet:
			ws = append(ws, workload{o.id(), v.ObjectMeta, v.Spec.Selector, &v.Spec.Template})
		case *appsv1.DaemonSet:
			ws = append(ws, workload{o.id(), v.ObjectMeta, v.Spec.Selector, &v.Spec.Template})
		}
	}
	return ws
}

func findWorkload(t testing.TB, objs []object, id string) workload {
	t.Helper()
	var ids []string
	for _, w := range workloads(objs) {
		if w.ID == id {
			return w
		}
		ids = append(ids, w.ID)
	}
	t.Fatalf("no workload %s in the rendering (have %v)", id, ids)
	return workload{}
}

// configMaps maps each rendered ConfigMap's name to its data.
func configMaps(objs []object) map[string]map[string]string {
	cms := make(map[string]map[string]string)
	for _, o := range objs {
		if cm, ok := o.Typed.(*corev1.ConfigMap); ok {
			cms[cm.Name] = cm.Data
		}
	}
	return cms
}

// kustomizationFile is the part of a kustomization.yaml this test follows to
// see which components each overlay reaches.
type kustomizationFile struct {
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
	Components []string `json:"components"`
}

func readKustomization(t testing.TB, dir string) (kustomizationFile, bool) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if os.IsNotExist(err) {
		return kustomizationFile{}, false
	}
	if err != nil {
		t.Fatal(err)
	}
	var k kustomizationFile
	// Not strict: the other fields are kustomize's to check, and it does.
	if err := yaml.Unmarshal(b, &k); err != nil {
		t.Fatalf("%s: %v", dir, err)
	}
	return k, true
}

// kustomizationDirs lists, relative to manifests/, every directory with a
// kustomization.yaml, split into overlays (kind Kustomization, which
// `kubectl apply -k` takes) and components.
func kustomizationDirs(t testing.TB) (overlays, components []string) {
	t.Helper()
	root := manifestsDir(t)
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "kustomization.yaml" {
			return err
		}
		dir := filepath.Dir(path)
		k, _ := readKustomization(t, dir)
		rel, _ := filepath.Rel(root, dir)
		if k.Kind == "Component" {
			components = append(components, filepath.ToSlash(rel))
		} else {
			overlays = append(overlays, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(overlays)
	sort.Strings(components)
	return overlays, components
}

// reachedComponents follows resources and components from the overlay in dir
// and returns the component directories (relative to manifests/) it uses.
func reachedComponents(t testing.TB, dir string, seen map[string]bool) {
	t.Helper()
	root := manifestsDir(t)
	k, ok := readKustomization(t, filepath.Join(root, dir))
	if !ok {
		return // a file resource
	}
	if k.Kind == "Component" {
		if seen[dir] {
			return
		}
		seen[dir] = true
	}
	for _, ref := range append(append([]string(nil), k.Resources...), k.Components...) {
		next := filepath.ToSlash(filepath.Clean(filepath.Join(dir, ref)))
		if strings.HasPrefix(next, "..") {
			t.Errorf("manifests/%s refers to %s outside manifests/", dir, ref)
			continue
		}
		if fi, err := os.Stat(filepath.Join(root, next)); err == nil && fi.IsDir() {
			reachedComponents(t, next, seen)
		}
	}
}
