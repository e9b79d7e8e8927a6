package interop

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
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

// The binary relays over DNS over HTTPS to real DoH servers: Unbound's
// https-port (libnghttp2) and dnsdist's DoH frontend (h2o, forwarding to
// Unbound's plain port), with POST and with GET. Each server is first
// checked with kdig +https, a DoH client of its own, so that a failure
// below is the sidecar's.
func TestRelayToDoHServers(t *testing.T) {
	t.Parallel()
	tools := testkit.RequireTools(t, "kdig", "dnsdist")
	u := upstream(t)
	dd := startDnsdistDoH(t, tools["dnsdist"], u.PlainAddr)
	servers := []struct {
		name, addr, serverName, path, caFile string
	}{
		{"unbound", u.HTTPSAddr, u.ServerName, unboundtest.HTTPPath, u.CAFile},
		{"dnsdist", dd.addr, dd.serverName, dnsdistPath, dd.caFile},
	}
	for _, srv := range servers {
		t.Run(srv.name, func(t *testing.T) {
			t.Parallel()
			rec := u.Names[4]
			host, port, _ := net.SplitHostPort(srv.addr)
			out, err := exec.Command(tools["kdig"], "@"+host, "-p", port, "+https="+srv.path, "+tls-ca="+srv.caFile,
				"+tls-hostname="+srv.serverName, "+short", "+timeout=3", "+retry=0", rec.Name, "A").CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != rec.A.String() {
				t.Fatalf("kdig +https to %s itself: %v: %q", srv.name, err, out)
			}
			for _, method := range []string{"post", "get"} {
				t.Run(method, func(t *testing.T) {
					t.Parallel()
					s := bintest.Start(t,
						fmt.Sprintf("UPSTREAMS=https://%s%s#%s;method=%s", srv.addr, srv.path, srv.serverName, method),
						"TLS_CA_FILE="+srv.caFile)
					askAll(t, tools["kdig"], s, u)
					name := fmt.Sprintf(`upstream="https://%s%s#%s"`, srv.addr, srv.path, srv.serverName)
					if _, body := s.Get("/metrics"); !strings.Contains(body, "dot_sidecar_upstream_connections_opened_total{route=\"default\","+name+"} 1") {
						t.Errorf("/metrics does not show one connection opened to %s", name)
					}
					if err := s.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
						t.Fatal(err)
					}
					if err := s.Wait(t, 15*time.Second); err != nil {
						t.Fatalf("exit after SIGTERM: %v", err)
					}
				})
			}
		})
	}
}

// askAll asks the sidecar s for every name of u, with kdig over UDP and
// TCP and with a Go client, and for a missing name, checking the answers.
func askAll(t *testing.T, kdig string, s *bintest.Sidecar, u *unboundtest.Server) {
	t.Helper()
	host, port, _ := net.SplitHostPort(s.DNS)
	rec := u.Names[3]
	for _, args := range [][]string{nil, {"+tcp"}, {"+edns=0", "+bufsize=1232"}} {
		args = append(append([]string{"@" + host, "-p", port, "+short", "+timeout=3", "+retry=0"}, args...), rec.Name, "A")
		out, err := exec.Command(kdig, args...).CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != rec.A.String() {
			t.Fatalf("kdig %v: %v: %q, want %s", args, err, out, rec.A)
		}
	}
	for _, netw := range []string{"udp", "tcp"} {
		c := &dns.Client{Net: netw, Timeout: 3 * time.Second}
		for _, r := range u.Names {
			m := new(dns.Msg)
			m.SetQuestion(r.Name, dns.TypeA)
			resp, _, err := c.Exchange(m, s.DNS)
			if err != nil {
				t.Fatalf("%s over %s: %v", r.Name, netw, err)
			}
			if err := unboundtest.CheckA(resp, r); err != nil {
				t.Fatal(err)
			}
		}
		m := new(dns.Msg)
		m.SetQuestion("missing.bench.test.", dns.TypeA)
		resp, _, err := c.Exchange(m, s.DNS)
		if err != nil || resp.Rcode != dns.RcodeNameError {
			t.Fatalf("missing name over %s: %v, %v; want NXDOMAIN", netw, resp, err)
		}
	}
}

