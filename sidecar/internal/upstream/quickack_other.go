//go:build !linux

package upstream

import "net"

// quickAck is Linux-only (TCP_QUICKACK); elsewhere connections are used as
// they are.
func quickAck(c net.Conn) net.Conn { return c }
