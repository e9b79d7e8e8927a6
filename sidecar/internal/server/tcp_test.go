package server

import (
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestTCPPipeliningOutOfOrder pipelines 100 queries on one connection; the
// upstream answers them in reverse order, one at a time, and each answer must
// reach the client with its own ID and question before the next is released.
func TestTCPPipeliningOutOfOrder(t *testing.T) {
	const n = 100
	ts := startServer(t, Options{QueryTimeout: 10 * time.Second, TCPMaxInFlight: n})
	c, err := net.Dial("tcp", ts.addr(t, "tcp", loopback4).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ids := make([]uint16, n)
	var batch []byte
	for i := range n {
		q := newQuery(fmt.Sprintf("hold-%d.example.", i), dns.TypeA)
		ids[i] = q.Id
		b := packed(t, q)
		batch = append(batch, byte(len(b)>>8), byte(len(b)))
		batch = append(batch, b...)
	}
	if _, err := c.Write(batch); err != nil { // one write: all 100 in flight at once
		t.Fatal(err)
	}
	hs := ts.up.awaitHeld(t, n)
	rel := &releaser{hs: hs}
	defer rel.all()
	for i := n - 1; i >= 0; i-- {
		name := fmt.Sprintf("hold-%d.example.", i)
		close(hs[name].release)
		delete(hs, name)
		raw, err := readMsg(c, "tcp")
		if err != nil {
			t.Fatalf("reading answer %d: %v", i, err)
		}
		r := new(dns.Msg)
		if err := r.Unpack(raw); err != nil {
			t.Fatal(err)
		}
		if r.Id != ids[i] || len(r.Question) != 1 || r.Question[0].Name != name || len(r.Answer) != 1 {
			t.Fatalf("answer %v, want ID %d for %s", r, ids[i], name)
		}
	}
}

// TestTCPIdleTimeout checks that idle connections are closed after the idle
// timeout, including one stuck in the middle of a message, and that a
// connection waiting for an answer is not idle.
func TestTCPIdleTimeout(t *testing.T) {
	const idle = 150 * time.Millisecond
	ts := startServer(t, Options{TCPIdleTimeout: idle, QueryTimeout: 10 * time.Second})
	addr := ts.addr(t, "tcp", loopback4).String()

	for _, tc := range []struct {
		name string
		send []byte
	}{
		{"silent client", nil},
		{"half a length prefix", []byte{0}},
		{"half a message", []byte{0, 40, 1, 2, 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// Timed from before the dial: the server may accept, and start
			// its idle clock, before Dial returns here.
			start := time.Now()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if tc.send != nil {
				if _, err := c.Write(tc.send); err != nil {
					t.Fatal(err)
				}
			}
			_, err = readMsg(c, "tcp")
			if elapsed := time.Since(start); !errors.Is(err, io.EOF) || elapsed < idle || elapsed > idle+lateSlack {
				t.Fatalf("read returned %v after %v, want EOF after about %v", err, elapsed, idle)
			}
		})
	}

	// A slowloris client sends a byte now and then, each well within the
	// idle timeout: the timeout covers a whole message, not each read, so
	// it is cut off after about one idle period.
	t.Run("trickling client", func(t *testing.T) {
		t.Parallel()
		start := time.Now()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		stop := make(chan struct{})
		trickled := make(chan struct{})
		go func() {
			defer close(trickled)
			for range 40 { // 40 bytes of a 40-byte message: 40 × idle/3 in all
				if _, err := c.Write([]byte{0}); err != nil {
					return
				}
				select {
				case <-time.After(idle / 3): // the pace is what is under test
				case <-stop:
					return
				}
			}
		}()
		defer func() { close(stop); <-trickled }()
		if _, err := c.Write([]byte{0, 40}); err != nil {
			t.Fatal(err)
		}
		_, err = readMsg(c, "tcp")
		// A byte that lands after the server's last read makes its close a
		// reset rather than a FIN: either way, closed.
		closed := errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)
		if elapsed := time.Since(start); !closed || elapsed < idle || elapsed > idle+lateSlack {
			t.Fatalf("read returned %v after %v, want the connection closed after about %v", err, elapsed, idle)
		}
	})

	t.Run("query in flight", func(t *testing.T) {
		t.Parallel()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		q := newQuery("hold-idle.example.", dns.TypeA)
		if err := writeMsg(c, "tcp", packed(t, q)); err != nil {
			t.Fatal(err)
		}
		hs := ts.up.awaitHeld(t, 1)
		// Three idle periods pass with the query in flight: time itself is
		// the condition under test.
		time.Sleep(3 * idle)
		close(hs["hold-idle.example."].release)
		raw, err := readMsg(c, "tcp")
		if err != nil {
			t.Fatalf("connection dropped while a query was in flight: %v", err)
		}
		if r := new(dns.Msg); r.Unpack(raw) != nil || r.Id != q.Id {
			t.Fatalf("wrong answer %x", raw)
		}
		start := time.Now()
		if _, err := readMsg(c, "tcp"); !errors.Is(err, io.EOF) || time.Since(start) > idle+lateSlack {
			t.Fatalf("after the answer: %v after %v, want EOF after the idle timeout", err, time.Since(start))
		}
	})
}

// TestTCPConnectionLimit fills the connection limit, checks that one more is
// closed at once and counted, and that a freed slot is usable again.
func TestTCPConnectionLimit(t *testing.T) {
	ts := startServer(t, Options{TCPMaxConns: 2})
	addr := ts.addr(t, "tcp", loopback4)
	var open []net.Conn
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	for range 2 {
		c, err := net.Dial("tcp", addr.String())
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
		// An answer proves the server accepted and counts the connection.
		if err := writeMsg(c, "tcp", packed(t, newQuery("www.example.", dns.TypeA))); err != nil {
			t.Fatal(err)
		}
		if _, err := readMsg(c, "tcp"); err != nil {
			t.Fatal(err)
		}
	}
	if got := testutil.ToFloat64(ts.m.refused); got != 0 {
		t.Fatalf("refused %v before the limit", got)
	}
	refusedConn := func() {
		t.Helper()
		c, err := net.Dial("tcp", addr.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = writeMsg(c, "tcp", packed(t, newQuery("www.example.", dns.TypeA)))
		start := time.Now()
		_, err = readMsg(c, "tcp")
		if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("connection over the limit: read %v, want it closed", err)
		}
		// At once, that is well before the 10 s idle timeout.
		if time.Since(start) > lateSlack {
			t.Fatalf("connection over the limit closed after %v, want at once", time.Since(start))
		}
	}
	refusedConn()
	if got := testutil.ToFloat64(ts.m.refused); got != 1 {
		t.Fatalf("tcp_connections_refused_total = %v, want 1", got)
	}
	if got := ts.tcpOpen.Load(); got != 2 {
		t.Fatalf("tcp_connections_open = %d, want 2", got)
	}

	open[0].Close()
	open = open[1:]
	waitFor(t, "the closed connection to be released", func() bool { return ts.tcpOpen.Load() == 1 })
	r, _ := ask(t, "tcp", addr, newQuery("www.example.", dns.TypeA))
	if r.Rcode != dns.RcodeSuccess {
		t.Fatalf("after a slot freed: %v", r.MsgHdr)
	}
}

// TestTCPMaxInFlight checks that the server stops reading a connection that
// has TCPMaxInFlight queries in flight and resumes when one is answered.
func TestTCPMaxInFlight(t *testing.T) {
	ts := startServer(t, Options{TCPMaxInFlight: 2, QueryTimeout: 10 * time.Second})
	c, err := net.Dial("tcp", ts.addr(t, "tcp", loopback4).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 3 {
		if err := writeMsg(c, "tcp", packed(t, newQuery(fmt.Sprintf("hold-%d.example.", i), dns.TypeA))); err != nil {
			t.Fatal(err)
		}
	}
	first := ts.up.awaitHeld(t, 2)
	rel := &releaser{hs: first}
	defer rel.all()
	// Proving that something does not happen takes a wait.
	select {
	case h := <-ts.up.arrived:
		close(h.release)
		t.Fatalf("%s reached the upstream past the in-flight limit", h.name)
	case <-time.After(200 * time.Millisecond):
	}
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range first {
			if !yield(n) {
				return
			}
		}
	})
	if strings.Join(names, ",") != "hold-0.example.,hold-1.example." {
		t.Fatalf("first in flight: %v", names)
	}
	close(first["hold-0.example."].release)
	delete(first, "hold-0.example.")
	third := ts.up.awaitHeld(t, 1)
	close(third["hold-2.example."].release)
	rel.all()
	for range 3 {
		if _, err := readMsg(c, "tcp"); err != nil {
			t.Fatal(err)
		}
	}
}
