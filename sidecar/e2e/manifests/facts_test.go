package manifests

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
)

// projectImage is the image every dot-sidecar container runs (a fixed fact of
// the project: the Dockerfile builds it, the release tags it).
const projectImage = "ghcr.io/dot-sidecar/dot-sidecar:0.1.0"

// imageFacts are what the manifests must agree with, read from the files
// that make the image: the Dockerfile, entrypoint.sh and the iptables script.
type imageFacts struct {
	Entrypoint  string          // ENTRYPOINT of the final stage (exec form)
	UID, GID    int64           // numeric USER of the final stage
	Subcommands map[string]bool // the words entrypoint.sh dispatches on
	ScriptUID   int64           // dns-redirect.sh's default SIDECAR_UID
}

// readImageFacts parses the files; a missing one skips the calling test on a
// developer's machine and fails it under CI, where every file must exist.
func readImageFacts(t *testing.T) imageFacts {
	t.Helper()
	root := testkit.RepoRoot(t)
	read := func(rel string) string {
		b, err := os.ReadFile(filepath.Join(root, rel))
		if os.IsNotExist(err) {
			testkit.Missing(t, rel+" does not exist yet (the image's files; the manifests are checked against them)")
		}
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	var f imageFacts
	var err error
	if f.Entrypoint, f.UID, f.GID, err = parseDockerfile(read("Dockerfile")); err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}
	if f.Subcommands, err = parseEntrypoint(read("entrypoint.sh")); err != nil {
		t.Fatalf("entrypoint.sh: %v", err)
	}
	if f.ScriptUID, err = parseScriptUID(read("iptables/dns-redirect.sh")); err != nil {
		t.Fatalf("iptables/dns-redirect.sh: %v", err)
	}
	return f
}

// parseDockerfile returns the final stage's exec-form ENTRYPOINT (its first
// element) and numeric USER uid:gid.
func parseDockerfile(text string) (entrypoint string, uid, gid int64, err error) {
	var lines []string
	var cur strings.Builder
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasSuffix(l, "\\") {
			cur.WriteString(strings.TrimSuffix(l, "\\") + " ")
			continue
		}
		cur.WriteString(l)
		if s := strings.TrimSpace(cur.String()); s != "" {
			lines = append(lines, s)
		}
		cur.Reset()
	}
	var user string
	for _, l := range lines {
		instr, rest, _ := strings.Cut(l, " ")
		rest = strings.TrimSpace(rest)
		switch strings.ToUpper(instr) {
		case "FROM": // a new stage: only the last one's settings count
			entrypoint, user = "", ""
		case "USER":
			user = rest
		case "ENTRYPOINT":
			var exec []string
			if err := json.Unmarshal([]byte(rest), &exec); err != nil || len(exec) == 0 {
				return "", 0, 0, fmt.Errorf("ENTRYPOINT %s: want the exec form [\"/path\", ...] so signals reach the process", rest)
			}
			entrypoint = exec[0]
		}
	}
	if entrypoint == "" {
		return "", 0, 0, fmt.Errorf("no ENTRYPOINT in the final stage")
	}
	u, g, ok := strings.Cut(user, ":")
	if user == "" || !ok {
		return "", 0, 0, fmt.Errorf("USER %q: want numeric uid:gid in the final stage", user)
	}
	if uid, err = strconv.ParseInt(u, 10, 64); err != nil {
		return "", 0, 0, fmt.Errorf("USER %q: uid is not numeric (runAsNonRoot can only verify a numeric USER)", user)
	}
	if gid, err = strconv.ParseInt(g, 10, 64); err != nil {
		return "", 0, 0, fmt.Errorf("USER %q: gid is not numeric", user)
	}
	return entrypoint, uid, gid, nil
}

// caseArm matches a shell case pattern line such as `init | cleanup | dry-run)`.
var caseArm = regexp.MustCompile(`^\s*\(?\s*([A-Za-z][A-Za-z0-9_-]*(?:\s*\|\s*[A-Za-z][A-Za-z0-9_-]*)*)\s*\)`)

