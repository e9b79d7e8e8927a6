package admin

import (
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// At the limit, a new connection closes the oldest one that is not being
// answered; with every one being answered, the new one is closed.
func TestLimitListener(t *testing.T) {
	ln, l, evicted := newTestListener(t, 3)

	dial := func() net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	accept := func() *trackedConn {
		t.Helper()
		c, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		return c.(*trackedConn)
	}
	closed := closedByServer

	var clients []net.Conn
	var server []*trackedConn
	for range 3 {
		clients = append(clients, dial())
		server = append(server, accept())
	}
	server[0].busy.Store(true) // being answered: not to be closed

	clients = append(clients, dial())
	server = append(server, accept())
	if !closed(clients[1]) || evicted.Load() != 1 {
		t.Fatalf("the oldest idle connection was not closed for the new one (evicted %d)", evicted.Load())
	}
	if n := len(l.conns); n != 3 {
		t.Fatalf("%d connections tracked, want 3", n)
	}

	for _, c := range server[2:] {
		c.busy.Store(true)
	}
	// Every connection busy: the next one is closed at once, and Accept
	// waits for one it can keep.
	refused := dial()
	accepted := make(chan *trackedConn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			accepted <- c.(*trackedConn)
		}
		close(accepted)
	}()
	if !closed(refused) {
		t.Fatal("a connection past the limit, with every one busy, was kept")
	}
	server[0].busy.Store(false)
	dial()
	if c, ok := <-accepted; !ok || c == nil {
		t.Fatal("no connection accepted once one was idle")
	}
	if !closed(clients[0]) {
		t.Fatal("the connection no longer busy was not closed for the new one")
	}
	if got := evicted.Load(); got != 3 {
		t.Fatalf("evicted %d, want 3", got)
	}
}

// The connection closed for a new one is the oldest idle one of the
// address holding the most: a flood from one address does not close the
// connection of another (the kubelet's probe) even when that one is older.
func TestLimitListenerEvictsFromTheBusiestAddress(t *testing.T) {
	ln, l, evicted := newTestListener(t, 3)
	dialFrom := func(ip string) net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		c, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		if _, err := l.Accept(); err != nil {
			t.Fatal(err)
		}
		return c
	}
	probe := dialFrom("127.0.0.1") // the oldest
	flood := []net.Conn{dialFrom("127.0.0.2"), dialFrom("127.0.0.2")}
	dialFrom("127.0.0.2")
	if evicted.Load() != 1 || !closedByServer(flood[0]) {
		t.Fatalf("evicted %d; want the flood's oldest connection closed", evicted.Load())
	}
	if closedByServer(probe) {
		t.Fatal("the other address's connection was closed for the flood's")
	}
}

// newTestListener returns a loopback listener and the limitListener of max
// connections over it, closed at the end of the test, with the count of
// connections it closed to make room.
func newTestListener(t *testing.T, max int) (net.Listener, *limitListener, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	evicted := new(atomic.Int64)
	l := newLimitListener(ln, max, func() { evicted.Add(1) })
	t.Cleanup(func() { _ = l.Close() })
	return ln, l, evicted
}

// closedByServer reports whether the server side of client c was closed,
// waiting up to a second for it.
func closedByServer(c net.Conn) bool {
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	_, err := c.Read(make([]byte, 1))
	return err != nil && !isTimeout(err)
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
