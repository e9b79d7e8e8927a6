// Package corednstest runs a real CoreDNS as a Kubernetes cluster's DNS
// (kube-dns) for the tests: the cluster domain with a few Services, their
// PTR records, an SOA and NS as the kubernetes plugin answers them, over
// plain UDP and TCP and over DNS-over-TLS with a certificate made at run
// time (testpki).
//
// CoreDNS is built from the Go module proxy at a pinned version (Version)
// by a small generated main package that compiles in only the plugins the
// tests use (Plugins), and the binary is cached under CacheRoot, so only
// the first run on a machine pays the build (Binary). Without the module
// proxy the tests skip, saying why; under CI=true they fail.
//
//	c := corednstest.Start(t, corednstest.Options{})
//	// c.Addr        "127.0.0.1:PORT"  plain UDP and TCP
//	// c.TLSAddr     "127.0.0.1:PORT"  DoT, certificate for c.ServerName and the address
//	// c.CAFile      the CA, for a ;ca= route option; c.CAPEM, c.CAPool the same
//	// c.Domain      "cluster.local."
//	// c.Services    kubernetes.default (10.96.0.1), kube-dns.kube-system
//	//               (10.96.0.10), web.shop (10.96.12.34, fd00:10:96::1234)
//	r, err := c.Exchange(ctx, "udp", msg) // or "tcp", "tls"
//	qs := c.Queries()                     // every query CoreDNS logged: transport, name, type, rcode
//
// Names outside the zones served (the cluster domain, in-addr.arpa,
// ip6.arpa, Options.Zones) are logged and answered REFUSED: the cluster's
// resolver must never see them, and Queries shows it if it did.
//
// For a network namespace, set Prefix to the wrapper (a netnstest
// namespace's Prefix()), Address to an address inside it and DialContext to
// a dialer from inside it, which readiness checks and Exchange use.
package corednstest

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/testpki"
)

// Options describe the server. The zero value serves cluster.local with
// DefaultServices on 127.0.0.1, on free ports.
type Options struct {
	// Address is the IP literal to listen on; default 127.0.0.1.
	Address string
	// Port is the plain DNS port (UDP and TCP), TLSPort the DoT port; 0
	// picks a free one.
	Port, TLSPort int
	// Domain is the cluster domain; default cluster.local.
	Domain string
	// Services are served under svc.<Domain>; default DefaultServices.
	Services []Service
	// Zones are more zones the cluster's resolver answers, such as a
	// node's search domain; each gets an SOA and NS.
	Zones []Zone
	// SlowDelay, when set, has every name under SlowZone (slow.<Domain>)
	// answered A and AAAA after that delay (CoreDNS's erratic plugin).
	SlowDelay time.Duration
	// ServerName is the DNS name in the certificate; default
	// kube-dns.kube-system.svc.<Domain>.
	ServerName string
	// CertFile, KeyFile and CAFile, when set, are the DoT certificate, its
	// key and the CA that signed it, made elsewhere (by the commands of the
	// docs, say); by default Start makes them with testpki.
	CertFile, KeyFile, CAFile string
	// Prefix runs CoreDNS through a wrapper, e.g. a netnstest namespace's
	// Prefix(); DialContext must then reach Address.
	Prefix []string
	// DialContext, if set, is used by readiness checks and Exchange
	// instead of a plain net.Dialer.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// StartTimeout bounds the wait for readiness; default 15s.
	StartTimeout time.Duration
}

// Service is a Kubernetes Service, answered as the kubernetes plugin
// answers a ClusterIP Service: A and AAAA at its name, PTR at its
// addresses.
type Service struct {
	Name, Namespace string
	IPv4, IPv6      netip.Addr // either may be zero
	// FQDN is <name>.<namespace>.svc.<domain>., set by Start.
	FQDN string
}

