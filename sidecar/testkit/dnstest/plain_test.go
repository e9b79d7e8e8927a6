package dnstest

import (
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Stop waits for the handlers in flight, and one of them may be reading the
// queries (as serveDNS does to record each): Stop must not hold what they
// need meanwhile.
func TestPlainStopWithHandlerInFlight(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	var srv *PlainServer
	srv = NewPlain(t, PlainOptions{Handler: func(q *dns.Msg) *dns.Msg {
		close(entered)
		<-release
		_ = srv.Queries()
		return DefaultHandler(q)
	}})
	m := new(dns.Msg)
	m.SetQuestion("stop.example.", dns.TypeA)
	asked := make(chan struct{})
	go func() {
		defer close(asked)
		_, _, _ = (&dns.Client{Timeout: 10 * time.Second}).Exchange(m, srv.Addr.String())
	}()
	<-entered
	stopped := make(chan struct{})
	go func() {
		srv.Stop()
		close(stopped)
	}()
	// Release the handler only once Stop is under way.
	deadline := time.Now().Add(10 * time.Second)
	for srv.life.TryLock() {
		srv.life.Unlock()
		if time.Now().After(deadline) {
			t.Fatal("Stop did not start")
		}
		time.Sleep(time.Millisecond) // polling interval
	}
	close(release)
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("Stop still waiting 10s after the handler was released")
	}
	<-asked
}
