package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/unboundtest"
)

// The pod of the lookup count: the kubelet's resolv.conf for a pod of
// namespace default, with a node search domain, kube-dns at kubeadm's
// Service IP, and a public DoT upstream; all on the loopback of a network
// namespace of its own.
const (
	lookupName       = "api.example.com"
	lookupKubeDNS    = "10.96.0.10"
	lookupPublic     = "192.0.2.1"
	lookupResolvConf = "search default.svc.cluster.local svc.cluster.local cluster.local c.example.internal\n" +
		"nameserver " + lookupKubeDNS + "\noptions ndots:5\n"
	// The UIDs of the manifests: the sidecar's (exempt from the redirect) and
	// an application's.
	lookupSidecarUID = 10053
	lookupAppUID     = 10100
)

// lookupCount is what one `getent ahosts api.example.com` in the pod sent
// with one setting of CLUSTER_DNS: the queries each resolver received.
type lookupCount struct {
	setting         string
	public, cluster []string // "name TYPE"
}

// measureLookups counts, for CLUSTER_DNS=off and for the default (auto),
// the queries one glibc lookup of a public name sends to the public
// upstream and to the cluster's resolver from a pod whose resolv.conf the
// kubelet wrote. It needs root, ip, iptables, setpriv, getent and kdig.
func measureLookups(ctx context.Context, t tools) ([]lookupCount, error) {
	need := []string{"ip", "iptables", "setpriv", "getent", "kdig"}
	paths := map[string]string{}
	for _, n := range need {
		p, err := lookTool(n)
		if err != nil {
			return nil, fmt.Errorf("counting lookups needs %s: %w", strings.Join(need, ", "), err)
		}
		paths[n] = p
	}
	entrypoint, err := filepath.Abs("entrypoint.sh")
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(entrypoint); err != nil {
		return nil, fmt.Errorf("counting lookups: %w (run from the repository root)", err)
	}
	// Readable and enterable by the sidecar's UID, unlike the harness's
	// own temporary directory.
	dir, err := os.MkdirTemp("", "dot-sidecar-bench-lookups-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	bin := filepath.Join(dir, "dot-sidecar")
	if err := copyExecutable(t["dot-sidecar"], bin); err != nil {
		return nil, err
	}

	ns := "dot-sidecar-bench-" + strconv.Itoa(os.Getpid())
	etc := filepath.Join("/etc/netns", ns)
	prefix := []string{paths["ip"], "netns", "exec", ns}
	if out, err := exec.CommandContext(ctx, paths["ip"], "netns", "add", ns).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %w: %s", ns, err, out)
	}
	defer func() {
		_ = exec.Command(paths["ip"], "netns", "del", ns).Run()
		_ = os.RemoveAll(etc)
	}()
	inNS := func(env []string, argv ...string) (string, error) {
		cmd := exec.CommandContext(ctx, prefix[0], append(prefix[1:], argv...)...)
		cmd.Env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return string(out), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, out)
		}
		return string(out), nil
	}
	for _, argv := range [][]string{
		{"ip", "link", "set", "lo", "up"},
		{"ip", "addr", "add", lookupPublic + "/32", "dev", "lo"},
		{"ip", "addr", "add", lookupKubeDNS + "/32", "dev", "lo"},
		// An IPv6 address besides ::1, as a pod's interface has (a
		// link-local one at least): without one, getaddrinfo's
		// AI_ADDRCONFIG, which getent ahosts sets, asks A alone.
		{"ip", "addr", "add", "2001:db8::10/128", "dev", "lo", "nodad"},
	} {
		if _, err := inNS(nil, argv...); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(etc, 0o755); err != nil {
		return nil, err
	}
	for name, content := range map[string]string{
		"resolv.conf":   lookupResolvConf,
		"nsswitch.conf": "hosts: files dns\n",
		"hosts":         "127.0.0.1 localhost\n",
	} {
		if err := os.WriteFile(filepath.Join(etc, name), []byte(content), 0o644); err != nil {
			return nil, err
		}
	}

	public, err := unboundtest.New(ctx, unboundtest.Options{
		Address: lookupPublic, Port: 853, Prefix: prefix, Zone: "example.com.", Names: 1, LogQueries: true,
		ExtraConfig: []string{`local-data: "` + lookupName + `. 300 IN A 198.51.100.80"`, `local-data: "` + lookupName + `. 300 IN AAAA 2001:db8::80"`},
	})
	if err != nil {
		return nil, fmt.Errorf("public upstream: %w", err)
	}
	defer public.Stop()
	// kube-dns's stand-in: it answers NXDOMAIN for every name the search
	// list makes, as kube-dns would for api.example.com's.
	cluster, err := unboundtest.New(ctx, unboundtest.Options{
		Address: lookupKubeDNS, Port: 853, Plain: true, PlainPort: 53, Prefix: prefix, Zone: "cluster.local.", Names: 1, LogQueries: true,
	})
	if err != nil {
		return nil, fmt.Errorf("cluster resolver: %w", err)
	}
	defer cluster.Stop()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, public.CAPEM, 0o644); err != nil {
		return nil, err
	}

	if _, err := inNS([]string{"BIND_PORT=5053", "SIDECAR_UID=" + strconv.Itoa(lookupSidecarUID)}, "sh", entrypoint, "init"); err != nil {
		return nil, fmt.Errorf("the iptables init step: %w", err)
	}

	var counts []lookupCount
	for _, setting := range []string{"CLUSTER_DNS=off", ""} {
		c, err := countLookup(ctx, prefix, paths, bin, ca, public, cluster, setting, dir, inNS)
		if err != nil {
			return nil, err
		}
		counts = append(counts, c)
	}
	return counts, nil
}