// DefaultServices: the API server's and the DNS Service, as every cluster
// has them, and a dual-stack Service in another namespace.
var DefaultServices = []Service{
	{Name: "kubernetes", Namespace: "default", IPv4: netip.MustParseAddr("10.96.0.1")},
	{Name: "kube-dns", Namespace: "kube-system", IPv4: netip.MustParseAddr("10.96.0.10")},
	{Name: "web", Namespace: "shop", IPv4: netip.MustParseAddr("10.96.12.34"), IPv6: netip.MustParseAddr("fd00:10:96::1234")},
}

// Zone is another zone CoreDNS answers from its own data.
type Zone struct {
	Origin string
	// Records in master file syntax with absolute names:
	// "node1.c.example.internal. 5 IN A 10.128.0.2".
	Records []string
}

// Server is a running CoreDNS.
type Server struct {
	Addr       string // plain UDP and TCP host:port
	TLSAddr    string // DoT host:port
	ServerName string
	Domain     string // fully qualified: "cluster.local."
	SlowZone   string // "slow.<Domain>", served when Options.SlowDelay is set
	Services   []Service
	CA         *testpki.CA
	CAPEM      []byte
	CAPool     *x509.CertPool
	CAFile     string
	Dir        string
	Corefile   string // its path
	Proc       *testkit.Process

	opts Options
	bin  string
}

// Start starts CoreDNS for a test and waits until it answers over plain
// DNS and over TLS; it is stopped when the test ends. It skips the test
// (fails it under CI=true) where CoreDNS cannot be built.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	bin := Binary(t)
	opts.setDefaults()
	s := &Server{opts: opts, Domain: fqdn(opts.Domain), ServerName: opts.ServerName}
	s.SlowZone = "slow." + s.Domain
	for _, sv := range opts.Services {
		sv.FQDN = sv.Name + "." + sv.Namespace + ".svc." + s.Domain
		s.Services = append(s.Services, sv)
	}
	var err error
	if s.Dir, err = os.MkdirTemp("", "corednstest-"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("keeping %s for inspection", s.Dir)
			return
		}
		_ = os.RemoveAll(s.Dir)
	})
	if err := os.Chmod(s.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := opts.CertFile, opts.KeyFile
	if certFile == "" {
		certFile, keyFile = s.writeCredentials(t)
	} else {
		s.useCredentials(t)
	}
	files, err := s.writeZones()
	if err != nil {
		t.Fatal(err)
	}
	// A port picked free can be taken before CoreDNS binds it; CoreDNS then
	// exits at once, and fresh picks almost always succeed.
	attempts := 1
	if opts.Port == 0 || opts.TLSPort == 0 {
		attempts = 3
	}
	for i := 1; ; i++ {
		err := s.launch(t, bin, files, certFile, keyFile)
		if err == nil {
			return s
		}
		if i >= attempts || !s.Proc.Exited() || !strings.Contains(s.Proc.Output(), "address already in use") {
			t.Fatalf("starting CoreDNS: %v", err)
		}
	}
}

// launch picks the ports, writes the Corefile, starts CoreDNS and waits
// until it answers.
func (s *Server) launch(t testing.TB, bin string, files []zoneFile, certFile, keyFile string) error {
	t.Helper()
	opts := s.opts
	port, tlsPort := opts.Port, opts.TLSPort
	if port == 0 {
		port = freePort(t, opts.Address, tlsPort)
	}
	if tlsPort == 0 {
		tlsPort = freePort(t, opts.Address, port)
	}
	s.Addr = net.JoinHostPort(opts.Address, strconv.Itoa(port))
	s.TLSAddr = net.JoinHostPort(opts.Address, strconv.Itoa(tlsPort))
	s.Corefile = filepath.Join(s.Dir, "Corefile")
	if err := os.WriteFile(s.Corefile, []byte(s.corefile(files, port, tlsPort, certFile, keyFile)), 0o644); err != nil {
		return err
	}
	s.bin = bin
	return s.run(t)
}

