package testkit

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// TCPConns counts the TCP sockets process pid holds, among its file
// descriptors, whose remote port is port (Linux only), as the kernel lists
// them in /proc/net/tcp and /proc/net/tcp6: held counts them in any state
// (being dialed, established, closed by the peer and not yet by pid), which
// is what a pool's size bounds; established counts the ESTABLISHED ones.
// A socket is counted only if it was open both when the tables were read
// and when the descriptors were listed after them, so that a count is never
// more than pid held at one time.
func TCPConns(pid, port int) (held, established int, err error) {
	var tables [][]byte
	for _, name := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(name)
		if err != nil {
			if os.IsNotExist(err) {
				continue
			}
			return 0, 0, err
		}
		tables = append(tables, b)
	}
	inodes, err := socketInodes(pid)
	if err != nil {
		return 0, 0, err
	}
	for _, b := range tables {
		h, e, err := CountTCPConns(strings.NewReader(string(b)), port, inodes)
		if err != nil {
			return 0, 0, err
		}
		held, established = held+h, established+e
	}
	return held, established, nil
}

// socketInodes returns the inodes of the sockets among pid's descriptors.
func socketInodes(pid int) (map[string]bool, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	inodes := make(map[string]bool, len(ents))
	for _, e := range ents {
		link, err := os.Readlink(dir + "/" + e.Name())
		if err != nil {
			continue // closed since ReadDir
		}
		if ino, ok := strings.CutPrefix(link, "socket:["); ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	return inodes, nil
}

// CountTCPConns reads a /proc/net/tcp table ("sl local_address rem_address
// st ... inode", addresses as HEX_IP:HEX_PORT, state 01 ESTABLISHED) and
// counts the sockets among inodes whose remote port is port: held in any
// state but listening, established those ESTABLISHED.
func CountTCPConns(r io.Reader, port int, inodes map[string]bool) (held, established int, err error) {
	want := fmt.Sprintf(":%04X", port)
	sc := bufio.NewScanner(r)
	for first := true; sc.Scan(); first = false {
		if first { // header
			continue
		}
		f := strings.Fields(sc.Text())
		if len(f) < 10 || f[3] == "0A" || !strings.HasSuffix(f[2], want) || !inodes[f[9]] {
			continue
		}
		held++
		if f[3] == "01" {
			established++
		}
	}
	if err := sc.Err(); err != nil {
		return 0, 0, fmt.Errorf("reading a /proc/net/tcp table: %w", err)
	}
	return held, established, nil
}
