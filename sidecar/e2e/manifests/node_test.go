package manifests

import (
	"bytes"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/imagetest"
)

// The node-level mode's init step runs iptables/dns-redirect.sh node-apply
// straight from the image (not through entrypoint.sh). These checks hold it to
// the files that build the image and to the script's own output.

const scriptRel = imagetest.ScriptPath

// scriptInImage returns where the Dockerfile puts the iptables script, and
// whether it makes it executable there (the init step execs it directly).
func scriptInImage(t *testing.T) (dest string, executable bool) {
	t.Helper()
	dest, executable, ok := imagetest.Read(t).Dockerfile.Installed(scriptRel)
	if !ok {
		t.Fatalf("Dockerfile puts no %s into the image", scriptRel)
	}
	return dest, executable
}

// usageLine is the script's usage, which lists its commands.
var usageLine = regexp.MustCompile(`(?m)^usage: dns-redirect\.sh \{([a-z|-]+)\}$`)

// scriptCommands returns the commands dns-redirect.sh accepts, from its usage.
func scriptCommands(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testkit.RepoRoot(t), scriptRel))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte("#!/bin/sh\n")) {
		t.Errorf("%s does not start with #!/bin/sh; the node init step execs it directly", scriptRel)
	}
	m := usageLine.FindSubmatch(b)
	if m == nil {
		t.Fatalf("%s: no usage line listing its commands", scriptRel)
	}
	cmds := make(map[string]bool)
	for _, c := range strings.Split(string(m[1]), "|") {
		cmds[c] = true
	}
	return cmds
}

// nodeDryRun runs the real script's node-dry-run with env (what the init
// container would see) and returns its output.
func nodeDryRun(t *testing.T, env []string) string {
	t.Helper()
	cmd := exec.Command("/bin/sh", filepath.Join(testkit.RepoRoot(t), scriptRel), "node-dry-run")
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s node-dry-run with the manifest's env %q: %v\n%s", scriptRel, env, err, stderr.String())
	}
	return stdout.String()
}

var (
	nodeDNAT = regexp.MustCompile(`(?m)^-A DOT_SIDECAR_NODE -d (\S+)/32 -p (udp|tcp) -m (?:udp|tcp) --dport 53 .*-j DNAT --to-destination (\S+)$`)
	nodeJump = regexp.MustCompile(`(?m)^-I (PREROUTING|OUTPUT) 1 -d (\S+)/32 .*-j DOT_SIDECAR_NODE$`)
	nodeAddr = regexp.MustCompile(`(?m)^ip -4 addr add (\S+)/32 dev lo `)
)

// checkNodeInit checks the node-level DaemonSet's init step (TestInitSteps):
// root with the capabilities TestOnlyTheNetworkStepsGetPrivileges allows, the
// image's script with a command it has, and settings that make the script
// forward port 53 of the address pods ask exactly to where the sidecar
// listens.
func checkNodeInit(t *testing.T, p pod, side *config.Config) {
	t.Helper()
	c := p.container(t, nodeInitName)
	where := p.where + " " + c.Name
	restricted(t, where, c, true)
	limited(t, where, c)
	if c.TerminationMessagePolicy != corev1.TerminationMessageFallbackToLogsOnError {
		t.Errorf("%s: terminationMessagePolicy %q, want FallbackToLogsOnError so failures show in kubectl describe", where, c.TerminationMessagePolicy)
	}

	dest, executable := scriptInImage(t)
	if !slices.Equal(c.Command, []string{dest}) || !executable {
		t.Errorf("%s: command %v, want [%s], where the Dockerfile copies %s executable (%v)", where, c.Command, dest, scriptRel, executable)
	}
	if cmds := scriptCommands(t); !slices.Equal(c.Args, []string{"node-apply"}) || !cmds["node-apply"] {
		t.Errorf("%s: args %v, want [node-apply], a command of %s (it has %v)", where, c.Args, scriptRel, sortedKeys(cmds))
	}

	env := p.env(t, c)
	addr, ok := lookup(env, "NODE_LOCAL_ADDRESS")
	if a, err := netip.ParseAddr(addr); !ok || err != nil || !a.Is4() || !a.IsLinkLocalUnicast() {
		t.Errorf("%s: NODE_LOCAL_ADDRESS %q, want it set to an IPv4 link-local address (never routed off the node)", where, addr)
	}
	if port, _ := lookup(env, "BIND_PORT"); port != strconv.Itoa(side.BindPort) {
		t.Errorf("%s: BIND_PORT %q, the sidecar listens on %d", where, port, side.BindPort)
	}
	if len(side.BindAddress) != 1 {
		return // TestSidecarContainer says why
	}
	target := netip.AddrPortFrom(side.BindAddress[0], uint16(side.BindPort)).String()

	// What the script makes of this environment, read from its own dry-run.
	out := nodeDryRun(t, env)
	if m := nodeAddr.FindStringSubmatch(out); m == nil || m[1] != addr {
		t.Errorf("%s: the script would put %v on lo, want NODE_LOCAL_ADDRESS %s:\n%s", where, m, addr, out)
	}
	protos := make(map[string]bool)
	for _, m := range nodeDNAT.FindAllStringSubmatch(out, -1) {
		if m[1] != addr || m[3] != target {
			t.Errorf("%s: the script would DNAT %s:53/%s to %s; pods ask %s:53 and the sidecar listens on %s", where, m[1], m[2], m[3], addr, target)
		}
		protos[m[2]] = true
	}
	if !protos["udp"] || !protos["tcp"] {
		t.Errorf("%s: the script's DNAT covers %v, want udp and tcp:\n%s", where, sortedKeys(protos), out)
	}
	var jumps []string
	for _, m := range nodeJump.FindAllStringSubmatch(out, -1) {
		if m[2] == addr {
			jumps = append(jumps, m[1])
		}
	}
	if !slices.Equal(jumps, []string{"PREROUTING", "OUTPUT"}) {
		t.Errorf("%s: the script captures %s:53 from %v, want PREROUTING (pods) and OUTPUT (the node):\n%s", where, addr, jumps, out)
	}

	// The node's xtables lock, shared with kube-proxy and the CNI: a private
	// one would let legacy-backend writers interleave.
	lock := false
	for _, m := range c.VolumeMounts {
		i := slices.IndexFunc(p.spec.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name })
		if m.MountPath != "/run/xtables.lock" || m.ReadOnly || i < 0 {
			continue
		}
		hp := p.spec.Volumes[i].HostPath
		lock = hp != nil && hp.Path == "/run/xtables.lock" && hp.Type != nil && *hp.Type == corev1.HostPathFileOrCreate
	}
	if !lock {
		t.Errorf("%s: want the node's /run/xtables.lock (hostPath, FileOrCreate) mounted writable at /run/xtables.lock", where)
	}
	// And nothing else in the pod gets at the host's files.
	for _, v := range p.spec.Volumes {
		if v.HostPath == nil {
			continue
		}
		for _, other := range slices.Concat(p.spec.InitContainers, p.spec.Containers) {
			if other.Name == c.Name {
				continue
			}
			for _, m := range other.VolumeMounts {
				if m.Name == v.Name {
					t.Errorf("%s %s: mounts hostPath %s; only %s needs the node's files", p.where, other.Name, v.HostPath.Path, nodeInitName)
				}
			}
		}
	}
}
