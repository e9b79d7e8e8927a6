package testkit

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// TCPSocket is one row of /proc/net/tcp or /proc/net/tcp6.
type TCPSocket struct {
	Local, Remote netip.AddrPort
	State         string // the kernel's hex code: 01 ESTABLISHED, 02 SYN_SENT, 0A LISTEN, ...
	Inode         string
}

func (s TCPSocket) String() string {
	return fmt.Sprintf("%s->%s st %s", s.Local, s.Remote, s.State)
}

// TCPConns counts the TCP connections process pid holds, among its file
// descriptors, to remote port port (Linux only), as the kernel lists them
// in /proc/net/tcp and /proc/net/tcp6: held counts them in any state
// (being dialed, established, closed by the peer and not yet by pid), which
// is what a pool's size bounds; established counts the ESTABLISHED ones.
// A socket is counted only if it was open both when the tables were read
// and when the descriptors were listed after them, so that a count is never
// more than pid held at one time.
func TCPConns(pid, port int) (held, established int, err error) {
	socks, err := TCPSockets(pid, port)
	for _, s := range socks {
		if s.State == "01" {
			established++
		}
	}
	return len(socks), established, err
}

// TCPSockets returns the connections TCPConns counts as held.
func TCPSockets(pid, port int) ([]TCPSocket, error) {
	var rows []TCPSocket
	for _, name := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(name)
		if err != nil {
			if os.IsNotExist(err) {
				continue
			}
			return nil, err
		}
		r, err := ParseTCPTable(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		rows = append(rows, r...)
	}
	inodes, err := socketInodes(pid)
	if err != nil {
		return nil, err
	}
	return ConnsTo(rows, port, inodes), nil
}

// ConnsTo picks out of rows the connections among inodes (a process's
// sockets) to remote port port, in any state but listening, each once.
// A table read in more than one read(2), as a busy machine's is, may list
// a socket twice: the kernel resumes its walk of a hash bucket at an offset
// that sockets closed or opened meanwhile have shifted. A connection
// whose local port is one the process listens on was accepted, not made: its
// remote port is a client's ephemeral port, which may be port when port is
// in the ephemeral range and nothing listens on it for a while (an upstream
// being restarted).
func ConnsTo(rows []TCPSocket, port int, inodes map[string]bool) []TCPSocket {
	listening := map[uint16]bool{}
	for _, s := range rows {
		if s.State == "0A" && inodes[s.Inode] {
			listening[s.Local.Port()] = true
		}
	}
	var out []TCPSocket
	seen := map[string]bool{}
	for _, s := range rows {
		if s.State == "0A" || int(s.Remote.Port()) != port || !inodes[s.Inode] || listening[s.Local.Port()] || seen[s.Inode] {
			continue
		}
		seen[s.Inode] = true
		out = append(out, s)
	}
	return out
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

// ParseTCPTable reads a /proc/net/tcp or tcp6 table ("sl local_address
// rem_address st ... inode", addresses as HEX_IP:HEX_PORT, the IP in the
// kernel's byte order, 32-bit words in host order).
func ParseTCPTable(r io.Reader) ([]TCPSocket, error) {
	var rows []TCPSocket
	sc := bufio.NewScanner(r)
	for first := true; sc.Scan(); first = false {
		if first { // header
			continue
		}
		f := strings.Fields(sc.Text())
		if len(f) < 10 {
			continue
		}
		local, err := parseProcAddr(f[1])
		if err != nil {
			return nil, fmt.Errorf("row %q: %w", sc.Text(), err)
		}
		remote, err := parseProcAddr(f[2])
		if err != nil {
			return nil, fmt.Errorf("row %q: %w", sc.Text(), err)
		}
		rows = append(rows, TCPSocket{Local: local, Remote: remote, State: f[3], Inode: f[9]})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading a /proc/net/tcp table: %w", err)
	}
	return rows, nil
}

// parseProcAddr reads "0100007F:0035": the address as the kernel stores it,
// each 32-bit word in the host's (little-endian, on every machine this
// runs on) order, then the port in hex.
func parseProcAddr(s string) (netip.AddrPort, error) {
	h, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("address %q", s)
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("port of %q: %w", s, err)
	}
	b, err := hex.DecodeString(h)
	if err != nil || (len(b) != 4 && len(b) != 16) {
		return netip.AddrPort{}, fmt.Errorf("address %q", s)
	}
	for i := 0; i < len(b); i += 4 {
		b[i], b[i+1], b[i+2], b[i+3] = b[i+3], b[i+2], b[i+1], b[i]
	}
	addr, _ := netip.AddrFromSlice(b)
	return netip.AddrPortFrom(addr, uint16(port)), nil
}
