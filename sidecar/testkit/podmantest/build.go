package podmantest

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/imagetest"
)

// BuildTimeout bounds one image build: a cold one downloads Debian packages
// and compiles the binary.
const BuildTimeout = 15 * time.Minute

// BuildOptions describe a podman build.
type BuildOptions struct {
	// Context is the build context directory; File the Dockerfile, by
	// default Context/Dockerfile.
	Context, File string
	// Tag names the image built.
	Tag string
	// Target builds up to that stage only (--target).
	Target string
	// Args are --build-arg NAME=VALUE.
	Args map[string]string
	// Volumes are mounted into every RUN step of every stage
	// (host:container[:options]), for caches whose content must not end up
	// in a layer. Their mount points do, as empty directories: use them
	// for a Target stage that is not the image.
	Volumes []string
}

// Build runs podman build with the machine's network (apt and the Go
// module proxy) and no registry: every base image must be in the store. The
// images it leaves untagged (an earlier build's, the build stage's) are
// pruned; its layers stay, so that an unchanged step is not run again.
func (e *Engine) Build(ctx context.Context, o BuildOptions) error {
	args := []string{"build", "--pull=never", "--network=host", "--layers", "-t", o.Tag}
	if o.File != "" {
		args = append(args, "-f", o.File)
	}
	if o.Target != "" {
		args = append(args, "--target", o.Target)
	}
	for _, n := range slices.Sorted(maps.Keys(o.Args)) {
		args = append(args, "--build-arg", n+"="+o.Args[n])
	}
	for _, v := range o.Volumes {
		args = append(args, "-v", v)
	}
	r := e.Exec(ctx, append(args, o.Context)...)
	if r.Err != nil {
		return fmt.Errorf("%s: %w\n%s", r.Argv, r.Err, testkit.Tail(r.Stdout+r.Stderr, 60))
	}
	_ = e.Exec(ctx, "image", "prune", "-f")
	return nil
}

// ProjectImageRef is the tag of the repository's image as ProjectImage
// builds it.
const ProjectImageRef = ImagePrefix + "dot-sidecar:test"

// ProjectVersion is the VERSION build argument ProjectImage passes.
const ProjectVersion = "0.0.0-image-test"

// Image is a built image.
type Image struct {
	Ref   string
	ID    string
	Bases BaseImages
	// Took is how long the build took in this process.
	Took time.Duration
}

var project struct {
	once sync.Once
	img  Image
	err  error
}

// ProjectImage builds the repository's Dockerfile, unchanged, on the
// process's first call, with the base images of BaseImages standing in for
// those it names: passed as build arguments where a FROM names its image
// through one, tagged with the Dockerfile's names otherwise (in this
// package's store only).
//
// The Go build stage is built first on its own, with the module and build
// caches of the toolchain running the tests mounted, so that it compiles
// only what changed and downloads nothing the machine has. Then the whole
// Dockerfile is built without them, reusing the stage's layers: podman
// mounts build volumes into every stage, and their mount points would
// otherwise be left in the image as empty directories.
func (e *Engine) ProjectImage(t testing.TB) Image {
	t.Helper()
	root := testkit.RepoRoot(t)
	b := e.BaseImages(t)
	project.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), BuildTimeout)
		defer cancel()
		start := time.Now()
		project.img, project.err = e.buildProject(ctx, root, b)
		project.img.Took = time.Since(start)
	})
	if project.err != nil {
		t.Fatalf("building the image: %v", project.err)
	}
	return project.img
}

func (e *Engine) buildProject(ctx context.Context, root string, b BaseImages) (Image, error) {
	img := Image{Ref: ProjectImageRef, Bases: b}
	df, err := os.ReadFile(filepath.Join(root, imagetest.DockerfilePath))
	if err != nil {
		return img, err
	}
	d, err := imagetest.Parse(string(df))
	if err != nil {
		return img, fmt.Errorf("%s: %w", imagetest.DockerfilePath, err)
	}
	args := map[string]string{"VERSION": ProjectVersion}
	var goStage string
	for _, st := range d.Stages {
		if (base{image: st.Image}).golang() {
			goStage = st.Name
		}
	}
	for _, f := range baseImages(d) {
		ours := b.Debian
		if f.golang() {
			ours = b.Golang
		}
		if f.arg != "" {
			args[f.arg] = ours
			continue
		}
		if r := e.Exec(ctx, "tag", ours, normalizeRef(f.image)); r.Err != nil {
			return img, fmt.Errorf("%v", r)
		}
	}
	if goStage != "" {
		vols, err := goCacheVolumes(ctx)
		if err != nil {
			return img, err
		}
		stage := BuildOptions{Context: root, Tag: ProjectImageRef + "-" + goStage, Target: goStage, Args: args, Volumes: vols}
		if err := e.Build(ctx, stage); err != nil {
			return img, err
		}
	}
	if err := e.Build(ctx, BuildOptions{Context: root, Tag: img.Ref, Args: args}); err != nil {
		return img, err
	}
	r := e.Exec(ctx, "image", "inspect", "--format", "{{.Id}}", img.Ref)
	if r.Err != nil {
		return img, fmt.Errorf("%v", r)
	}
	img.ID = strings.TrimSpace(r.Stdout)
	return img, nil
}

// goCacheVolumes mounts the module cache and the build cache of the go
// running the tests where the golang image's go looks for them (GOPATH /go,
// HOME /root).
func goCacheVolumes(ctx context.Context) ([]string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMODCACHE", "GOCACHE").Output()
	if err != nil {
		return nil, fmt.Errorf("go env GOMODCACHE GOCACHE: %w", err)
	}
	f := strings.Fields(string(out))
	if len(f) != 2 {
		return nil, fmt.Errorf("go env GOMODCACHE GOCACHE printed %q", out)
	}
	for _, d := range f {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	return []string{f[0] + ":/go/pkg/mod", f[1] + ":/root/.cache/go-build"}, nil
}

// bases are the base images of a Dockerfile's stages: each stage's FROM
// but those naming an earlier stage.
type base struct {
	image string // the image with build arguments' defaults substituted
	arg   string // the build argument naming it, if the FROM is just one
}

// golang reports whether the base is the Go build stage's.
func (b base) golang() bool { return strings.Contains(b.image, "golang") }

var argOnly = regexp.MustCompile(`^\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?$`)

func baseImages(d *imagetest.Dockerfile) []base {
	stages := map[string]bool{}
	var bases []base
	for _, st := range d.Stages {
		if !stages[st.Image] {
			b := base{image: st.Image}
			if m := argOnly.FindStringSubmatch(st.From); m != nil {
				b.arg = m[1]
			}
			bases = append(bases, b)
		}
		if st.Name != "" {
			stages[st.Name] = true
		}
	}
	return bases
}

// normalizeRef is the full name Docker gives a short one: golang:1 is
// docker.io/library/golang:1.
func normalizeRef(ref string) string {
	first, _, hasSlash := strings.Cut(ref, "/")
	if hasSlash && (strings.ContainsAny(first, ".:") || first == "localhost") {
		return ref
	}
	if !hasSlash {
		return "docker.io/library/" + ref
	}
	return "docker.io/" + ref
}
