package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/router"
)

const kubeletResolvConf = "search team-a.svc.cluster.local svc.cluster.local cluster.local ec2.internal\n" +
	"nameserver 10.96.0.10\noptions ndots:5\n"

// TestPlanRoutes: what the sidecar routes, from the settings and the pod's
// resolv.conf, for the modes an operator meets.
func TestPlanRoutes(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pod := write("pod", kubeletResolvConf)
	node := write("node", "search us-east-2.compute.internal\nnameserver 10.0.0.2\n")
	empty := write("empty", "# nothing\n")
	own := write("own", "search a.svc.cluster.local svc.cluster.local cluster.local\nnameserver 127.0.0.1\n")
	missing := filepath.Join(dir, "missing")
	all := len(router.PrivateReverseZones())
	type route struct{ name, zones, upstreams string }
	tests := []struct {
		name    string
		environ []string
		routes  []route // the planned routes, reverse zones left out
		podMode bool
		domain  string
		reverse int // private reverse zones the cluster route carries
		warn    string
		missing bool
	}{
		{
			name: "auto in a pod", environ: []string{"RESOLV_CONF=" + pod},
			routes:  []route{{"cluster", "cluster.local ec2.internal", "dns://10.96.0.10:53"}},
			podMode: true, domain: "cluster.local", reverse: all,
		},
		{
			name:    "auto in a pod, an explicit route wins for its zone",
			environ: []string{"RESOLV_CONF=" + pod, "ROUTES=ec2.internal=tls://10.0.0.2#ns.ec2.internal 10.in-addr.arpa=dns://10.0.0.3"},
			routes: []route{
				{"ec2.internal", "ec2.internal", "10.0.0.2:853#ns.ec2.internal"},
				{"10.in-addr.arpa", "10.in-addr.arpa", "dns://10.0.0.3:53"},
				{"cluster", "cluster.local", "dns://10.96.0.10:53"},
			},
			podMode: true, domain: "cluster.local", reverse: all - 1,
		},
		{
			name: "auto on a node (dnsPolicy Default)", environ: []string{"RESOLV_CONF=" + node},
			domain: "cluster.local",
		},
		{
			name: "auto, resolv.conf missing", environ: []string{"RESOLV_CONF=" + missing},
			domain: "cluster.local", warn: "cannot be read",
		},
		{
			name: "auto, resolv.conf empty", environ: []string{"RESOLV_CONF=" + empty},
			domain: "cluster.local", warn: "is empty",
		},
		{
			name: "auto, only the sidecar's own address", environ: []string{"RESOLV_CONF=" + own},
			domain: "cluster.local", warn: "no usable nameserver", missing: true,
		},
		{
			name:    "node mode: an explicit list and domain",
			environ: []string{"RESOLV_CONF=" + node, "CLUSTER_DNS=dns://10.96.0.10", "CLUSTER_DOMAIN=k8s.example"},
			routes:  []route{{"cluster", "k8s.example", "dns://10.96.0.10:53"}},
			domain:  "k8s.example",
		},
		{
			name:    "an explicit encrypted list in a pod",
			environ: []string{"RESOLV_CONF=" + pod, "CLUSTER_DNS=tls://10.96.0.10#kube-dns.kube-system.svc.cluster.local"},
			routes:  []route{{"cluster", "cluster.local ec2.internal", "10.96.0.10:853#kube-dns.kube-system.svc.cluster.local"}},
			podMode: true, domain: "cluster.local", reverse: all,
		},
		{
			name:    "off",
			environ: []string{"RESOLV_CONF=" + pod, "CLUSTER_DNS=off", "ROUTES=corp.example=dns://10.0.0.53"},
			routes:  []route{{"corp.example", "corp.example", "dns://10.0.0.53:53"}},
		},
		{
			name:    "operator's domain and the file's disagree",
			environ: []string{"RESOLV_CONF=" + pod, "CLUSTER_DOMAIN=k8s.example"},
			domain:  "k8s.example", warn: "the search list of " + pod + " is the kubelet's for cluster.local",
		},
		{
			name:    "a route named like the cluster route",
			environ: []string{"RESOLV_CONF=" + node, "ROUTES=cluster=dns://10.0.0.1 default=dns://10.0.0.2"},
			routes:  []route{{"cluster.", "cluster", "dns://10.0.0.1:53"}, {"default.", "default", "dns://10.0.0.2:53"}},
			domain:  "cluster.local",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := config.Load(nil, tt.environ)
			if err != nil {
				t.Fatal(err)
			}
			p := planRoutes(cfg)
			var got []route
			for _, r := range p.routes {
				got = append(got, route{r.name, strings.Join(r.zones, " "), strings.Join(upstreamNames(r.upstreams), ",")})
			}
			if !slices.Equal(got, tt.routes) {
				t.Errorf("routes\n got %v\nwant %v", got, tt.routes)
			}
			if p.podMode != tt.podMode || p.domain != tt.domain {
				t.Errorf("pod mode %v, domain %q; want %v, %q", p.podMode, p.domain, tt.podMode, tt.domain)
			}
			if p.cluster != nil {
				if want := tt.reverse; len(p.cluster.reverse) != want || !p.cluster.cluster || p.cluster.probe != p.domain+"." {
					t.Errorf("cluster route: %d reverse zones (want %d), cluster %v, probe %q", len(p.cluster.reverse), want, p.cluster.cluster, p.cluster.probe)
				}
			}
			var warns []string
			for _, n := range p.notes {
				if n.warn {
					warns = append(warns, n.msg)
				}
			}
			if tt.warn == "" && len(warns) > 0 || tt.warn != "" && (len(warns) != 1 || !strings.Contains(warns[0], tt.warn)) {
				t.Errorf("warnings %q, want one with %q", warns, tt.warn)
			}
			if (p.missing != "") != tt.missing {
				t.Errorf("missing %q", p.missing)
			}
		})
	}
}
