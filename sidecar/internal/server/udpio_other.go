//go:build !linux

package server

import "net"

// singleIO moves one datagram per call: batching is Linux-only.
type singleIO struct{ c *net.UDPConn }

func newBatchIO(c *net.UDPConn) batchIO { return singleIO{c} }

func (s singleIO) readBatch(ms []udpMsg) (int, error) {
	n, oobn, _, addr, err := s.c.ReadMsgUDPAddrPort(ms[0].buf, ms[0].oob)
	if err != nil {
		return 0, err
	}
	ms[0].n, ms[0].oobn, ms[0].addr = n, oobn, addr
	return 1, nil
}

func (s singleIO) writeBatch(ms []udpMsg) (int, error) {
	if _, _, err := s.c.WriteMsgUDPAddrPort(ms[0].buf, ms[0].oob, ms[0].addr); err != nil {
		return 0, err
	}
	return 1, nil
}
