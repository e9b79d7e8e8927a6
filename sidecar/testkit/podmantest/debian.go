package podmantest

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
)

// debianRecipe is what the Debian root filesystem is made from. Its key
// hashes every input, so a change of mirror, of debootstrap or of the files
// written into the image makes a new one.
type debianRecipe struct {
	mirror      string
	debootstrap string // path
	files       map[string]string
	key         string
}

func newDebianRecipe(debootstrap string) (debianRecipe, error) {
	d := debianRecipe{mirror: os.Getenv(MirrorEnv), debootstrap: debootstrap}
	if d.mirror == "" {
		d.mirror = DefaultMirror
	}
	d.mirror = strings.TrimSuffix(d.mirror, "/")
	version, err := exec.Command(d.debootstrap, "--version").Output()
	if err != nil {
		return d, fmt.Errorf("debootstrap --version: %w", err)
	}
	d.files = slimFiles(d.mirror)
	parts := []string{recipe, Suite, runtime.GOARCH, d.mirror, strings.TrimSpace(string(version))}
	names := make([]string, 0, len(d.files))
	for n := range d.files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		parts = append(parts, n, d.files[n])
	}
	d.key = hashKey(parts...)
	return d, nil
}

// slimFiles are written into the root filesystem to make it behave like
// debian:12-slim: apt keeps no package caches or translations, dpkg installs
// no documentation (in the image builds too), and apt's sources are the
// release, its updates and its security archive.
func slimFiles(mirror string) map[string]string {
	source := func(uri, suites string) string {
		return "Types: deb\nURIs: " + uri + "\nSuites: " + suites + "\nComponents: main\n" +
			"Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
	}
	return map[string]string{
		"etc/apt/sources.list.d/debian.sources": source(mirror, Suite+" "+Suite+"-updates") + "\n" +
			source(mirror+"-security", Suite+"-security"),
		"etc/apt/apt.conf.d/slim-clean": "DPkg::Post-Invoke { \"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true\"; };\n" +
			"Dir::Cache::pkgcache \"\";\nDir::Cache::srcpkgcache \"\";\n",
		"etc/apt/apt.conf.d/slim-indexes": "Acquire::Languages \"none\";\nAcquire::GzipIndexes \"true\";\n" +
			"Apt::AutoRemove::SuggestsImportant \"false\";\n",
		"etc/dpkg/dpkg.cfg.d/slim": "path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\n" +
			"path-exclude /usr/share/groff/*\npath-exclude /usr/share/info/*\npath-exclude /usr/share/linda/*\n" +
			"path-exclude /usr/share/lintian/overrides/*\npath-exclude /usr/share/locale/*\npath-exclude /usr/share/man/*\n",
		// Image builds need no fsync per package: a failed build is redone.
		"etc/dpkg/dpkg.cfg.d/unsafe-io": "force-unsafe-io\n",
	}
}

// slimRemove are removed after debootstrap, as dpkg would not have installed
// them with slimFiles in place (globs, relative to the root): caches, the
// package lists, documentation, and the machine's own identity, which
// debootstrap copies in and a container engine provides at run time.
var slimRemove = []string{
	"var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*",
	"usr/share/man/*", "usr/share/info/*", "usr/share/groff/*", "usr/share/lintian/overrides/*",
	"usr/share/linda/*", "usr/share/locale/*", "var/log/*.log", "var/log/apt/*",
	"etc/apt/sources.list", "etc/resolv.conf", "etc/hostname",
}

// make runs debootstrap and writes the trimmed root filesystem to tarball.
// The root is made on tmpfs when possible: dpkg syncs every file it writes,
// which on a disk takes minutes.
func (d debianRecipe) make(ctx context.Context, dir, tarball string) error {
	work, err := os.MkdirTemp(scratchDir(), "dot-sidecar-rootfs-")
	if err != nil {
		return err
	}
	defer removeScratch(work)
	root := filepath.Join(work, "rootfs")
	debs := filepath.Join(dir, "debs") // kept: a refresh downloads only what changed
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, d.debootstrap, "--variant=minbase", "--components=main",
		"--cache-dir="+debs, Suite, root, d.mirror)
	cmd.Env = append(os.Environ(), "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	if out, err := cmd.CombinedOutput(); err != nil {
		log, _ := os.ReadFile(filepath.Join(root, "debootstrap", "debootstrap.log"))
		return fmt.Errorf("%s: %w\n%s\n--- debootstrap.log ---\n%s", strings.Join(cmd.Args, " "), err, testkit.Tail(string(out), 20), testkit.Tail(string(log), 40))
	}
	if err := slim(root, d.files); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(tarball), 0o755); err != nil {
		return err
	}
	partial := tarball + ".partial"
	if out, err := exec.CommandContext(ctx, "tar", "--numeric-owner", "-C", root, "-cf", partial, ".").CombinedOutput(); err != nil {
		os.Remove(partial)
		return fmt.Errorf("tar of the root filesystem: %w\n%s", err, out)
	}
	return os.Rename(partial, tarball)
}

func slim(root string, files map[string]string) error {
	for _, pattern := range slimRemove {
		matches, err := filepath.Glob(filepath.Join(root, pattern))
		if err != nil {
			return err
		}
		for _, m := range matches {
			if err := os.RemoveAll(m); err != nil {
				return err
			}
		}
	}
	// Documentation but the copyright notices.
	docs := filepath.Join(root, "usr/share/doc")
	err := filepath.WalkDir(docs, func(p string, de os.DirEntry, err error) error {
		if err != nil || de.IsDir() || de.Name() == "copyright" {
			return err
		}
		return os.Remove(p)
	})
	if err != nil {
		return err
	}
	for name, content := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// scratchDir is /dev/shm when it is a tmpfs where programs may run (the
// root filesystem's own are run in a chroot), the temporary directory
// otherwise.
func scratchDir() string {
	var st unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &st); err == nil && st.Type == unix.TMPFS_MAGIC && st.Flags&unix.ST_NOEXEC == 0 {
		return "/dev/shm"
	}
	return os.TempDir()
}

// removeScratch removes the work directory, after unmounting what
// debootstrap mounted under it (/proc, /sys) if it was stopped midway:
// removing a directory tree must never walk into a mounted /proc.
func removeScratch(work string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return // without the list, leaving the directory is the safe choice
	}
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 4 && strings.HasPrefix(fields[4], work+"/") {
			mounts = append(mounts, fields[4])
		}
	}
	f.Close()
	sort.Sort(sort.Reverse(sort.StringSlice(mounts))) // deepest first
	for _, m := range mounts {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil {
			return
		}
	}
	os.RemoveAll(work)
}
