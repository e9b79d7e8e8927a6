package manifests

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
)

// The documentation is tested like code: README.md and docs/*.md. These
// files hold what the tests of this package share; docs_yaml_test.go,
// docs_links_test.go and docs_metrics_test.go hold the checks. The
// conventions they enforce are described in docs/design.md.

// docFiles returns README.md and every docs/*.md, relative to the
// repository root, with forward slashes.
func docFiles(t *testing.T) []string {
	t.Helper()
	docs, err := filepath.Glob(filepath.Join(testkit.RepoRoot(t), "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	if len(docs) == 0 {
		t.Fatal("no docs/*.md found")
	}
	files := []string{"README.md"}
	for _, d := range docs {
		files = append(files, "docs/"+filepath.Base(d))
	}
	return files
}

func readDoc(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testkit.RepoRoot(t), filepath.FromSlash(rel)))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// fence is one fenced code block of a Markdown file.
type fence struct {
	file string
	line int    // of the opening fence, 1-based
	lang string // the info string's first word
	body string // the lines between the fences, the fence's indentation removed
}

var fenceOpen = regexp.MustCompile("^( *)```(\\S*)")

// fences returns the fenced code blocks of a Markdown text, including those
// indented inside list items.
func fences(file, text string) []fence {
	var out []fence
	lines := strings.Split(text, "\n")
	for i := 0; i < len(lines); i++ {
		m := fenceOpen.FindStringSubmatch(lines[i])
		if m == nil {
			continue
		}
		f := fence{file: file, line: i + 1, lang: m[2]}
		indent := m[1]
		var body []string
		for i++; i < len(lines) && strings.TrimSpace(lines[i]) != "```"; i++ {
			body = append(body, strings.TrimPrefix(lines[i], indent))
		}
		f.body = strings.Join(body, "\n")
		out = append(out, f)
	}
	return out
}

// prose returns the text outside fenced code blocks, line for line (fenced
// lines are blanked, so line numbers stay right).
func prose(text string) []string {
	lines := strings.Split(text, "\n")
	in := false
	for i, l := range lines {
		if fenceOpen.MatchString(l) || (in && strings.TrimSpace(l) == "```") {
			in = !in
			lines[i] = ""
			continue
		}
		if in {
			lines[i] = ""
		}
	}
	return lines
}

// bookkeeping matches references that only make sense to the people who
// wrote a text: tracker numbers and version-control branches.
var bookkeeping = regexp.MustCompile(`(?i)\b(issue|PR|pull request|ticket)\s*#?\d+|(^|[\s(])#\d+\b|\bbranch(es)?\b`)

// TestDocsNameNoBookkeeping keeps the docs to facts a reader can check: no
// issue or pull-request numbers, no branches.
func TestDocsNameNoBookkeeping(t *testing.T) {
	t.Parallel()
	for _, file := range docFiles(t) {
		for i, line := range strings.Split(readDoc(t, file), "\n") {
			if m := bookkeeping.FindString(line); m != "" {
				t.Errorf("%s:%d mentions %q; state the fact instead:\n%s", file, i+1, strings.TrimSpace(m), line)
			}
		}
	}
}

func TestBookkeepingPattern(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"see issue 6", "(issue #12)", "PR #30647", "fixed in #42", "the perf branch", "on branches"} {
		if !bookkeeping.MatchString(s) {
			t.Errorf("%q not caught", s)
		}
	}
	for _, s := range []string{"issue a certificate", "TLS sessions", "EDE 22", "settings.md#pins", "RFC 7858 §4.2", "Linux 6.18"} {
		if bookkeeping.MatchString(s) {
			t.Errorf("%q caught", s)
		}
	}
}
