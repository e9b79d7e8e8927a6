package interop

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/bintest"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/corednstest"
)

// TestDocsCertificateForCoreDNS runs the openssl commands with which
// docs/kubernetes.md makes CoreDNS's certificate, serves DNS-over-TLS from
// CoreDNS with it, and resolves a Service through the sidecar set up as
// components/cluster-dns-tls sets it up: the name and the CA the docs use.
func TestDocsCertificateForCoreDNS(t *testing.T) {
	t.Parallel()
	tools := testkit.RequireTools(t, "openssl", "sh")
	script := docsCertificateCommands(t)
	dir := t.TempDir()
	cmd := exec.Command(tools["sh"], "-eu", "-c", script)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("the docs' commands:\n%s\n%v\n%s", script, err, out)
	}
	const serverName = "kube-dns.kube-system.svc.cluster.local"
	c := corednstest.Start(t, corednstest.Options{
		ServerName: serverName,
		CertFile:   filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key"), CAFile: filepath.Join(dir, "ca.crt"),
	})
	up := publicUpstream(t)
	s := bintest.Start(t,
		fmt.Sprintf("UPSTREAMS=tls://%s#%s", up.Addr, up.ServerName), "TLS_CA_FILE="+up.CAFile,
		"RESOLV_CONF="+podResolvConf(t),
		"CLUSTER_DNS=tls://"+c.TLSAddr+"#"+serverName+";ca="+filepath.Join(dir, "ca.crt"))
	m := new(dns.Msg)
	m.SetQuestion(c.Services[0].FQDN, dns.TypeA)
	r, _, err := (&dns.Client{Timeout: 5 * time.Second}).Exchange(m, s.DNS)
	if err != nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("%s through the sidecar and CoreDNS with the docs' certificate: %v %v", c.Services[0].FQDN, r, err)
	}
}

// docsCertificateCommands returns the openssl lines of the sh block of
// docs/kubernetes.md that makes CoreDNS's certificate (the kubectl line,
// which needs a cluster, left out).
func docsCertificateCommands(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testkit.RepoRoot(t), "docs", "kubernetes.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "**A certificate for CoreDNS**")
	if !ok {
		t.Fatal("docs/kubernetes.md: no step **A certificate for CoreDNS**")
	}
	_, rest, ok = strings.Cut(rest, "```sh\n")
	block, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatal("docs/kubernetes.md: no sh block in the certificate step")
	}
	var lines []string
	for _, l := range strings.Split(block, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "kubectl ") {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "openssl ") {
		t.Fatalf("docs/kubernetes.md: the certificate step's block is not openssl commands: %q", block)
	}
	return strings.Join(lines, "\n")
}
