package image

import (
	"context"
	"debug/buildinfo"
	"debug/elf"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/bintest"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/imagetest"
)

// TestStaticBuild: the Dockerfile's build command is bintest's release
// build, word for word, and that build makes what a Debian-slim image
// without a Go toolchain can run: a static binary with no interpreter and
// no shared libraries, stripped, with reproducible paths and the version
// stamped.
func TestStaticBuild(t *testing.T) {
	t.Parallel()
	df := imagetest.Read(t).Dockerfile
	const out = "/out/dot-sidecar"
	if got, want := buildRun(t, df, "go build"), bintest.ShellCommand("${VERSION}", out); got != want {
		t.Fatalf("the Dockerfile builds with\n%s\nbut the tests build with (bintest.ShellCommand)\n%s", got, want)
	}
	if dest, _, ok := df.Installed(imagetest.BuiltBinary); !ok || dest != binaryInImage {
		t.Errorf("the built binary lands at %q, want %s", dest, binaryInImage)
	}

	bin := filepath.Join(t.TempDir(), "dot-sidecar")
	const version = "0.0.0-dockerfile-test"
	if err := bintest.Build(context.Background(), testkit.RepoRoot(t), bin, version); err != nil {
		t.Fatal(err)
	}
	checkReleaseBinary(t, bin, version)
}

// checkReleaseBinary checks that the binary at bin is the release build of
// version: static (no interpreter, no shared libraries), stripped, built
// without cgo and with -trimpath, and stamped with version.
func checkReleaseBinary(t *testing.T, bin, version string) {
	t.Helper()
	f, err := elf.Open(bin)
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
	info, err := buildinfo.ReadFile(bin)
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
	got, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || strings.TrimSpace(string(got)) != "dot-sidecar "+version {
		t.Errorf("%s version = %q (%v), want dot-sidecar %s: main.version is not stamped", bin, got, err, version)
	}
}

// binaryModules are the modules the binary is built from, by path.
func binaryModules(t *testing.T) []string {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", "-f", "{{with .Module}}{{if not .Main}}{{.Path}}{{end}}{{end}}", bintest.MainPackage)
	cmd.Dir = testkit.RepoRoot(t)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", bintest.MainPackage, err)
	}
	mods := strings.Fields(string(out))
	slices.Sort(mods)
	return slices.Compact(mods)
}

// TestModuleDownload: the build stage downloads, in a layer of its own made
// before the sources arrive, exactly the modules the binary is built from,
// and none of the modules go.mod requires for the tests alone. The list is
// checked against go list, then proved: downloaded into an empty module
// cache from this machine's (no network), it is all the build needs.
func TestModuleDownload(t *testing.T) {
	t.Parallel()
	df := imagetest.Read(t).Dockerfile
	run := buildRun(t, df, "go mod download")
	listed, ok := strings.CutPrefix(run, "go mod download ")
	if !ok {
		t.Fatalf("RUN %q: want go mod download followed by the modules only", run)
	}
	mods := strings.Fields(listed)
	want := binaryModules(t)
	if !slices.IsSorted(mods) || !slices.Equal(mods, slices.Compact(slices.Clone(mods))) {
		t.Errorf("the Dockerfile's modules are not sorted and unique: %q", mods)
	}
	for _, m := range want {
		if !slices.Contains(mods, m) {
			t.Errorf("the binary is built from %s, which the Dockerfile does not download", m)
		}
	}
	for _, m := range mods {
		if !slices.Contains(want, m) {
			t.Errorf("the Dockerfile downloads %s, which the binary is not built from", m)
		}
	}

	// Layers: go.mod and go.sum, the download, then the sources, then the
	// build, so that a source edit reuses the download.
	build := df.Stages[0]
	isCopy := func(src string) func(imagetest.Instruction) bool {
		return func(in imagetest.Instruction) bool { return in.Cmd == "COPY" && strings.HasPrefix(in.Args, src) }
	}
	isRun := func(word string) func(imagetest.Instruction) bool {
		return func(in imagetest.Instruction) bool { return in.Cmd == "RUN" && strings.Contains(in.Args, word) }
	}
	order := []int{
		instrIndex(build, isCopy("go.mod go.sum ")), instrIndex(build, isRun("go mod download")),
		instrIndex(build, isCopy("sidecar/ ")), instrIndex(build, isRun("go build")),
	}
	if slices.Contains(order, -1) || !slices.IsSorted(order) || order[0]+1 != order[1] {
		t.Errorf("build stage order %v (COPY go.mod go.sum, RUN go mod download right after it, COPY sidecar/, RUN go build): want them in that order", order)
	}

	t.Run("proof", func(t *testing.T) {
		proveDownload(t, mods)
	})
}

// proveDownload downloads mods into an empty module cache, with this
// machine's module cache as the only proxy, and lists the binary's packages
// with no proxy at all: it succeeds only if mods are all the build needs.
// It then checks nothing else was fetched.
func proveDownload(t *testing.T, mods []string) {
	out, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		t.Fatal(err)
	}
	proxy := filepath.Join(strings.TrimSpace(string(out)), "cache", "download")
	fresh := filepath.Join(t.TempDir(), "mod")
	goCmd := func(env []string, args ...string) {
		t.Helper()
		cmd := exec.Command("go", args...)
		cmd.Dir = testkit.RepoRoot(t)
		cmd.Env = append(os.Environ(), append([]string{"GOMODCACHE=" + fresh, "GOFLAGS=-mod=readonly",
			"GOSUMDB=off", "GOTOOLCHAIN=local"}, env...)...)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, b)
		}
	}
	// The module cache is read-only; go clean removes it.
	t.Cleanup(func() {
		c := exec.Command("go", "clean", "-modcache")
		c.Env = append(os.Environ(), "GOMODCACHE="+fresh)
		if b, err := c.CombinedOutput(); err != nil {
			t.Errorf("go clean -modcache: %v\n%s", err, b)
		}
	})
	goCmd([]string{"GOPROXY=file://" + proxy}, append([]string{"mod", "download"}, mods...)...)
	goCmd([]string{"GOPROXY=off"}, "list", "-deps", "-f", "{{with .Error}}{{.}}{{end}}", bintest.MainPackage)

	var fetched []string
	root := filepath.Join(fresh, "cache", "download")
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !strings.HasSuffix(p, ".zip") {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		mod, _, _ := strings.Cut(filepath.ToSlash(rel), "/@v/")
		fetched = append(fetched, mod)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(fetched)
	// Module paths with capitals are case-encoded in the cache (!x for X);
	// none of ours has any.
	if !slices.Equal(fetched, mods) {
		t.Errorf("the download fetched %q, want exactly %q", fetched, mods)
	}
}
