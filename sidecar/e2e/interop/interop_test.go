// Package interop runs the dot-sidecar binary, built from this tree, against
// real third-party servers and queries it the way applications and
// operators do: kdig over UDP and TCP, and a Go client. Unbound, with a CA
// and key made by the test, is the DNS-over-TLS and DNS-over-HTTPS upstream,
// and dnsdist's DoH frontend a second DNS-over-HTTPS one (doh_test.go);
// CoreDNS (corednstest) is the cluster's resolver, reached over dns://,
// tcp:// and tls:// (cluster_test.go), stopped and restarted
// (cluster_health_test.go), and serving the certificate the docs' commands
// make (docs_cert_test.go). ISC's EDNS compliance probes go to the binary
// and to Unbound, whose answers are the reference (ednscomp_test.go).
package interop

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/bintest"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/testpki"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/unboundtest"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// upstream is the Unbound the package's tests share: they only query it,
// over DoT, over DoH, or through dnsdist over its plain port.
func upstream(t *testing.T) *unboundtest.Server {
	return unboundtest.Shared(t, unboundtest.Options{Names: 10, HTTPS: true, Plain: true})
}

func TestRelayToUnbound(t *testing.T) {
	t.Parallel()
	tools := testkit.RequireTools(t, "kdig")
	u := upstream(t)
	s := bintest.Start(t,
		fmt.Sprintf("UPSTREAMS=tls://%s#%s", u.Addr, u.ServerName),
		"TLS_CA_FILE="+u.CAFile)
	rec := u.Names[3]
	host, port, _ := net.SplitHostPort(s.DNS)

	for _, tc := range []struct {
		name string
		args []string
	}{
		{"kdig udp", nil},
		{"kdig tcp", []string{"+tcp"}},
		{"kdig udp edns", []string{"+edns=0", "+bufsize=1232"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"@" + host, "-p", port, "+short", "+timeout=3", "+retry=0"}, tc.args...)
			args = append(args, rec.Name, "A")
			out, err := exec.Command(tools["kdig"], args...).CombinedOutput()
			if err != nil {
				t.Fatalf("kdig %v: %v\n%s", args, err, out)
			}
			if got := strings.TrimSpace(string(out)); got != rec.A.String() {
				t.Fatalf("kdig answered %q, want %q", got, rec.A)
			}
		})
	}

	for _, netw := range []string{"udp", "tcp"} {
		t.Run("go client "+netw, func(t *testing.T) {
			c := &dns.Client{Net: netw, Timeout: 3 * time.Second}
			for _, r := range u.Names {
				m := new(dns.Msg)
				m.SetQuestion(r.Name, dns.TypeA)
				resp, _, err := c.Exchange(m, s.DNS)
				if err != nil {
					t.Fatalf("%s: %v", r.Name, err)
				}
				if err := unboundtest.CheckA(resp, r); err != nil {
					t.Fatal(err)
				}
			}
			m := new(dns.Msg)
			m.SetQuestion("missing.bench.test.", dns.TypeA)
			resp, _, err := c.Exchange(m, s.DNS)
			if err != nil {
				t.Fatal(err)
			}
			if resp.Rcode != dns.RcodeNameError {
				t.Fatalf("missing name: rcode %s, want NXDOMAIN", dns.RcodeToString[resp.Rcode])
			}
		})
	}

	t.Run("sigterm exits 0", func(t *testing.T) {
		if err := s.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := s.Wait(t, 15*time.Second); err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	})
}

// A wrong CA is a verification failure: SERVFAIL with EDE 23, and never an
// answer from anywhere else.
func TestWrongCAGivesServfail(t *testing.T) {
	t.Parallel()
	u := upstream(t)
	other, err := testpki.NewCA("another CA")
	if err != nil {
		t.Fatal(err)
	}
	otherFile := filepath.Join(t.TempDir(), "other-ca.pem")
	if err := os.WriteFile(otherFile, other.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	s := bintest.Start(t,
		fmt.Sprintf("UPSTREAMS=tls://%s#%s", u.Addr, u.ServerName),
		"TLS_CA_FILE="+otherFile, "RETRY_MAX_ATTEMPTS=1")
	m := new(dns.Msg)
	m.SetQuestion(u.Names[0].Name, dns.TypeA)
	m.SetEdns0(1232, false)
	resp, _, err := (&dns.Client{Timeout: 5 * time.Second}).Exchange(m, s.DNS)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Rcode != dns.RcodeServerFailure {
		t.Fatalf("rcode %s, want SERVFAIL", dns.RcodeToString[resp.Rcode])
	}
	var ede *dns.EDNS0_EDE
	if opt := resp.IsEdns0(); opt != nil {
		for _, o := range opt.Option {
			if e, ok := o.(*dns.EDNS0_EDE); ok {
				ede = e
			}
		}
	}
	if ede == nil || ede.InfoCode != dns.ExtendedErrorCodeNetworkError {
		t.Fatalf("EDE %v, want 23 (Network Error)", ede)
	}
}

func TestConfigErrorsExitNonZeroNamingTheVariable(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		env, want string
	}{
		{"BIND_PORT=70000", `msg="invalid setting" setting=BIND_PORT value=70000 `},
		{"UPSTREAMS=tls://dns.example#dns.example", `msg="invalid setting" setting=UPSTREAMS `},
		{"TLS_PINS=notbase64", `msg="invalid setting" setting=TLS_PINS `},
		{"PROTO=sctp", `msg="invalid setting" setting=PROTO value=sctp `},
	} {
		t.Run(tc.env, func(t *testing.T) {
			cmd := exec.CommandContext(context.Background(), bintest.Binary(t))
			cmd.Env = []string{tc.env}
			out, err := cmd.CombinedOutput()
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() != 2 {
				t.Fatalf("exit %v, want code 2; output:\n%s", err, out)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			if len(lines) != 1 || !strings.Contains(lines[0], tc.want) {
				t.Fatalf("want one line naming %s, got:\n%s", tc.want, out)
			}
		})
	}
}

func TestHelpListsSettings(t *testing.T) {
	t.Parallel()
	out, err := exec.Command(bintest.Binary(t), "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("--help: %v\n%s", err, out)
	}
	for _, v := range []string{"BIND_ADDRESS", "BIND_PORT", "PROTO", "DOT_ADDRESS", "DOT_PORT", "DOT_SERVER_NAME",
		"LOG_LEVEL", "UPSTREAMS", "TLS_CA_FILE", "TLS_PINS", "--bind-address"} {
		if !bytes.Contains(out, []byte(v)) {
			t.Errorf("--help does not mention %s", v)
		}
	}
}
