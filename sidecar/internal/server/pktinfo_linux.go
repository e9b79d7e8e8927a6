package server

import (
	"net"

	"golang.org/x/sys/unix"
)

// A socket bound to a wildcard address (0.0.0.0, ::) receives datagrams sent
// to any of the host's addresses, but the kernel picks the source address of
// what it sends from the route to the client, which need not be the address
// the client asked. The client then drops the answer (a connected socket
// accepts datagrams from its peer only; conntrack cannot reverse an iptables
// REDIRECT for it). So on wildcard sockets the destination of each query is
// received as IP_PKTINFO / IPV6_PKTINFO and handed back as the source of its
// answer, as Unbound's interface-automatic and miekg/dns do. Sockets bound
// to a specific address need none of this and skip it.

// pktinfoSize is room for one IP_PKTINFO or IPV6_PKTINFO control message.
var pktinfoSize = max(unix.CmsgSpace(unix.SizeofInet4Pktinfo), unix.CmsgSpace(unix.SizeofInet6Pktinfo))

// enablePktinfo asks the kernel for the destination address of every
// datagram received on c.
func enablePktinfo(c *net.UDPConn, v6 bool) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		if v6 {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// replyPktinfo turns the control messages received with a query into the
// one that makes its answer leave from the query's destination address,
// appended to dst[:0]; it returns dst[:0] when oob holds no packet
// information. With dst of capacity pktinfoSize it allocates nothing.
func replyPktinfo(dst, oob []byte) []byte {
	hdr := unix.CmsgLen(0) // offset of a control message's data
	for len(oob) > 0 {
		h, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			break
		}
		msg := oob[:len(oob)-len(rest)]
		switch {
		case h.Level == unix.SOL_IP && h.Type == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			// in_pktinfo{ifindex, spec_dst, addr}. Received, addr is the
			// query's destination; sent, spec_dst is the source. Ifindex 0
			// leaves the way out to the routing table.
			out := append(dst[:0], msg...)
			p := out[hdr:]
			clear(p[0:4])
			copy(p[4:8], p[8:12])
			return out
		case h.Level == unix.SOL_IPV6 && h.Type == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			// in6_pktinfo{addr, ifindex}: addr, the query's destination,
			// becomes the source. Ifindex 0 as above; a link-local client
			// is reached through the zone of its address.
			out := append(dst[:0], msg...)
			clear(out[hdr+16 : hdr+20])
			return out
		}
		oob = rest
	}
	return dst[:0]
}

// isWildcard tells whether c is bound to 0.0.0.0 or ::.
func isWildcard(c *net.UDPConn) bool {
	a, ok := c.LocalAddr().(*net.UDPAddr)
	return ok && a.AddrPort().Addr().IsUnspecified()
}
