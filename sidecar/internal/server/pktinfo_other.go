//go:build !linux

package server

import "net"

// Outside Linux, wildcard sockets answer from whatever source address the
// kernel picks (see pktinfo_linux.go); the sidecar targets Linux.

const pktinfoSize = 0

func enablePktinfo(*net.UDPConn, bool) error { return nil }

func replyPktinfo(dst, _ []byte) []byte { return dst[:0] }

func isWildcard(*net.UDPConn) bool { return false }
