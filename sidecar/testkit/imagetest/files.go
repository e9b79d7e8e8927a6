package imagetest

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
)

// Repository paths of the files that make the image.
const (
	DockerfilePath = "Dockerfile"
	EntrypointPath = "entrypoint.sh"
	ScriptPath     = "iptables/dns-redirect.sh"
)

// Files are the files that make the image, parsed.
type Files struct {
	Dockerfile *Dockerfile
	// Subcommands are the words entrypoint.sh dispatches on.
	Subcommands map[string]bool
	// ScriptUID is dns-redirect.sh's default SIDECAR_UID, the UID whose
	// traffic the redirect exempts.
	ScriptUID int64
}

// Read parses the repository's Dockerfile, entrypoint.sh and
// dns-redirect.sh, and fails t on a file it cannot read or parse.
func Read(t testing.TB) Files {
	t.Helper()
	root := testkit.RepoRoot(t)
	read := func(rel string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	var f Files
	var err error
	if f.Dockerfile, err = Parse(read(DockerfilePath)); err != nil {
		t.Fatalf("%s: %v", DockerfilePath, err)
	}
	if f.Subcommands, err = ParseEntrypoint(read(EntrypointPath)); err != nil {
		t.Fatalf("%s: %v", EntrypointPath, err)
	}
	if f.ScriptUID, err = ParseScriptUID(read(ScriptPath)); err != nil {
		t.Fatalf("%s: %v", ScriptPath, err)
	}
	return f
}

// caseArm matches a shell case pattern line such as `init | cleanup | dry-run)`.
var caseArm = regexp.MustCompile(`^\s*\(?\s*([A-Za-z][A-Za-z0-9_-]*(?:\s*\|\s*[A-Za-z][A-Za-z0-9_-]*)*)\s*\)`)

// ParseEntrypoint returns the subcommands entrypoint.sh dispatches on: the
// words of its case patterns.
func ParseEntrypoint(text string) (map[string]bool, error) {
	subs := make(map[string]bool)
	for _, l := range strings.Split(text, "\n") {
		if m := caseArm.FindStringSubmatch(l); m != nil {
			for _, w := range strings.Split(m[1], "|") {
				subs[strings.TrimSpace(w)] = true
			}
		}
	}
	if len(subs) == 0 {
		return nil, fmt.Errorf("no case patterns found")
	}
	return subs, nil
}

var scriptUID = regexp.MustCompile(`(?m)^SIDECAR_UID=\$\{SIDECAR_UID:-([0-9]+)\}$`)

// ParseScriptUID returns the default of SIDECAR_UID in dns-redirect.sh.
func ParseScriptUID(text string) (int64, error) {
	m := scriptUID.FindStringSubmatch(text)
	if m == nil {
		return 0, fmt.Errorf("no SIDECAR_UID=${SIDECAR_UID:-N} default found")
	}
	return strconv.ParseInt(m[1], 10, 64)
}
