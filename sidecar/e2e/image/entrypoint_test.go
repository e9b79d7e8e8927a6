package image

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/imagetest"
)

// fakeReporter is a stand-in for dot-sidecar (and, in a copied layout, for the
// redirect script): it prints its PID, its name and each argument on a line, so
// a test sees both what it was given and whether every shell on the way exec'd.
const fakeReporter = `#!/bin/sh
echo "pid=$$"
echo "name=$(basename "$0")"
for a in "$@"; do echo "arg=$a"; done
`

type entrypointRun struct {
	pid    int
	code   int
	stdout string
	stderr string
}

// runEntrypoint starts path with args and env (on top of PATH only).
func runEntrypoint(t *testing.T, path string, env []string, args ...string) entrypointRun {
	t.Helper()
	cmd := exec.Command(path, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	err := cmd.Wait()
	r := entrypointRun{pid: pid, stdout: stdout.String(), stderr: stderr.String()}
	if err != nil {
		exitErr, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatal(err)
		}
		r.code = exitErr.ExitCode()
	}
	return r
}

// parseReport reads fakeReporter's output.
func parseReport(t *testing.T, out string) (pid int, name string, args []string) {
	t.Helper()
	for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		k, v, _ := strings.Cut(l, "=")
		switch k {
		case "pid":
			p, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("bad pid line %q", l)
			}
			pid = p
		case "name":
			name = v
		case "arg":
			args = append(args, v)
		default:
			t.Fatalf("unexpected output line %q in %q", l, out)
		}
	}
	return pid, name, args
}

func writeExec(t *testing.T, path, body string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
}

func entrypointPath(t *testing.T) string {
	t.Helper()
	return filepath.Join(testkit.RepoRoot(t), imagetest.EntrypointPath)
}

// TestEntrypointBinary: everything but init/cleanup/dry-run reaches dot-sidecar
// with its arguments intact, through exec (same PID as the entrypoint).
func TestEntrypointBinary(t *testing.T) {
	bin := t.TempDir()
	writeExec(t, filepath.Join(bin, "dot-sidecar"), fakeReporter)
	other := filepath.Join(t.TempDir(), "custom-sidecar")
	writeExec(t, other, fakeReporter)

	tests := []struct {
		name     string
		env      []string
		args     []string
		wantName string
	}{
		{name: "no arguments", wantName: "dot-sidecar"},
		{name: "flags", args: []string{"--log-level", "debug", "--bind-port=5053"}, wantName: "dot-sidecar"},
		{name: "wait", args: []string{"wait", "--timeout", "30s"}, wantName: "dot-sidecar"},
		{name: "check", args: []string{"check"}, wantName: "dot-sidecar"},
		{name: "arguments with spaces and globs", args: []string{"--upstreams", "a b", "*", ""}, wantName: "dot-sidecar"},
		{name: "DOT_SIDECAR_BIN", env: []string{"DOT_SIDECAR_BIN=" + other}, args: []string{"check", "-v"}, wantName: "custom-sidecar"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := append([]string{"PATH=" + bin + ":" + os.Getenv("PATH")}, tt.env...)
			r := runEntrypoint(t, entrypointPath(t), env, tt.args...)
			if r.code != 0 {
				t.Fatalf("exit %d: %s", r.code, r.stderr)
			}
			pid, name, args := parseReport(t, r.stdout)
			if pid != r.pid {
				t.Errorf("dot-sidecar ran as pid %d, entrypoint was %d: not exec'd, signals would hit the shell", pid, r.pid)
			}
			if name != tt.wantName {
				t.Errorf("ran %q, want %q", name, tt.wantName)
			}
			if !slices.Equal(args, tt.args) {
				t.Errorf("args %q, want %q", args, tt.args)
			}
		})
	}
}

