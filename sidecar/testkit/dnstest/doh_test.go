package dnstest

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
)

// dohClient is a plain net/http client of s over HTTP/2, verifying it.
func dohClient(t *testing.T, s *Server) *http.Client {
	t.Helper()
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: s.CAPool, ServerName: s.ServerName, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, s.Addr.String())
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 5 * time.Second}
}

func packed(t *testing.T, name string) []byte {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(name, dns.TypeA)
	q.Id = 0
	b, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// do sends one request and returns the status, the content type and the
// body, or the error of the exchange.
func do(t *testing.T, c *http.Client, req *http.Request) (int, string, []byte, error) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("answered over %s, want HTTP/2", resp.Proto)
	}
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Content-Type"), body, err
}

// The DoH mode answers RFC 8484 requests, POST and GET, and refuses what is
// not one the way a DoH server does.
func TestDoHServesRequests(t *testing.T) {
	s := New(t, Options{DoH: true})
	c := dohClient(t, s)
	url := s.URL()
	if url != "https://dns.test:"+itoa(s.Addr.Port())+"/dns-query" {
		t.Errorf("URL() = %s", url)
	}
	q := packed(t, "xy.example.") // 28 bytes: base64 with padding differs from without
	post := func(ct string, body []byte) *http.Request {
		r, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
		r.Header.Set("Content-Type", ct)
		return r
	}
	get := func(param string) *http.Request {
		r, _ := http.NewRequest(http.MethodGet, url+"?dns="+param, nil)
		return r
	}
	tests := []struct {
		name   string
		req    *http.Request
		status int
	}{
		{"POST", post(DNSMessage, q), 200},
		{"GET", get(base64.RawURLEncoding.EncodeToString(q)), 200},
		{"GET with padding", get(base64.URLEncoding.EncodeToString(q)), 400},
		{"POST of another type", post("application/octet-stream", q), 415},
		{"empty POST", post(DNSMessage, nil), 400},
		{"another path", func() *http.Request {
			r, _ := http.NewRequest(http.MethodGet, strings.Replace(url, "/dns-query", "/x", 1), nil)
			return r
		}(), 404},
	}
	for _, tt := range tests {
		status, ct, body, err := do(t, c, tt.req)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if status != tt.status {
			t.Errorf("%s: status %d, want %d", tt.name, status, tt.status)
			continue
		}
		if status != 200 {
			continue
		}
		r := new(dns.Msg)
		if ct != DNSMessage || r.Unpack(body) != nil || r.Id != 0 || len(r.Answer) != 1 {
			t.Errorf("%s: %s answer %v", tt.name, ct, r)
		}
	}
	if got := s.Queries(); got != 2 {
		t.Errorf("Queries() = %d, want 2 (refused requests are not queries)", got)
	}
	if m := s.Methods(); len(m) != 2 {
		t.Errorf("Methods() = %v", m)
	}
}

