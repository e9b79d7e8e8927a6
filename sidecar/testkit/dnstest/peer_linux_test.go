package dnstest

import (
	"net"
	"testing"
	"time"
)

// peerHolds follows the client's end of a connection as the kernel sees
// it, before the server reads anything.
func TestPeerHolds(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pair := func() (client, server net.Conn) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(); s.Close() })
		return c, s
	}
	// Each until: the FIN or reset crosses loopback within the close call
	// as a rule, but a busy machine may leave it to ksoftirqd.
	until := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !cond(); {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 5s", what)
			}
			time.Sleep(time.Millisecond)
		}
	}

	c, s := pair()
	if !peerHolds(s) {
		t.Error("an established connection counted as released by the client")
	}
	c.Close()
	until("a connection the client closed (FIN) counted as released", func() bool { return !peerHolds(s) })

	c, s = pair()
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
	until("a connection the client reset counted as released", func() bool { return !peerHolds(s) })

	c, s = pair()
	s.(*net.TCPConn).CloseWrite()
	if !peerHolds(s) {
		t.Error("a connection this side half-closed counted as released, though the client holds it")
	}
	s.Close()
	if peerHolds(s) {
		t.Error("a connection this side closed counted as held")
	}
	_ = c
}
