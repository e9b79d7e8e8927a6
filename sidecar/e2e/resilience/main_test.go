// Package resilience runs the dot-sidecar binary, built from this tree,
// against in-process DNS-over-TLS servers (sidecar/testkit/dnstest) and
// checks what operators rely on when things go wrong: failover and fast
// SERVFAIL when upstreams die, graceful shutdown with queries in flight,
// the probe endpoints and metrics, the wait command, logs, and trust files
// reloaded without a restart.
package resilience

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/bintest"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// sidecar is a running dot-sidecar process with this package's metric
// helpers.
type sidecar struct{ *bintest.Sidecar }

// startSidecar runs the binary with env (after the defaults, so env wins)
// and waits for /startupz.
func startSidecar(t testing.TB, env ...string) *sidecar {
	t.Helper()
	return &sidecar{bintest.Start(t, env...)}
}

// metrics scrapes /metrics.
func (s *sidecar) metrics(t testing.TB) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := s.Get("/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return fams
}

// metricValue returns the value of the series of family name whose labels
// include labels (a histogram's sample count), and whether it exists.
func metricValue(fams map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
		return 0, true
	}
	return 0, false
}

// eventuallyMetric polls /metrics until cond holds for the series.
func (s *sidecar) eventuallyMetric(t testing.TB, timeout time.Duration, what string, cond func(v float64) bool,
	name string, labels ...string) {
	t.Helper()
	testkit.WaitFor(t, what, timeout, func() error {
		v, ok := metricValue(s.metrics(t), name, labels...)
		if !ok || !cond(v) {
			return fmt.Errorf("%s%v = %v (present %v)", name, labels, v, ok)
		}
		return nil
	})
}

// upstreamEnv points the sidecar at srvs, trusting their CAs.
func upstreamEnv(t testing.TB, srvs ...*dnstest.Server) []string {
	t.Helper()
	var ups []string
	var cas []byte
	for _, s := range srvs {
		ups = append(ups, fmt.Sprintf("tls://%s#%s", s.Addr, s.ServerName))
		cas = append(cas, s.CAPEM...)
	}
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, cas, 0o644); err != nil {
		t.Fatal(err)
	}
	return []string{"UPSTREAMS=" + strings.Join(ups, ","), "TLS_CA_FILE=" + ca}
}

// upstreamName is how logs and metrics name srv.
func upstreamName(srv *dnstest.Server) string { return srv.Addr.String() + "#" + srv.ServerName }

// ask sends an A query for name over netw and returns the answer.
func ask(addr, netw, name string, edns bool, timeout time.Duration) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	if edns {
		m.SetEdns0(1232, false)
	}
	c := &dns.Client{Net: netw, Timeout: timeout}
	r, _, err := c.Exchange(m, addr)
	return r, err
}

// checkA checks that r answers name with dnstest's default A record.
func checkA(r *dns.Msg, name string) error {
	if r.Rcode != dns.RcodeSuccess {
		return fmt.Errorf("%s: rcode %s", name, dns.RcodeToString[r.Rcode])
	}
	if len(r.Answer) != 1 {
		return fmt.Errorf("%s: %d answers", name, len(r.Answer))
	}
	a, ok := r.Answer[0].(*dns.A)
	if !ok || !a.A.Equal(dnstest.AnswerA.AsSlice()) || a.Hdr.Name != dns.Fqdn(name) {
		return fmt.Errorf("%s: answer %v", name, r.Answer[0])
	}
	return nil
}

// ede returns the Extended DNS Error code in r, or -1.
func ede(r *dns.Msg) int {
	if opt := r.IsEdns0(); opt != nil {
		for _, o := range opt.Option {
			if e, ok := o.(*dns.EDNS0_EDE); ok {
				return int(e.InfoCode)
			}
		}
	}
	return -1
}