// In one UPSTREAMS list, a DoH upstream that answers 404 (a wrong path)
// fails over to a DoT one, and a DoH upstream behind a CA not trusted
// gives SERVFAIL with EDE 23, as a DoT one does.
func TestDoHFailures(t *testing.T) {
	t.Parallel()
	u := upstream(t)
	t.Run("wrong path fails over to DoT", func(t *testing.T) {
		t.Parallel()
		s := bintest.Start(t,
			fmt.Sprintf("UPSTREAMS=https://%s/wrong-path#%s,tls://%s#%s", u.HTTPSAddr, u.ServerName, u.Addr, u.ServerName),
			"TLS_CA_FILE="+u.CAFile)
		m := new(dns.Msg)
		m.SetQuestion(u.Names[1].Name, dns.TypeA)
		resp, _, err := (&dns.Client{Timeout: 5 * time.Second}).Exchange(m, s.DNS)
		if err != nil {
			t.Fatal(err)
		}
		if err := unboundtest.CheckA(resp, u.Names[1]); err != nil {
			t.Fatal(err)
		}
		if _, body := s.Get("/metrics"); !strings.Contains(body, `reason="status"`) ||
			!strings.Contains(body, fmt.Sprintf(`dot_sidecar_upstream_http_errors_total{reason="status",route="default",upstream="https://%s/wrong-path#%s"} 1`, u.HTTPSAddr, u.ServerName)) {
			t.Errorf("/metrics does not count the 404:\n%s", grepLines(body, "http_errors"))
		}
	})
	t.Run("wrong CA", func(t *testing.T) {
		t.Parallel()
		other, err := testpki.NewCA("another CA")
		if err != nil {
			t.Fatal(err)
		}
		otherFile := filepath.Join(t.TempDir(), "other-ca.pem")
		if err := os.WriteFile(otherFile, other.PEM, 0o644); err != nil {
			t.Fatal(err)
		}
		s := bintest.Start(t, fmt.Sprintf("UPSTREAMS=https://%s/dns-query#%s", u.HTTPSAddr, u.ServerName),
			"TLS_CA_FILE="+otherFile, "RETRY_MAX_ATTEMPTS=1")
		m := new(dns.Msg)
		m.SetQuestion(u.Names[0].Name, dns.TypeA)
		m.SetEdns0(1232, false)
		resp, _, err := (&dns.Client{Timeout: 5 * time.Second}).Exchange(m, s.DNS)
		if err != nil {
			t.Fatal(err)
		}
		if resp.Rcode != dns.RcodeServerFailure || edeOf(resp) != dns.ExtendedErrorCodeNetworkError {
			t.Fatalf("rcode %s, EDE %d; want SERVFAIL with EDE 23 (Network Error)", dns.RcodeToString[resp.Rcode], edeOf(resp))
		}
	})
}

func edeOf(m *dns.Msg) uint16 {
	if opt := m.IsEdns0(); opt != nil {
		for _, o := range opt.Option {
			if e, ok := o.(*dns.EDNS0_EDE); ok {
				return e.InfoCode
			}
		}
	}
	return 0xffff
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// dnsdistPath is the path of the dnsdist DoH frontend.
const dnsdistPath = "/dns-query"

type dnsdistDoH struct {
	addr, serverName, caFile string
}

// startDnsdistDoH runs dnsdist with one DoH frontend on a free loopback
// port, with a certificate of its own, forwarding to backend over plain
// DNS, and waits until it answers; it is stopped when the test ends.
func startDnsdistDoH(t *testing.T, bin, backend string) dnsdistDoH {
	t.Helper()
	dir := t.TempDir()
	ca, err := testpki.NewCA("dnsdist CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue([]string{"dnsdist.test"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	caFile, certFile, keyFile, err := testpki.WriteFiles(dir, ca, leaf)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	conf := fmt.Sprintf(`setSecurityPollSuffix("")
setACL({"127.0.0.0/8"})
addDOHLocal(%q, %q, %q, %q)
newServer({address=%q})
`, addr, certFile, keyFile, dnsdistPath, backend)
	confFile := filepath.Join(dir, "dnsdist.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--supervised", "--disable-syslog", "-C", confFile)
	logFile, err := os.Create(filepath.Join(dir, "dnsdist.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_ = logFile.Close()
	})
	dd := dnsdistDoH{addr: addr, serverName: "dnsdist.test", caFile: caFile}
	// Ready once a DoH query through it is answered: listening, and its
	// backend marked up.
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool(ca.Cert), ServerName: dd.serverName, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2: true,
	}, Timeout: time.Second}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := dohProbe(client, "https://"+addr+dnsdistPath)
		if err == nil {
			return dd
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logFile.Name())
			t.Fatalf("dnsdist at %s not answering DoH: %v\n%s", addr, err, log)
		}
		time.Sleep(20 * time.Millisecond) // polling a process of its own: it has no way to tell us
	}
}

// dohProbe asks url for ". NS" and wants a DNS answer back.
func dohProbe(c *http.Client, url string) error {
	m := new(dns.Msg)
	m.SetQuestion(".", dns.TypeNS)
	b, err := m.Pack()
	if err != nil {
		return err
	}
	resp, err := c.Post(url, "application/dns-message", bytes.NewReader(b))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	return new(dns.Msg).Unpack(body)
}

func pool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}
