package upstream

import (
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
)

// slotGauge is a DoT's connections-open gauge that notes, each time the
// pool frees a slot, whether the socket of the connection under watch is
// still open: whether its descriptor still names the same socket.
type slotGauge struct {
	prometheus.Gauge
	fd, socket string // /proc/self/fd/N and the link it had

	mu   sync.Mutex
	open []bool // at each Dec
}

// watch makes nc the connection under watch.
func (g *slotGauge) watch(t *testing.T, nc net.Conn) {
	t.Helper()
	rc, err := nc.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Control(func(fd uintptr) { g.fd = fmt.Sprintf("/proc/self/fd/%d", fd) }); err != nil {
		t.Fatal(err)
	}
	if g.socket, err = os.Readlink(g.fd); err != nil {
		t.Fatal(err)
	}
}

func (g *slotGauge) Dec() {
	link, err := os.Readlink(g.fd)
	g.mu.Lock()
	g.open = append(g.open, err == nil && link == g.socket)
	g.mu.Unlock()
	g.Gauge.Dec()
}

func (g *slotGauge) decs() []bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.open)
}

// A connection's pool slot is free only once its socket is closed, however
// it ends: freed before, a replacement could be dialed while the old socket
// is still open (sending its close_notify), one connection to the upstream
// more than the pool allows.
func TestSlotFreedAfterSocketClosed(t *testing.T) {
	for _, tt := range []struct {
		name string
		end  func(d *DoT, srv *dnstest.Server) error
	}{
		// Retired while idle: the polite close, by the writer.
		{"retired", func(d *DoT, _ *dnstest.Server) error { d.retireAll(); return nil }},
		// Closed by the upstream: the reader's hard close.
		{"closed by the upstream", func(_ *DoT, srv *dnstest.Server) error { return srv.Stop(dnstest.StopGraceful) }},
		{"reset by the upstream", func(_ *DoT, srv *dnstest.Server) error { return srv.Stop(dnstest.StopAbort) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := dnstest.New(t, dnstest.Options{})
			d := newTestDoT(t, srv, func(o *DoTOptions) { o.PoolSize = 1 })
			g := &slotGauge{Gauge: d.gauge}
			d.gauge = g // before the first dial: no goroutine reads it yet
			q := packQuery(t, "slot.example.", 1)
			if _, err := d.Exchange(ctxTimeout(t, 5*time.Second), q); err != nil {
				t.Fatal(err)
			}
			g.watch(t, d.activeConns()[0].tc.NetConn())
			if err := tt.end(d, srv); err != nil {
				t.Fatal(err)
			}
			eventually(t, 5*time.Second, "the slot freed", func() bool { return len(g.decs()) > 0 })
			if open := g.decs(); len(open) != 1 || open[0] || d.openConns() != 0 {
				t.Errorf("the socket open as each slot was freed: %v, want [false]; %d slots taken", open, d.openConns())
			}
		})
	}
}

// The same of DoH's pool: its writer sends GOAWAY and close_notify before
// it closes the socket.
func TestDoHSlotFreedAfterSocketClosed(t *testing.T) {
	for _, tt := range []struct {
		name string
		end  func(d *DoH, srv *dnstest.Server) error
	}{
		{"retired", func(d *DoH, _ *dnstest.Server) error { d.retireAll(); return nil }},
		{"closed by the upstream", func(_ *DoH, srv *dnstest.Server) error { return srv.Close() }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv, d := newTestDoH(t, dnstest.Options{}, func(o *DoHOptions) { o.PoolSize = 1 })
			g := &slotGauge{Gauge: d.gauge}
			d.gauge = g // before the first dial: no goroutine reads it yet
			q := packQuery(t, "slot.example.", 1)
			if _, err := d.Exchange(ctxTimeout(t, 5*time.Second), q); err != nil {
				t.Fatal(err)
			}
			g.watch(t, d.activeConns()[0].h2.tc.NetConn())
			if err := tt.end(d, srv); err != nil {
				t.Fatal(err)
			}
			eventually(t, 5*time.Second, "the slot freed", func() bool { return len(g.decs()) > 0 })
			if open := g.decs(); len(open) != 1 || open[0] || d.openConns() != 0 {
				t.Errorf("the socket open as each slot was freed: %v, want [false]; %d slots taken", open, d.openConns())
			}
		})
	}
}
