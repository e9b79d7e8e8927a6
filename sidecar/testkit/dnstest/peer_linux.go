package dnstest

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// peerHolds reports whether the client may still hold c open, as the
// kernel knows it at once: a FIN or a reset from the client moves the
// socket out of ESTABLISHED (or, if this side closed first, out of
// FIN_WAIT) as it arrives, before this server's goroutines have run to see
// it. A socket it cannot ask about counts as held, unless this side has
// closed it: its end is then being handled.
func peerHolds(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	held := true
	if err := rc.Control(func(fd uintptr) {
		info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			return
		}
		switch info.State {
		case unix.BPF_TCP_CLOSE_WAIT, unix.BPF_TCP_LAST_ACK, unix.BPF_TCP_CLOSING,
			unix.BPF_TCP_TIME_WAIT, unix.BPF_TCP_CLOSE:
			held = false
		}
	}); err != nil {
		return false // closed by this side
	}
	return held
}
