package upstream

import (
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
)

// A DoT upstream that announces an idle timeout (edns-tcp-keepalive) sees
// its connections closed by the client before it would close them itself,
// so that its close never meets a query on the way; the next query opens a
// new connection, and nothing is resent.
func TestKeepaliveHonoured(t *testing.T) {
	srv := dnstest.New(t, dnstest.Options{})
	srv.Behavior.SetKeepalive(2 * time.Second)
	d := newTestDoT(t, srv, nil) // IdleTimeout 30s: only the keepalive can close it soon
	q := packQuery(t, "k.example.", dns.TypeA)
	if _, err := d.Exchange(ctxTimeout(t, answerTimeout), q); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(d.m.keepalive); got != 2 {
		t.Errorf("keepalive_timeout_seconds = %v, want 2", got)
	}
	eventually(t, 5*time.Second, "the idle connection to close", func() bool {
		return srv.Open() == 0 && d.openConns() == 0
	})
	if got := srv.IdleClosed(); got != 0 {
		t.Fatalf("the upstream closed %d idle connections: the client kept one past the keepalive", got)
	}
	if _, err := d.Exchange(ctxTimeout(t, answerTimeout), q); err != nil {
		t.Fatal(err)
	}
	if got, resent := srv.Accepted(), counterValue(d.m.resent); got != 2 || resent != 0 {
		t.Errorf("%d connections, %v resent; want 2 and 0", got, resent)
	}
}

// A connection idle for nearly the announced keepalive is never given a
// query, whoever notices first (the query, or housekeeping): the query goes
// out on a new connection.
func TestKeepaliveExpiredConnectionNotUsed(t *testing.T) {
	srv := dnstest.New(t, dnstest.Options{})
	srv.Behavior.SetKeepalive(5 * time.Second)
	d := newTestDoT(t, srv, func(o *DoTOptions) { o.PoolSize = 1 })
	q := packQuery(t, "k.example.", dns.TypeA)
	if _, err := d.Exchange(ctxTimeout(t, answerTimeout), q); err != nil {
		t.Fatal(err)
	}
	c := d.activeConns()[0]
	// As if idle for 4.5 s: past the 4 s left once the margin is taken,
	// short of the upstream's 5.
	c.mu.Lock()
	c.idleSince = time.Now().Add(-4500 * time.Millisecond)
	expired := c.idleExpiredLocked()
	c.mu.Unlock()
	if !expired {
		t.Fatal("a connection idle 4.5 s of a 5 s keepalive is not expired")
	}
	if _, err := d.Exchange(ctxTimeout(t, answerTimeout), q); err != nil {
		t.Fatal(err)
	}
	if !c.isDead() {
		t.Error("the expired connection still open")
	}
	if got, resent := srv.Accepted(), counterValue(d.m.resent); got != 2 || resent != 0 {
		t.Errorf("%d connections, %v resent; want 2 and 0", got, resent)
	}
}

// A keepalive of 0 asks the client to close the connection once done with
// it (RFC 7828 §3.3.2): it takes no more queries and closes.
func TestKeepaliveZeroClosesTheConnection(t *testing.T) {
	srv := dnstest.New(t, dnstest.Options{Handler: func(q *dns.Msg) *dns.Msg {
		r := dnstest.DefaultHandler(q)
		if r.IsEdns0() != nil {
			// miekg/dns writes a zero Timeout as no timeout at all (the
			// client's form): the server's 2-byte zero is written by hand.
			r.IsEdns0().Option = append(r.IsEdns0().Option, &dns.EDNS0_LOCAL{Code: dns.EDNS0TCPKEEPALIVE, Data: []byte{0, 0}})
		}
		return r
	}})
	d := newTestDoT(t, srv, nil)
	for i := range 3 {
		if _, err := d.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, "z.example.", dns.TypeA)); err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
		eventually(t, 5*time.Second, "the connection to close", func() bool { return d.openConns() == 0 && srv.Open() == 0 })
	}
	if got := srv.Accepted(); got != 3 {
		t.Errorf("%d connections for 3 queries, want one each", got)
	}
}
