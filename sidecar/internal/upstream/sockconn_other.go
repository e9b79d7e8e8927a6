//go:build !linux

package upstream

import "net"

// wrapConn is Linux-only (TCP_QUICKACK and raw system calls, see
// sockconn_linux.go); elsewhere connections are used as they are.
func wrapConn(c net.Conn) net.Conn { return c }
