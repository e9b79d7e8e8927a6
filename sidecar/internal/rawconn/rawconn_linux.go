package rawconn

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Conn is a *net.TCPConn with two changes, both for the cost of a relayed
// query: raw system calls for reads and writes (see the package comment),
// and optionally quick ACKs.
//
// Quick ACKs (when asked for: the upstream side). An upstream that writes
// answers with Nagle's algorithm on (Unbound 1.17 does on its TLS port)
// holds each answer while its previous one is unacknowledged. Once both
// ends pipeline, Linux treats our side as interactive and delays its ACKs,
// hoping to carry them on our next query, so every answer waits for the
// next query (one query interval of latency at any rate: 1 ms at 1,000
// queries/s) or for the delayed-ACK timer (40 ms) when queries pause. Every
// read that returns data therefore re-arms TCP_QUICKACK, which Linux clears
// on its own, so the answer is acknowledged at once. The read usually
// drains several answers under load.
type Conn struct {
	*net.TCPConn
	rc       syscall.RawConn
	quickAck bool

	// tls.Conn never reads concurrently with itself, nor writes; these
	// fields are the one call in progress of each kind.
	rb     []byte
	rn     int
	rerrno syscall.Errno
	readFn func(fd uintptr) bool

	wb      []byte
	wn      int
	werrno  syscall.Errno
	writeFn func(fd uintptr) bool
}

// Wrap returns c as a Conn when it is a TCP connection, and c itself
// otherwise. quickAck re-arms TCP_QUICKACK after every read that returns
// data.
func Wrap(c net.Conn, quickAck bool) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	s := &Conn{TCPConn: tc, rc: rc, quickAck: quickAck}
	s.readFn, s.writeFn = s.read, s.write
	return s
}

func (c *Conn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	c.rb, c.rn, c.rerrno = b, 0, 0
	err := c.rc.Read(c.readFn)
	n, errno := c.rn, c.rerrno
	c.rb = nil
	switch {
	case err != nil: // deadline, or closed
		return 0, c.opError("read", err)
	case errno != 0:
		return 0, c.opError("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// read is the RawConn callback: false means "wait until readable".
func (c *Conn) read(fd uintptr) bool {
	n, e, ready := rawCall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&c.rb[0])), uintptr(len(c.rb)), 0, 0)
	switch {
	case !ready:
		return false
	case e != 0:
		c.rerrno = e
	default:
		c.rn = int(n)
		if n > 0 && c.quickAck {
			one := int32(1)
			// Failure only loses the quick ACK.
			_, _, _ = rawCall(unix.SYS_SETSOCKOPT, fd, unix.IPPROTO_TCP, unix.TCP_QUICKACK,
				uintptr(unsafe.Pointer(&one)), unsafe.Sizeof(one))
		}
	}
	return true
}

func (c *Conn) Write(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	c.wb, c.wn, c.werrno = b, 0, 0
	err := c.rc.Write(c.writeFn)
	n, errno := c.wn, c.werrno
	c.wb = nil
	switch {
	case err != nil:
		return n, c.opError("write", err)
	case errno != 0:
		return n, c.opError("write", os.NewSyscallError("write", errno))
	}
	return n, nil
}

// write is the RawConn callback: it writes all of wb, waiting for the socket
// to be writable as often as it takes. MSG_NOSIGNAL: a peer that has gone
// gives EPIPE, not a signal.
func (c *Conn) write(fd uintptr) bool {
	for c.wn < len(c.wb) {
		p := c.wb[c.wn:]
		n, e, ready := rawCall(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), unix.MSG_NOSIGNAL, 0)
		switch {
		case !ready:
			return false
		case e != 0:
			c.werrno = e
			return true
		}
		c.wn += int(n)
	}
	return true
}

// opError dresses err as net.Conn methods do, so that errors.As finds a
// net.Error (deadlines are timeouts) and errors.Is finds the errno.
func (c *Conn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
