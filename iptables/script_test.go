package iptables

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
)

const script = "dns-redirect.sh"

// Exit codes documented in the script's header.
const (
	exitFail  = 1
	exitUsage = 2
	exitPriv  = 3
	exitTool  = 4
)

// result is one run of a shell script.
type result struct {
	code           int
	stdout, stderr string
}

// baseEnv is the environment every script run starts from: only PATH, so that
// settings exported in the developer's shell (BIND_PORT, ...) cannot leak in.
// The IPv6 probe file is pinned so that output does not depend on the machine.
func baseEnv() []string {
	return []string{
		"PATH=" + os.Getenv("PATH"),
		"DOT_SIDECAR_IF_INET6=testdata/if_inet6",
	}
}

// run executes name (with /bin/sh) and args in the package directory, with env
// appended to baseEnv. prefix, when set, is a command line run in front
// (ip netns exec ..., setpriv ...).
func run(t *testing.T, prefix []string, env []string, name string, args ...string) result {
	t.Helper()
	argv := append(append(append([]string{}, prefix...), "/bin/sh", name), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(baseEnv(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := result{stdout: stdout.String(), stderr: stderr.String()}
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exitErr):
		res.code = exitErr.ExitCode()
	default:
		t.Fatalf("running %v: %v", argv, err)
	}
	return res
}

func TestShellcheck(t *testing.T) {
	tools := testkit.RequireTools(t, "shellcheck")
	// --shell=sh: the script promises POSIX sh, not bash.
	out, err := exec.Command(tools["shellcheck"], "--shell=sh", "--severity=style", script).CombinedOutput()
	if err != nil {
		t.Fatalf("shellcheck %s: %v\n%s", script, err, out)
	}
}

// TestDryRunGolden compares the iptables-restore input of the main settings
// with testdata/<name>.golden. REFRESH_GOLDEN=1 rewrites the files; review the
// diff like code, since these files are the rules pods get.
func TestDryRunGolden(t *testing.T) {
	tests := []struct {
		name string
		env  []string
	}{
		{name: "defaults"},
		{name: "bind-port", env: []string{"BIND_PORT=15053"}},
		{name: "sidecar-gid", env: []string{"SIDECAR_GID=10053"}},
		{name: "custom-uid", env: []string{"SIDECAR_UID=4242"}},
		{name: "resolvconf", env: []string{"REDIRECT_MODE=resolvconf", "RESOLV_CONF=testdata/resolv.conf"}},
		{name: "no-ipv6-kernel", env: []string{"DOT_SIDECAR_IF_INET6=testdata/no-such-file"}},
		{name: "ipv6-off", env: []string{"IPV6_MODE=off"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := run(t, nil, tt.env, script, "dry-run")
			if res.code != 0 {
				t.Fatalf("dry-run exit %d: %s", res.code, res.stderr)
			}
			compareGolden(t, filepath.Join("testdata", tt.name+".golden"), res.stdout)
		})
	}
}

func compareGolden(t *testing.T, path, got string) {
	t.Helper()
	if os.Getenv("REFRESH_GOLDEN") != "" {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (create it with REFRESH_GOLDEN=1)", err)
	}
	if got != string(want) {
		t.Errorf("dry-run differs from %s (REFRESH_GOLDEN=1 to accept):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

// TestDryRunProperties checks what the goldens encode, stated as rules, so a
// careless REFRESH_GOLDEN cannot bless a broken payload: per family, a nat
// table that exempts the sidecar and redirects, then a raw table that puts
// the sidecar's flows, and only its, to exactly the destinations the
// redirects capture into our conntrack zone.
func TestDryRunProperties(t *testing.T) {
	for _, tc := range []struct {
		name      string
		env       []string
		exemption string // of the raw chain's first rule
		captures  int    // redirects (and zone rules) per family
	}{
		{"all with gid", []string{"SIDECAR_GID=10053"}, "-m owner ! --uid-owner 10053 ! --gid-owner 10053 ", 2},
		{"resolvconf", []string{"REDIRECT_MODE=resolvconf", "RESOLV_CONF=testdata/resolv.conf"}, "-m owner ! --uid-owner 10053 ", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := run(t, nil, tc.env, script, "dry-run")
			if res.code != 0 {
				t.Fatalf("exit %d: %s", res.code, res.stderr)
			}
			v4, v6 := splitFamilies(t, res.stdout)
			for fam, p := range map[string]string{"IPv4": v4, "IPv6": v6} {
				tables := splitTables(t, p)
				if len(tables) != 2 || tables[0].name != "nat" || tables[1].name != "raw" {
					t.Fatalf("%s: want the nat table, then the raw table:\n%s", fam, p)
				}
				redirects := natProperties(t, fam, tables[0].rules, tc.name == "all with gid")
				zoned := rawProperties(t, fam, tables[1].rules, tc.exemption)
				if !slices.Equal(zoned, redirects) {
					t.Errorf("%s: the zone rules match\n%q\nthe redirects\n%q", fam, zoned, redirects)
				}
				if tc.captures > 0 && len(redirects) != tc.captures {
					t.Errorf("%s: %d redirects, want %d", fam, len(redirects), tc.captures)
				}
				if len(redirects) == 0 {
					t.Errorf("%s: no redirect", fam)
				}
			}
		})
	}
}

type table struct {
	name  string
	rules []string // between the chain's declaration and COMMIT
}

// splitTables cuts one family's restore input into its tables, checking
// that each declares our chain first and ends with COMMIT.
func splitTables(t *testing.T, p string) []table {
	t.Helper()
	var tables []table
	lines := strings.Split(strings.TrimSpace(p), "\n")
	for i := 0; i < len(lines); {
		name, ok := strings.CutPrefix(lines[i], "*")
		if !ok || i+1 >= len(lines) || lines[i+1] != ":DOT_SIDECAR_OUTPUT - [0:0]" {
			t.Fatalf("want *TABLE and our chain's declaration at line %d:\n%s", i+1, p)
		}
		end := slices.Index(lines[i:], "COMMIT")
		if end < 0 {
			t.Fatalf("table %s without COMMIT:\n%s", name, p)
		}
		tables = append(tables, table{name, lines[i+2 : i+end]})
		i += end + 1
	}
	return tables
}

// natProperties: every rule commented, the jump first in OUTPUT, the
// exemptions (uid, and gid when set) before the redirects to 5053. It
// returns the redirects' matches.
func natProperties(t *testing.T, fam string, rules []string, gid bool) (matches []string) {
	t.Helper()
	var returns int
	for _, l := range rules {
		if !strings.Contains(l, `-m comment --comment "dot-sidecar/`) {
			t.Errorf("%s nat: rule without a dot-sidecar comment: %s", fam, l)
		}
		switch {
		case strings.HasPrefix(l, "-I OUTPUT 1 ") && strings.HasSuffix(l, "-j DOT_SIDECAR_OUTPUT"):
		case strings.HasPrefix(l, "-A DOT_SIDECAR_OUTPUT ") && strings.HasSuffix(l, "-j RETURN"):
			if len(matches) > 0 {
				t.Errorf("%s nat: exemption after a redirect is useless: %s", fam, l)
			}
			returns++
		case strings.HasPrefix(l, "-A DOT_SIDECAR_OUTPUT ") && strings.Contains(l, "--dport 53 ") &&
			strings.HasSuffix(l, "-j REDIRECT --to-ports 5053"):
			matches = append(matches, ruleMatch(l))
		default:
			t.Errorf("%s nat: rule touches something not ours or is unexpected: %s", fam, l)
		}
	}
	if want := map[bool]int{false: 1, true: 2}[gid]; returns != want {
		t.Errorf("%s nat: %d exemptions, want %d", fam, returns, want)
	}
	return matches
}

// rawProperties: every rule commented, the jump first in OUTPUT, one
// exemption first that returns every packet that is not the sidecar's,
// then only rules that put a flow's original direction into zone 53. It
// returns their matches.
func rawProperties(t *testing.T, fam string, rules []string, exemption string) (matches []string) {
	t.Helper()
	for i, l := range rules {
		if !strings.Contains(l, `-m comment --comment "dot-sidecar/`) {
			t.Errorf("%s raw: rule without a dot-sidecar comment: %s", fam, l)
		}
		switch {
		case strings.HasPrefix(l, "-I OUTPUT 1 ") && strings.HasSuffix(l, "-j DOT_SIDECAR_OUTPUT"):
		case i == 0:
			if !strings.HasPrefix(l, "-A DOT_SIDECAR_OUTPUT "+exemption) || !strings.HasSuffix(l, "-j RETURN") {
				t.Errorf("%s raw: first rule %q, want the return of all but the sidecar's packets (%s)", fam, l, exemption)
			}
		case strings.HasPrefix(l, "-A DOT_SIDECAR_OUTPUT ") && strings.HasSuffix(l, "-j CT --zone-orig 53"):
			matches = append(matches, ruleMatch(l))
		default:
			t.Errorf("%s raw: rule touches something not ours or is unexpected: %s", fam, l)
		}
	}
	return matches
}

// ruleMatch is what a rule of our chain matches: its text between the
// chain's name and the comment.
func ruleMatch(l string) string {
	l = strings.TrimPrefix(l, "-A DOT_SIDECAR_OUTPUT ")
	m, _, _ := strings.Cut(l, " -m comment ")
	return m
}

// splitFamilies cuts dry-run output at its family markers.
func splitFamilies(t *testing.T, out string) (v4, v6 string) {
	t.Helper()
	const m4, m6 = "# ==== IPv4: iptables-restore --noflush ====\n", "# ==== IPv6: ip6tables-restore --noflush ====\n"
	i4, i6 := strings.Index(out, m4), strings.Index(out, m6)
	if i4 < 0 || i6 < i4 {
		t.Fatalf("dry-run output lacks family markers:\n%s", out)
	}
	return out[i4+len(m4) : i6], out[i6+len(m6):]
}

func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.conf")
	bad := filepath.Join(dir, "bad.conf")
	if err := os.WriteFile(empty, []byte("search cluster.local\noptions ndots:5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte("nameserver dns.example.\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		env  []string
		code int
		msg  string
	}{
		{"no command", nil, nil, exitUsage, "no command given; nothing changed"},
		{"empty command", []string{""}, nil, exitUsage, "unknown command ''"},
		{"unknown command", []string{"frobnicate"}, nil, exitUsage, "unknown command 'frobnicate'"},
		{"command in capitals", []string{"APPLY"}, nil, exitUsage, "unknown command 'APPLY'"},
		{"extra argument", []string{"apply", "now"}, nil, exitUsage, "unexpected arguments"},
		{"port zero", []string{"dry-run"}, []string{"BIND_PORT=0"}, exitUsage, "BIND_PORT=0 is not a port number"},
		{"port too big", []string{"dry-run"}, []string{"BIND_PORT=65536"}, exitUsage, "BIND_PORT=65536"},
		{"port not a number", []string{"dry-run"}, []string{"BIND_PORT=dns"}, exitUsage, "BIND_PORT=dns"},
		{"port octal-looking", []string{"dry-run"}, []string{"BIND_PORT=05053"}, exitUsage, "BIND_PORT=05053"},
		{"uid name", []string{"dry-run"}, []string{"SIDECAR_UID=dot-sidecar"}, exitUsage, "SIDECAR_UID=dot-sidecar is not a numeric id"},
		{"uid negative", []string{"dry-run"}, []string{"SIDECAR_UID=-1"}, exitUsage, "SIDECAR_UID=-1 is not a numeric id"},
		{"uid root", []string{"dry-run"}, []string{"SIDECAR_UID=0"}, exitUsage, "exempt every root process"},
		{"gid name", []string{"dry-run"}, []string{"SIDECAR_GID=sidecar"}, exitUsage, "SIDECAR_GID=sidecar is not a numeric id"},
		{"bad iptables mode", []string{"dry-run"}, []string{"IPTABLES_MODE=iptables"}, exitUsage, "IPTABLES_MODE=iptables: want auto, nft or legacy"},
		{"bad redirect mode", []string{"dry-run"}, []string{"REDIRECT_MODE=some"}, exitUsage, "REDIRECT_MODE=some"},
		{"bad ipv6 mode", []string{"dry-run"}, []string{"IPV6_MODE=maybe"}, exitUsage, "IPV6_MODE=maybe"},
		{"resolv.conf missing", []string{"dry-run"}, []string{"REDIRECT_MODE=resolvconf", "RESOLV_CONF=" + filepath.Join(dir, "nope")}, exitUsage, "cannot read RESOLV_CONF"},
		{"resolv.conf without nameserver", []string{"dry-run"}, []string{"REDIRECT_MODE=resolvconf", "RESOLV_CONF=" + empty}, exitUsage, "no nameserver lines"},
		{"resolv.conf with a name", []string{"dry-run"}, []string{"REDIRECT_MODE=resolvconf", "RESOLV_CONF=" + bad}, exitUsage, "cannot parse nameserver 'dns.example.'"},
		// Settings are checked before anything touches the kernel.
		{"apply with bad setting", []string{"apply"}, []string{"BIND_PORT=x"}, exitUsage, "BIND_PORT=x"},
		{"missing tool", []string{"apply"}, []string{"PATH=" + dir}, exitTool, "missing tool: sed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := run(t, nil, tt.env, script, tt.args...)
			if res.code != tt.code {
				t.Errorf("exit %d, want %d; stderr: %s", res.code, tt.code, res.stderr)
			}
			if !strings.Contains(res.stderr, "dns-redirect: error: ") || !strings.Contains(res.stderr, tt.msg) {
				t.Errorf("stderr %q lacks %q", res.stderr, tt.msg)
			}
			if res.stdout != "" {
				t.Errorf("a failed run printed to stdout: %q", res.stdout)
			}
		})
	}
}

// TestUsageOnStderr: a run without a command, or with one the script does
// not know, shows the usage where an operator reads errors (stderr), and
// nothing on stdout, where dry-run output goes.
func TestUsageOnStderr(t *testing.T) {
	for _, args := range [][]string{nil, {"frobnicate"}} {
		res := run(t, nil, nil, script, args...)
		if res.code != exitUsage || !strings.HasPrefix(res.stderr, "usage: dns-redirect.sh {apply|") || res.stdout != "" {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want %d with the usage on stderr", args, res.code, res.stdout, res.stderr, exitUsage)
		}
	}
}

func TestHelp(t *testing.T) {
	for _, arg := range []string{"help", "-h", "--help"} {
		res := run(t, nil, nil, script, arg)
		if res.code != 0 || !strings.HasPrefix(res.stdout, "usage: dns-redirect.sh") {
			t.Errorf("%s: exit %d, stdout %q", arg, res.code, res.stdout)
		}
	}
}
