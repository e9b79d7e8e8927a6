package image

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/imagetest"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/podmantest"
)

// TestPodmanImage builds the image from the repository's Dockerfile and
// looks at what it holds: it runs as the Dockerfile's numeric USER, its
// binary is the release build made from the binary's modules only, and
// there is no Go toolchain, Go source or module cache in it. Its size is
// reported.
func TestPodmanImage(t *testing.T) {
	t.Parallel()
	e := podmantest.New(t)
	img := e.ProjectImage(t)
	base := e.BaseImages(t)
	t.Logf("built %s (%s) in %v this run", img.Ref, img.ID[:12], img.Took.Round(time.Second))

	size := func(ref string) float64 {
		n, err := strconv.ParseFloat(e.Must(t, "image", "inspect", "--format", "{{.Size}}", ref), 64)
		if err != nil {
			t.Fatal(err)
		}
		return n / 1e6
	}
	t.Logf("image size: %.1f MB (its base, Debian %s trimmed like debian:12-slim: %.1f MB)", size(img.Ref), podmantest.Suite, size(base.Debian))

	t.Run("runs as the Dockerfile's USER", func(t *testing.T) {
		uid, gid, err := imagetest.Read(t).Dockerfile.User()
		if err != nil {
			t.Fatal(err)
		}
		want := strconv.FormatInt(uid, 10) + ":" + strconv.FormatInt(gid, 10)
		if got := e.Must(t, "image", "inspect", "--format", "{{.Config.User}}", img.Ref); got != want {
			t.Errorf("image user %q, want %s", got, want)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		// No --user: what a pod without runAsUser gets.
		r := e.Run(ctx, t, podmantest.Spec{Name: "id", Image: img.Ref, Entrypoint: []string{"/bin/sh", "-c"}, Args: []string{"id -u; id -g"}})
		if r.Err != nil || strings.Fields(r.Stdout)[0]+":"+strings.Fields(r.Stdout)[1] != want {
			t.Errorf("id in the image, want %s: %v", want, r)
		}
	})

	root := e.Must(t, "image", "mount", img.Ref)
	t.Cleanup(func() { e.Must(t, "image", "unmount", img.Ref) })

	t.Run("the binary is the release build of the binary's modules", func(t *testing.T) {
		bin := filepath.Join(root, binaryInImage)
		checkReleaseBinary(t, bin, podmantest.ProjectVersion)
		info, err := buildinfo.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		var deps []string
		for _, d := range info.Deps {
			deps = append(deps, d.Path)
		}
		slices.Sort(deps)
		if want := binaryModules(t); !slices.Equal(deps, want) {
			t.Errorf("the image's binary is built from modules %q, want the binary's %q", deps, want)
		}
		b, err := os.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		// Function names stay in a stripped Go binary (pclntab): test
		// code linked in would show by its package paths.
		for _, test := range []string{"/sidecar/testkit", "testing.tRunner"} {
			if bytes.Contains(b, []byte(test)) {
				t.Errorf("the image's binary contains %q: test code is linked in", test)
			}
		}
	})

	t.Run("no Go toolchain, sources or module cache", func(t *testing.T) {
		var found []string
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			switch name := d.Name(); {
			case d.IsDir() && (rel == "usr/local/go" || rel == "go" || name == "go-build" || name == "mod" && strings.HasSuffix(filepath.Dir(rel), "pkg")):
				found = append(found, rel+"/")
				return fs.SkipDir
			case !d.IsDir() && (name == "go" || name == "gofmt" || name == "go.mod" || strings.HasSuffix(name, ".go")):
				found = append(found, rel)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(found) > 0 {
			t.Errorf("the image holds Go files: %q", found)
		}
	})
}