// countLookup starts the sidecar in the namespace with setting (none: the
// default), runs one getent ahosts as the application and reads what each
// resolver received meanwhile.
func countLookup(ctx context.Context, prefix []string, paths map[string]string, bin, ca string, public, cluster *unboundtest.Server,
	setting, dir string, inNS func([]string, ...string) (string, error)) (lookupCount, error) {
	c := lookupCount{setting: setting}
	if c.setting == "" {
		c.setting = "CLUSTER_DNS=auto (default)"
	}
	env := []string{"UPSTREAMS=tls://" + lookupPublic + ":853#" + public.ServerName, "TLS_CA_FILE=" + ca,
		"BIND_PORT=5053", "ADMIN_ADDRESS=127.0.0.1:9253"}
	if setting != "" {
		env = append(env, setting)
	}
	asUser := func(uid int) []string {
		id := strconv.Itoa(uid)
		return []string{paths["setpriv"], "--reuid=" + id, "--regid=" + id, "--clear-groups", "--"}
	}
	argv := append(append(append([]string{}, prefix...), asUser(lookupSidecarUID)...), bin)
	p, err := startProc("dot-sidecar-lookups", dir, argv, env)
	if err != nil {
		return c, err
	}
	defer p.stop()
	deadline := time.Now().Add(15 * time.Second)
	for {
		out, err := inNS(nil, "kdig", "@127.0.0.1", "-p", "5053", "+short", "+timeout=1", "+retry=0", "canary.dot-sidecar.invalid", "TXT")
		if err == nil && strings.Contains(out, "dot-sidecar") {
			break
		}
		if aerr := p.alive(); aerr != nil {
			return c, aerr
		}
		if time.Now().After(deadline) {
			return c, fmt.Errorf("the sidecar (%s) does not answer in the pod: %v\n%s", c.setting, err, p.logTail(15))
		}
		time.Sleep(50 * time.Millisecond)
	}
	pub0, clu0, err := queryLogs(public, cluster)
	if err != nil {
		return c, err
	}
	if out, err := inNS(nil, append(asUser(lookupAppUID), "getent", "ahosts", lookupName)...); err != nil || !strings.Contains(out, "198.51.100.80") {
		return c, fmt.Errorf("getent ahosts %s with %s: %v %q", lookupName, c.setting, err, out)
	}
	pub1, clu1, err := queryLogs(public, cluster)
	if err != nil {
		return c, err
	}
	c.public, c.cluster = pub1[len(pub0):], clu1[len(clu0):]
	return c, nil
}

// queryLogs reads both resolvers' query logs, "name TYPE", leaving out
// health probes of the root.
func queryLogs(servers ...*unboundtest.Server) (public, cluster []string, err error) {
	var lists [2][]string
	for i, s := range servers {
		qs, err := s.Queries()
		if err != nil {
			return nil, nil, err
		}
		for _, q := range qs {
			if q.Name != "." {
				lists[i] = append(lists[i], strings.ToLower(q.Name)+" "+q.Type)
			}
		}
	}
	return lists[0], lists[1], nil
}

func copyExecutable(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		return err
	}
	return os.Chmod(to, 0o755)
}

// renderLookups is the report's section on the lookup count.
func renderLookups(counts []lookupCount, err error) string {
	var b strings.Builder
	b.WriteString("\nOne `getent ahosts " + lookupName + "` from a pod whose resolv.conf is the kubelet's " +
		"(4 search domains, ndots:5), the iptables step applied, the sidecar's routing as set; queries received:\n\n")
	if err != nil && len(counts) == 0 {
		b.WriteString("- not measured: " + err.Error() + "\n")
		return b.String()
	}
	b.WriteString("| setting | at the public DoT upstream | at the cluster's resolver |\n|---|---|---|\n")
	for _, c := range counts {
		fmt.Fprintf(&b, "| %s | %d: %s | %d |\n", c.setting, len(c.public), strings.Join(c.public, ", "), len(c.cluster))
	}
	b.WriteString("\n- Before the sidecar routed names, all 10 (the 4 search-list expansions and the name, each A and AAAA) " +
		"went to the public upstream. With CLUSTER_DNS=off the sidecar answers the expansions under cluster.local itself " +
		"(NXDOMAIN: cluster.local is under local.).\n")
	if err != nil {
		b.WriteString("- " + err.Error() + "\n")
	}
	return b.String()
}
