package manifests

import (
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/yaml"
)

// Every fenced yaml block of the docs says on its first line where it comes
// from, in one of these forms (docs/design.md describes them).
var (
	// The block is part of an object the overlay renders.
	fromOverlay = regexp.MustCompile(`^# from manifests/(\S+)$`)
	// A kustomization of the reader's own, next to a checkout of this
	// repository at ../dot-sidecar.
	ownKustomization = regexp.MustCompile(`^# your own kustomization\.yaml$`)
	// A Pod of the reader's own, pointed at what the overlay sets up.
	ownPod = regexp.MustCompile(`^# your own Pod, for manifests/(\S+)$`)
	// A file under manifests/ that no overlay renders (the patches for the
	// cluster's CoreDNS, applied with kubectl patch): a yaml block is part
	// of an object of that file; a block in another language (a Corefile)
	// is a run of its lines.
	fromFile = regexp.MustCompile(`^# from manifests/(\S+\.yaml)$`)
)

func TestDocsYAMLMatchesManifests(t *testing.T) {
	t.Parallel()
	var blocks int
	for _, file := range docFiles(t) {
		for _, f := range fences(file, readDoc(t, file)) {
			if f.lang != "yaml" {
				continue
			}
			blocks++
			where := fmt.Sprintf("%s:%d", f.file, f.line)
			header, _, _ := strings.Cut(f.body, "\n")
			switch {
			case fromFile.MatchString(header):
				objs, err := fileObjects(t, fromFile.FindStringSubmatch(header)[1])
				if err == nil {
					err = containedIn(objs, f.body)
				}
				if err != nil {
					t.Errorf("%s: %v", where, err)
				}
			case fromOverlay.MatchString(header):
				dir := fromOverlay.FindStringSubmatch(header)[1]
				if _, ok := overlays[dir]; !ok {
					t.Errorf("%s: manifests/%s is not an overlay (have %v)", where, dir, overlayNames())
					continue
				}
				if err := containedIn(render(t, dir), f.body); err != nil {
					t.Errorf("%s: %v", where, err)
				}
			case ownKustomization.MatchString(header):
				if err := rendersWithSidecar(t, f.body); err != nil {
					t.Errorf("%s: %v", where, err)
				}
			case ownPod.MatchString(header):
				dir := ownPod.FindStringSubmatch(header)[1]
				if _, ok := overlays[dir]; !ok {
					t.Errorf("%s: manifests/%s is not an overlay (have %v)", where, dir, overlayNames())
					continue
				}
				if err := podForOverlay(render(t, dir), f.body); err != nil {
					t.Errorf("%s: %v", where, err)
				}
			default:
				t.Errorf("%s: a yaml block must start with `# from manifests/DIR`, `# from manifests/FILE.yaml`, `# your own kustomization.yaml` or `# your own Pod, for manifests/DIR`; it starts with %q", where, header)
			}
		}
	}
	if blocks == 0 {
		t.Error("no yaml blocks in the docs: is the fence parser broken?")
	}
}

// fileObjects reads the objects of a file under manifests/ that no overlay
// renders, each document decoded strictly into its Kubernetes type.
func fileObjects(t *testing.T, rel string) ([]object, error) {
	b, err := os.ReadFile(filepath.Join(manifestsDir(t), filepath.FromSlash(rel)))
	if err != nil {
		return nil, err
	}
	var objs []object
	for _, doc := range strings.Split(string(b), "\n---\n") {
		var meta struct {
			APIVersion string `json:"apiVersion"`
			Kind       string
			Metadata   struct{ Name string }
		}
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			return nil, fmt.Errorf("manifests/%s: %w", rel, err)
		}
		o := object{APIVersion: meta.APIVersion, Kind: meta.Kind, Name: meta.Metadata.Name, YAML: []byte(doc)}
		newTyped := typedKinds[o.APIVersion+"/"+o.Kind]
		if newTyped == nil {
			return nil, fmt.Errorf("manifests/%s: %s is not a kind the manifests are checked for", rel, o.id())
		}
		if err := yaml.UnmarshalStrict(o.YAML, newTyped()); err != nil {
			return nil, fmt.Errorf("manifests/%s: %s does not decode strictly: %w", rel, o.id(), err)
		}
		objs = append(objs, o)
	}
	return objs, nil
}

