// Package unboundtest runs a real Unbound as a DNS-over-TLS server (and, when
// asked, DNS-over-HTTPS) answering from local data, for interop tests, the network-namespace end-to-end tests
// and the load harness. Nothing is mocked: it writes a certificate made at run
// time (testpki) and an unbound.conf into a temporary directory, starts the
// system's unbound in the foreground, and returns once a real DoT query,
// verified against the generated CA, gets the expected answer.
//
// In a test:
//
//	u := unboundtest.Start(t, unboundtest.Options{Names: 10, Plain: true})
//	// u.Addr       "127.0.0.1:PORT"  DoT (TLS on TCP)
//	// u.PlainAddr  "127.0.0.1:PORT"  plain UDP and TCP (when Plain is set)
//	// u.ExtraAddrs more DoT listeners, same certificate (Options.ExtraDoTPorts)
//	// u.HTTPSAddr  "127.0.0.1:PORT"  DoH at HTTPPath ("/dns-query", Options.HTTPS)
//	// u.ExtraHTTPSAddrs "127.0.0.2:PORT", ...: more DoH listeners (Options.ExtraHTTPS)
//	// u.ServerName "unbound.test"    the name in the certificate
//	// u.CAFile     a PEM file for TLS_CA_FILE; u.CAPEM, u.CAPool the same CA
//	// u.Pin        SPKI pin of the server's key (TLS_PINS form); u.CAPin the CA's
//	// u.Names      the records served: Names[i].Name = "name<i+1>.bench.test."
//	//              with an A (198.18.0.0/15), an AAAA (2001:db8::/32) and a TXT
//	resp, err := u.Exchange(ctx, msg) // one query over a fresh verified DoT connection
//
// Start skips the test (fails under CI=true) when unbound is not installed, and
// stops the server in t.Cleanup. New is the same without a testing.TB, for
// programs (the load harness); its caller must call Stop.
//
// Every other name is answered NXDOMAIN at once (local-zone "." static): the
// server never recurses, so nothing leaves the machine and health-check
// queries of relays (". NS", "a.root-servers.net. A") get a prompt answer.
//
// For a network namespace, set Prefix to the wrapper (a netnstest
// namespace's Prefix(): ip netns exec NAME) and Address to an address
// inside it.
// Readiness is then checked by running kdig through the same Prefix, unless
// DialContext is set, in which case this process dials through it.
//
// Queries (with LogQueries) lists the queries received, in order, from the
// log.
//
// Stats reads unbound's counters through unbound-control over a Unix socket in
// the temporary directory (it works across namespaces). The server's log
// (stderr, verbosity 1) is kept in LogFile; errors include its tail.
package unboundtest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/testpki"
)

// Options describe the server to start. The zero value is a one-thread server
// on 127.0.0.1 with 100 names and no plain port.
type Options struct {
	// Address is the IP literal to listen on; default 127.0.0.1.
	Address string
	// Port is the DoT port; 0 picks a free one.
	Port int
	// Plain also serves plain DNS (UDP and TCP) on PlainPort, the "direct"
	// baseline. PlainPort 0 picks a free one.
	Plain     bool
	PlainPort int
	// ExtraDoTPorts adds that many more DoT listeners (free ports, listed in
	// Server.ExtraAddrs), e.g. one per client so that connections can be
	// counted per client at the server side.
	ExtraDoTPorts int
	// HTTPS also serves DNS over HTTPS (RFC 8484, HTTP/2) on HTTPSPort (0
	// picks a free one) at HTTPPath, with the same certificate: Unbound's
	// https-port, which Debian's unbound is built for (libnghttp2).
	HTTPS     bool
	HTTPSPort int
	// ExtraHTTPS adds that many more DoH listeners (Server.ExtraHTTPSAddrs),
	// on the same port at the next loopback addresses (127.0.0.2, ...), as
	// Unbound has one https-port; with an Address of 127.0.0.1 only.
	ExtraHTTPS int
	// ServerName is the DNS name in the server certificate; default
	// "unbound.test". The certificate also carries Address as an IP SAN.
	ServerName string
	// Zone holds the generated names; default "bench.test.".
	Zone string
	// Names is how many names to serve; default 100.
	Names int
	// Threads is unbound's num-threads; default 1.
	Threads int
	// IncomingNumTCP is unbound's incoming-num-tcp (per thread); default 256,
	// well above Unbound's 10, so that relays opening many connections are
	// measured rather than queued.
	IncomingNumTCP int
	// LogQueries has unbound log every query as it arrives, for Queries.
	LogQueries bool
	// ExtraConfig lines are appended to the server: clause verbatim, e.g.
	// "tcp-idle-timeout: 1000".
	ExtraConfig []string
	// Clauses are lines appended verbatim after the server: clause, for
	// clauses of their own, e.g. "forward-zone:", "\tname: x.example.",
	// "\tforward-addr: 192.0.2.1", or an auth-zone: serving a zone file.
	Clauses []string
	// Prefix runs unbound (and the kdig readiness probe) through a wrapper,
	// e.g. a netnstest namespace's Prefix().
	Prefix []string
	// DialContext, if set, is used by readiness checks and Exchange instead of
	// a plain net.Dialer (and instead of kdig when Prefix is set).
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// Unbound is the path of the unbound binary; default found on PATH or in
	// /usr/sbin.
	Unbound string
	// StartTimeout bounds the wait for readiness; default 15s.
	StartTimeout time.Duration
	// KillWithParent has the kernel SIGKILL unbound if the thread that
	// started it dies, so a killed program leaves no server behind. Leave it
	// off when starting from a goroutine locked to an OS thread (for
	// example to enter a namespace) that may exit before Stop.
	KillWithParent bool
}

