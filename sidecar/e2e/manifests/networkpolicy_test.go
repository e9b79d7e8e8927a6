package manifests

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// The NetworkPolicy example restricts the admin port, and nothing else, of
// the pods dot-sidecar is in: the port the sidecar container names
// dot-admin is reachable only from Prometheus's namespace (the one
// manifests/monitoring is applied to in the docs), and every other port of
// every protocol NetworkPolicy covers stays open to all.
func TestAdminNetworkPolicy(t *testing.T) {
	t.Parallel()
	var pols []*networkingv1.NetworkPolicy
	for _, dir := range overlayNames() {
		for _, o := range render(t, dir) {
			if np, ok := o.Typed.(*networkingv1.NetworkPolicy); ok {
				if !overlays[dir].networkPolicy {
					t.Errorf("manifests/%s renders %s; the test's table does not expect it", dir, o.id())
				}
				pols = append(pols, np)
			}
		}
	}
	if len(pols) != 1 {
		t.Fatalf("%d NetworkPolicies rendered, want 1", len(pols))
	}
	np := pols[0]
	if !slices.Equal(np.Spec.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}) {
		t.Errorf("policyTypes %v, want Ingress only", np.Spec.PolicyTypes)
	}

	// It selects the pods of the workloads the inject components change,
	// and the base's.
	sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	if err != nil || sel.Empty() {
		t.Fatalf("podSelector %v: %v", np.Spec.PodSelector, err)
	}
	var adminPort int32
	for _, w := range workloads(render(t, "base")) {
		if !sel.Matches(labels.Set(w.Template.Labels)) {
			t.Errorf("the policy does not select %s's pods (%v)", w.ID, w.Template.Labels)
		}
		for _, c := range w.Template.Spec.InitContainers {
			for _, p := range c.Ports {
				if c.Name == sidecarName && p.Name == "dot-admin" {
					adminPort = p.ContainerPort
				}
			}
		}
	}
	if adminPort == 0 {
		t.Fatal("the base's sidecar names no dot-admin port")
	}

	monitoring := map[string]string{"kubernetes.io/metadata.name": "monitoring"}
	other := map[string]string{"kubernetes.io/metadata.name": "elsewhere"}
	for _, tt := range []struct {
		proto   corev1.Protocol
		port    int32
		from    map[string]string // the client's namespace labels
		allowed bool
	}{
		{corev1.ProtocolTCP, adminPort, monitoring, true},
		{corev1.ProtocolTCP, adminPort, other, false},
		{corev1.ProtocolTCP, 1, other, true},
		{corev1.ProtocolTCP, adminPort - 1, other, true},
		{corev1.ProtocolTCP, adminPort + 1, other, true},
		{corev1.ProtocolTCP, 65535, other, true},
		{corev1.ProtocolTCP, 443, monitoring, true},
		{corev1.ProtocolUDP, 53, other, true},
		{corev1.ProtocolUDP, adminPort, other, true},
		{corev1.ProtocolSCTP, 5000, other, true},
	} {
		if got := allows(np, tt.proto, tt.port, tt.from); got != tt.allowed {
			t.Errorf("%s port %d from a pod of a namespace labelled %v: allowed %v, want %v", tt.proto, tt.port, tt.from, got, tt.allowed)
		}
	}
}

// allows says whether np lets a pod of a namespace labelled ns, any pod
// labels, reach port over proto, as NetworkPolicy's rules read: any rule
// whose ports and peers both match.
func allows(np *networkingv1.NetworkPolicy, proto corev1.Protocol, port int32, ns map[string]string) bool {
	for _, r := range np.Spec.Ingress {
		if portsMatch(r.Ports, proto, port) && peersMatch(r.From, ns) {
			return true
		}
	}
	return false
}

func portsMatch(ports []networkingv1.NetworkPolicyPort, proto corev1.Protocol, port int32) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		pp := corev1.ProtocolTCP
		if p.Protocol != nil {
			pp = *p.Protocol
		}
		if pp != proto {
			continue
		}
		if p.Port == nil {
			return true
		}
		lo, hi := p.Port.IntVal, p.Port.IntVal
		if p.EndPort != nil {
			hi = *p.EndPort
		}
		if lo <= port && port <= hi {
			return true
		}
	}
	return false
}

func peersMatch(peers []networkingv1.NetworkPolicyPeer, ns map[string]string) bool {
	if len(peers) == 0 {
		return true
	}
	for _, p := range peers {
		if p.IPBlock != nil || p.PodSelector != nil || p.NamespaceSelector == nil {
			continue // not what this policy uses; a stricter reading
		}
		sel, err := metav1.LabelSelectorAsSelector(p.NamespaceSelector)
		if err == nil && sel.Matches(labels.Set(ns)) {
			return true
		}
	}
	return false
}