// run starts CoreDNS with the Corefile written and waits until it answers.
func (s *Server) run(t testing.TB) error {
	t.Helper()
	opts := s.opts
	argv := append(append([]string{}, opts.Prefix...), s.bin, "-conf", s.Corefile)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = s.Dir
	s.Proc = testkit.StartProcess(t, "coredns", cmd)
	deadline := time.Now().Add(opts.StartTimeout)
	for {
		if s.Proc.Exited() {
			return fmt.Errorf("coredns exited: %v\n%s\n--- Corefile ---\n%s", s.Proc.Err(), s.Proc.Output(), s.corefileText())
		}
		err := s.probe()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not answering on %s and %s after %v: %w\n%s", s.Addr, s.TLSAddr, opts.StartTimeout, err, s.Proc.Output())
		}
		select {
		case <-s.Proc.Done():
		case <-time.After(testkit.PollInterval):
		}
	}
}

func (o *Options) setDefaults() {
	if o.Address == "" {
		o.Address = "127.0.0.1"
	}
	if o.Domain == "" {
		o.Domain = "cluster.local"
	}
	if o.Services == nil {
		o.Services = DefaultServices
	}
	if o.ServerName == "" {
		o.ServerName = "kube-dns.kube-system.svc." + o.Domain
	}
	if o.StartTimeout <= 0 {
		o.StartTimeout = 15 * time.Second
	}
}

func (s *Server) corefileText() string {
	b, _ := os.ReadFile(s.Corefile)
	return string(b)
}

// writeCredentials makes a CA and a certificate for ServerName and the
// address, and writes them into Dir; it returns the certificate and key
// files.
func (s *Server) writeCredentials(t testing.TB) (certFile, keyFile string) {
	t.Helper()
	ca, err := testpki.NewCA("corednstest CA")
	if err != nil {
		t.Fatal(err)
	}
	var ips []net.IP
	if ip := net.ParseIP(s.opts.Address); ip != nil {
		ips = append(ips, ip)
	}
	leaf, err := ca.Issue([]string{s.ServerName}, ips)
	if err != nil {
		t.Fatal(err)
	}
	caFile, certFile, keyFile, err := testpki.WriteFiles(s.Dir, ca, leaf)
	if err != nil {
		t.Fatal(err)
	}
	// Readable by the UIDs a test runs the sidecar as, which loads the CA.
	if err := os.Chmod(caFile, 0o644); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	s.CA, s.CAPEM, s.CAPool, s.CAFile = ca, ca.PEM, pool, caFile
	return certFile, keyFile
}

// Restart starts CoreDNS again, on the same addresses, with the same
// Corefile, after Proc was stopped (a resolver coming back), and waits until
// it answers. Queries starts over with the new process's log.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	if !s.Proc.Exited() {
		t.Fatal("corednstest: Restart while CoreDNS runs; stop Proc first")
	}
	if err := s.run(t); err != nil {
		t.Fatalf("restarting CoreDNS: %v", err)
	}
}

// useCredentials trusts Options.CAFile, for a certificate made elsewhere.
func (s *Server) useCredentials(t testing.TB) {
	t.Helper()
	pem, err := os.ReadFile(s.opts.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("corednstest: no certificate in %s", s.opts.CAFile)
	}
	s.CAPEM, s.CAPool, s.CAFile = pem, pool, s.opts.CAFile
}

// freePort picks a port free on both TCP and UDP at addr, other than
// avoid; in another namespace (addr not local) any port will do, the
// namespace being the test's own.
func freePort(t testing.TB, addr string, avoid int) int {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
		if err != nil {
			l, err = net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatalf("picking a free port: %v", err)
			}
			addr = "127.0.0.1"
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, uerr := net.ListenPacket("udp", net.JoinHostPort(addr, strconv.Itoa(port)))
		_ = l.Close()
		if uerr == nil {
			_ = u.Close()
			if port != avoid {
				return port
			}
		}
	}
	t.Fatal("picking a free port: no port free on both TCP and UDP")
	return 0
}
