package manifests

import (
	"fmt"
	"strings"
	"testing"
)

// serverBlock is one server block of a Corefile: its keys
// ("tls://.:853") and its directives in order.
type serverBlock struct {
	keys       []string
	directives []directive
}

// directive is one line of a server block ("tls CERT KEY") with the lines
// of its own block, if it has one, as text with single spaces.
type directive struct {
	name string
	args []string
	body []string
}

func (d directive) String() string {
	s := strings.Join(append([]string{d.name}, d.args...), " ")
	if d.body != nil {
		s += " {" + strings.Join(d.body, "; ") + "}"
	}
	return s
}

// parseCorefile reads what the manifests' Corefiles use of the syntax:
// server blocks of directives, directives with one level of block,
// comments from '#'. Snippets, imports and environment variables are
// errors.
func parseCorefile(text string) ([]serverBlock, error) {
	var blocks []serverBlock
	var cur *serverBlock
	var dir *directive
	for n, line := range strings.Split(text, "\n") {
		if i := strings.Index(line, "#"); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		at := fmt.Sprintf("line %d %q", n+1, line)
		open := f[len(f)-1] == "{"
		if open {
			f = f[:len(f)-1]
		}
		switch {
		case len(f) == 1 && f[0] == "}" && !open:
			switch {
			case dir != nil:
				dir = nil
			case cur != nil:
				blocks = append(blocks, *cur)
				cur = nil
			default:
				return nil, fmt.Errorf("%s: closes nothing", at)
			}
		case len(f) == 0:
			return nil, fmt.Errorf("%s: a { of its own", at)
		case strings.ContainsAny(strings.Join(f, " "), "(){}$") || f[0] == "import":
			return nil, fmt.Errorf("%s: syntax this parser does not read", at)
		case cur == nil:
			if !open {
				return nil, fmt.Errorf("%s: want server block keys and {", at)
			}
			cur = &serverBlock{keys: f}
		case dir != nil:
			if open {
				return nil, fmt.Errorf("%s: a block two levels deep", at)
			}
			dir.body = append(dir.body, strings.Join(f, " "))
		default:
			cur.directives = append(cur.directives, directive{name: f[0], args: f[1:]})
			if open {
				dir = &cur.directives[len(cur.directives)-1]
				dir.body = []string{}
			}
		}
	}
	if cur != nil || dir != nil {
		return nil, fmt.Errorf("unclosed block at the end")
	}
	return blocks, nil
}

func (b serverBlock) directive(name string) (directive, bool) {
	for _, d := range b.directives {
		if d.name == name {
			return d, true
		}
	}
	return directive{}, false
}

func TestParseCorefile(t *testing.T) {
	blocks, err := parseCorefile(".:53 {\n  errors # comment\n  cache 30 {\n    disable success cluster.local\n  }\n}\ntls://.:853 dns://x:5 {\n  tls a b\n}\n")
	if err != nil {
		t.Fatal(err)
	}
	if len(blocks) != 2 || strings.Join(blocks[1].keys, ",") != "tls://.:853,dns://x:5" {
		t.Fatalf("blocks %+v", blocks)
	}
	if got := fmt.Sprint(blocks[0].directives); got != "[errors cache 30 {disable success cluster.local}]" {
		t.Errorf("directives %s", got)
	}
	for _, bad := range []string{".:53 {\n errors\n", "}\n", "{\n}\n", ".:53 {\n import x\n (snip) {\n}\n}\n", ".:53 {\n a {\n b {\n}\n}\n}\n"} {
		if _, err := parseCorefile(bad); err == nil {
			t.Errorf("parseCorefile accepted %q", bad)
		}
	}
}
