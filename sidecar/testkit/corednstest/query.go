package corednstest

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
)

// Exchange sends one query to the server over network "udp", "tcp" or
// "tls" (DoT, verified against the CA and ServerName), on a fresh
// connection, and returns the reply.
func (s *Server) Exchange(ctx context.Context, network string, m *dns.Msg) (*dns.Msg, error) {
	dial := s.opts.DialContext
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	addr, netw := s.Addr, network
	if network == "tls" {
		addr, netw = s.TLSAddr, "tcp"
	}
	raw, err := dial(ctx, netw, addr)
	if err != nil {
		return nil, fmt.Errorf("dialing %s %s: %w", network, addr, err)
	}
	conn := raw
	if network == "tls" {
		tc := tls.Client(raw, &tls.Config{RootCAs: s.CAPool, ServerName: s.ServerName, MinVersion: tls.VersionTLS12})
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, fmt.Errorf("TLS handshake with %s: %w", addr, err)
		}
		conn = tc
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	dc := &dns.Conn{Conn: conn, UDPSize: dns.DefaultMsgSize}
	if err := dc.WriteMsg(m); err != nil {
		return nil, fmt.Errorf("writing query to %s %s: %w", network, addr, err)
	}
	r, err := dc.ReadMsg()
	if err != nil {
		return nil, fmt.Errorf("reading reply from %s %s: %w", network, addr, err)
	}
	if r.Id != m.Id {
		return nil, fmt.Errorf("reply from %s %s has ID %d, want %d", network, addr, r.Id, m.Id)
	}
	return r, nil
}

// probe checks that the cluster domain's SOA is answered, authoritatively,
// over plain UDP and over TLS.
func (s *Server) probe() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for _, network := range []string{"udp", "tls"} {
		m := new(dns.Msg)
		m.SetQuestion(s.Domain, dns.TypeSOA)
		r, err := s.Exchange(ctx, network, m)
		if err != nil {
			return err
		}
		if r.Rcode != dns.RcodeSuccess || !r.Authoritative || len(r.Answer) != 1 {
			return fmt.Errorf("%s SOA over %s: %v", s.Domain, network, r)
		}
	}
	return nil
}

// Query is one query as CoreDNS logged it.
type Query struct {
	Transport string // "dns" (plain) or "tls"
	Proto     string // "udp" or "tcp"
	Remote    string // the client's address, without port
	Type      string // "A", "AAAA", "PTR", ...
	Name      string // as asked, fully qualified, case kept
	Rcode     string // of the reply: "NOERROR", "NXDOMAIN", "REFUSED", ...
}

func (q Query) String() string {
	return q.Transport + "/" + q.Proto + " " + q.Type + " " + q.Name + " " + q.Rcode + " from " + q.Remote
}

// Queries returns every query CoreDNS has logged so far. CoreDNS writes a
// query's line just after its reply, from the goroutine that served it, so
// lines of queries sent one after another can come out of order, and the
// last reply can reach a test before its line: tests compare them as sets,
// after Sync.
func (s *Server) Queries() []Query {
	var qs []Query
	for _, l := range strings.Split(s.Proc.Stdout.String(), "\n") {
		i := strings.Index(l, logPrefix+" ")
		if i < 0 {
			continue
		}
		f := strings.Fields(l[i+len(logPrefix)+1:])
		if len(f) != 6 {
			continue
		}
		qs = append(qs, Query{Transport: f[0], Proto: f[1], Remote: strings.Trim(f[2], "[]"), Type: f[3], Name: f[4], Rcode: f[5]})
	}
	return qs
}

// SyncTimeout bounds Sync.
const SyncTimeout = 10 * time.Second

// syncLabel starts the names Sync asks for; Queries without them are the
// test's.
const syncLabel = "corednstest-sync-"

// Sync asks CoreDNS a name of its own and waits until its log shows it,
// and returns every query logged by then except Sync's own. The lines of
// the queries answered before it are written by then, in practice: each
// follows its reply by microseconds, and the marker costs a new TCP
// connection and a round trip.
func (s *Server) Sync(t testing.TB) []Query {
	t.Helper()
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name := syncLabel + hex.EncodeToString(b) + "." + s.Domain
	ctx, cancel := context.WithTimeout(context.Background(), SyncTimeout)
	defer cancel()
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeTXT)
	if _, err := s.Exchange(ctx, "tcp", m); err != nil {
		t.Fatalf("corednstest: sync query: %v", err)
	}
	var qs []Query
	testkit.WaitFor(t, "CoreDNS to log "+name, SyncTimeout, func() error {
		qs = s.Queries()
		for _, q := range qs {
			if strings.EqualFold(q.Name, name) {
				return nil
			}
		}
		return fmt.Errorf("%d queries logged, not yet %s", len(qs), name)
	})
	var own []Query
	for _, q := range qs {
		if !strings.HasPrefix(strings.ToLower(q.Name), syncLabel) {
			own = append(own, q)
		}
	}
	return own
}
