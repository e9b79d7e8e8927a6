package server

import (
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mmsgIO reads and writes batches with recvmmsg(2) and sendmmsg(2).
//
// The calls go through syscall.RawConn, whose readiness waiting and
// deadlines are the netpoller's, but are made with RawSyscall: the socket is
// non-blocking, so they never wait, and a regular system call costs a relay
// more in the Go scheduler's bookkeeping than the call itself (see rawconn.Conn
// in package upstream: the monitor thread polling every 20 us, P hand-offs).
type mmsgIO struct {
	rc    syscall.RawConn
	hdrs  []mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6 // room for either family

	// The call in progress, for the callback.
	op    uintptr
	n     int
	errno syscall.Errno
	fn    func(fd uintptr) bool
}

// mmsghdr is struct mmsghdr; Go pads it to the C size on every platform.
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
}

func newBatchIO(c *net.UDPConn) batchIO {
	rc, err := c.SyscallConn()
	if err != nil {
		return errIO{err}
	}
	m := &mmsgIO{
		rc:    rc,
		hdrs:  make([]mmsghdr, udpBatch),
		iovs:  make([]unix.Iovec, udpBatch),
		names: make([]unix.RawSockaddrInet6, udpBatch),
	}
	m.fn = m.call
	return m
}

// call is the RawConn callback: false means "wait until ready".
func (m *mmsgIO) call(fd uintptr) bool {
	for {
		r, _, e := unix.RawSyscall6(m.op, fd, uintptr(unsafe.Pointer(&m.hdrs[0])), uintptr(m.n), 0, 0, 0)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		m.n, m.errno = int(r), e
		return true
	}
}

// prepare points the first len(ms) headers at ms's buffers.
func (m *mmsgIO) prepare(ms []udpMsg) {
	for i := range ms {
		h, v, b := &m.hdrs[i], &m.iovs[i], ms[i].buf
		*h, *v = mmsghdr{}, unix.Iovec{}
		if len(b) > 0 {
			v.Base = &b[0]
		}
		v.SetLen(len(b))
		h.hdr.Iov = v
		h.hdr.SetIovlen(1)
		if len(ms[i].oob) > 0 {
			h.hdr.Control = &ms[i].oob[0]
			h.hdr.SetControllen(len(ms[i].oob))
		}
		h.hdr.Name = (*byte)(unsafe.Pointer(&m.names[i]))
		h.hdr.Namelen = uint32(unsafe.Sizeof(m.names[i]))
	}
}

func (m *mmsgIO) do(op uintptr, ms []udpMsg) (int, error) {
	m.op, m.n, m.errno = op, len(ms), 0
	var err error
	if op == unix.SYS_RECVMMSG {
		err = m.rc.Read(m.fn)
	} else {
		err = m.rc.Write(m.fn)
	}
	if err != nil {
		return 0, err
	}
	if m.errno != 0 {
		name := "sendmmsg"
		if op == unix.SYS_RECVMMSG {
			name = "recvmmsg"
		}
		return 0, os.NewSyscallError(name, m.errno)
	}
	return m.n, nil
}

func (m *mmsgIO) readBatch(ms []udpMsg) (int, error) {
	ms = ms[:min(len(ms), len(m.hdrs))]
	m.prepare(ms)
	n, err := m.do(unix.SYS_RECVMMSG, ms)
	for i := range n {
		h := &m.hdrs[i]
		ms[i].n, ms[i].oobn = int(h.len), int(h.hdr.Controllen)
		ms[i].addr = sockaddrAddrPort(&m.names[i])
	}
	return n, err
}

func (m *mmsgIO) writeBatch(ms []udpMsg) (int, error) {
	ms = ms[:min(len(ms), len(m.hdrs))]
	m.prepare(ms)
	for i := range ms {
		m.hdrs[i].hdr.Namelen = putSockaddr(&m.names[i], ms[i].addr)
	}
	return m.do(unix.SYS_SENDMMSG, ms)
}

func sockaddrAddrPort(sa *unix.RawSockaddrInet6) netip.AddrPort {
	switch sa.Family {
	case unix.AF_INET:
		s4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(s4.Addr), portOf(&s4.Port))
	case unix.AF_INET6:
		a := netip.AddrFrom16(sa.Addr)
		if sa.Scope_id != 0 {
			// A link-local client; the numeric zone goes back as the scope.
			a = a.WithZone(strconv.FormatUint(uint64(sa.Scope_id), 10))
		}
		return netip.AddrPortFrom(a, portOf(&sa.Port))
	}
	return netip.AddrPort{}
}

// putSockaddr writes ap as the sockaddr of its family and returns its size.
func putSockaddr(sa *unix.RawSockaddrInet6, ap netip.AddrPort) uint32 {
	a := ap.Addr()
	if a.Is4() {
		s4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		*s4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: a.As4()}
		setPort(&s4.Port, ap.Port())
		return unix.SizeofSockaddrInet4
	}
	*sa = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: a.As16(), Scope_id: zoneIndex(a.Zone())}
	setPort(&sa.Port, ap.Port())
	return unix.SizeofSockaddrInet6
}

func zoneIndex(zone string) uint32 {
	if zone == "" {
		return 0
	}
	if n, err := strconv.ParseUint(zone, 10, 32); err == nil {
		return uint32(n)
	}
	if ifi, err := net.InterfaceByName(zone); err == nil {
		return uint32(ifi.Index)
	}
	return 0
}

// Ports in sockaddrs are in network byte order.
func portOf(p *uint16) uint16 { return binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(p))[:]) }

func setPort(p *uint16, port uint16) {
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(p))[:], port)
}

// errIO fails every call: a socket without a RawConn, which cannot happen
// for a *net.UDPConn.
type errIO struct{ err error }

func (e errIO) readBatch([]udpMsg) (int, error)  { return 0, e.err }
func (e errIO) writeBatch([]udpMsg) (int, error) { return 0, e.err }
