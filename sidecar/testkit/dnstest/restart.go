package dnstest

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"
)

// Stop and Restart take a DoT server down and bring it back on the same
// address, with the same certificates, counters and Behavior, as an
// upstream restarted by its operator or crashing would be: clients see their
// connections end and new ones refused until it is back.

// StopMode is how Stop ends the connections open at the time.
type StopMode int

const (
	// StopGraceful sends each connection whose handshake is done a TLS
	// close_notify, then a FIN, as a server shutting down in order does;
	// the others get a FIN.
	StopGraceful StopMode = iota
	// StopAbort resets every connection (RST), as a crashed server's
	// kernel, or a middlebox that lost its state, does.
	StopAbort
)

// restartRetry is how long Restart keeps trying to listen while the address
// is in use: a socket of another process's may hold the port for a moment
// while the server is down.
const restartRetry = 2 * time.Second

var errDoHRestart = errors.New("dnstest: Stop and Restart serve DNS over TLS only")

// Stop closes the listener, so that new connections are refused, ends every
// connection as mode says, and returns once all of them and their
// goroutines are gone. Restart serves again. Stop on a stopped or closed
// server does nothing.
func (s *Server) Stop(mode StopMode) error {
	if s.httpSrv != nil {
		return errDoHRestart
	}
	s.mu.Lock()
	if s.closed || s.stopped {
		s.mu.Unlock()
		return nil
	}
	s.stopped = true
	err := s.ln.Close()
	conns := make(map[net.Conn]*tls.Conn, len(s.conns))
	for raw, tc := range s.conns {
		conns[raw] = tc
	}
	s.mu.Unlock()
	// Outside the lock: a close_notify may wait for the client to read.
	for raw, tc := range conns {
		switch {
		case mode == StopAbort:
			if tcp, ok := raw.(*net.TCPConn); ok {
				_ = tcp.SetLinger(0)
			}
			_ = raw.Close()
		case tc != nil:
			_ = tc.Close()
		default:
			_ = raw.Close()
		}
	}
	s.wg.Wait()
	return err
}

// Restart listens again on Addr after Stop and serves as before.
func (s *Server) Restart() error {
	if s.httpSrv != nil {
		return errDoHRestart
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return net.ErrClosed
	}
	if !s.stopped {
		return errors.New("dnstest: Restart of a server that was not stopped")
	}
	var ln net.Listener
	var err error
	for deadline := time.Now().Add(restartRetry); ; time.Sleep(10 * time.Millisecond) {
		ln, err = net.Listen("tcp", s.Addr.String())
		if err == nil || !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("listening on %s again: %w", s.Addr, err)
	}
	s.ln, s.stopped = ln, false
	s.wg.Add(1)
	go s.acceptLoop(ln)
	return nil
}

// handshaken records tc as raw's TLS side, for Stop to close politely.
func (s *Server) handshaken(raw net.Conn, tc *tls.Conn) {
	s.mu.Lock()
	if _, ok := s.conns[raw]; ok {
		s.conns[raw] = tc
	}
	s.mu.Unlock()
}
