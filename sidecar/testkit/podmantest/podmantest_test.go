package podmantest

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/imagetest"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/netnstest"
)

func TestMain(m *testing.M) { testkit.Main(m) }

func TestBaseImages(t *testing.T) {
	tests := []struct {
		name, dockerfile string
		want             []base
	}{
		{
			name:       "literal images, a stage named",
			dockerfile: "FROM golang:1.26.8-bookworm AS build\nRUN go build\nFROM debian:12.12-slim\nCOPY --from=build /a /b\n",
			want:       []base{{image: "golang:1.26.8-bookworm"}, {image: "debian:12.12-slim"}},
		},
		{
			name: "images named by build arguments",
			dockerfile: "ARG GO_IMAGE=golang:1.26.8-bookworm\nARG BASE_IMAGE=debian:12.12-slim\n" +
				"FROM ${GO_IMAGE} AS build\nFROM $BASE_IMAGE\n",
			want: []base{{image: "golang:1.26.8-bookworm", arg: "GO_IMAGE"}, {image: "debian:12.12-slim", arg: "BASE_IMAGE"}},
		},
		{
			name:       "a stage built on another is no base image",
			dockerfile: "FROM debian:12 AS base\nFROM base AS test\nFROM golang:1 AS build\n",
			want:       []base{{image: "debian:12"}, {image: "golang:1"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := imagetest.Parse(tt.dockerfile)
			if err != nil {
				t.Fatal(err)
			}
			if got := baseImages(d); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestRepositoryDockerfileBases: the repository's Dockerfile has the two
// base images made here, a Go one and a Debian one.
func TestRepositoryDockerfileBases(t *testing.T) {
	var golang, debian int
	for _, b := range baseImages(imagetest.Read(t).Dockerfile) {
		switch {
		case b.golang():
			golang++
		case strings.Contains(b.image, "debian"):
			debian++
		default:
			t.Errorf("base image %s: neither the Go image nor the Debian one made here", b.image)
		}
	}
	if golang != 1 || debian != 1 {
		t.Errorf("%d Go and %d Debian base images, want one of each", golang, debian)
	}
}

func TestNormalizeRef(t *testing.T) {
	for in, want := range map[string]string{
		"golang:1.26.8-bookworm":              "docker.io/library/golang:1.26.8-bookworm",
		"library/debian:12":                   "docker.io/library/debian:12",
		"ghcr.io/dot-sidecar/dot-sidecar:1":   "ghcr.io/dot-sidecar/dot-sidecar:1",
		"localhost/dot-sidecar-test/debian:x": "localhost/dot-sidecar-test/debian:x",
		"registry:5000/a/b:1":                 "registry:5000/a/b:1",
	} {
		if got := normalizeRef(in); got != want {
			t.Errorf("normalizeRef(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRunArgs(t *testing.T) {
	s := Spec{
		Name: "init", Image: "img", Entrypoint: []string{"/opt/e.sh"}, Args: []string{"init"},
		User: "0:0", Network: "ns:/run/netns/x", CapDrop: []string{"ALL"}, CapAdd: []string{"NET_ADMIN", "NET_RAW"},
		ReadOnly: true, NoNewPrivileges: true, Tmpfs: []string{"/run:size=1m"}, Env: []string{"A=1"},
		DNS: []string{"192.0.2.53"}, DNSOptions: []string{"use-vc"}, Memory: "64m", CPUs: "0.1",
	}
	got, err := s.RunArgs()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"--network", "ns:/run/netns/x", "--user", "0:0", "--cap-drop", "ALL", "--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW",
		"--read-only", "--read-only-tmpfs=false", "--security-opt", "no-new-privileges", "--tmpfs", "/run:size=1m",
		"--env", "A=1", "--dns", "192.0.2.53", "--dns-option", "use-vc", "--memory", "64m", "--cpus", "0.1",
		"--entrypoint", `["/opt/e.sh"]`, "img", "init",
	}
	if !slices.Equal(got, want) {
		t.Errorf("RunArgs:\n got %q\nwant %q", got, want)
	}

	got, _ = Spec{Image: "img"}.RunArgs()
	if !slices.Equal(got, []string{"--network", "none", "img"}) {
		t.Errorf("zero Spec: %q, want no network and nothing else", got)
	}
	got, _ = Spec{Image: "img", Pod: "p"}.RunArgs()
	if !slices.Equal(got, []string{"--pod", "p", "img"}) {
		t.Errorf("in a pod: %q, want the pod's network", got)
	}
	if _, err := (Spec{Name: "x"}).RunArgs(); err == nil {
		t.Error("a Spec without an image gave no error")
	}
}

func TestConfigFiles(t *testing.T) {
	files := configFiles{containers: "/d/conf/containers.conf", storage: "/d/conf/storage.conf"}
	c := containersConf(files, RunDir, limits{nofile: 20000, nproc: -1})
	for _, want := range []string{
		`runtime = "runc"`, `cgroup_manager = "cgroupfs"`, `events_logger = "file"`,
		`default_ulimits = ["nofile=20000:20000", "nproc=-1:-1"]`,
		`tmp_dir = "/run/dot-sidecar-podman/libpod"`,
		`"CONTAINERS_CONF=/d/conf/containers.conf", "CONTAINERS_STORAGE_CONF=/d/conf/storage.conf"]`,
	} {
		if !strings.Contains(c, want) {
			t.Errorf("containers.conf lacks %s:\n%s", want, c)
		}
	}
	s := storageConf("/d", RunDir)
	for _, want := range []string{`graphroot = "/d/storage"`, `runroot = "/run/dot-sidecar-podman/storage"`, `driver = "overlay"`} {
		if !strings.Contains(s, want) {
			t.Errorf("storage.conf lacks %s:\n%s", want, s)
		}
	}
	if runDir(DefaultDir) != RunDir || runDir("/var/tmp/other") == RunDir {
		t.Errorf("run directories: %s for %s, %s for another store", runDir(DefaultDir), DefaultDir, runDir("/var/tmp/other"))
	}
}

// TestGoRootfs checks the Go image's file tree: the Debian tree, the CA
// bundle replaced, the toolchain under /usr/local/go with its symlinks.
func TestGoRootfs(t *testing.T) {
	dir := t.TempDir()
	debTar := filepath.Join(dir, "debian.tar")
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Typeflag: tar.TypeDir, Name: "./", Mode: 0o755},
		{Typeflag: tar.TypeDir, Name: "./usr/local/", Mode: 0o755},
		{Typeflag: tar.TypeReg, Name: "./etc/ssl/certs/ca-certificates.crt", Mode: 0o644, Size: 3},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte("old"))
		}
	}
	tw.Close()
	if err := os.WriteFile(debTar, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	goroot := filepath.Join(dir, "go")
	os.MkdirAll(filepath.Join(goroot, "bin"), 0o755)
	os.WriteFile(filepath.Join(goroot, "bin", "go"), []byte("#!go"), 0o755)
	os.Symlink("bin/go", filepath.Join(goroot, "golink"))
	ca := filepath.Join(dir, "ca.pem")
	os.WriteFile(ca, []byte("new CA"), 0o600)

	var out bytes.Buffer
	if err := writeGoRootfs(&out, debTar, goroot, ca); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	tr := tar.NewReader(&out)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		v := string(b)
		if h.Typeflag == tar.TypeSymlink {
			v = "-> " + h.Linkname
		}
		if _, dup := got[h.Name]; dup {
			t.Errorf("%s twice in the stream", h.Name)
		}
		got[h.Name] = v
		if h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s owned by %d:%d, want root", h.Name, h.Uid, h.Gid)
		}
	}
	for name, want := range map[string]string{
		"etc/ssl/certs/ca-certificates.crt": "new CA",
		"usr/local/go/bin/go":               "#!go",
		"usr/local/go/golink":               "-> bin/go",
		"./usr/local/":                      "",
		"etc/ssl/":                          "",
	} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("%s = %q (present %v), want %q; stream: %v", name, v, ok, want, got)
		}
	}
	if _, ok := got["./etc/ssl/certs/ca-certificates.crt"]; ok {
		t.Error("the Debian CA bundle was kept beside this machine's")
	}
}