// Record is one served name and the data it carries.
type Record struct {
	Name string // fully qualified, e.g. "name1.bench.test."
	A    net.IP
	AAAA net.IP
	TXT  string
}

// Server is a running Unbound.
type Server struct {
	Addr       string   // DoT host:port
	PlainAddr  string   // plain host:port, empty unless Options.Plain
	ExtraAddrs []string // more DoT host:ports, Options.ExtraDoTPorts of them
	HTTPSAddr  string   // DoH host:port, empty unless Options.HTTPS
	// ExtraHTTPSAddrs are more DoH listeners, Options.ExtraHTTPS of them.
	ExtraHTTPSAddrs []string
	ServerName      string
	CA              *testpki.CA
	CAPEM           []byte
	CAPool          *x509.CertPool
	CAFile          string
	Pin             string // SPKI pin of the leaf
	CAPin           string // SPKI pin of the CA
	Names           []Record
	Dir             string // temporary directory, removed by Stop
	ConfigFile      string
	LogFile         string
	PID             int

	opts    Options
	tools   tools
	cmd     *exec.Cmd
	logF    *os.File
	exited  chan struct{}
	waitErr error
	stopped bool
}

type tools struct{ unbound, control, kdig string }

// Start starts a server for a test: it skips (fails under CI=true) when the
// tools are missing, fails the test on any error and stops the server when the
// test ends.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	names := []string{"unbound", "unbound-control"}
	if len(opts.Prefix) > 0 && opts.DialContext == nil {
		names = append(names, "kdig")
	}
	paths := testkit.RequireTools(t, names...)
	if opts.Unbound == "" {
		opts.Unbound = paths["unbound"]
	}
	ctx, cancel := context.WithTimeout(context.Background(), opts.startTimeout()+5*time.Second)
	defer cancel()
	s, err := New(ctx, opts)
	if err != nil {
		t.Fatalf("starting unbound: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stopping unbound: %v", err)
		}
	})
	return s
}

var shared struct {
	mu      sync.Mutex
	servers map[string]*sharedServer
}

type sharedServer struct {
	once sync.Once
	s    *Server
	err  error
}

// Shared returns a server shared by the tests of the package that ask for
// one with the same options: started on first use (an Unbound start costs
// about a second) and stopped when the package's tests end, so the
// package's TestMain must be testkit.Main. It is for tests that only query
// the server; a test that stops it, or reads counters that other tests move,
// starts its own with Start.
func Shared(t testing.TB, opts Options) *Server {
	t.Helper()
	testkit.RequireMain(t)
	testkit.RequireTools(t, "unbound", "unbound-control")
	key := fmt.Sprintf("%#v", opts)
	shared.mu.Lock()
	if shared.servers == nil {
		shared.servers = map[string]*sharedServer{}
	}
	e := shared.servers[key]
	if e == nil {
		e = new(sharedServer)
		shared.servers[key] = e
	}
	shared.mu.Unlock()
	e.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), opts.startTimeout()+5*time.Second)
		defer cancel()
		if e.s, e.err = New(ctx, opts); e.err == nil {
			testkit.AtExit(t, func() { _ = e.s.Stop() })
		}
	})
	if e.err != nil {
		t.Fatalf("starting unbound: %v", e.err)
	}
	return e.s
}