// TestDocsQuoteFiles: a fenced block in another language than yaml whose
// first line is `# from manifests/<file>.yaml` (a Corefile's own comment
// syntax) quotes that file: its other lines, without their indentation,
// are a run of the file's lines.
func TestDocsQuoteFiles(t *testing.T) {
	t.Parallel()
	var n int
	for _, file := range docFiles(t) {
		for _, f := range fences(file, readDoc(t, file)) {
			header, body, _ := strings.Cut(f.body, "\n")
			m := fromFile.FindStringSubmatch(header)
			if f.lang == "yaml" || m == nil {
				continue
			}
			n++
			b, err := os.ReadFile(filepath.Join(manifestsDir(t), filepath.FromSlash(m[1])))
			if err != nil {
				t.Errorf("%s:%d: %v", f.file, f.line, err)
				continue
			}
			if err := quotes(string(b), body); err != nil {
				t.Errorf("%s:%d: manifests/%s: %v", f.file, f.line, m[1], err)
			}
		}
	}
	if n == 0 {
		t.Error("no block of the docs quotes a file of manifests/")
	}
}

// quotes reports whether the lines of quote, trimmed, are a run of the
// trimmed lines of text.
func quotes(text, quote string) error {
	trim := func(s string) []string {
		var out []string
		for _, l := range strings.Split(s, "\n") {
			if l = strings.TrimSpace(l); l != "" {
				out = append(out, l)
			}
		}
		return out
	}
	lines, want := trim(text), trim(quote)
	if len(want) == 0 {
		return fmt.Errorf("the quote is empty")
	}
	for i := range lines {
		if len(lines)-i >= len(want) && slices.Equal(lines[i:i+len(want)], want) {
			return nil
		}
	}
	return fmt.Errorf("the file has no run of lines:\n%s", strings.Join(want, "\n"))
}

// containedIn reports whether the YAML block is part of one of objs: some
// node of an object, at any depth, holds every key and value the block
// shows.
func containedIn(objs []object, block string) error {
	var want any
	if err := yaml.UnmarshalStrict([]byte(block), &want); err != nil {
		return fmt.Errorf("the block is not valid YAML: %w", err)
	}
	if want == nil {
		return fmt.Errorf("the block is empty")
	}
	for _, o := range objs {
		var got any
		if err := yaml.Unmarshal(o.YAML, &got); err != nil {
			return fmt.Errorf("%s: %w", o.id(), err)
		}
		if somewhere(got, want) {
			return nil
		}
	}
	ids := make([]string, len(objs))
	for i, o := range objs {
		ids[i] = o.id()
	}
	return fmt.Errorf("no rendered object (%s) contains the block:\n%s", strings.Join(ids, ", "), block)
}

// somewhere reports whether want is a subset of got or of any node below it.
func somewhere(got, want any) bool {
	if subset(got, want) {
		return true
	}
	switch g := got.(type) {
	case map[string]any:
		for _, v := range g {
			if somewhere(v, want) {
				return true
			}
		}
	case []any:
		for _, v := range g {
			if somewhere(v, want) {
				return true
			}
		}
	}
	return false
}

// subset reports whether got holds everything want shows: the same scalars,
// every key of a map, and every item of a list matched by a distinct item
// of got, in any order.
func subset(got, want any) bool {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return false
		}
		for k, wv := range w {
			gv, ok := g[k]
			if !ok || !subset(gv, wv) {
				return false
			}
		}
		return true
	case []any:
		g, ok := got.([]any)
		if !ok {
			return false
		}
		return matchItems(g, w, make([]bool, len(g)))
	default:
		return reflect.DeepEqual(got, want)
	}
}

// matchItems assigns each item of want a distinct item of got that holds
// it, backtracking when an early choice blocks a later item.
func matchItems(got, want []any, used []bool) bool {
	if len(want) == 0 {
		return true
	}
	for i, g := range got {
		if used[i] || !subset(g, want[0]) {
			continue
		}
		used[i] = true
		if matchItems(got, want[1:], used) {
			return true
		}
		used[i] = false
	}
	return false
}

// rendersWithSidecar renders a kustomization of the reader's own the way the
// docs set it up: in a directory beside a checkout of this repository at
// ../dot-sidecar, each resource it names being a Deployment labelled
// dot-sidecar/enabled: "true". Every workload must come out with
// dot-sidecar's containers.
func rendersWithSidecar(t *testing.T, block string) error {
	var k types.Kustomization
	if err := yaml.UnmarshalStrict([]byte(block), &k); err != nil {
		return fmt.Errorf("not a kustomization: %w", err)
	}
	if len(k.Resources) == 0 {
		return fmt.Errorf("the kustomization names no resource to inject into")
	}
	tmp := t.TempDir()
	if err := copyTree(manifestsDir(t), filepath.Join(tmp, "dot-sidecar", "manifests")); err != nil {
		return err
	}
	app := filepath.Join(tmp, "app")
	if err := os.MkdirAll(app, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(app, "kustomization.yaml"), []byte(block), 0o644); err != nil {
		return err
	}
	for i, r := range k.Resources {
		if err := os.WriteFile(filepath.Join(app, filepath.FromSlash(r)), fmt.Appendf(nil, labelledDeployment, i), 0o644); err != nil {
			return err
		}
	}
	objs, err := renderNow(app)
	if err != nil {
		return fmt.Errorf("kustomize build: %w", err)
	}
	ws := workloads(objs)
	if len(ws) != len(k.Resources) {
		return fmt.Errorf("rendered %d workloads from %d resources", len(ws), len(k.Resources))
	}
	for _, w := range ws {
		var names []string
		for _, c := range w.Template.Spec.InitContainers {
			names = append(names, c.Name)
		}
		if !slices.Equal(names, []string{iptablesName, sidecarName, checkName}) {
			return fmt.Errorf("%s: init containers %v, want dot-sidecar's", w.ID, names)
		}
	}
	return nil
}

