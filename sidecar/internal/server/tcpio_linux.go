package server

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawTCP reads and writes a client's TCP connection with raw system calls
// through syscall.RawConn, for the reason udpio_linux.go gives: the socket
// is non-blocking, the netpoller still does the waiting and the deadlines
// (set on the *net.TCPConn as before), and the Go scheduler is spared its
// per-call bookkeeping. One reader and one writer (under wmu) at a time;
// each has its own fields.
type rawTCP struct {
	nc *net.TCPConn
	rc syscall.RawConn

	rb     []byte
	rn     int
	rerrno syscall.Errno
	readFn func(fd uintptr) bool

	wb      []byte
	wn      int
	werrno  syscall.Errno
	writeFn func(fd uintptr) bool
}

// clientIO returns how the server reads and writes nc.
func clientIO(nc *net.TCPConn) io.ReadWriter {
	rc, err := nc.SyscallConn()
	if err != nil {
		return nc
	}
	r := &rawTCP{nc: nc, rc: rc}
	r.readFn, r.writeFn = r.read, r.write
	return r
}

func (r *rawTCP) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	r.rb, r.rn, r.rerrno = b, 0, 0
	err := r.rc.Read(r.readFn)
	n, errno := r.rn, r.rerrno
	r.rb = nil
	switch {
	case err != nil: // deadline, or closed
		return 0, r.opError("read", err)
	case errno != 0:
		return 0, r.opError("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

func (r *rawTCP) read(fd uintptr) bool {
	for {
		n, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&r.rb[0])), uintptr(len(r.rb)))
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		case 0:
			r.rn = int(n)
		default:
			r.rerrno = e
		}
		return true
	}
}

func (r *rawTCP) Write(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	r.wb, r.wn, r.werrno = b, 0, 0
	err := r.rc.Write(r.writeFn)
	n, errno := r.wn, r.werrno
	r.wb = nil
	switch {
	case err != nil:
		return n, r.opError("write", err)
	case errno != 0:
		return n, r.opError("write", os.NewSyscallError("write", errno))
	}
	return n, nil
}

// write writes all of wb, waiting for the socket to be writable as often
// as it takes; MSG_NOSIGNAL turns a gone client into EPIPE, not a signal.
func (r *rawTCP) write(fd uintptr) bool {
	for r.wn < len(r.wb) {
		p := r.wb[r.wn:]
		n, _, e := unix.RawSyscall6(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), unix.MSG_NOSIGNAL, 0, 0)
		switch e {
		case 0:
			r.wn += int(n)
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			r.werrno = e
			return true
		}
	}
	return true
}

func (r *rawTCP) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: r.nc.LocalAddr(), Addr: r.nc.RemoteAddr(), Err: err}
}
