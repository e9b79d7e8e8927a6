package netnstest

import (
	"bytes"
	"context"
	"net"
	"testing"
	"time"
)

// TestCapture: what one end of a veth sends is in the capture, every
// packet of it, and a filter picks it out.
func TestCapture(t *testing.T) {
	t.Parallel()
	a, b := New(t), New(t)
	Veth(t, End{NS: a, Name: "eth0", Addrs: []string{"192.0.2.1/24"}}, End{NS: b, Name: "eth0", Addrs: []string{"192.0.2.2/24"}})
	dir := t.TempDir()
	c := StartCapture(t, a, "eth0", dir)
	a.Do(t, func() error {
		for _, addr := range []string{"192.0.2.2:53", "192.0.2.2:5353", "192.0.2.2:5353"} {
			conn, err := net.Dial("udp", addr)
			if err != nil {
				return err
			}
			_, err = conn.Write([]byte("datagram to " + addr))
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
	// Raw has each packet from its IP header on: 20 bytes of IPv4, 8 of
	// UDP, then the payload.
	raw := c.Raw(t, "udp dst port 5353")
	if len(raw) != 2 {
		t.Fatalf("Raw: %d packets, want 2", len(raw))
	}
	for _, p := range raw {
		if len(p) < 28 || p[0]>>4 != 4 || !bytes.Equal(p[28:], []byte("datagram to 192.0.2.2:5353")) {
			t.Errorf("Raw packet %x, want IPv4 and UDP headers and the datagram", p)
		}
	}
	// A second capture of the same interface into the same directory keeps
	// the first one's file.
	second := StartCapture(t, a, "eth0", dir)
	second.Stop(t)
	if second.file == c.file {
		t.Errorf("two captures share %s", c.file)
	}
	if got := c.Packets(t, "udp"); len(got) != 3 {
		t.Errorf("the first capture has %d packets after a second one ran, want 3", len(got))
	}
}

func TestParseHex(t *testing.T) {
	out := "05:18:00.000001 IP 192.0.2.1.4000 > 192.0.2.2.53: UDP, length 2\n" +
		"\t0x0000:  4500 001e\n\t0x0004:  abcd\n" +
		"05:18:00.000002 IP 192.0.2.1.4000 > 192.0.2.2.53: UDP, length 1\n" +
		"\t0x0000:  45\n"
	got, err := parseHex(out)
	if err != nil || len(got) != 2 || !bytes.Equal(got[0], []byte{0x45, 0, 0, 0x1e, 0xab, 0xcd}) || !bytes.Equal(got[1], []byte{0x45}) {
		t.Errorf("parseHex = %x, %v", got, err)
	}
	if _, err := parseHex("\t0x0000:  zz\n"); err == nil {
		t.Error("parseHex accepted bytes before any packet")
	}
}

// TestParseCaptureStats: tcpdump says "packet" for a count of one.
func TestParseCaptureStats(t *testing.T) {
	out := "tcpdump: 1 packet captured, 8 packets received by filter, 0 packets dropped by kernel\n" +
		"1 packet captured\n1 packet received by filter\n0 packets dropped by kernel\n"
	st, err := parseCaptureStats(out, 2)
	if err != nil || st != (captureStats{captured: 1, received: 1}) {
		t.Errorf("parseCaptureStats = %+v, %v; want the last report, 1 of 1", st, err)
	}
	if _, err := parseCaptureStats(out, 3); err == nil {
		t.Error("two reports read as three")
	}
}

// TestCaptureStopWhilePacketsArrive: packets that keep arriving while Stop
// runs (as a fresh veth's neighbour discovery does) may be counted as
// received at exit without being read; that is not an incomplete capture
// of what was sent before Stop, and Stop must not fail for it.
func TestCaptureStopWhilePacketsArrive(t *testing.T) {
	t.Parallel()
	a, b := New(t), New(t)
	Veth(t, End{NS: a, Name: "eth0", Addrs: []string{"192.0.2.1/24"}}, End{NS: b, Name: "eth0", Addrs: []string{"192.0.2.2/24"}})
	c := StartCapture(t, a, "eth0", t.TempDir())
	conn, err := a.DialContext(context.Background(), "udp", "192.0.2.2:9")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("before Stop")); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	sent := make(chan int)
	go func() {
		n := 0
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				sent <- n
				return
			case <-tick.C:
				if _, err := conn.Write([]byte("during Stop")); err == nil {
					n++
				}
			}
		}
	}()
	c.Stop(t)
	close(done)
	if n := <-sent; n == 0 {
		t.Fatal("no packet was sent while Stop ran: the test shows nothing")
	}
	if got := c.Packets(t, "udp dst port 9"); len(got) == 0 {
		t.Error("the packet sent before Stop is missing from the capture")
	}
}