// Each DoH Behavior spoils the response the way it says.
func TestDoHBehaviors(t *testing.T) {
	tests := []struct {
		name  string
		set   func(b *Behavior)
		check func(status int, ct string, body []byte, err error) error
	}{
		{"status", func(b *Behavior) { b.Status.Store(503) }, func(st int, _ string, _ []byte, _ error) error {
			return want(st == 503, "status %d", st)
		}},
		{"content type", func(b *Behavior) { b.SetContentType("text/plain") }, func(_ int, ct string, _ []byte, _ error) error {
			return want(ct == "text/plain", "content type %q", ct)
		}},
		{"truncated body", func(b *Behavior) { b.TruncateBody.Store(true) }, func(_ int, _ string, body []byte, err error) error {
			return want(errors.Is(err, io.ErrUnexpectedEOF), "body of %d bytes, error %v", len(body), err)
		}},
		{"oversized body", func(b *Behavior) { b.OversizeBody.Store(true) }, func(_ int, _ string, body []byte, _ error) error {
			return want(len(body) == 65536, "body of %d bytes", len(body))
		}},
		{"reset stream", func(b *Behavior) { b.ResetStream.Store(true) }, func(_ int, _ string, _ []byte, err error) error {
			return want(err != nil && strings.Contains(err.Error(), "INTERNAL_ERROR"), "error %v", err)
		}},
		{"mangled question", func(b *Behavior) { b.SetMangle(MangleQuestion, false) }, func(_ int, _ string, body []byte, _ error) error {
			r := new(dns.Msg)
			err := r.Unpack(body)
			return want(err == nil && r.Question[0].Name != "x.example.", "answer %v, %v", r, err)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(t, Options{DoH: true})
			tt.set(&s.Behavior)
			req, _ := http.NewRequest(http.MethodPost, s.URL(), bytes.NewReader(packed(t, "x.example.")))
			req.Header.Set("Content-Type", DNSMessage)
			resp, err := dohClient(t, s).Do(req)
			var (
				status int
				ct     string
				body   []byte
			)
			if err == nil {
				status, ct = resp.StatusCode, resp.Header.Get("Content-Type")
				body, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			if err := tt.check(status, ct, body, err); err != nil {
				t.Error(err)
			}
		})
	}
}

func want(ok bool, format string, args ...any) error {
	if ok {
		return nil
	}
	return errors.New("unexpected: " + fmt.Sprintf(format, args...))
}

// GoAwayAfter ends a connection after the Nth request gracefully: the next
// request goes out on a new connection, and nothing fails.
func TestDoHGoAwayAfter(t *testing.T) {
	s := New(t, Options{DoH: true})
	s.Behavior.GoAwayAfter.Store(2)
	c := dohClient(t, s)
	for i := range 6 {
		req, _ := http.NewRequest(http.MethodPost, s.URL(), bytes.NewReader(packed(t, "g.example.")))
		req.Header.Set("Content-Type", DNSMessage)
		if status, _, _, err := do(t, c, req); err != nil || status != 200 {
			t.Fatalf("request %d: %d, %v", i, status, err)
		}
	}
	if got := s.Accepted(); got != 3 {
		t.Errorf("accepted %d connections for 6 requests, GOAWAY after 2 each; want 3", got)
	}
}

// NoH2 offers HTTP/1.1 only: a client that insists on h2 finds none.
func TestDoHNoH2(t *testing.T) {
	s := New(t, Options{DoH: true})
	s.Behavior.NoH2.Store(true)
	conn, err := tls.Dial("tcp", s.Addr.String(), &tls.Config{RootCAs: s.CAPool, ServerName: s.ServerName, NextProtos: []string{"h2", "http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if p := conn.ConnectionState().NegotiatedProtocol; p != "http/1.1" {
		t.Errorf("negotiated %q, want http/1.1", p)
	}
}

// kdig, a DoH client of its own (GnuTLS, libnghttp2), gets answers from the
// DoH mode: the test server speaks DoH as others do, not only as our client
// expects.
func TestDoHServesKdig(t *testing.T) {
	tools := testkit.RequireTools(t, "kdig")
	s := New(t, Options{DoH: true})
	for _, method := range []string{"+https", "+https-get"} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, err := exec.CommandContext(ctx, tools["kdig"], "@127.0.0.1", "-p", itoa(s.Addr.Port()), method,
			"+tls-hostname="+s.ServerName, "+tls-ca="+writeCA(t, s), "+short", "+timeout=3", "+retry=0", "k.example.", "A").CombinedOutput()
		cancel()
		if err != nil || strings.TrimSpace(string(out)) != AnswerA.String() {
			t.Errorf("kdig %s: %v: %q", method, err, out)
		}
	}
	if got := s.SNIs(); len(got) != 1 || got[0] != s.ServerName {
		t.Errorf("SNI %v", got)
	}
}

func itoa[T ~int | ~uint16](n T) string { return strconv.Itoa(int(n)) }

// writeCA writes the server's CA to a file for a client that reads one.
func writeCA(t *testing.T, s *Server) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(p, s.CAPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
