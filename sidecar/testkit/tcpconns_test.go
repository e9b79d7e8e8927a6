package testkit

import (
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
)

func TestConnsTo(t *testing.T) {
	// Port 853 is 0x0355. Rows: ours established to 853; ours in
	// CLOSE_WAIT (08) to 853; ours dialing 853 (02); another process's to
	// 853; ours to another port; ours listening on 853; ours listening on
	// 53 (0x35); ours accepted on 53 from a client whose ephemeral port
	// is 853; an IPv6 one of ours established to 853; the first row again,
	// as a walk of the table resumed at a shifted offset lists it.
	table := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:9C40 0100007F:0355 01 00000000:00000000 00:00000000 00000000     0        0 111 1 0 20 4 30 10 -1
   1: 0100007F:9C41 0100007F:0355 08 00000000:00000000 00:00000000 00000000     0        0 112 1 0 20 4 30 10 -1
   2: 0100007F:9C44 0100007F:0355 02 00000000:00000000 00:00000000 00000000     0        0 115 1 0 20 4 30 10 -1
   3: 0100007F:9C42 0100007F:0355 01 00000000:00000000 00:00000000 00000000     0        0 999 1 0 20 4 30 10 -1
   4: 0100007F:9C43 0100007F:0035 01 00000000:00000000 00:00000000 00000000     0        0 113 1 0 20 4 30 10 -1
   5: 0100007F:0355 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 114 1 0 20 4 30 10 -1
   6: 0100007F:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 116 1 0 20 4 30 10 -1
   7: 0100007F:0035 0100007F:0355 01 00000000:00000000 00:00000000 00000000     0        0 117 1 0 20 4 30 10 -1
   8: 0100007F:9C40 0100007F:0355 01 00000000:00000000 00:00000000 00000000     0        0 111 1 0 20 4 30 10 -1
`
	table6 := `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:9C45 00000000000000000000000001000000:0355 01 00000000:00000000 00:00000000 00000000     0        0 118 1 0 20 4 30 10 -1
`
	rows, err := ParseTCPTable(strings.NewReader(table))
	if err != nil {
		t.Fatal(err)
	}
	rows6, err := ParseTCPTable(strings.NewReader(table6))
	if err != nil {
		t.Fatal(err)
	}
	ours := map[string]bool{"111": true, "112": true, "113": true, "114": true, "115": true, "116": true, "117": true, "118": true}
	got := ConnsTo(append(rows, rows6...), 853, ours)
	var inodes []string
	for _, s := range got {
		inodes = append(inodes, s.Inode)
	}
	if strings.Join(inodes, " ") != "111 112 115 118" {
		t.Errorf("got %v, want inodes 111 112 115 118", got)
	}
	if want := netip.MustParseAddrPort("127.0.0.1:40000"); got[0].Local != want {
		t.Errorf("first local address %v, want %v", got[0].Local, want)
	}
	if want := netip.MustParseAddrPort("[::1]:853"); got[3].Remote != want {
		t.Errorf("IPv6 remote address %v, want %v", got[3].Remote, want)
	}
}

func TestParseTCPTableErrors(t *testing.T) {
	for _, row := range []string{
		"0: 0100007F 0100007F:0355 01 0 0 0 0 0 111",
		"0: 0100007F:9C40 01007F:0355 01 0 0 0 0 0 111",
		"0: 0100007F:9C40 0100007F:FFFFF 01 0 0 0 0 0 111",
	} {
		if _, err := ParseTCPTable(strings.NewReader("header\n" + row + "\n")); err == nil {
			t.Errorf("ParseTCPTable accepted %q", row)
		}
	}
}

// TCPConns counts this process's own connections to a port, and not the
// ones the listener accepted from them.
func TestTCPConnsOfSelf(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	for range 2 {
		connectTo(t, &net.Dialer{}, ln)
	}
	held, est, err := TCPConns(os.Getpid(), port)
	if err != nil || held != 2 || est != 2 {
		t.Errorf("got held %d, established %d, %v; want 2 and 2", held, est, err)
	}
}

// A client that took the counted port as its own ephemeral port, connected
// to a listener of this process, is not a connection this process made to
// that port.
func TestTCPConnsSkipsAcceptedFromThePort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// A port nothing listens on, taken by the client as its local port.
	spare, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := spare.Addr().(*net.TCPAddr).Port
	spare.Close()
	connectTo(t, &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}}, ln)
	socks, err := TCPSockets(os.Getpid(), port)
	if err != nil {
		t.Fatal(err)
	}
	if len(socks) != 0 {
		t.Errorf("TCPSockets(%d) = %v, want none: the accepted connection's remote port is a client's", port, socks)
	}
}

// connectTo dials ln with d and accepts the connection; both ends close
// when the test ends.
func connectTo(t *testing.T, d *net.Dialer, ln net.Listener) {
	t.Helper()
	c, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	a, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
}
