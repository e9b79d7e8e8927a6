// Package repo checks the repository as a whole. Its tests hold comments and
// documents to the tree: every repository path or Go file a Go comment or a
// Markdown file names must exist, so that a rename carries its references
// along; and the README's layout table must name every directory of Go code.
package repo

import (
	"fmt"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// What counts as a reference, chosen so that URLs, Go import paths, paths
// of the machine (/etc/resolv.conf) and paths of other projects
// (CoreDNS's plugin/forward/forward.go) are never taken for one:
//
//   - a path with a slash whose first element is an entry at the top of the
//     repository (sidecar/testkit/dnstest, iptables/dns-redirect.sh,
//     .ci/run), standing on its own: not inside a longer token such as
//     github.com/dot-sidecar/dot-sidecar/sidecar/... or a URL; a wildcard
//     (iptables/testdata/*.golden) must match at least one file;
//   - a Go file name without a directory (refs_test.go), in a Go comment or
//     in backquotes in Markdown: some file of the tree must have that name;
//   - the target of a relative Markdown link, from the document's folder.
//
// Placeholders end a path where they start (manifests/<dir> names
// manifests/), and so do trailing punctuation and a :line or #anchor.
var (
	// pathRef: a candidate path; the character before it is checked apart
	// (Go's regexp has no look-behind).
	pathRef = regexp.MustCompile(`[A-Za-z0-9_.*-]+(?:/[A-Za-z0-9_.*-]*)+`)
	// goFile: a bare Go file name.
	goFile = regexp.MustCompile(`^[A-Za-z0-9_]+\.go$`)
	// mdLink: an inline Markdown link or image.
	mdLink = regexp.MustCompile(`\]\(([^)\s]+)\)`)
	// backquoted: text in backquotes on one line.
	backquoted = regexp.MustCompile("`([^`\n]+)`")
)

// ref is one reference found, for messages.
type ref struct {
	file string // repository-relative, with the line: README.md:12
	text string // as written
}

func (r ref) String() string { return r.file + ": " + r.text }

// tree is what exists: every repository-relative path (files and
// directories), and every file's base name.
type tree struct {
	root  string
	paths map[string]bool
	names map[string]bool
	top   map[string]bool
}

func readTree(t *testing.T) *tree {
	t.Helper()
	tr := &tree{root: testkit.RepoRoot(t), paths: map[string]bool{}, names: map[string]bool{}, top: map[string]bool{}}
	err := filepath.WalkDir(tr.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(tr.root, p)
		rel = filepath.ToSlash(rel)
		if rel == "." {
			return nil
		}
		if d.IsDir() && (d.Name() == ".git" || rel == "sidecar/bench/results") {
			return filepath.SkipDir
		}
		tr.paths[rel] = true
		tr.names[d.Name()] = true
		if !strings.Contains(rel, "/") {
			tr.top[rel] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// exists reports whether the repository-relative path p (perhaps with
// wildcards) names something in the tree.
func (tr *tree) exists(p string) bool {
	p = strings.TrimSuffix(p, "/")
	if !strings.ContainsAny(p, "*?[") {
		return tr.paths[p]
	}
	for q := range tr.paths {
		if ok, _ := path.Match(p, q); ok {
			return true
		}
	}
	return false
}

// pathRefs returns the repository paths text names.
func (tr *tree) pathRefs(text string) []string {
	var out []string
	for _, loc := range pathRef.FindAllStringIndex(text, -1) {
		if loc[0] > 0 && strings.ContainsAny(text[loc[0]-1:loc[0]], "/:@~$.\\") {
			continue // inside a URL, an import path, a home or absolute path
		}
		if loc[1] < len(text) && text[loc[1]] == '@' {
			continue // a module@version
		}
		p := strings.TrimRight(text[loc[0]:loc[1]], ".,;:")
		first, _, _ := strings.Cut(p, "/")
		if !tr.top[first] || first == p {
			continue
		}
		out = append(out, p)
	}
	return out
}

// goComments returns every comment of a Go file, with its line.
func goComments(t *testing.T, file string) []ref {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, file, nil, parser.ParseComments|parser.SkipObjectResolution)
	if err != nil {
		t.Fatalf("parsing %s: %v", file, err)
	}
	var out []ref
	for _, g := range f.Comments {
		for _, c := range g.List {
			for i, l := range strings.Split(c.Text, "\n") {
				out = append(out, ref{file: fmt.Sprint(fset.Position(c.Pos()).Line + i), text: l})
			}
		}
	}
	return out
}

// stale lists the references of one file that name nothing in the tree.
func (tr *tree) stale(t *testing.T, rel string) []ref {
	t.Helper()
	abs := filepath.Join(tr.root, filepath.FromSlash(rel))
	if strings.HasSuffix(rel, ".go") {
		return tr.check(rel, goComments(t, abs), true)
	}
	b, err := os.ReadFile(abs)
	if err != nil {
		t.Fatal(err)
	}
	return tr.check(rel, markdownLines(string(b)), false)
}

func markdownLines(text string) []ref {
	var lines []ref
	for i, l := range strings.Split(text, "\n") {
		lines = append(lines, ref{file: fmt.Sprint(i + 1), text: l})
	}
	return lines
}

// check lists the references in lines (of file rel, Go comments when isGo,
// else Markdown; ref.file holds the line number) that name nothing in the
// tree.
func (tr *tree) check(rel string, lines []ref, isGo bool) []ref {
	var bad []ref
	report := func(line, text string) { bad = append(bad, ref{file: rel + ":" + line, text: text}) }
	for _, l := range lines {
		prose := l.text
		if !isGo {
			prose = mdLink.ReplaceAllString(prose, "]()") // link targets are checked as links
		}
		for _, p := range tr.pathRefs(prose) {
			if !tr.exists(p) {
				report(l.file, p)
			}
		}
		var names []string
		if isGo {
			names = strings.FieldsFunc(l.text, func(r rune) bool { return strings.ContainsRune(" \t()[]{},;:'\"`", r) })
		} else {
			for _, m := range backquoted.FindAllStringSubmatch(l.text, -1) {
				names = append(names, m[1])
			}
			for _, m := range mdLink.FindAllStringSubmatch(l.text, -1) {
				target, _, _ := strings.Cut(m[1], "#")
				if target == "" || strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
					continue
				}
				resolved := path.Clean(path.Join(path.Dir(rel), target))
				if strings.HasPrefix(resolved, "../") || !tr.exists(resolved) {
					report(l.file, m[1])
				}
			}
		}
		for _, n := range names {
			n = strings.TrimRight(n, ".")
			if goFile.MatchString(n) && !tr.names[n] {
				report(l.file, n)
			}
		}
	}
	return bad
}

// TestReferencesExist names every reference to a repository path or Go file,
// in a Go comment or a Markdown file, that does not exist.
func TestReferencesExist(t *testing.T) {
	t.Parallel()
	tr := readTree(t)
	var files []string
	for p := range tr.paths {
		if (strings.HasSuffix(p, ".go") || strings.HasSuffix(p, ".md")) && !strings.Contains(p, "/testdata/") {
			files = append(files, p)
		}
	}
	slices.Sort(files)
	if len(files) < 10 {
		t.Fatalf("found only %d Go and Markdown files under %s", len(files), tr.root)
	}
	for _, f := range files {
		for _, r := range tr.stale(t, f) {
			t.Errorf("%v: no such file or directory in the repository", r)
		}
	}
}

// TestRules runs the rules on made-up lines against a made-up tree: what
// must be caught, and what must not be taken for a reference.
func TestRules(t *testing.T) {
	tr := &tree{paths: map[string]bool{}, names: map[string]bool{}, top: map[string]bool{}}
	for _, p := range []string{"sidecar", "sidecar/main.go", "sidecar/e2e", "sidecar/e2e/image", "sidecar/e2e/image/podman_run_test.go",
		"iptables", "iptables/dns-redirect.sh", "README.md", "docs", "docs/design.md", ".ci", ".ci/run", "manifests", "manifests/node"} {
		tr.paths[p] = true
		tr.names[path.Base(p)] = true
		if !strings.Contains(p, "/") {
			tr.top[p] = true
		}
	}
	for _, tc := range []struct {
		name  string
		isGo  bool
		line  string
		stale []string
	}{
		{"existing paths", false, "see iptables/dns-redirect.sh, .ci/run and `sidecar/e2e/image/`.", nil},
		{"path at the end of a sentence", true, "as sidecar/main.go does.", nil},
		{"path with a line", false, "sidecar/main.go:12 and docs/design.md#module-requirements", nil},
		{"missing path", false, "moved to sidecar/e2e/netns/topology_test.go", []string{"sidecar/e2e/netns/topology_test.go"}},
		{"missing path in a comment", true, "the rules live in iptables/rules.sh", []string{"iptables/rules.sh"}},
		{"wildcard that matches", false, "tests in sidecar/e2e/image/podman_*.go", nil},
		{"wildcard that matches nothing", false, "tests in sidecar/e2e/image/docker_*.go", []string{"sidecar/e2e/image/docker_*.go"}},
		{"placeholder", false, "kubectl apply -k manifests/<dir>", nil},
		{"import path", true, "github.com/dot-sidecar/dot-sidecar/sidecar/nothing", nil},
		{"URL", false, "https://example.com/sidecar/nothing and <https://x.test/iptables/none>", nil},
		{"machine path", true, "/etc/netns/sidecar/x and ~/sidecar/x and $HOME/sidecar/x", nil},
		{"other project's path", true, "plugin/forward/forward.go in CoreDNS", nil},
		{"module version", false, "sidecar/nothing@v1.2.3", nil},
		{"Go file in a comment", true, "see main.go (and gone_test.go).", []string{"gone_test.go"}},
		{"Go file in backquotes", false, "see `main.go` and `gone.go`", []string{"gone.go"}},
		{"Go file in prose", false, "CoreDNS's persistent.go", nil},
		{"relative link", false, "[design](docs/design.md) and [gone](docs/gone.md#x)", []string{"docs/gone.md#x"}},
		{"link outside the repository", false, "[up](../../elsewhere.md)", []string{"../../elsewhere.md"}},
		{"external link", false, "[rfc](https://www.rfc-editor.org/rfc/rfc7858) and [top](#usage)", nil},
	} {
		rel := "README.md"
		if tc.isGo {
			rel = "sidecar/x.go"
		}
		var got []string
		for _, r := range tr.check(rel, []ref{{file: "1", text: tc.line}}, tc.isGo) {
			got = append(got, r.text)
		}
		if !slices.Equal(got, tc.stale) {
			t.Errorf("%s: %q: stale %q, want %q", tc.name, tc.line, got, tc.stale)
		}
	}
}