// TestContainerSettings runs a container with each setting Spec translates
// and checks, from inside, that it took effect.
func TestContainerSettings(t *testing.T) {
	e := New(t)
	b := e.BaseImages(t)
	ns := netnstest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r := e.Run(ctx, t, Spec{
		Name: "settings", Image: b.Debian, Network: Netns(ns), User: "10100:10100", ReadOnly: true, NoNewPrivileges: true,
		CapDrop: []string{"ALL"}, Tmpfs: []string{"/scratch:size=1m,mode=1777"}, Env: []string{"SETTING=on"},
		DNS: []string{"192.0.2.53"}, DNSOptions: []string{"use-vc"}, Memory: "64m",
		Entrypoint: []string{"/bin/sh", "-c"},
		Args: []string{`id -u; id -g; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; echo "$SETTING";
touch /scratch/ok && echo tmpfs writable; touch /etc/x 2>/dev/null || echo root read-only;
touch /tmp/x 2>/dev/null || echo tmp read-only; cat /etc/resolv.conf; cat /proc/net/dev | grep -c :;
cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max`},
	})
	if r.Err != nil {
		t.Fatalf("%v", r)
	}
	for _, want := range []string{
		"10100\n10100\n", "CapEff:\t0000000000000000", "NoNewPrivs:\t1", "\non\n", "tmpfs writable", "root read-only",
		"tmp read-only", "nameserver 192.0.2.53", "options use-vc", "\n1\n" /* the namespace's lo only */, "67108864",
	} {
		if !strings.Contains(r.Stdout, want) {
			t.Errorf("container printed no %q:\n%s", want, r.Stdout)
		}
	}
	if !strings.Contains(e.Must(t, "image", "inspect", "--format", "{{.Config.Env}}", b.Golang), "GOTOOLCHAIN=local") {
		t.Errorf("%s is not configured like golang:*-bookworm", b.Golang)
	}
}