// New starts a server and waits until it answers over DoT. The caller must
// call Stop. Errors carry the tail of unbound's log.
func New(ctx context.Context, opts Options) (*Server, error) {
	opts.setDefaults()
	if err := opts.check(); err != nil {
		return nil, err
	}
	tl, err := findTools(opts)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "unboundtest-")
	if err != nil {
		return nil, fmt.Errorf("creating directory: %w", err)
	}
	s := &Server{opts: opts, tools: tl, Dir: dir, ServerName: opts.ServerName}
	if err := s.writeCredentials(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	s.Names = makeRecords(opts.Zone, opts.Names)

	// Picked ports can be taken between the pick and unbound's bind; unbound
	// then exits at once and a fresh pick almost always succeeds.
	attempts := 1
	if opts.Port == 0 || (opts.Plain && opts.PlainPort == 0) || opts.ExtraDoTPorts > 0 || (opts.HTTPS && opts.HTTPSPort == 0) {
		attempts = 3
	}
	for i := 0; ; i++ {
		err = s.launch(ctx)
		if err == nil {
			return s, nil
		}
		_ = s.kill()
		if i+1 >= attempts || !errors.Is(err, errExited) || ctx.Err() != nil {
			tail := s.LogTail(20)
			_ = os.RemoveAll(dir)
			return nil, fmt.Errorf("%w\n--- unbound log (%s) ---\n%s", err, s.LogFile, tail)
		}
	}
}

var errExited = errors.New("unbound exited")

func (o *Options) check() error {
	if o.ExtraHTTPS > 0 && (!o.HTTPS || o.Address != "127.0.0.1") {
		return errors.New("ExtraHTTPS needs HTTPS on Address 127.0.0.1")
	}
	if o.ExtraHTTPS > 250 {
		return errors.New("ExtraHTTPS above 250")
	}
	return nil
}

func (o *Options) setDefaults() {
	if o.Address == "" {
		o.Address = "127.0.0.1"
	}
	if o.ServerName == "" {
		o.ServerName = "unbound.test"
	}
	if o.Zone == "" {
		o.Zone = "bench.test."
	}
	if o.Zone[len(o.Zone)-1] != '.' {
		o.Zone += "."
	}
	if o.Names <= 0 {
		o.Names = 100
	}
	if o.Threads <= 0 {
		o.Threads = 1
	}
	if o.IncomingNumTCP <= 0 {
		o.IncomingNumTCP = 256
	}
}

func (o Options) startTimeout() time.Duration {
	if o.StartTimeout > 0 {
		return o.StartTimeout
	}
	return 15 * time.Second
}

func findTools(o Options) (tools, error) {
	var tl tools
	var err error
	if tl.unbound = o.Unbound; tl.unbound == "" {
		if tl.unbound, err = lookPath("unbound"); err != nil {
			return tl, err
		}
	}
	// unbound-control and kdig are needed only for Stats and namespaced
	// readiness; their absence is reported when they are used.
	tl.control, _ = lookPath("unbound-control")
	tl.kdig, _ = lookPath("kdig")
	return tl, nil
}

// lookPath finds a program on PATH or in the sbin directories that a
// non-login PATH may lack.
func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found on PATH or in /usr/sbin (Debian package)", name)
}

func (s *Server) writeCredentials() error {
	ca, err := testpki.NewCA("unboundtest CA")
	if err != nil {
		return err
	}
	var ips []net.IP
	if ip := net.ParseIP(s.opts.Address); ip != nil {
		ips = append(ips, ip)
	}
	leaf, err := ca.Issue([]string{s.opts.ServerName}, ips)
	if err != nil {
		return err
	}
	caFile, _, _, err := testpki.WriteFiles(s.Dir, ca, leaf)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	s.CA, s.CAPEM, s.CAPool, s.CAFile = ca, ca.PEM, pool, caFile
	s.Pin, s.CAPin = testpki.Pin(leaf.Cert), testpki.Pin(ca.Cert)
	return nil
}

// TLSConfig returns a client configuration that verifies the server against
// the generated CA and ServerName.
func (s *Server) TLSConfig() *tls.Config {
	return &tls.Config{RootCAs: s.CAPool, ServerName: s.ServerName, MinVersion: tls.VersionTLS12}
}
