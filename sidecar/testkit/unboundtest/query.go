package unboundtest

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Exchange sends one query over a fresh DoT connection, verified against the
// generated CA and ServerName, and returns the reply. It is meant for checks,
// not load: every call pays a TLS handshake.
func (s *Server) Exchange(ctx context.Context, m *dns.Msg) (*dns.Msg, error) {
	return s.ExchangeAt(ctx, s.Addr, m)
}

// ExchangeAt is Exchange to another of the server's DoT listeners (one of
// ExtraAddrs).
func (s *Server) ExchangeAt(ctx context.Context, addr string, m *dns.Msg) (*dns.Msg, error) {
	dial := s.opts.DialContext
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	raw, err := dial(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dialing %s: %w", addr, err)
	}
	conn := tls.Client(raw, s.TLSConfig())
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if err := conn.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("TLS handshake with %s: %w", addr, err)
	}
	dc := &dns.Conn{Conn: conn}
	if err := dc.WriteMsg(m); err != nil {
		return nil, fmt.Errorf("writing query to %s: %w", addr, err)
	}
	r, err := dc.ReadMsg()
	if err != nil {
		return nil, fmt.Errorf("reading reply from %s: %w", addr, err)
	}
	if r.Id != m.Id {
		return nil, fmt.Errorf("reply from %s has ID %d, want %d", addr, r.Id, m.Id)
	}
	return r, nil
}

// probe checks that the server answers the first name's A record correctly.
func (s *Server) probe(ctx context.Context) error {
	want := s.Names[0]
	if len(s.opts.Prefix) > 0 && s.opts.DialContext == nil {
		return s.probeKdig(ctx, want)
	}
	m := new(dns.Msg)
	m.SetQuestion(want.Name, dns.TypeA)
	r, err := s.Exchange(ctx, m)
	if err != nil {
		return err
	}
	return CheckA(r, want)
}

// CheckA reports whether r is a NOERROR answer carrying exactly rec's A
// record.
func CheckA(r *dns.Msg, rec Record) error {
	if r.Rcode != dns.RcodeSuccess {
		return fmt.Errorf("%s A: rcode %s", rec.Name, dns.RcodeToString[r.Rcode])
	}
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok && strings.EqualFold(a.Hdr.Name, rec.Name) && a.A.Equal(rec.A) {
			return nil
		}
	}
	return fmt.Errorf("%s A: answer %v lacks %s", rec.Name, r.Answer, rec.A)
}

// probeKdig queries through the Prefix (e.g. inside a network namespace this
// process is not in) with kdig, verifying the certificate the same way.
func (s *Server) probeKdig(ctx context.Context, want Record) error {
	if s.tools.kdig == "" {
		return errors.New("kdig not found (Debian package knot-dnsutils); needed to probe through Prefix")
	}
	host, port, err := net.SplitHostPort(s.Addr)
	if err != nil {
		return err
	}
	argv := append(append([]string{}, s.opts.Prefix...), s.tools.kdig,
		"@"+host, "-p", port, "+tls", "+tls-ca="+s.CAFile, "+tls-hostname="+s.ServerName,
		"+short", "+timeout=1", "+retry=0", want.Name, "A")
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	out, err := exec.CommandContext(cctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("kdig: %w: %s", err, strings.TrimSpace(string(out)))
	}
	for _, l := range strings.Fields(string(out)) {
		if net.ParseIP(l).Equal(want.A) {
			return nil
		}
	}
	return fmt.Errorf("kdig %s A: got %q, want %s", want.Name, strings.TrimSpace(string(out)), want.A)
}

// HTTPPath is the path of Unbound's DoH endpoint (http-endpoint).
const HTTPPath = "/dns-query"

// ExchangeHTTPS sends one query as an RFC 8484 POST over a fresh HTTP/2
// connection to HTTPSAddr, verified like Exchange's, and returns the reply.
// For checks, not load.
func (s *Server) ExchangeHTTPS(ctx context.Context, m *dns.Msg) (*dns.Msg, error) {
	if s.HTTPSAddr == "" {
		return nil, errors.New("no DoH listener (Options.HTTPS)")
	}
	return s.ExchangeHTTPSAt(ctx, s.HTTPSAddr, m)
}

// ExchangeHTTPSAt is ExchangeHTTPS to another of the server's DoH listeners
// (one of ExtraHTTPSAddrs).
func (s *Server) ExchangeHTTPSAt(ctx context.Context, addr string, m *dns.Msg) (*dns.Msg, error) {
	wire, err := m.Pack()
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{TLSClientConfig: s.TLSConfig(), ForceAttemptHTTP2: true, DisableKeepAlives: true}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetHTTP2(true)
	defer tr.CloseIdleConnections()
	dial := s.opts.DialContext
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	url := "https://" + net.JoinHostPort(s.ServerName, portOf(addr)) + HTTPPath
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(wire))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/dns-message")
	req.Header.Set("Accept", "application/dns-message")
	// The URL names the certificate's name; the connection goes to the
	// listener's address.
	tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		return dial(ctx, network, addr)
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("DoH query to %s: %w", addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 65536))
	if err != nil {
		return nil, fmt.Errorf("reading DoH reply from %s: %w", addr, err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/dns-message" {
		return nil, fmt.Errorf("DoH reply from %s: %s, content type %q", addr, resp.Status, resp.Header.Get("Content-Type"))
	}
	if resp.ProtoMajor != 2 {
		return nil, fmt.Errorf("DoH reply from %s over %s, want HTTP/2", addr, resp.Proto)
	}
	r := new(dns.Msg)
	if err := r.Unpack(body); err != nil {
		return nil, fmt.Errorf("DoH reply from %s: %w", addr, err)
	}
	return r, nil
}

// probeHTTPS checks that the DoH listener answers the first name's A record.
func (s *Server) probeHTTPS(ctx context.Context) error {
	m := new(dns.Msg)
	m.SetQuestion(s.Names[0].Name, dns.TypeA)
	r, err := s.ExchangeHTTPS(ctx, m)
	if err != nil {
		return err
	}
	return CheckA(r, s.Names[0])
}

func portOf(hostport string) string {
	_, p, _ := net.SplitHostPort(hostport)
	return p
}
