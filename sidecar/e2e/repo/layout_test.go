package repo

import (
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

// TestLayoutTable holds the README's layout table to the tree: every
// directory with Go files is named by a row (exactly, or under a `dir/*`
// row), and every name in the table resolves to something that exists.
//
// In a row's first cell the first backquoted name is a path from the
// repository root; a later name without a slash is beside it
// (`sidecar/internal/server`, `dnswire`) or, failing that, under it
// (`sidecar/testkit` and its `dnstest`).
func TestLayoutTable(t *testing.T) {
	root := testkit.RepoRoot(t)
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	rows := layoutRows(t, string(readme))
	exact, wild := map[string]bool{}, []string{}
	exists := func(p string) bool {
		_, err := os.Stat(filepath.Join(root, filepath.FromSlash(p)))
		return err == nil
	}
	for _, row := range rows {
		anchor := ""
		for _, name := range row {
			p := strings.TrimSuffix(name, "/")
			switch {
			case strings.HasSuffix(p, "/*"):
				p = strings.TrimSuffix(p, "/*")
				wild = append(wild, p+"/")
			case strings.Contains(p, "/") || anchor == "":
			case exists(path.Join(path.Dir(anchor), p)):
				p = path.Join(path.Dir(anchor), p)
			default:
				p = path.Join(anchor, p)
			}
			if !exists(p) {
				t.Errorf("README layout names %q, which resolves to %s: not in the tree", name, p)
				continue
			}
			if anchor == "" {
				anchor = p
			}
			if fi, err := os.Stat(filepath.Join(root, filepath.FromSlash(p))); err == nil && !fi.IsDir() {
				p = path.Dir(p)
			}
			exact[p] = true
		}
	}
	for _, dir := range goDirs(t, root) {
		if exact[dir] || slices.ContainsFunc(wild, func(w string) bool { return strings.HasPrefix(dir+"/", w) }) {
			continue
		}
		t.Errorf("%s holds Go code but the README's layout table does not name it", dir)
	}
}

var layoutCell = regexp.MustCompile("^\\|([^|]*)\\|")

// layoutRows returns the backquoted names of the first cell of each row of
// the table under "## Layout".
func layoutRows(t *testing.T, readme string) [][]string {
	_, section, ok := strings.Cut(readme, "\n## Layout\n")
	if !ok {
		t.Fatal(`README.md has no "## Layout" section`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	var rows [][]string
	for _, line := range strings.Split(section, "\n") {
		m := layoutCell.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		var names []string
		for _, q := range backquoted.FindAllStringSubmatch(m[1], -1) {
			names = append(names, q[1])
		}
		if len(names) > 0 {
			rows = append(rows, names)
		}
	}
	if len(rows) == 0 {
		t.Fatal("README.md's layout table has no rows")
	}
	return rows
}

// goDirs lists the repository-relative directories holding .go files,
// leaving out testdata and hidden directories as the go command does.
func goDirs(t *testing.T, root string) []string {
	seen := map[string]bool{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() && p != root && (name == "testdata" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_")) {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(name, ".go") {
			rel, err := filepath.Rel(root, filepath.Dir(p))
			if err != nil {
				return err
			}
			seen[filepath.ToSlash(rel)] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	dirs := make([]string, 0, len(seen))
	for d := range seen {
		dirs = append(dirs, d)
	}
	slices.Sort(dirs)
	return dirs
}
