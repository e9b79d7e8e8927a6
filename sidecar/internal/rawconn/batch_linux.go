package rawconn

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

// Batch reads and writes datagrams on one UDP socket, several per system
// call: recvmmsg(2) and sendmmsg(2), raw (see the package comment). A read
// returns what is queued, at least one datagram, and never waits for more;
// a write sends what it is given. Not safe for concurrent use: each reader
// and the writer of a socket have their own.
type Batch struct {
	rc    syscall.RawConn
	err   error // the socket has no RawConn: every call fails with it
	hdrs  []mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6 // room for either family

	// The call in progress, for the callback.
	trap  uintptr
	n     int
	errno syscall.Errno
	fn    func(fd uintptr) bool
}

// mmsghdr is struct mmsghdr; Go pads it to the C size on every platform.
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
}

// NewBatch returns a Batch of up to size datagrams per call on c.
func NewBatch(c *net.UDPConn, size int) *Batch {
	b := &Batch{
		hdrs:  make([]mmsghdr, size),
		iovs:  make([]unix.Iovec, size),
		names: make([]unix.RawSockaddrInet6, size),
	}
	b.rc, b.err = c.SyscallConn()
	b.fn = b.call
	return b
}

// call is the RawConn callback: false means "wait until ready".
func (b *Batch) call(fd uintptr) bool {
	n, e, ready := rawCall(b.trap, fd, uintptr(unsafe.Pointer(&b.hdrs[0])), uintptr(b.n), 0, 0)
	if ready {
		b.n, b.errno = int(n), e
	}
	return ready
}

// prepare points the first len(ms) headers at ms's buffers.
func (b *Batch) prepare(ms []Msg) {
	for i := range ms {
		h, v, buf := &b.hdrs[i], &b.iovs[i], ms[i].Buf
		*h, *v = mmsghdr{}, unix.Iovec{}
		if len(buf) > 0 {
			v.Base = &buf[0]
		}
		v.SetLen(len(buf))
		h.hdr.Iov = v
		h.hdr.SetIovlen(1)
		if len(ms[i].OOB) > 0 {
			h.hdr.Control = &ms[i].OOB[0]
			h.hdr.SetControllen(len(ms[i].OOB))
		}
		h.hdr.Name = (*byte)(unsafe.Pointer(&b.names[i]))
		h.hdr.Namelen = uint32(unsafe.Sizeof(b.names[i]))
	}
}

func (b *Batch) do(trap uintptr, ms []Msg) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	b.trap, b.n, b.errno = trap, len(ms), 0
	var err error
	if trap == unix.SYS_RECVMMSG {
		err = b.rc.Read(b.fn)
	} else {
		err = b.rc.Write(b.fn)
	}
	if err != nil {
		return 0, err
	}
	if b.errno != 0 {
		name := "sendmmsg"
		if trap == unix.SYS_RECVMMSG {
			name = "recvmmsg"
		}
		return 0, os.NewSyscallError(name, b.errno)
	}
	return b.n, nil
}

// Read reads up to len(ms) datagrams (and the Batch's size), waiting for the
// first, into ms's buffers, and returns how many it read.
func (b *Batch) Read(ms []Msg) (int, error) {
	ms = ms[:min(len(ms), len(b.hdrs))]
	b.prepare(ms)
	n, err := b.do(unix.SYS_RECVMMSG, ms)
	for i := range n {
		h := &b.hdrs[i]
		ms[i].N, ms[i].OOBN = int(h.len), int(h.hdr.Controllen)
		ms[i].Addr = sockaddrAddrPort(&b.names[i])
	}
	return n, err
}

// Write sends up to len(ms) datagrams (and the Batch's size) and returns
// how many the kernel took, which may be fewer: as with sendmmsg(2), an
// error is about the first datagram not taken.
func (b *Batch) Write(ms []Msg) (int, error) {
	ms = ms[:min(len(ms), len(b.hdrs))]
	b.prepare(ms)
	for i := range ms {
		b.hdrs[i].hdr.Namelen = putSockaddr(&b.names[i], ms[i].Addr)
	}
	return b.do(unix.SYS_SENDMMSG, ms)
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
