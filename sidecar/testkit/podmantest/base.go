package podmantest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Suite is the Debian release of the base images: the Dockerfile's are
// bookworm (debian:12-slim and golang:*-bookworm).
const Suite = "bookworm"

// DefaultMirror is the Debian mirror debootstrap and the images' apt use;
// MirrorEnv overrides it. The security archive is the mirror's URL with
// "-security" appended, as on deb.debian.org.
const DefaultMirror = "http://deb.debian.org/debian"

// ImagePrefix names every image this package makes or builds.
const ImagePrefix = "localhost/dot-sidecar-test/"

// recipe changes whenever the way a base image is made changes in a way its
// inputs do not show, so that images made the old way are not reused.
const recipe = "2"

// BaseTimeout bounds making the base images: debootstrap downloads and
// installs about a hundred packages.
const BaseTimeout = 15 * time.Minute

// BaseImages are the stand-ins for the Dockerfile's base images, by local
// reference.
type BaseImages struct {
	// Debian is Debian bookworm, minbase, trimmed like debian:12-slim.
	Debian string
	// Golang is Debian plus the Go toolchain at /usr/local/go and this
	// machine's CA bundle, set up like the golang:*-bookworm images (GOPATH
	// /go, the toolchain on PATH, GOTOOLCHAIN=local).
	Golang string
	// GoVersion is the toolchain's version, e.g. "1.26.8".
	GoVersion string
}

var bases struct {
	once sync.Once
	b    BaseImages
	err  error
}

// BaseImages returns the base images, made (or found from an earlier run)
// on the process's first call.
func (e *Engine) BaseImages(t testing.TB) BaseImages {
	t.Helper()
	bases.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), BaseTimeout)
		defer cancel()
		bases.b, bases.err = e.makeBaseImages(ctx, t.Logf)
	})
	if bases.err != nil {
		t.Fatalf("making the base images: %v", bases.err)
	}
	return bases.b
}

func (e *Engine) makeBaseImages(ctx context.Context, logf func(string, ...any)) (BaseImages, error) {
	unlock, err := lockDir(e.Dir)
	if err != nil {
		return BaseImages{}, err
	}
	defer unlock()
	refresh := os.Getenv(RefreshEnv) == "1"

	deb, err := newDebianRecipe(e.tools["debootstrap"])
	if err != nil {
		return BaseImages{}, err
	}
	var b BaseImages
	tarball := filepath.Join(e.Dir, "base", "debian-"+deb.key+".tar")
	b.Debian = ImagePrefix + "debian:" + Suite + "-" + deb.key
	if refresh {
		os.Remove(tarball)
	}
	ok, err := e.ImageExists(ctx, b.Debian)
	if err != nil {
		return b, err
	}
	if !ok || refresh {
		if _, err := os.Stat(tarball); err != nil {
			start := time.Now()
			if err := deb.make(ctx, e.Dir, tarball); err != nil {
				return b, err
			}
			logf("podmantest: made Debian %s root filesystem with debootstrap in %v", Suite, time.Since(start).Round(time.Second))
		}
		if err := e.importDebian(ctx, tarball, b.Debian); err != nil {
			return b, err
		}
	}

	gor, err := newGoRecipe(ctx, deb.key)
	if err != nil {
		return b, err
	}
	b.GoVersion = gor.version
	b.Golang = ImagePrefix + "golang:" + gor.version + "-" + Suite + "-" + gor.key
	if ok, err = e.ImageExists(ctx, b.Golang); err != nil {
		return b, err
	}
	if !ok || refresh {
		start := time.Now()
		if err := e.importGolang(ctx, tarball, gor, b.Golang); err != nil {
			return b, err
		}
		logf("podmantest: made %s (Go %s from %s) in %v", b.Golang, gor.version, gor.goroot, time.Since(start).Round(time.Second))
	}
	e.removeOtherTags(ctx, b.Debian, b.Golang)
	removeOtherFiles(filepath.Dir(tarball), filepath.Base(tarball))
	return b, nil
}