// parseEntrypoint returns the subcommands entrypoint.sh dispatches on: the
// words of its case patterns.
func parseEntrypoint(text string) (map[string]bool, error) {
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

var scriptUID = regexp.MustCompile(`SIDECAR_UID:-([0-9]+)`)

func parseScriptUID(text string) (int64, error) {
	m := scriptUID.FindStringSubmatch(text)
	if m == nil {
		return 0, fmt.Errorf("no default for SIDECAR_UID (${SIDECAR_UID:-N}) found")
	}
	return strconv.ParseInt(m[1], 10, 64)
}

func TestParseImageFiles(t *testing.T) {
	t.Parallel()
	t.Run("Dockerfile", func(t *testing.T) {
		tests := []struct {
			name, text    string
			entry         string
			uid, gid      int64
			wantErrSubstr string
		}{
			{name: "final stage wins", text: "FROM golang:1.26 AS build\nUSER 1:1\nENTRYPOINT [\"/x\"]\nFROM debian:trixie-slim\n" +
				"RUN apt-get update && \\\n  apt-get install -y iptables\nUSER 10053:10053\nENTRYPOINT [\"/opt/e.sh\"]\n",
				entry: "/opt/e.sh", uid: 10053, gid: 10053},
			{name: "shell form", text: "FROM a\nUSER 1:1\nENTRYPOINT /opt/e.sh\n", wantErrSubstr: "exec form"},
			{name: "named user", text: "FROM a\nUSER nonroot:nonroot\nENTRYPOINT [\"/e\"]\n", wantErrSubstr: "not numeric"},
			{name: "no group", text: "FROM a\nUSER 10053\nENTRYPOINT [\"/e\"]\n", wantErrSubstr: "uid:gid"},
			{name: "entrypoint of an earlier stage only", text: "FROM a\nENTRYPOINT [\"/e\"]\nFROM b\nUSER 1:1\n", wantErrSubstr: "no ENTRYPOINT"},
		}
		for _, tc := range tests {
			e, u, g, err := parseDockerfile(tc.text)
			if tc.wantErrSubstr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErrSubstr) {
					t.Errorf("%s: err = %v, want it to mention %q", tc.name, err, tc.wantErrSubstr)
				}
				continue
			}
			if err != nil || e != tc.entry || u != tc.uid || g != tc.gid {
				t.Errorf("%s: got %q %d:%d %v, want %q %d:%d", tc.name, e, u, g, err, tc.entry, tc.uid, tc.gid)
			}
		}
	})
	t.Run("entrypoint.sh", func(t *testing.T) {
		subs, err := parseEntrypoint("case \"${1:-}\" in\ninit | cleanup | dry-run)\n  exec x ;;\n  wait|check) exec y ;;\n*) exec z ;;\nesac\n")
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range []string{"init", "cleanup", "dry-run", "wait", "check"} {
			if !subs[w] {
				t.Errorf("%s not found in %v", w, subs)
			}
		}
		if subs["*"] || len(subs) != 5 {
			t.Errorf("got %v, want exactly the five words", subs)
		}
	})
	t.Run("dns-redirect.sh", func(t *testing.T) {
		if uid, err := parseScriptUID("SIDECAR_UID=${SIDECAR_UID:-10053}\n"); err != nil || uid != 10053 {
			t.Errorf("got %d, %v", uid, err)
		}
		if _, err := parseScriptUID("SIDECAR_UID=10053\n"); err == nil {
			t.Error("a value without default syntax was accepted")
		}
	})
}

// loadSettings loads the environment a container would see into the
// sidecar's own configuration loader: the settings of the manifests are
// valid exactly when the sidecar would start with them.
func loadSettings(t testing.TB, environ []string) *config.Config {
	t.Helper()
	c, err := config.Load(nil, environ)
	if err != nil {
		t.Fatalf("the sidecar's config.Load rejects the manifest's settings %q: %v", environ, err)
	}
	return c
}

// portOf returns the port of a host:port address such as ":9253".
func portOf(t testing.TB, addr string) int32 {
	t.Helper()
	i := strings.LastIndex(addr, ":")
	if i < 0 {
		t.Fatalf("address %q has no port", addr)
	}
	p, err := strconv.ParseInt(addr[i+1:], 10, 32)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	return int32(p)
}
