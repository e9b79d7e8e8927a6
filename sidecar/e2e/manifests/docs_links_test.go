package manifests

import (
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
)

var (
	mdLink     = regexp.MustCompile(`\[[^\]]*\]\(([^)\s]+)\)`)
	codeSpan   = regexp.MustCompile("`[^`]*`")
	mdHeading  = regexp.MustCompile(`^#{1,6}\s+(.*?)\s*#*\s*$`)
	linkInText = regexp.MustCompile(`\[([^\]]*)\]\([^)]*\)`)
	urlScheme  = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*:`)
)

// TestDocsLinksResolve follows every relative link of README.md and
// docs/*.md: the file or directory must exist in the repository, and an
// anchor must name a heading of the Markdown file it points into.
func TestDocsLinksResolve(t *testing.T) {
	t.Parallel()
	root := testkit.RepoRoot(t)
	anchorsOf := map[string]map[string]bool{}
	anchors := func(rel string) map[string]bool {
		if a, ok := anchorsOf[rel]; ok {
			return a
		}
		a := headingAnchors(readDoc(t, rel))
		anchorsOf[rel] = a
		return a
	}
	var links int
	for _, file := range docFiles(t) {
		for i, line := range prose(readDoc(t, file)) {
			for _, m := range mdLink.FindAllStringSubmatch(codeSpan.ReplaceAllString(line, ""), -1) {
				target := m[1]
				if urlScheme.MatchString(target) {
					continue // a web address; not checked offline
				}
				links++
				where := file + ":" + strconv.Itoa(i+1)
				p, anchor, _ := strings.Cut(target, "#")
				rel := file
				if p != "" {
					rel = path.Clean(path.Join(path.Dir(file), p))
					if strings.HasPrefix(rel, "../") {
						t.Errorf("%s: link %s leaves the repository", where, target)
						continue
					}
					if _, err := os.Stat(filepath.Join(root, filepath.FromSlash(rel))); err != nil {
						t.Errorf("%s: link %s: %v", where, target, err)
						continue
					}
				}
				if anchor == "" {
					continue
				}
				if !strings.HasSuffix(rel, ".md") {
					t.Errorf("%s: link %s has an anchor into a file that is not Markdown", where, target)
					continue
				}
				if !anchors(rel)[anchor] {
					t.Errorf("%s: link %s: %s has no heading with anchor #%s", where, target, rel, anchor)
				}
			}
		}
	}
	if links == 0 {
		t.Error("no relative links found: is the link parser broken?")
	}
}

// TestReadmeMapsEveryDoc keeps the README's map of the docs complete.
func TestReadmeMapsEveryDoc(t *testing.T) {
	t.Parallel()
	readme := readDoc(t, "README.md")
	for _, f := range docFiles(t)[1:] {
		if !strings.Contains(readme, "]("+f+")") {
			t.Errorf("README.md does not link %s", f)
		}
	}
}

// headingAnchors returns the anchors GitHub gives the headings of a
// Markdown text: the heading's text in lower case, without punctuation,
// spaces turned to hyphens; a repeated anchor gets -1, -2, ...
func headingAnchors(text string) map[string]bool {
	anchors := map[string]bool{}
	seen := map[string]int{}
	for _, line := range prose(text) {
		m := mdHeading.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		a := slug(linkInText.ReplaceAllString(m[1], "$1"))
		if n := seen[a]; n > 0 {
			seen[a]++
			a += "-" + strconv.Itoa(n)
		} else {
			seen[a] = 1
		}
		anchors[a] = true
	}
	return anchors
}

func slug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case r == ' ':
			b.WriteByte('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

func TestSlug(t *testing.T) {
	t.Parallel()
	for heading, want := range map[string]string{
		"Shutdown: the lame duck": "shutdown-the-lame-duck",
		"`REDIRECT_MODE`: all port-53 traffic, or only the resolv.conf nameservers": "redirect_mode-all-port-53-traffic-or-only-the-resolvconf-nameservers",
		"`dot-sidecar wait`: ordering containers before Kubernetes 1.29":            "dot-sidecar-wait-ordering-containers-before-kubernetes-129",
		"Node-level mode: one dot-sidecar per node":                                 "node-level-mode-one-dot-sidecar-per-node",
		"Upstreams: connections, failover and trust":                                "upstreams-connections-failover-and-trust",
	} {
		if got := slug(heading); got != want {
			t.Errorf("slug(%q) = %q, want %q", heading, got, want)
		}
	}
	a := headingAnchors("# A\n## Pins\n```\n# not a heading\n```\n## Pins\n")
	for _, want := range []string{"a", "pins", "pins-1"} {
		if !a[want] {
			t.Errorf("anchors %v lack %s", a, want)
		}
	}
	if a["not-a-heading"] {
		t.Error("a comment in a code block counted as a heading")
	}
}
