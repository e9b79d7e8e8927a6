package resilience

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// idleFlood opens n TCP connections to addr, rate a second, that send
// nothing, and records in times how long the sidecar let each live; with
// reconnect, each client opens another reconnectPause after the sidecar
// closed its last, until ctx ends. It holds them as raw sockets watched by
// one epoll instance, as an attacker's tool would: thousands of goroutines
// dialing through the runtime stalled the race-instrumented test process,
// which also runs the watch and the upstream, for seconds, and the watch
// then measured the test process rather than the sidecar.
func idleFlood(ctx context.Context, addr string, rate, n int, reconnect bool, times *connTimes) error {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return err
	}
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	defer unix.Close(ep)
	f := &idleSockets{ep: ep, to: &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}, open: map[int32]time.Time{}, times: times}
	defer f.closeAll()

	var wg sync.WaitGroup
	wg.Go(func() { f.watch(ctx, reconnect) })
	pace(ctx, rate, n, func(int) bool {
		f.dial()
		return true
	})
	// Clients whose connection was closed open another reconnectPause
	// later, in the order they were closed.
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for reconnect {
		select {
		case <-ctx.Done():
			reconnect = false
			continue
		case <-tick.C:
		}
		for range f.due(time.Now()) {
			f.dial()
		}
	}
	<-ctx.Done()
	wg.Wait()
	return nil
}

// reconnectPause is how long an idle client waits to open a connection
// again once the sidecar closed its last.
const reconnectPause = 1500 * time.Millisecond

type idleSockets struct {
	ep    int
	to    *unix.SockaddrInet4
	times *connTimes

	mu     sync.Mutex
	open   map[int32]time.Time // socket: when it was connected
	redial []time.Time         // when each closed client opens again, in order
}

// dial connects one socket, blocking for at most a second, and adds it to
// the epoll set.
func (f *idleSockets) dial() {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err == nil {
		// Bounds a connect blocked by a full accept queue.
		err = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &unix.Timeval{Sec: 1})
		if err == nil {
			err = unix.Connect(fd, f.to)
		}
	}
	if err == nil {
		f.mu.Lock()
		f.open[int32(fd)] = time.Now()
		f.mu.Unlock()
		err = unix.EpollCtl(f.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(fd)})
	}
	f.times.mu.Lock()
	if err != nil {
		f.times.failed++
	} else {
		f.times.opened++
	}
	f.times.mu.Unlock()
	if err != nil && fd >= 0 {
		f.mu.Lock()
		delete(f.open, int32(fd))
		f.mu.Unlock()
		_ = unix.Close(fd)
	}
}

// watch records each socket the sidecar closes, until ctx ends.
func (f *idleSockets) watch(ctx context.Context, reconnect bool) {
	events := make([]unix.EpollEvent, 256)
	for ctx.Err() == nil {
		n, err := unix.EpollWait(f.ep, events, 50)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return
		}
		now := time.Now()
		for _, ev := range events[:n] {
			// Nothing is ever sent to these sockets: any event is the
			// sidecar's close (EOF or reset).
			f.mu.Lock()
			opened, ok := f.open[ev.Fd]
			delete(f.open, ev.Fd)
			if ok && reconnect {
				f.redial = append(f.redial, now.Add(reconnectPause))
			}
			f.mu.Unlock()
			if ok {
				f.times.add(now.Sub(opened))
				_ = unix.Close(int(ev.Fd))
			}
		}
	}
}

// due takes off the queue the clients due to open a connection by now,
// and returns how many.
func (f *idleSockets) due(now time.Time) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := 0
	for i < len(f.redial) && !f.redial[i].After(now) {
		i++
	}
	f.redial = f.redial[i:]
	return i
}

// closeAll closes the sockets still open, noting the oldest's age.
func (f *idleSockets) closeAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for fd, opened := range f.open {
		f.times.leftOpen(time.Since(opened))
		_ = unix.Close(int(fd))
	}
	clear(f.open)
}
