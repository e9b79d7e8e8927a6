package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestShutdown starts queries that the upstream holds, shuts the server down
// and checks that every one is answered: with the upstream's answer when it
// comes in time, with SERVFAIL (EDE 22) when Shutdown's context ends first.
func TestShutdown(t *testing.T) {
	tests := []struct {
		name      string
		release   bool // the upstream answers while Shutdown waits
		ctxWait   time.Duration
		wantRcode int
		wantErr   error
	}{
		{name: "in-flight queries finish", release: true, ctxWait: 10 * time.Second, wantRcode: dns.RcodeSuccess},
		{name: "context ends first", ctxWait: 100 * time.Millisecond, wantRcode: dns.RcodeServerFailure, wantErr: context.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, Options{QueryTimeout: 30 * time.Second})
			const perProto = 10
			type answer struct {
				msg *dns.Msg
				err error
			}
			answers := make(chan answer, 2*perProto)
			var clients sync.WaitGroup
			for _, network := range []string{"udp", "tcp"} {
				addr := ts.addr(t, network, loopback4)
				for i := range perProto {
					q := ednsQuery(fmt.Sprintf("hold-%s-%d.example.", network, i), dns.TypeA, 1232)
					c, err := net.Dial(network, addr.String())
					if err != nil {
						t.Fatal(err)
					}
					defer c.Close()
					if err := writeMsg(c, network, packed(t, q)); err != nil {
						t.Fatal(err)
					}
					clients.Add(1)
					go func() {
						defer clients.Done()
						raw, err := readMsg(c, network)
						r := new(dns.Msg)
						if err == nil {
							err = r.Unpack(raw)
						}
						if err == nil && r.Id != q.Id {
							err = fmt.Errorf("answer ID %d, want %d", r.Id, q.Id)
						}
						answers <- answer{r, err}
					}()
				}
			}
			hs := ts.up.awaitHeld(t, 2*perProto)
			rel := &releaser{hs: hs}
			defer rel.all()

			ctx, cancel := context.WithTimeout(context.Background(), tt.ctxWait)
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- ts.Shutdown(ctx) }()
			waitFor(t, "Shutdown to begin", ts.closing.Load)
			if _, err := net.DialTimeout("tcp", ts.addr(t, "tcp", loopback4).String(), time.Second); err == nil {
				t.Errorf("a new TCP connection was accepted during Shutdown")
			}
			if tt.release {
				rel.all()
			}
			if err := <-done; !errors.Is(err, tt.wantErr) {
				t.Errorf("Shutdown returned %v, want %v", err, tt.wantErr)
			}
			clients.Wait()
			close(answers)
			n := 0
			for a := range answers {
				n++
				if a.err != nil {
					t.Errorf("query not answered: %v", a.err)
					continue
				}
				if a.msg.Rcode != tt.wantRcode {
					t.Errorf("rcode %s, want %s", dns.RcodeToString[a.msg.Rcode], dns.RcodeToString[tt.wantRcode])
				}
				if tt.wantRcode == dns.RcodeServerFailure && (ede(a.msg) == nil || ede(a.msg).InfoCode != dns.ExtendedErrorCodeNoReachableAuthority) {
					t.Errorf("EDE %v, want 22", ede(a.msg))
				}
			}
			if n != 2*perProto {
				t.Errorf("%d answers, want %d", n, 2*perProto)
			}
			if err := ts.Alive(); err != nil {
				t.Errorf("Alive after a deliberate Shutdown = %v, want nil", err)
			}
		})
	}
}

func TestAlive(t *testing.T) {
	s := newUnstarted(t, Options{BindAddrs: []netip.Addr{loopback4}, BindExplicit: true})
	if err := s.Alive(); !errors.Is(err, ErrNotStarted) {
		t.Fatalf("Alive before Start = %v", err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	if err := s.Alive(); err != nil {
		t.Fatalf("Alive while serving = %v", err)
	}
	if err := s.Start(); !errors.Is(err, ErrStarted) {
		t.Fatalf("second Start = %v", err)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Alive(); err != nil {
		t.Fatalf("Alive after a deliberate Shutdown = %v", err)
	}
	if err := s.Shutdown(context.Background()); !errors.Is(err, ErrShutdown) {
		t.Fatalf("second Shutdown = %v", err)
	}
}

// TestAliveReportsDeadLoop closes a listener under the server's feet: its
// loops stop, and Alive must say so.
func TestAliveReportsDeadLoop(t *testing.T) {
	for _, proto := range []string{"udp", "tcp"} {
		t.Run(proto, func(t *testing.T) {
			ts := startServer(t, Options{Proto: proto})
			ts.mu.Lock()
			if proto == "udp" {
				_ = ts.udp[0].Close()
			} else {
				_ = ts.tcp[0].Close()
			}
			ts.mu.Unlock()
			waitFor(t, "Alive to report the dead loop", func() bool { return ts.Alive() != nil })
		})
	}
}

// TestShutdownClientNotReading checks that a TCP client that reads none of
// its answers cannot hold Shutdown past its context: once the context ends,
// a write blocked on the client's full window gives up at once instead of
// waiting out TCPIdleTimeout.
func TestShutdownClientNotReading(t *testing.T) {
	const idle = 30 * time.Second // far beyond the test's patience
	ts := startServer(t, Options{TCPIdleTimeout: idle, QueryTimeout: idle})
	// A tiny receive buffer on the client and send buffer on the server make
	// one 60 KB answer block the server's write for sure.
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 1024)
		}); err != nil {
			return err
		}
		return serr
	}}
	c, err := d.Dial("tcp", ts.addr(t, "tcp", loopback4).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitFor(t, "the server to track the connection", func() bool {
		ts.mu.Lock()
		defer ts.mu.Unlock()
		for sc := range ts.conns {
			if err := sc.nc.SetWriteBuffer(1024); err != nil {
				t.Fatal(err)
			}
			return true
		}
		return false
	})
	if err := writeMsg(c, "tcp", packed(t, newQuery("huge.example.", dns.TypeTXT))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the query to reach the upstream", func() bool { return len(ts.up.received()) == 1 })

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = ts.Shutdown(ctx)
	if elapsed := time.Since(start); elapsed > 3*time.Second {
		t.Fatalf("Shutdown took %v with a %v context: held by a client that does not read", elapsed, 200*time.Millisecond)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v, want the context's deadline", err)
	}
}
