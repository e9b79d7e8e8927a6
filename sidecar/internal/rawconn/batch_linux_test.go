package rawconn

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
)

// A Batch carries several datagrams each way in one call, with their
// senders and destinations, over IPv4 and IPv6, and keeps deadlines.
func TestBatchRoundTrip(t *testing.T) {
	for _, ip := range []string{"127.0.0.1", "::1"} {
		t.Run(ip, func(t *testing.T) {
			srv, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(ip)})
			if err != nil {
				testkit.Missing(t, fmt.Sprintf("no %s on this host: %v", ip, err))
			}
			defer srv.Close()
			const clients = 3
			var cls [clients]*net.UDPConn
			for i := range cls {
				if cls[i], err = net.DialUDP("udp", nil, srv.LocalAddr().(*net.UDPAddr)); err != nil {
					t.Fatal(err)
				}
				defer cls[i].Close()
				if _, err := cls[i].Write(fmt.Appendf(nil, "query %d", i)); err != nil {
					t.Fatal(err)
				}
			}
			b := NewBatch(srv, 8)
			ms := make([]Msg, 8)
			for i := range ms {
				ms[i].Buf = make([]byte, 512)
			}
			_ = srv.SetReadDeadline(time.Now().Add(5 * time.Second))
			got := map[netip.AddrPort]string{}
			for len(got) < clients {
				n, err := b.Read(ms)
				if err != nil {
					t.Fatal(err)
				}
				for _, m := range ms[:n] {
					got[m.Addr] = string(m.Buf[:m.N])
				}
			}
			var out []Msg
			for i, c := range cls {
				from := c.LocalAddr().(*net.UDPAddr).AddrPort()
				if want := fmt.Sprintf("query %d", i); got[from] != want {
					t.Errorf("from %v: read %q, want %q", from, got[from], want)
				}
				out = append(out, Msg{Buf: fmt.Appendf(nil, "answer %d", i), Addr: from})
			}
			if n, err := b.Write(out); n != clients || err != nil {
				t.Fatalf("Write = %d, %v; want %d, nil", n, err, clients)
			}
			for i, c := range cls {
				buf := make([]byte, 512)
				_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, err := c.Read(buf)
				if want := fmt.Sprintf("answer %d", i); err != nil || string(buf[:n]) != want {
					t.Errorf("client %d read %q, %v; want %q", i, buf[:n], err, want)
				}
			}

			_ = srv.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			var ne net.Error
			if _, err := b.Read(ms); !errors.As(err, &ne) || !ne.Timeout() {
				t.Errorf("Read after the deadline = %v; want a timeout", err)
			}
		})
	}
}
