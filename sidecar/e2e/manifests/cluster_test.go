package manifests

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

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

// corednsPatches holds the patches for the cluster's CoreDNS that
// components/cluster-dns-tls needs, applied with kubectl patch, not
// rendered by an overlay.
const corednsPatches = "examples/encrypted-cluster-dns/coredns"

// patchedCoreDNS applies the patches, as kubectl patch would, to the
// objects kubeadm creates for CoreDNS (testdata), with the engine of
// `kubectl apply -k`, and decodes the result strictly.
func patchedCoreDNS(t *testing.T) (cm *corev1.ConfigMap, dep *appsv1.Deployment, svc *corev1.Service, kubeadm *corev1.ConfigMap) {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(manifestsDir(t), corednsPatches)
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	k := "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- kubeadm-coredns.yaml\npatches:\n"
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
		k += "- path: " + e.Name() + "\n"
	}
	if len(entries) != 3 {
		t.Errorf("manifests/%s: %d files, want the ConfigMap, Deployment and Service patches", corednsPatches, len(entries))
	}
	fixture, err := os.ReadFile(filepath.Join("testdata", "kubeadm-coredns.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"kubeadm-coredns.yaml": fixture, "kustomization.yaml": []byte(k)} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	objs, err := renderNow(dir)
	if err != nil {
		t.Fatalf("applying manifests/%s to kubeadm's CoreDNS: %v", corednsPatches, err)
	}
	for _, o := range objs {
		switch v := o.Typed.(type) {
		case *corev1.ConfigMap:
			cm = v
		case *appsv1.Deployment:
			dep = v
		case *corev1.Service:
			svc = v
		}
	}
	if cm == nil || dep == nil || svc == nil || len(objs) != 3 {
		t.Fatalf("patched CoreDNS: %d objects, want its ConfigMap, Deployment and Service", len(objs))
	}
	kubeadm = new(corev1.ConfigMap)
	if err := yaml.Unmarshal(bytes.SplitN(fixture, []byte("\n---\n"), 2)[0], kubeadm); err != nil || kubeadm.Data["Corefile"] == "" {
		t.Fatalf("kubeadm's Corefile in testdata: %v", err)
	}
	return cm, dep, svc, kubeadm
}

// TestClusterDNSOverTLS: the example's sidecar and the patched CoreDNS
// agree. CoreDNS keeps kubeadm's server and adds a tls://.:853 one that
// answers the cluster's names the same way, with a certificate from the
// Secret the Deployment mounts; the kube-dns Service carries port 853 to
// it; the sidecar sends the cluster's names to that Service's address and
// port over tls://, verifying the name the Service has in the cluster
// domain against the CA it mounts from a ConfigMap.
func TestClusterDNSOverTLS(t *testing.T) {
	t.Parallel()
	cm, dep, svc, kubeadm := patchedCoreDNS(t)

	blocks, err := parseCorefile(cm.Data["Corefile"])
	if err != nil {
		t.Fatalf("patched Corefile: %v", err)
	}
	orig, err := parseCorefile(kubeadm.Data["Corefile"])
	if err != nil {
		t.Fatalf("kubeadm's Corefile: %v", err)
	}
	if len(blocks) != len(orig)+1 || !reflect.DeepEqual(blocks[:len(orig)], orig) {
		t.Errorf("the patched Corefile does not keep kubeadm's server blocks as they are and add one:\n%s", cm.Data["Corefile"])
	}
	tlsBlock := blocks[len(blocks)-1]
	if !slices.Equal(tlsBlock.keys, []string{"tls://.:853"}) {
		t.Fatalf("the added server block is %v, want tls://.:853", tlsBlock.keys)
	}
	// It answers as the plain server does: the same plugins that make an
	// answer, with the same settings.
	for _, name := range []string{"kubernetes", "forward", "cache"} {
		got, ok1 := tlsBlock.directive(name)
		want, ok2 := orig[0].directive(name)
		if !ok1 || !ok2 || !reflect.DeepEqual(got, want) {
			t.Errorf("tls://.:853 has %s %v, the plain server %v: the two would answer differently", name, got, want)
		}
	}

	// The certificate: the Secret the Deployment mounts, at the paths the
	// tls directive reads.
	tlsDir, ok := tlsBlock.directive("tls")
	if !ok || len(tlsDir.args) != 2 {
		t.Fatalf("tls://.:853: tls directive %v, want `tls CERT KEY`", tlsDir)
	}
	c := dep.Spec.Template.Spec.Containers[slices.IndexFunc(dep.Spec.Template.Spec.Containers, func(c corev1.Container) bool { return c.Name == "coredns" })]
	var secret string
	for _, m := range c.VolumeMounts {
		i := slices.IndexFunc(dep.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name })
		if i < 0 || dep.Spec.Template.Spec.Volumes[i].Secret == nil {
			continue
		}
		secret = dep.Spec.Template.Spec.Volumes[i].Secret.SecretName
		if !m.ReadOnly || m.MountPath == "/etc/coredns" || strings.HasPrefix(m.MountPath, "/etc/coredns/") {
			t.Errorf("Secret %s mounted at %s (read-only %v); want it read-only, outside the ConfigMap's /etc/coredns", secret, m.MountPath, m.ReadOnly)
		}
		// The keys of a kubernetes.io/tls Secret, as kubectl create secret tls makes it.
		if want := []string{m.MountPath + "/tls.crt", m.MountPath + "/tls.key"}; !slices.Equal(tlsDir.args, want) {
			t.Errorf("tls directive reads %v, the Secret's certificate and key are %v", tlsDir.args, want)
		}
	}
	if secret == "" {
		t.Errorf("the CoreDNS container mounts no Secret: its certificate is nowhere")
	}
	var tlsPort string
	for _, p := range c.Ports {
		if p.ContainerPort == 853 && p.Protocol == corev1.ProtocolTCP {
			tlsPort = p.Name
		}
	}
	if tlsPort == "" {
		t.Errorf("the CoreDNS container declares no TCP port 853: %v", c.Ports)
	}
	var svcPort *corev1.ServicePort
	for i, p := range svc.Spec.Ports {
		if p.Protocol == corev1.ProtocolTCP && (p.TargetPort.StrVal == tlsPort && tlsPort != "" || p.TargetPort.IntVal == 853) {
			svcPort = &svc.Spec.Ports[i]
		}
	}
	if svcPort == nil || len(svc.Spec.Ports) != 4 {
		t.Fatalf("the kube-dns Service does not carry port 853 to CoreDNS besides kubeadm's three: %v", svc.Spec.Ports)
	}

	// The sidecar sends the cluster's names there.
	const dir = "examples/encrypted-cluster-dns"
	want := overlays[dir]
	var pods int
	for _, p := range dotSidecarPods(t) {
		if p.dir != dir {
			continue
		}
		pods++
		sc := p.container(t, sidecarName)
		cfg := loadSettings(t, p.env(t, sc))
		ups := cfg.ClusterDNS.Upstreams
		if len(ups) != 1 || ups[0].Scheme != config.SchemeTLS {
			t.Errorf("%s: CLUSTER_DNS %s, want one tls:// entry", p.where, cfg.ClusterDNS)
			continue
		}
		u := ups[0]
		target := netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), uint16(svcPort.Port))
		if u.Addr != target {
			t.Errorf("%s: CLUSTER_DNS goes to %s, the kube-dns Service's DNS-over-TLS is %s", p.where, u.Addr, target)
		}
		if name := svc.Name + "." + svc.Namespace + ".svc.cluster.local"; u.ServerName != name {
			t.Errorf("%s: CLUSTER_DNS verifies the name %q, want the Service's own, %q", p.where, u.ServerName, name)
		}
		// The CA, from a ConfigMap (a certificate, never a key), read-only,
		// where ;ca= reads it; the check step asks through the sidecar and
		// mounts nothing.
		mi := slices.IndexFunc(sc.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == want.clusterCA })
		vi := slices.IndexFunc(p.spec.Volumes, func(v corev1.Volume) bool { return v.Name == want.clusterCA })
		if mi < 0 || vi < 0 {
			t.Errorf("%s: the sidecar does not mount volume %s", p.where, want.clusterCA)
			continue
		}
		m, v := sc.VolumeMounts[mi], p.spec.Volumes[vi]
		if v.ConfigMap == nil || len(v.ConfigMap.Items) != 0 || !m.ReadOnly || u.CAFile != m.MountPath+"/ca.crt" {
			t.Errorf("%s: ;ca=%s, volume %+v mounted at %s (read-only %v); want a ConfigMap's key ca.crt there, read-only",
				p.where, u.CAFile, v.VolumeSource, m.MountPath, m.ReadOnly)
		}
		if chk := p.container(t, checkName); len(chk.VolumeMounts) != 0 || !reflect.DeepEqual(chk.EnvFrom, sc.EnvFrom) {
			t.Errorf("%s: the check step mounts %v and loads %v; want no mount and the sidecar's settings", p.where, chk.VolumeMounts, chk.EnvFrom)
		}
	}
	if pods == 0 {
		t.Errorf("no pod of manifests/%s", dir)
	}
}
