package rawconn

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// rawCall makes one system call on the non-blocking socket fd, again after
// EINTR. ready is false for EAGAIN: a syscall.RawConn callback then returns
// false, and the netpoller waits for the socket and calls back.
func rawCall(trap, fd, a1, a2, a3, a4 uintptr) (r uintptr, errno syscall.Errno, ready bool) {
	for {
		r, _, e := unix.RawSyscall6(trap, fd, a1, a2, a3, a4, 0)
		if e != unix.EINTR {
			return r, e, e != unix.EAGAIN
		}
	}
}
