package resilience

import (
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/testpki"
)

// k8sVolume mimics a Secret or ConfigMap volume: files reached through the
// `..data` symlink, replaced all at once by pointing it at a new directory.
type k8sVolume struct {
	dir string
	gen int
}

func (v *k8sVolume) path(name string) string { return filepath.Join(v.dir, name) }

func (v *k8sVolume) write(t *testing.T, files map[string][]byte) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	old, _ := os.Readlink(v.path("..data"))
	v.gen++
	ts := fmt.Sprintf("..2025_06_01_12_00_%02d.%09d", v.gen, v.gen)
	must(os.Mkdir(v.path(ts), 0o755))
	for n, d := range files {
		must(os.WriteFile(filepath.Join(v.path(ts), n), d, 0o644))
	}
	must(os.Symlink(ts, v.path("..data_tmp")))
	must(os.Rename(v.path("..data_tmp"), v.path("..data")))
	for n := range files {
		if _, err := os.Lstat(v.path(n)); os.IsNotExist(err) {
			must(os.Symlink(filepath.Join("..data", n), v.path(n)))
		}
	}
	if old != "" {
		must(os.RemoveAll(v.path(old)))
	}
}

// The running binary picks up a pins file swapped the Kubernetes way,
// replaces the connection the new pins reject, and keeps the trust it has
// when the next version of the file is malformed.
func TestTrustReloadInBinary(t *testing.T) {
	t.Parallel()
	srv := dnstest.New(t, dnstest.Options{})
	vol := &k8sVolume{dir: t.TempDir()}
	vol.write(t, map[string][]byte{"pins": []byte(srv.LeafPin + "\n"), "ca.pem": srv.CAPEM})
	s := startSidecar(t,
		fmt.Sprintf("UPSTREAMS=tls://%s#%s", srv.Addr, srv.ServerName),
		"TLS_CA_FILE="+vol.path("ca.pem"), "TLS_PINS_FILE="+vol.path("pins"), "TRUST_RELOAD_INTERVAL=100ms")
	u := upstreamName(srv)
	query := func(name string) {
		t.Helper()
		r, err := ask(s.DNS, "udp", name, false, 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if err := checkA(r, name); err != nil {
			t.Fatal(err)
		}
	}
	query("before.example.")

	// The upstream's key changes; the operator publishes its pin.
	srv.Behavior.SetCert(dnstest.CertOtherKey)
	c, err := tls.Dial("tcp", srv.Addr.String(), &tls.Config{RootCAs: srv.CAPool, ServerName: srv.ServerName})
	if err != nil {
		t.Fatal(err)
	}
	newPin := testpki.Pin(c.ConnectionState().PeerCertificates[0])
	c.Close()
	vol.write(t, map[string][]byte{"pins": []byte(newPin + "\n"), "ca.pem": srv.CAPEM})
	s.eventuallyMetric(t, 5*time.Second, "the pins file reloaded", func(v float64) bool { return v == 1 },
		"dot_sidecar_upstream_trust_reloads_total", "file", "pins")
	// The connection verified under the old pin no longer passes: retired
	// (pin failure counted) and replaced by one under the new pin.
	s.eventuallyMetric(t, 3*time.Second, "the old connection rejected", func(v float64) bool { return v >= 1 },
		"dot_sidecar_upstream_pin_failures_total", "upstream", u)
	query("after.example.")
	fams := s.metrics(t)
	if v, _ := metricValue(fams, "dot_sidecar_upstream_connections_opened_total", "upstream", u); v != 2 {
		t.Errorf("connections_opened_total = %v, want 2 (the original and its replacement)", v)
	}
	if v, _ := metricValue(fams, "dot_sidecar_upstream_trust_reloads_total", "file", "ca"); v != 0 {
		t.Errorf("trust_reloads_total{ca} = %v; the CA file did not change", v)
	}

	// A malformed next version: counted, old trust kept, same connection.
	vol.write(t, map[string][]byte{"pins": []byte("not a pin\n"), "ca.pem": srv.CAPEM})
	s.eventuallyMetric(t, 5*time.Second, "the bad pins file counted", func(v float64) bool { return v == 1 },
		"dot_sidecar_upstream_trust_reload_errors_total", "file", "pins")
	query("still.example.")
	fams = s.metrics(t)
	if v, _ := metricValue(fams, "dot_sidecar_upstream_connections_opened_total", "upstream", u); v != 2 {
		t.Errorf("connections_opened_total = %v after a bad pins file, want still 2", v)
	}
	if v, _ := metricValue(fams, "dot_sidecar_upstream_trust_reload_failing", "file", "pins"); v != 1 {
		t.Errorf("trust_reload_failing{pins} = %v, want 1", v)
	}
}
