package image

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/imagetest"
)

// Where the image keeps what it runs; entrypoint.sh finds the script
// relative to itself, so the two keep the repository's relative layout.
const (
	binaryInImage     = "/usr/local/bin/dot-sidecar"
	entrypointInImage = "/opt/dot-sidecar/entrypoint.sh"
	scriptInImage     = "/opt/dot-sidecar/iptables/dns-redirect.sh"
)

// exactTag matches the base images' default references: an exact Go patch
// release on Debian 12, an exact Debian 12 point release (or dated) slim
// image; no floating tag. A digest may be appended by whoever pins one.
var exactTag = map[string]*regexp.Regexp{
	"GO_IMAGE":   regexp.MustCompile(`^golang:[0-9]+\.[0-9]+\.[0-9]+-bookworm$`),
	"BASE_IMAGE": regexp.MustCompile(`^debian:(12\.[0-9]+|bookworm-[0-9]{8})-slim$`),
}

func TestDockerfile(t *testing.T) {
	t.Parallel()
	files := imagetest.Read(t)
	df := files.Dockerfile
	if len(df.Stages) != 2 {
		t.Fatalf("want a build stage and a final stage, got %d stages", len(df.Stages))
	}
	build, final := df.Stages[0], df.Final()

	t.Run("base images are build arguments with exact tags", func(t *testing.T) {
		// ARG before FROM, so that --build-arg GO_IMAGE=...@sha256:... pins a
		// digest without editing the file.
		for i, want := range []struct{ arg, name string }{{"GO_IMAGE", "build"}, {"BASE_IMAGE", ""}} {
			st := df.Stages[i]
			if st.From != "${"+want.arg+"}" || st.Name != want.name {
				t.Errorf("stage %d: FROM %s AS %q, want FROM ${%s}%s", i, st.From, st.Name, want.arg, map[bool]string{true: " AS " + want.name}[want.name != ""])
			}
			if !exactTag[want.arg].MatchString(st.Image) {
				t.Errorf("%s defaults to %q: want an exact version tag (%s)", want.arg, st.Image, exactTag[want.arg])
			}
		}
		// The build image's Go is the release line of go.mod's language version.
		mod, err := os.ReadFile(filepath.Join(testkit.RepoRoot(t), "go.mod"))
		if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(`(?m)^go ([0-9]+\.[0-9]+)`).FindSubmatch(mod)
		if m == nil || !strings.HasPrefix(build.Image, "golang:"+string(m[1])+".") {
			t.Errorf("go.mod says go %s, the build stage is %s", m, build.Image)
		}
	})

	t.Run("every builder reads it", func(t *testing.T) {
		// Docker's legacy builder, Podman and Buildah reject BuildKit-only
		// syntax, or worse, read it differently.
		allowedFlags := map[string][]string{"COPY": {"--from", "--chown"}, "ADD": {"--chown"}}
		for _, st := range df.Stages {
			for _, in := range st.Instr {
				for _, w := range strings.Fields(in.Args) {
					if !strings.HasPrefix(w, "--") {
						break
					}
					flag, _, _ := strings.Cut(w, "=")
					if !slices.Contains(allowedFlags[in.Cmd], flag) {
						t.Errorf("%s %s: %s needs BuildKit", in.Cmd, in.Args, flag)
					}
				}
				if strings.Contains(in.Args, "<<") {
					t.Errorf("%s %s: a heredoc needs BuildKit", in.Cmd, in.Args)
				}
			}
		}
	})

	t.Run("user is the script's exempt uid", func(t *testing.T) {
		uid, gid, err := df.User()
		if err != nil {
			t.Fatal(err)
		}
		// GID equals UID by project convention (10053:10053).
		if uid != files.ScriptUID || gid != uid {
			t.Errorf("USER %d:%d, want %d:%d (dns-redirect.sh exempts uid %d)", uid, gid, files.ScriptUID, files.ScriptUID, files.ScriptUID)
		}
	})

	t.Run("entrypoint, ports and files", func(t *testing.T) {
		ep, err := df.Entrypoint()
		if err != nil || !slices.Equal(ep, []string{entrypointInImage}) {
			t.Errorf("ENTRYPOINT %q (%v), want [%q]", ep, err, entrypointInImage)
		}
		if len(final.All("CMD")) != 0 {
			t.Error("a CMD would become arguments of every container that sets none")
		}
		exposed := strings.Fields(strings.Join(final.All("EXPOSE"), " "))
		for _, p := range []string{"5053/udp", "5053/tcp", "9253"} {
			if !slices.Contains(exposed, p) {
				t.Errorf("EXPOSE lacks %s (got %q)", p, exposed)
			}
		}
		// Executable because the Dockerfile says so, not because of the
		// checkout's modes (core.fileMode=false, an archive, Windows).
		for _, f := range []struct{ src, dest string }{
			{imagetest.BuiltBinary, binaryInImage},
			{imagetest.EntrypointPath, entrypointInImage},
			{imagetest.ScriptPath, scriptInImage},
		} {
			dest, executable, ok := df.Installed(f.src)
			if !ok || dest != f.dest || !executable {
				t.Errorf("%s lands at %q (found %v), executable %v; want %s, made executable by the Dockerfile", f.src, dest, ok, executable, f.dest)
			}
		}
	})

	t.Run("small apt layer", func(t *testing.T) {
		var apt string
		for _, r := range final.All("RUN") {
			if strings.Contains(r, "apt-get install") {
				apt = r
			}
		}
		// iproute2: dns-redirect.sh node-apply, run by manifests/node's init
		// container, needs ip (TestNodeModeInNamespaces runs it).
		for _, want := range []string{"apt-get update", "--no-install-recommends", " iptables ", " iproute2 ", " ca-certificates ", "rm -rf /var/lib/apt/lists/*"} {
			if !strings.Contains(apt, want) {
				t.Errorf("apt RUN %q lacks %q (one layer: update, install, clean)", apt, want)
			}
		}
	})

	t.Run("dockerignore keeps what COPY needs", func(t *testing.T) {
		b, err := os.ReadFile(filepath.Join(testkit.RepoRoot(t), ".dockerignore"))
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(string(b), "\n")
		if !slices.Contains(lines, "*") {
			t.Fatal(".dockerignore should start from excluding everything")
		}
		for _, st := range df.Stages {
			for _, c := range st.All("COPY") {
				f := strings.Fields(c)
				if strings.HasPrefix(f[0], "--from=") {
					continue // from a stage, not the context
				}
				for _, src := range f[:len(f)-1] {
					if strings.HasPrefix(src, "--") {
						continue
					}
					if !slices.Contains(lines, "!"+src) && !slices.Contains(lines, "!"+strings.TrimSuffix(src, "/")+"/") {
						t.Errorf("COPY source %s is excluded by .dockerignore (no !%s line)", src, src)
					}
				}
			}
		}
	})
}

// buildRun returns the build stage's RUN that contains word, failing t when
// there is none.
func buildRun(t *testing.T, df *imagetest.Dockerfile, word string) string {
	t.Helper()
	for _, r := range df.Stages[0].All("RUN") {
		if strings.Contains(r, word) {
			return r
		}
	}
	t.Fatalf("no RUN with %q in the build stage", word)
	return ""
}

// instrIndex is the position of the first instruction of st for which match
// holds, or -1.
func instrIndex(st imagetest.Stage, match func(imagetest.Instruction) bool) int {
	return slices.IndexFunc(st.Instr, match)
}
