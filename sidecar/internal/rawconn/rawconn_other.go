//go:build !linux

package rawconn

import "net"

// Wrap is Linux-only (TCP_QUICKACK and raw system calls, see
// rawconn_linux.go); elsewhere connections are used as they are.
func Wrap(c net.Conn, quickAck bool) net.Conn { return c }
