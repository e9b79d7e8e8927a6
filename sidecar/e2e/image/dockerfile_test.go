package iptables

import (
	"bufio"
	"debug/buildinfo"
	"debug/elf"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
)

// There is no container engine where the tests run, so the image is tested
// through its pieces: the Dockerfile's facts, and its build command run here.

// instruction is one Dockerfile instruction with continuations joined.
type instruction struct {
	cmd  string // upper case: FROM, RUN, ...
	args string
}

type stage struct {
	from  string // image reference
	name  string // AS name, if any
	instr []instruction
}

func parseDockerfile(t *testing.T) []stage {
	t.Helper()
	f, err := os.Open("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var stages []stage
	var cur strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(l, "#") || (l == "" && cur.Len() == 0) {
			continue
		}
		if strings.HasSuffix(l, `\`) {
			cur.WriteString(strings.TrimSuffix(l, `\`) + " ")
			continue
		}
		cur.WriteString(l)
		line := strings.Join(strings.Fields(cur.String()), " ")
		cur.Reset()
		cmd, args, _ := strings.Cut(line, " ")
		in := instruction{cmd: strings.ToUpper(cmd), args: args}
		if in.cmd == "FROM" {
			ref, name, _ := strings.Cut(args, " AS ")
			stages = append(stages, stage{from: ref, name: name})
			continue
		}
		if len(stages) == 0 {
			continue // ARG before the first FROM
		}
		stages[len(stages)-1].instr = append(stages[len(stages)-1].instr, in)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(stages) != 2 {
		t.Fatalf("want a build stage and a final stage, got %d stages", len(stages))
	}
	return stages
}

func (s stage) all(cmd string) []string {
	var out []string
	for _, in := range s.instr {
		if in.cmd == cmd {
			out = append(out, in.args)
		}
	}
	return out
}

// scriptDefaultUID reads the default of SIDECAR_UID from dns-redirect.sh.
func scriptDefaultUID(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(script)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^SIDECAR_UID=\$\{SIDECAR_UID:-([0-9]+)\}$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("dns-redirect.sh: no SIDECAR_UID=${SIDECAR_UID:-N} default")
	}
	return string(m[1])
}

func TestDockerfile(t *testing.T) {
	stages := parseDockerfile(t)
	build, final := stages[0], stages[1]

	t.Run("base images by exact version tag", func(t *testing.T) {
		if build.from != "golang:1.26.8-bookworm" || build.name != "build" {
			t.Errorf("build stage FROM %q AS %q, want golang:1.26.8-bookworm AS build", build.from, build.name)
		}
		// debian:12.N-slim or debian:bookworm-YYYYMMDD-slim; no floating tag, no digest.
		if !regexp.MustCompile(`^debian:(12\.[0-9]+|bookworm-[0-9]{8})-slim$`).MatchString(final.from) {
			t.Errorf("final stage FROM %q: want an exact Debian 12 slim tag", final.from)
		}
		// The build image's Go must be the go.mod language version's release line.
		mod, err := os.ReadFile("../go.mod")
		if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(`(?m)^go ([0-9]+\.[0-9]+)`).FindSubmatch(mod)
		if m == nil || !strings.HasPrefix(build.from, "golang:"+string(m[1])+".") {
			t.Errorf("go.mod wants go %s, build stage is %s", m, build.from)
		}
	})

	t.Run("user is the script's exempt uid", func(t *testing.T) {
		users := final.all("USER")
		uid := scriptDefaultUID(t)
		// GID equals UID by project convention (10053:10053).
		if want := uid + ":" + uid; len(users) != 1 || users[0] != want {
			t.Errorf("final USER %q, want exactly one USER %s (dns-redirect.sh exempts uid %s)", users, want, uid)
		}
	})

	t.Run("entrypoint, ports and files", func(t *testing.T) {
		eps := final.all("ENTRYPOINT")
		var ep []string
		if len(eps) != 1 || json.Unmarshal([]byte(eps[0]), &ep) != nil || !slices.Equal(ep, []string{"/opt/dot-sidecar/entrypoint.sh"}) {
			t.Errorf("ENTRYPOINT %q, want exec form [\"/opt/dot-sidecar/entrypoint.sh\"]", eps)
		}
		if len(final.all("CMD")) != 0 {
			t.Error("a CMD would become arguments of every container that sets none")
		}
		exposed := strings.Fields(strings.Join(final.all("EXPOSE"), " "))
		for _, p := range []string{"5053/udp", "5053/tcp", "9253"} {
			if !slices.Contains(exposed, p) {
				t.Errorf("EXPOSE lacks %s (got %q)", p, exposed)
			}
		}
		// The image keeps the repository's relative layout, which is how
		// entrypoint.sh finds the script.
		copies := final.all("COPY")
		for _, want := range []string{
			"--from=build /out/dot-sidecar /usr/local/bin/dot-sidecar",
			"--chmod=0755 entrypoint.sh /opt/dot-sidecar/entrypoint.sh",
			"--chmod=0755 iptables/dns-redirect.sh /opt/dot-sidecar/iptables/dns-redirect.sh",
		} {
			if !slices.Contains(copies, want) {
				t.Errorf("final stage lacks COPY %s (has %q)", want, copies)
			}
		}
	})

	t.Run("small apt layer", func(t *testing.T) {
		var apt string
		for _, r := range final.all("RUN") {
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
		b, err := os.ReadFile("../.dockerignore")
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(string(b), "\n")
		if !slices.Contains(lines, "*") {
			t.Fatal(".dockerignore should start from excluding everything")
		}
		var sources []string
		for _, s := range append(build.all("COPY"), final.all("COPY")...) {
			f := strings.Fields(s)
			for _, src := range f[:len(f)-1] {
				if !strings.HasPrefix(src, "--") {
					sources = append(sources, src)
				}
			}
			if strings.HasPrefix(f[0], "--from=") {
				sources = sources[:len(sources)-1] // from a stage, not the context
			}
		}
		for _, src := range sources {
			if !slices.Contains(lines, "!"+src) && !slices.Contains(lines, "!"+strings.TrimSuffix(src, "/")+"/") {
				t.Errorf("COPY source %s is excluded by .dockerignore (no !%s line)", src, src)
			}
		}
	})
}

// goBuildCommand returns the build stage's go build RUN command.
func goBuildCommand(t *testing.T) string {
	t.Helper()
	for _, r := range parseDockerfile(t)[0].all("RUN") {
		if strings.Contains(r, "go build") {
			return r
		}
	}
	t.Fatal("no go build RUN in the build stage")
	return ""
}

// TestStaticBuild runs the Dockerfile's own build command here and checks the
// result is what a Debian-slim image without a Go toolchain can run: a static
// binary with no interpreter and no shared libraries, version stamped.
func TestStaticBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary; skipped with -short")
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "sidecar", "main.go")); err != nil {
		testkit.Missing(t, "sidecar/main.go does not exist yet")
	}
	cmdline := goBuildCommand(t)
	for _, want := range []string{"CGO_ENABLED=0 ", "go build ", "-trimpath", `-ldflags "-s -w -X main.version=${VERSION}"`, "-o /out/dot-sidecar ./sidecar"} {
		if !strings.Contains(cmdline, want) {
			t.Fatalf("build command %q lacks %q", cmdline, want)
		}
	}
	out := filepath.Join(t.TempDir(), "dot-sidecar")
	const version = "0.0.0-dockerfile-test"
	cmdline = strings.ReplaceAll(cmdline, "/out/dot-sidecar", out)
	cmd := exec.Command("/bin/sh", "-c", cmdline)
	cmd.Dir = root
	// The same toolchain that runs the test; VERSION as the ARG would set it.
	cmd.Env = append(os.Environ(), "VERSION="+version,
		"PATH="+filepath.Join(runtime.GOROOT(), "bin")+string(os.PathListSeparator)+os.Getenv("PATH"))
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", cmdline, err, b)
	}

	f, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("binary has an ELF interpreter: it is dynamically linked")
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) != 0 {
		t.Errorf("binary needs shared libraries %q (err %v)", libs, err)
	}
	if f.Section(".symtab") != nil {
		t.Error("binary has a symbol table: -s did not strip it")
	}

	info, err := buildinfo.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	if settings["CGO_ENABLED"] != "0" || settings["-trimpath"] != "true" {
		t.Errorf("build settings %v: want CGO_ENABLED=0 and -trimpath", settings)
	}
	got, err := exec.Command(out, "version").CombinedOutput()
	if err != nil || !strings.Contains(string(got), version) {
		t.Errorf("%s version = %q (%v), want it to print %s: main.version is not stamped", out, got, err, version)
	}
}
