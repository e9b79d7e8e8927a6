package server

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// pipeline writes n queries for name on c, in one write, without reading.
func pipeline(t *testing.T, c net.Conn, n int, name string) {
	t.Helper()
	var batch []byte
	for range n {
		b := packed(t, newQuery(name, dns.TypeTXT))
		batch = append(batch, byte(len(b)>>8), byte(len(b)))
		batch = append(batch, b...)
	}
	go func() { _, _ = c.Write(batch) }() // blocks once the server stops reading
}

// onlyConn returns the server's one TCP connection.
func (ts *testServer) onlyConn(t *testing.T) *tcpConn {
	t.Helper()
	var c *tcpConn
	waitFor(t, "the TCP connection to be tracked", func() bool {
		ts.mu.Lock()
		defer ts.mu.Unlock()
		for tc := range ts.conns {
			c = tc
		}
		return len(ts.conns) == 1
	})
	return c
}

func (c *tcpConn) unsentBytes() int {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.unsent
}

// Clients that pipeline queries and never read hold the bytes of their
// answers, never the server's query slots. Here two of them can have
// MaxInFlight queries in flight between them: when a blocked write held its
// query's slot, they shut every other client out once the kernel's buffers
// were full; now all their queries are answered (into their connections'
// queues) and UDP keeps being answered.
func TestTCPNonReadersHoldNoSlots(t *testing.T) {
	// Enough for the kernel's buffers (about 4 answers a connection) and
	// the connection's 4 slots, with room: every answer is made by the
	// test upstream under -race, and 200 took seconds on a loaded machine.
	const n = 30
	ts := startServer(t, Options{MaxInFlight: 8, TCPMaxInFlight: 4, TCPMaxUnread: 64 << 20, QueryTimeout: 10 * time.Second})
	for range 2 {
		c, err := net.Dial("tcp", ts.addr(t, "tcp", loopback4).String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		pipeline(t, c, n, "huge.example.") // answers of about 60 KB each
	}
	waitFor(t, "every query of the clients that do not read to be answered", func() bool {
		return testutil.ToFloat64(ts.m.byRcode[protoTCP][dns.RcodeSuccess]) == 2*n
	})
	if got := ts.adm.inflight.Load(); got != 0 {
		t.Errorf("%d queries in flight with the clients' answers all made, want 0", got)
	}
	ts.mu.Lock()
	for c := range ts.conns {
		if c.unsentBytes() == 0 {
			t.Error("nothing unsent: a client read its answers after all")
		}
	}
	ts.mu.Unlock()
	for i := range 20 {
		r, _ := ask(t, "udp", ts.addr(t, "udp", loopback4), newQuery(fmt.Sprintf("u%d.example.", i), dns.TypeA))
		if r.Rcode != dns.RcodeSuccess {
			t.Fatalf("UDP query %d beside the non-reading clients: %s", i, dns.RcodeToString[r.Rcode])
		}
	}
}

// Once TCPMaxUnread bytes are unsent, the server reads no more queries
// from the connection, and an answer that still comes (here, one the
// upstream held) closes it: the client is not reading.
func TestTCPUnreadAnswersCloseTheConnection(t *testing.T) {
	const budget = 16384
	ts := startServer(t, Options{TCPMaxUnread: budget, QueryTimeout: 10 * time.Second})
	c, err := net.Dial("tcp", ts.addr(t, "tcp", loopback4).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := writeMsg(c, "tcp", packed(t, newQuery("hold-late.example.", dns.TypeA))); err != nil {
		t.Fatal(err)
	}
	rel := &releaser{hs: ts.up.awaitHeld(t, 1)}
	defer rel.all()
	pipeline(t, c, 300, "huge.example.")
	sc := ts.onlyConn(t)
	maxUnsent := 0
	closed := func() bool { return testutil.ToFloat64(ts.m.unreadClosed) == 1 }
	waitFor(t, "the server to stop reading", func() bool {
		maxUnsent = max(maxUnsent, sc.unsentBytes())
		return maxUnsent >= budget || closed()
	})
	rel.all()
	waitFor(t, "the connection to be closed for unread answers", func() bool {
		maxUnsent = max(maxUnsent, sc.unsentBytes())
		return closed()
	})
	if maxUnsent > budget+2+dns.MaxMsgSize {
		t.Errorf("up to %d bytes unsent, want at most TCPMaxUnread and one answer, %d", maxUnsent, budget+2+dns.MaxMsgSize)
	}
	// What the kernel holds still comes, then the end.
	var answers int
	for {
		if _, err := readMsg(c, "tcp"); err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("after %d answers: %v, want the connection closed", answers, err)
			}
			break
		}
		answers++
	}
	if answers >= 300 {
		t.Errorf("%d answers before the close", answers)
	}
	waitFor(t, "the connection to be released", func() bool { return ts.tcpOpen.Load() == 0 && ts.adm.inflight.Load() == 0 })
}

// A TCP query followed, inside its frame, by bytes that are not part of it
// reaches the upstream without them.
func TestTCPQueryKeptCompact(t *testing.T) {
	ts := startServer(t, Options{})
	c, err := net.Dial("tcp", ts.addr(t, "tcp", loopback4).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	q := packed(t, ednsQuery("compact.example.", dns.TypeA, 1232))
	if err := writeMsg(c, "tcp", append(bytes.Clone(q), make([]byte, 30000)...)); err != nil {
		t.Fatal(err)
	}
	raw, err := readMsg(c, "tcp")
	if err != nil {
		t.Fatal(err)
	}
	if r := new(dns.Msg); r.Unpack(raw) != nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("answer %x", raw)
	}
	if got := ts.up.received(); len(got) != 1 || !bytes.Equal(got[0], q) {
		t.Fatalf("upstream received %d queries, the first of %d bytes; want the query alone, %d bytes", len(got), len(got[0]), len(q))
	}
}

// As open connections near TCPMaxConns, idle ones are closed sooner, those
// already waiting included; with few open, the full timeout applies again.
func TestTCPIdleTimeoutShrinks(t *testing.T) {
	ts := startServer(t, Options{TCPMaxConns: 10, TCPIdleTimeout: 10 * time.Second})
	addr := ts.addr(t, "tcp", loopback4).String()
	dial := func() net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	start := time.Now()
	var idle []net.Conn
	for range 5 { // half: the full timeout
		idle = append(idle, dial())
	}
	waitFor(t, "five connections open", func() bool { return ts.tcpOpen.Load() == 5 })
	if got := ts.idle.timeout(); got != 10*time.Second {
		t.Fatalf("idle timeout %v with half the connections open, want 10s", got)
	}
	for range 3 { // 80%: down to minIdle, for the five waiting too
		idle = append(idle, dial())
	}
	for i, c := range idle {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Fatalf("idle connection %d: %v, want closed", i, err)
		}
	}
	if took := time.Since(start); took > minIdle+lateSlack {
		t.Fatalf("idle connections closed after %v, want about %v", took, minIdle)
	}
	waitFor(t, "the idle connections to be released", func() bool { return ts.tcpOpen.Load() == 0 })
	if got := ts.idle.timeout(); got != 10*time.Second {
		t.Fatalf("idle timeout %v with no connection open, want 10s", got)
	}
	c := dial()
	_ = c.SetReadDeadline(time.Now().Add(2 * minIdle))
	if _, err := c.Read(make([]byte, 1)); !isTimeout(err) {
		t.Fatalf("a lone idle connection: %v, want still open after %v", err, 2*minIdle)
	}
}
