package upstream

import (
	"net"
	"syscall"
)

// quickAck wraps a TCP connection to the upstream so that every read that
// returns data acknowledges it at once (TCP_QUICKACK), instead of leaving the
// ACK to ride on our next query or to Linux's delayed-ACK timer (40 ms).
//
// Why: an upstream that writes answers without TCP_NODELAY (Unbound 1.17 on
// its TLS port does) holds each answer under Nagle's algorithm while its
// previous one is unacknowledged. Once both ends pipeline, Linux treats our
// side as interactive and delays its ACKs, so every answer waits for the next
// query to carry the ACK: one query interval of added latency at any rate
// (1 ms at 1,000 queries/s), and the full delayed-ACK timeout (40 ms) when
// the queries pause. Linux leaves quick-ACK mode again on its own, hence the
// re-arming after each read; the setsockopt costs one syscall per read, and
// a read usually drains several answers under load.
func quickAck(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	q := &quickAckConn{TCPConn: tc, rc: rc}
	q.arm = func(fd uintptr) {
		// Failure only loses the optimisation.
		_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK, 1)
	}
	return q
}

type quickAckConn struct {
	*net.TCPConn
	rc  syscall.RawConn
	arm func(fd uintptr) // kept to avoid a closure allocation per read
}

func (c *quickAckConn) Read(b []byte) (int, error) {
	n, err := c.TCPConn.Read(b)
	if n > 0 {
		_ = c.rc.Control(c.arm)
	}
	return n, err
}
