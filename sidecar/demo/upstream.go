package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/miekg/dns"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/testpki"
)

// serverName is the name on the upstream's certificate, which the sidecar
// verifies (UPSTREAMS ...#serverName).
const serverName = "demo.dot-sidecar.test"

// upstream is the demo's DNS-over-TLS server on a loopback port: a
// certificate for serverName issued by a CA made at start, whose certificate
// is written to a file for TLS_CA_FILE.
type upstream struct {
	Addr   netip.AddrPort // the address bound, with the real port when asked for port 0
	CAFile string
	Pin    string // SPKI pin of the server's key, in TLS_PINS form

	server *dns.Server
	served chan error // the server's exit, once
}

// startUpstream makes the PKI, writes the CA certificate into dir and starts
// serving z on listen. It returns once the server accepts connections.
func startUpstream(listen netip.AddrPort, dir string, z *zone, log *slog.Logger) (*upstream, error) {
	ca, err := testpki.NewCA("dot-sidecar demo CA")
	if err != nil {
		return nil, err
	}
	leaf, err := ca.Issue([]string{serverName}, nil)
	if err != nil {
		return nil, err
	}
	u := &upstream{CAFile: filepath.Join(dir, "ca.pem"), Pin: testpki.Pin(leaf.Cert), served: make(chan error, 1)}
	if err := os.WriteFile(u.CAFile, ca.PEM, 0o644); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", listen.String())
	if err != nil {
		return nil, fmt.Errorf("%w (another program holds the port? choose one with --listen, or port 0 for any)", err)
	}
	u.Addr = ln.Addr().(*net.TCPAddr).AddrPort()
	started := make(chan struct{})
	u.server = &dns.Server{
		Listener: tls.NewListener(ln, &tls.Config{
			MinVersion:   tls.VersionTLS12,
			Certificates: []tls.Certificate{leaf.TLS},
			NextProtos:   []string{"dot"},
		}),
		Net: "tcp-tls",
		Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
			r := z.answer(q)
			if len(q.Question) == 1 {
				log.Info("query", "from", w.RemoteAddr().String(), "name", q.Question[0].Name,
					"type", dns.Type(q.Question[0].Qtype).String(), "rcode", dns.RcodeToString[r.Rcode])
			}
			_ = w.WriteMsg(r)
		}),
		// The sidecar pipelines many queries on a few long-lived connections
		// and closes them itself when idle (UPSTREAM_IDLE_TIMEOUT, 30s by
		// default); miekg/dns would otherwise close a connection after 128
		// queries or 8 s of silence.
		MaxTCPQueries:     -1,
		IdleTimeout:       func() time.Duration { return 2 * time.Minute },
		NotifyStartedFunc: func() { close(started) },
	}
	go func() { u.served <- u.server.ActivateAndServe() }()
	select {
	case <-started:
		return u, nil
	case err := <-u.served:
		return nil, fmt.Errorf("serving on %s: %w", u.Addr, err)
	}
}

// Done delivers the server's error if it stops on its own.
func (u *upstream) Done() <-chan error { return u.served }

// Close stops accepting, closes every connection and waits for the server.
func (u *upstream) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return u.server.ShutdownContext(ctx)
}
