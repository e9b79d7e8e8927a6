//go:build !linux

package rawconn

import "net"

// Wrap is Linux-only (TCP_QUICKACK and raw system calls, see
// rawconn_linux.go); elsewhere connections are used as they are.
func Wrap(c net.Conn, quickAck bool) net.Conn { return c }

// Batch moves one datagram per call outside Linux, where recvmmsg and
// sendmmsg are missing (batch_linux.go).
type Batch struct{ c *net.UDPConn }

// NewBatch returns a Batch on c; size is ignored.
func NewBatch(c *net.UDPConn, size int) *Batch { return &Batch{c} }

// Read reads one datagram into ms[0].
func (b *Batch) Read(ms []Msg) (int, error) {
	n, oobn, _, addr, err := b.c.ReadMsgUDPAddrPort(ms[0].Buf, ms[0].OOB)
	if err != nil {
		return 0, err
	}
	ms[0].N, ms[0].OOBN, ms[0].Addr = n, oobn, addr
	return 1, nil
}

// Write sends ms[0].
func (b *Batch) Write(ms []Msg) (int, error) {
	if _, _, err := b.c.WriteMsgUDPAddrPort(ms[0].Buf, ms[0].OOB, ms[0].Addr); err != nil {
		return 0, err
	}
	return 1, nil
}