const labelledDeployment = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: app-%d
  labels: {dot-sidecar/enabled: "true"}
spec:
  selector: {matchLabels: {app: app}}
  template:
    metadata: {labels: {app: app}}
    spec:
      containers:
      - {name: app, image: registry.example/app:1}
`

func copyTree(from, to string) error {
	return filepath.WalkDir(from, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, path)
		dst := filepath.Join(to, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o644)
	})
}

var ipv4 = regexp.MustCompile(`\b\d{1,3}(\.\d{1,3}){3}\b`)

// podForOverlay checks a Pod of the reader's own: it must decode strictly
// into a Pod, and every IP address it names must be one the overlay's
// objects name (the address the overlay listens on, say).
func podForOverlay(objs []object, block string) error {
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict([]byte(block), &pod); err != nil {
		return fmt.Errorf("not a Pod: %w", err)
	}
	addrs := ipv4.FindAllString(block, -1)
	if len(addrs) == 0 {
		return fmt.Errorf("the Pod names no address of the overlay's")
	}
	for _, a := range addrs {
		if _, err := netip.ParseAddr(a); err != nil {
			return fmt.Errorf("%q is not an IP address", a)
		}
		found := false
		for _, o := range objs {
			found = found || strings.Contains(string(o.YAML), a)
		}
		if !found {
			return fmt.Errorf("the Pod names %s, which the overlay's objects do not", a)
		}
	}
	return nil
}

// The checks above must catch the drift they exist for.
func TestDocsYAMLCheckCatchesDrift(t *testing.T) {
	t.Parallel()
	objs := render(t, "base")
	for _, tc := range []struct {
		block string
		ok    bool
	}{
		{"readinessProbe:\n  httpGet: {path: /readyz, port: dot-admin}\n  failureThreshold: 2\n", true},
		{"readinessProbe:\n  httpGet: {path: /readyz, port: dot-admin}\n  failureThreshold: 1\n", false},
		{"readinessProbe:\n  httpGet: {path: /readyz, port: 9253}\n", false},
		{"ports:\n- {name: dot-admin, containerPort: 9253, protocol: TCP}\n", true},
		{"ports:\n- {name: dot-admin, containerPort: 9253}\n- {name: dot-admin, containerPort: 9253}\n", false}, // one item, claimed twice
		{"prometheus.io/port: \"9253\"\n", true},
		{"prometheus.io/port: 9253\n", false}, // a number is not the string the annotation holds
		{"capabilities: {add: [NET_RAW, NET_ADMIN]}\n", true},
		{"capabilities: {add: [NET_ADMIN, SYS_ADMIN]}\n", false},
		{"unknownKey: 1\n", false},
	} {
		if err := containedIn(objs, tc.block); (err == nil) != tc.ok {
			t.Errorf("block %q: contained %v, want %v (%v)", tc.block, err == nil, tc.ok, err)
		}
	}
	if err := podForOverlay(render(t, "node"), "spec:\n  dnsPolicy: None\n  dnsConfig: {nameservers: [169.254.20.54]}\n"); err == nil {
		t.Error("a Pod naming an address the node overlay does not use passed")
	}
	if err := podForOverlay(render(t, "node"), "spec:\n  dnsPolicy: None\n  dnsConfg: {nameservers: [169.254.20.53]}\n"); err == nil {
		t.Error("a Pod with a misspelt field passed")
	}
	for quote, ok := range map[string]bool{"b {\n  c\n": true, "  b {\n": true, "b {\nd\n": false, "c\nb {\n": false} {
		if err := quotes("a\nb {\n    c\n}\nd\n", quote); (err == nil) != ok {
			t.Errorf("quote %q: %v, want quoted %v", quote, err, ok)
		}
	}
	if err := rendersWithSidecar(t, "resources:\n- d.yaml\ncomponents:\n- ../dot-sidecar/manifests/components/settings\n"); err == nil {
		t.Error("a kustomization without the inject component passed")
	}
}
