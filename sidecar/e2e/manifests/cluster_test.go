package manifests

import (
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
)

// nodeLocalDNSMetricsPort is where NodeLocal DNSCache serves its metrics,
// on the host network of every node that runs it: the node-level
// DaemonSet's admin port must be another.
const nodeLocalDNSMetricsPort = 9253

// checkClusterDNS checks how the sidecar c of pod p finds the cluster's
// resolver, so that the pods it serves keep resolving their Services.
//
// A pod's sidecar finds it by itself (CLUSTER_DNS=auto reads the
// resolv.conf the kubelet writes for dnsPolicy ClusterFirst), unless the
// overlay names the resolver on purpose (clusterDNS). The node-level
// sidecar cannot: its dnsPolicy Default gives it the node's resolv.conf, so
// CLUSTER_DNS and CLUSTER_DOMAIN must be set in its environment, or every
// pod of the node loses its Services.
func checkClusterDNS(t *testing.T, p pod, c corev1.Container, cfg *config.Config) {
	t.Helper()
	where := p.where + " " + c.Name
	env := p.env(t, c)
	want := overlays[p.dir].clusterDNS
	switch p.mode {
	case "node":
		for _, k := range []string{"CLUSTER_DNS", "CLUSTER_DOMAIN"} {
			if v, ok := lookup(env, k); !ok || v == "" {
				t.Errorf("%s: %s not set: with dnsPolicy Default the node-level sidecar cannot find the cluster's resolver and domain, and the pods of the node would lose their Services", where, k)
			}
		}
		if cfg.ClusterDNS.Mode != "" {
			t.Errorf("%s: CLUSTER_DNS=%s; the node-level sidecar needs the cluster's resolver named (an upstream list)", where, cfg.ClusterDNS.Mode)
		}
	default:
		policy := p.spec.DNSPolicy
		if policy != "" && policy != corev1.DNSClusterFirst && !(p.spec.HostNetwork && policy == corev1.DNSClusterFirstWithHostNet) {
			t.Errorf("%s: dnsPolicy %q: the sidecar finds the cluster's resolver in the kubelet's resolv.conf of ClusterFirst", where, policy)
		}
		if v, ok := lookup(env, "RESOLV_CONF"); ok {
			t.Errorf("%s: RESOLV_CONF=%s; the kubelet's file is /etc/resolv.conf, the default", where, v)
		}
		switch {
		case want == "" && cfg.ClusterDNS.Mode != config.ClusterDNSAuto:
			t.Errorf("%s: CLUSTER_DNS=%s; a pod's sidecar finds the cluster's resolver itself (auto)", where, cfg.ClusterDNS)
		case want != "" && cfg.ClusterDNS.String() != want:
			t.Errorf("%s: CLUSTER_DNS=%s, want %s", where, cfg.ClusterDNS, want)
		}
	}
}