// lockDir takes an exclusive lock on dir/lock, so that two test processes
// never make the same base image at once.
func lockDir(dir string) (unlock func(), err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", f.Name(), err)
	}
	return func() { f.Close() }, nil
}

// hashKey is the first 12 hex digits of the SHA-256 of parts.
func hashKey(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintf(h, "%d:%s\n", len(p), p)
	}
	return hex.EncodeToString(h.Sum(nil))[:12]
}

// removeOtherTags removes this package's base images other than keep
// (made from other inputs by earlier runs); an image still in use stays.
func (e *Engine) removeOtherTags(ctx context.Context, keep ...string) {
	for _, repo := range []string{"debian", "golang"} {
		r := e.Exec(ctx, "images", "--format", "{{.Repository}}:{{.Tag}}", "--filter", "reference="+ImagePrefix+repo)
		if r.Err != nil {
			continue
		}
		for _, ref := range strings.Fields(r.Stdout) {
			if !slices.Contains(keep, ref) {
				_ = e.Exec(ctx, "rmi", ref)
			}
		}
	}
}

func removeOtherFiles(dir, keep string) {
	entries, _ := os.ReadDir(dir)
	for _, en := range entries {
		if en.Name() != keep {
			os.RemoveAll(filepath.Join(dir, en.Name()))
		}
	}
}

// goRecipe is what the Go image is made from: the toolchain running the
// tests and the CA bundle this machine trusts.
type goRecipe struct {
	goroot, version, caFile string
	key                     string
}

func newGoRecipe(ctx context.Context, debianKey string) (goRecipe, error) {
	var g goRecipe
	out, err := exec.CommandContext(ctx, "go", "env", "GOROOT", "GOVERSION").Output()
	if err != nil {
		return g, fmt.Errorf("go env GOROOT GOVERSION: %w", err)
	}
	f := strings.Fields(string(out))
	if len(f) != 2 {
		return g, fmt.Errorf("go env GOROOT GOVERSION printed %q", out)
	}
	g.goroot, g.version = f[0], strings.TrimPrefix(f[1], "go")
	g.caFile = os.Getenv("SSL_CERT_FILE")
	if g.caFile == "" {
		g.caFile = "/etc/ssl/certs/ca-certificates.crt"
	}
	ca, err := os.ReadFile(g.caFile)
	if err != nil {
		return g, fmt.Errorf("the CA bundle for the build stage: %w", err)
	}
	g.key = hashKey(recipe, debianKey, runtime.GOARCH, g.version, g.goroot, string(ca))
	return g, nil
}

// goEnv is the Go image's configuration, as golang:*-bookworm sets it.
var goEnv = []string{
	"ENV=PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"ENV=GOPATH=/go",
	"ENV=GOTOOLCHAIN=local",
	"WORKDIR=/go",
}

// importGolang imports the Debian root filesystem with the toolchain and the
// CA bundle added, streamed to podman import without a temporary copy.
func (e *Engine) importGolang(ctx context.Context, debianTar string, g goRecipe, ref string) error {
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(writeGoRootfs(pw, debianTar, g.goroot, g.caFile))
	}()
	args := []string{"import"}
	for _, c := range goEnv {
		args = append(args, "--change", c)
	}
	args = append(args, "--change", `CMD ["bash"]`, "-", ref)
	c := e.Command(ctx, args...)
	c.Stdin = pr
	out, err := c.CombinedOutput()
	pr.CloseWithError(io.ErrClosedPipe) // unblocks the writer if import stopped reading
	if err != nil {
		return fmt.Errorf("podman import %s: %w\n%s", ref, err, out)
	}
	return nil
}

// importDebian imports the root filesystem with the configuration of
// debian:12-slim (PATH, and bash as the command).
func (e *Engine) importDebian(ctx context.Context, tarball, ref string) error {
	r := e.Exec(ctx, "import",
		"--change", "ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"--change", `CMD ["bash"]`, tarball, ref)
	if r.Err != nil {
		return fmt.Errorf("%v", r)
	}
	return nil
}
