package netnstest

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// Do runs f on an OS thread moved into the namespace, and fails t with the
// error f returns. Sockets f opens on that thread (listeners, dials) live in
// the namespace and may be used from anywhere afterwards; goroutines f
// starts run on other threads, in the test's own namespace. f runs on
// another goroutine, so it reports failure by its error, never with t.
//
// The thread is never handed back to the scheduler: it ends with f, so no
// other goroutine ever runs in the namespace by accident.
func (n *Netns) Do(t testing.TB, f func() error) {
	t.Helper()
	if err := n.enter(f); err != nil {
		t.Fatalf("in namespace %s: %v", n.Name, err)
	}
}

// enter runs f on a new OS thread moved into the namespace, and returns
// f's error or why the thread could not enter. A process started from that
// thread starts in the namespace.
func (n *Netns) enter(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // no Unlock: the thread exits with the goroutine
		errc <- func() error {
			fd, err := unix.Open(n.Path(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("opening namespace %s: %w", n.Name, err)
			}
			defer unix.Close(fd)
			if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("entering namespace %s: %w", n.Name, err)
			}
			return f()
		}()
	}()
	return <-errc
}

// DialContext dials from inside the namespace: the socket is made on a
// thread moved into it (see Do) and can be used from anywhere afterwards.
// Its signature fits the helpers that take a dialer, such as
// corednstest.Options.DialContext, for servers a test runs in a namespace.
func (n *Netns) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	var err error
	if eerr := n.enter(func() error {
		var d net.Dialer
		conn, err = d.DialContext(ctx, network, addr)
		return nil
	}); eerr != nil {
		return nil, eerr
	}
	return conn, err
}
