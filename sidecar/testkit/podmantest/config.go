package podmantest

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// configFiles are the paths of the files podman reads through
// CONTAINERS_CONF and CONTAINERS_STORAGE_CONF; with the first set, podman
// reads no other containers.conf (not the machine's in /etc or /usr/share).
type configFiles struct{ containers, storage string }

// limits are the container ulimits, -1 for unlimited. Podman's defaults
// (nofile and nproc 1048576) can exceed what the test process may grant:
// without CAP_SYS_RESOURCE (which a sandboxed root may lack) no process can
// raise a hard limit, and runc then fails to start any container. So a
// container gets the test process's hard limits, and nproc at most 32768,
// the limit podman itself runs with (it lowers its own).
type limits struct{ nofile, nproc int64 }

const podmanNproc = 32768

func currentLimits() (limits, error) {
	var l limits
	for _, r := range []struct {
		res int
		dst *int64
		max int64
	}{{unix.RLIMIT_NOFILE, &l.nofile, -1}, {unix.RLIMIT_NPROC, &l.nproc, podmanNproc}} {
		var rl unix.Rlimit
		if err := unix.Getrlimit(r.res, &rl); err != nil {
			return l, fmt.Errorf("getrlimit: %w", err)
		}
		*r.dst = r.max
		if rl.Max != unix.RLIM_INFINITY && rl.Max <= math.MaxInt64 && (r.max < 0 || int64(rl.Max) < r.max) {
			*r.dst = int64(rl.Max)
		}
	}
	return l, nil
}

// containersConf renders containers.conf.
//   - runc: Debian's default, crun, refuses to start containers on
//     machines whose cgroups are in hybrid mode.
//   - cgroupfs and events in a file: no systemd needed.
//   - tmp_dir under run (see runDir): this store's locks and exit files
//     apart from the machine's podman.
//   - conmon_env_vars: conmon runs `podman container cleanup` when a
//     container exits, with only these variables; with the two CONTAINERS_*
//     it reads this configuration rather than the machine's.
func containersConf(files configFiles, run string, l limits) string {
	q := strconv.Quote
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by sidecar/testkit/podmantest; rewritten on every run.\n")
	fmt.Fprintf(&b, "[containers]\n")
	fmt.Fprintf(&b, "default_ulimits = [%s, %s]\n", q(fmt.Sprintf("nofile=%d:%d", l.nofile, l.nofile)), q(fmt.Sprintf("nproc=%d:%d", l.nproc, l.nproc)))
	fmt.Fprintf(&b, "[engine]\n")
	fmt.Fprintf(&b, "runtime = %s\n", q("runc"))
	fmt.Fprintf(&b, "cgroup_manager = %s\n", q("cgroupfs"))
	fmt.Fprintf(&b, "events_logger = %s\n", q("file"))
	fmt.Fprintf(&b, "tmp_dir = %s\n", q(filepath.Join(run, "libpod")))
	fmt.Fprintf(&b, "conmon_env_vars = [%s, %s, %s]\n",
		q("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
		q("CONTAINERS_CONF="+files.containers), q("CONTAINERS_STORAGE_CONF="+files.storage))
	return b.String()
}

// storageConf renders storage.conf: a store of its own under dir, its run
// root under run.
func storageConf(dir, run string) string {
	q := strconv.Quote
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by sidecar/testkit/podmantest; rewritten on every run.\n")
	fmt.Fprintf(&b, "[storage]\n")
	fmt.Fprintf(&b, "driver = %s\n", q("overlay"))
	fmt.Fprintf(&b, "graphroot = %s\n", q(filepath.Join(dir, "storage")))
	fmt.Fprintf(&b, "runroot = %s\n", q(filepath.Join(run, "storage")))
	return b.String()
}

// writeConfig writes both files under Dir/conf. They are written to a
// temporary name and renamed, so a podman started by a concurrent test
// process never reads half a file.
func (e *Engine) writeConfig() (configFiles, error) {
	confDir := filepath.Join(e.Dir, "conf")
	files := configFiles{containers: filepath.Join(confDir, "containers.conf"), storage: filepath.Join(confDir, "storage.conf")}
	if err := os.MkdirAll(confDir, 0o755); err != nil {
		return files, err
	}
	l, err := currentLimits()
	if err != nil {
		return files, err
	}
	for path, content := range map[string]string{files.containers: containersConf(files, runDir(e.Dir), l), files.storage: storageConf(e.Dir, runDir(e.Dir))} {
		if err := writeAtomic(path, []byte(content), 0o644); err != nil {
			return files, err
		}
	}
	return files, nil
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
