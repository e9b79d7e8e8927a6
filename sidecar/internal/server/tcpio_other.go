//go:build !linux

package server

import (
	"io"
	"net"
)

// clientIO: raw system calls are Linux-only (tcpio_linux.go).
func clientIO(nc *net.TCPConn) io.ReadWriter { return nc }
