package rawconn

import (
	"bytes"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// sockPair returns a Conn dialed to a loopback listener and the
// accepted end, both closed when the test ends.
func sockPair(t *testing.T) (*Conn, *net.TCPConn) {
	t.Helper()
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.DialTCP("tcp", nil, l.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	peer, err := l.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(); _ = peer.Close() })
	s, ok := Wrap(c, true).(*Conn)
	if !ok {
		t.Fatal("Wrap did not wrap a *net.TCPConn")
	}
	return s, peer
}

// The raw reads and writes keep net.Conn's contract: every byte in order
// through partial writes and full buffers, io.EOF at the end, deadlines as
// timeouts, errors that errors.Is and errors.As see through.
func TestSockConnContract(t *testing.T) {
	tests := []struct {
		name string
		run  func(t *testing.T, s *Conn, peer *net.TCPConn)
	}{
		{"large write the peer reads slowly arrives whole", func(t *testing.T, s *Conn, peer *net.TCPConn) {
			// Far more than the socket buffers hold, so the write meets
			// EAGAIN and partial writes and must wait for the reader.
			want := make([]byte, 8<<20)
			for i := range want {
				want[i] = byte(i * 7)
			}
			got := make(chan []byte, 1)
			go func() {
				var buf bytes.Buffer
				_, _ = io.Copy(&buf, io.LimitReader(peer, int64(len(want))))
				got <- buf.Bytes()
			}()
			_ = s.SetWriteDeadline(time.Now().Add(10 * time.Second))
			n, err := s.Write(want)
			if err != nil || n != len(want) {
				t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(want))
			}
			if b := <-got; !bytes.Equal(b, want) {
				t.Fatalf("peer read %d bytes, not what was written", len(b))
			}
		}},
		{"read returns what the peer wrote, then EOF", func(t *testing.T, s *Conn, peer *net.TCPConn) {
			if _, err := peer.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			_ = peer.CloseWrite()
			_ = s.SetReadDeadline(time.Now().Add(5 * time.Second))
			b, err := io.ReadAll(s)
			if err != nil || string(b) != "hello" {
				t.Fatalf("ReadAll = %q, %v", b, err)
			}
		}},
		{"read deadline is a timeout", func(t *testing.T, s *Conn, _ *net.TCPConn) {
			_ = s.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			_, err := s.Read(make([]byte, 10))
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				t.Fatalf("Read after the deadline = %v; want a timeout", err)
			}
		}},
		{"write deadline is a timeout when the peer does not read", func(t *testing.T, s *Conn, _ *net.TCPConn) {
			_ = s.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			n, err := s.Write(make([]byte, 64<<20))
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() || n >= 64<<20 {
				t.Fatalf("Write to a peer that does not read = %d, %v; want a timeout", n, err)
			}
		}},
		{"write to a reset connection fails with its errno", func(t *testing.T, s *Conn, peer *net.TCPConn) {
			_ = peer.SetLinger(0)
			_ = peer.Close() // RST
			_ = s.SetDeadline(time.Now().Add(5 * time.Second))
			// On loopback the RST has arrived by the time Close returns.
			_, err := s.Write([]byte("x"))
			if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
				t.Fatalf("Write after a reset = %v; want ECONNRESET or EPIPE", err)
			}
			var oe *net.OpError
			if !errors.As(err, &oe) || oe.Op != "write" {
				t.Fatalf("error %v is not a *net.OpError for write", err)
			}
		}},
		{"read on a closed connection says so", func(t *testing.T, s *Conn, _ *net.TCPConn) {
			_ = s.Close()
			if _, err := s.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
				t.Fatalf("Read after Close = %v; want net.ErrClosed", err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, peer := sockPair(t)
			tt.run(t, s, peer)
		})
	}
}
