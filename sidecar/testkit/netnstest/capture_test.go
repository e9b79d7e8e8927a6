package netnstest

import (
	"net"
	"testing"
)

// TestCapture: what one end of a veth sends is in the capture, every
// packet of it, and a filter picks it out.
func TestCapture(t *testing.T) {
	t.Parallel()
	a, b := New(t), New(t)
	Veth(t, End{NS: a, Name: "eth0", Addrs: []string{"192.0.2.1/24"}}, End{NS: b, Name: "eth0", Addrs: []string{"192.0.2.2/24"}})
	c := StartCapture(t, a, "eth0", t.TempDir())
	a.Do(t, func() error {
		for _, addr := range []string{"192.0.2.2:53", "192.0.2.2:5353", "192.0.2.2:5353"} {
			conn, err := net.Dial("udp", addr)
			if err != nil {
				return err
			}
			_, err = conn.Write([]byte("datagram"))
			conn.Close()
			if err != nil {
				return err
			}
		}
		return nil
	})
	c.Stop(t)
	for filter, want := range map[string]int{"udp dst port 53": 1, "udp dst port 5353": 2, "tcp": 0} {
		if got := c.Packets(t, filter); len(got) != want {
			t.Errorf("%q: %d packets, want %d: %q", filter, len(got), want, got)
		}
	}
}
