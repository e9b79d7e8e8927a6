package testkit

import (
	"net"
	"os"
	"strings"
	"testing"
)

func TestCountTCPConns(t *testing.T) {
	// Port 853 is 0x0355. Rows: ours established to 853; ours in
	// CLOSE_WAIT (08) to 853; ours dialing 853 (02); another process's to
	// 853; ours to another port; ours listening on 853.
	table := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:9C40 0100007F:0355 01 00000000:00000000 00:00000000 00000000     0        0 111 1 0 20 4 30 10 -1
   1: 0100007F:9C41 0100007F:0355 08 00000000:00000000 00:00000000 00000000     0        0 112 1 0 20 4 30 10 -1
   2: 0100007F:9C44 0100007F:0355 02 00000000:00000000 00:00000000 00000000     0        0 115 1 0 20 4 30 10 -1
   3: 0100007F:9C42 0100007F:0355 01 00000000:00000000 00:00000000 00000000     0        0 999 1 0 20 4 30 10 -1
   4: 0100007F:9C43 0100007F:0035 01 00000000:00000000 00:00000000 00000000     0        0 113 1 0 20 4 30 10 -1
   5: 0100007F:0355 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 114 1 0 20 4 30 10 -1
`
	ours := map[string]bool{"111": true, "112": true, "113": true, "114": true, "115": true}
	held, est, err := CountTCPConns(strings.NewReader(table), 853, ours)
	if err != nil || held != 3 || est != 1 {
		t.Errorf("got held %d, established %d, %v; want 3 and 1", held, est, err)
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
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		a, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
	}
	held, est, err := TCPConns(os.Getpid(), port)
	if err != nil || held != 2 || est != 2 {
		t.Errorf("got held %d, established %d, %v; want 2 and 2", held, est, err)
	}
}