func TestEntrypointBinaryMissing(t *testing.T) {
	r := runEntrypoint(t, entrypointPath(t), []string{"PATH=/usr/bin:/bin", "DOT_SIDECAR_BIN=dot-sidecar-not-installed"}, "--log-level", "info")
	if r.code != 127 || !strings.Contains(r.stderr, "dot-sidecar-not-installed not found") {
		t.Errorf("exit %d, stderr %q; want 127 and a message naming the binary", r.code, r.stderr)
	}
}

// TestEntrypointScript: init/cleanup/dry-run run iptables/dns-redirect.sh found
// next to the entrypoint (a copied layout, as in the image's /opt/dot-sidecar),
// through exec, with init mapped to apply.
func TestEntrypointScript(t *testing.T) {
	root := t.TempDir()
	ep, err := os.ReadFile(entrypointPath(t))
	if err != nil {
		t.Fatal(err)
	}
	writeExec(t, filepath.Join(root, "entrypoint.sh"), string(ep))
	writeExec(t, filepath.Join(root, "iptables", "dns-redirect.sh"), fakeReporter)

	tests := []struct {
		args, want []string
	}{
		{[]string{"init"}, []string{"apply"}},
		{[]string{"cleanup"}, []string{"cleanup"}},
		{[]string{"dry-run"}, []string{"dry-run"}},
		{[]string{"init", "extra"}, []string{"apply", "extra"}}, // the script rejects it, saying so
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			// Run from another directory: the script is found relative to the
			// entrypoint, not to the working directory.
			r := runEntrypoint(t, filepath.Join(root, "entrypoint.sh"), nil, tt.args...)
			if r.code != 0 {
				t.Fatalf("exit %d: %s", r.code, r.stderr)
			}
			pid, name, args := parseReport(t, r.stdout)
			if name != "dns-redirect.sh" || !slices.Equal(args, tt.want) {
				t.Errorf("ran %s %q, want dns-redirect.sh %q", name, args, tt.want)
			}
			if pid != r.pid {
				t.Errorf("script ran as pid %d, entrypoint was %d: not exec'd", pid, r.pid)
			}
		})
	}
}

// TestEntrypointDryRunReal runs the real script through the real repository
// layout and gets exactly what the script prints on its own.
func TestEntrypointDryRunReal(t *testing.T) {
	script := filepath.Join(testkit.RepoRoot(t), imagetest.ScriptPath)
	ifInet6 := filepath.Join(testkit.RepoRoot(t), "iptables", "testdata", "if_inet6")
	env := []string{"DOT_SIDECAR_IF_INET6=" + ifInet6, "BIND_PORT=15053"}
	r := runEntrypoint(t, entrypointPath(t), env, "dry-run")
	direct := runEntrypoint(t, "/bin/sh", env, script, "dry-run")
	if r.code != 0 || direct.code != 0 {
		t.Fatalf("exit %d / %d: %s %s", r.code, direct.code, r.stderr, direct.stderr)
	}
	if r.stdout != direct.stdout || !strings.Contains(r.stdout, "--to-ports 15053") {
		t.Errorf("entrypoint dry-run differs from the script's:\n%s\n---\n%s", r.stdout, direct.stdout)
	}
	// The script's own usage error (exit 2, the setting named) comes
	// through init unchanged, before anything is applied.
	bad := runEntrypoint(t, entrypointPath(t), []string{"BIND_PORT=x"}, "init")
	if bad.code != 2 || !strings.Contains(bad.stderr, "BIND_PORT=x") {
		t.Errorf("init with a bad setting: exit %d, stderr %q; want the script's usage error", bad.code, bad.stderr)
	}
}

func TestEntrypointShellcheck(t *testing.T) {
	tools := testkit.RequireTools(t, "shellcheck")
	// --shell=sh: the entrypoint promises POSIX sh, not bash (the image's
	// /bin/sh is dash).
	out, err := exec.Command(tools["shellcheck"], "--shell=sh", "--severity=style", entrypointPath(t)).CombinedOutput()
	if err != nil {
		t.Fatalf("shellcheck: %v\n%s", err, out)
	}
}
