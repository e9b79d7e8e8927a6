package cache

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/router"
)

// waiters is how many queries wait for the flight of q's key.
func (h *harness) waiters(q string, qtype uint16) int {
	m := new(dns.Msg)
	m.SetQuestion(q, qtype)
	b, _ := m.Pack()
	key := ""
	if p, err := parseBytes(b); err == nil {
		key = string(p.AppendKey(nil))
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if f := h.flights[key]; f != nil {
		return f.waiters
	}
	return -1
}

// TestConcurrentMissesOneQuery: a thousand identical queries that miss at
// once make one upstream query, and each gets its own answer.
func TestConcurrentMissesOneQuery(t *testing.T) {
	const n = 1000
	h := newHarness(t, Options{})
	gate := make(chan struct{})
	h.pub.gate = gate
	type result struct {
		id   uint16
		name string
		ans  *dns.Msg
		err  error
	}
	results := make(chan result, n)
	var wg sync.WaitGroup
	for i := range n {
		// Every spelling of the name shares the key.
		name := "www.example.com."
		if i%2 == 1 {
			name = strings.ToUpper(name)
		}
		q := query(t, name, dns.TypeA, i%3 == 0, false)
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
			defer cancel()
			ans, err := h.Exchange(ctx, q)
			r := result{id: q.ID, name: name, err: err}
			if err == nil {
				r.ans = new(dns.Msg)
				r.err = r.ans.Unpack(ans.Wire())
			}
			results <- r
		})
	}
	waitFor(t, "every query to reach the cache", func() bool { return h.waiters("www.example.com.", dns.TypeA) == n-1 })
	close(gate)
	wg.Wait()
	close(results)
	for r := range results {
		if r.err != nil {
			t.Fatal(r.err)
		}
		if r.ans.Id != r.id || r.ans.Question[0].Name != r.name || len(r.ans.Answer) != 1 {
			t.Fatalf("query %d %s got %v", r.id, r.name, r.ans)
		}
	}
	if got := h.pub.queries.Load(); got != 1 {
		t.Errorf("upstream got %d queries for %d identical misses, want 1", got, n)
	}
}

// TestFollowersKeepTheirOwnDeadlines: a follower gives up at its own
// deadline; a follower outliving its leader's deadline asks again itself.
func TestFollowersKeepTheirOwnDeadlines(t *testing.T) {
	h := newHarness(t, Options{})
	gate := make(chan struct{})
	h.pub.gate = gate
	q := query(t, "www.example.com.", dns.TypeA, false, false)

	leaderCtx, cancelLeader := context.WithTimeout(context.Background(), time.Hour)
	leaderErr := make(chan error, 1)
	go func() {
		_, err := h.Exchange(leaderCtx, q)
		leaderErr <- err
	}()
	waitFor(t, "the leader", func() bool { return h.pub.queries.Load() == 1 })

	short, cancelShort := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancelShort()
	if _, err := h.Exchange(short, q); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("short follower: %v, want its own deadline", err)
	}

	long := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
		defer cancel()
		_, err := h.Exchange(ctx, q)
		long <- err
	}()
	waitFor(t, "the long follower", func() bool { return h.waiters("www.example.com.", dns.TypeA) == 1 })
	cancelLeader()
	if err := <-leaderErr; !errors.Is(err, context.Canceled) {
		t.Errorf("leader: %v", err)
	}
	waitFor(t, "the follower to lead a query of its own", func() bool { return h.pub.queries.Load() == 2 })
	close(gate)
	if err := <-long; err != nil {
		t.Errorf("long follower: %v", err)
	}
}

// TestFollowersShareAnswersNotKept: a REFUSED answer is not kept, but the
// queries that waited for it get it all the same.
func TestFollowersShareAnswersNotKept(t *testing.T) {
	h := newHarness(t, Options{})
	gate := make(chan struct{})
	h.pub.gate = gate
	h.pub.handler = func(q *dns.Msg) *dns.Msg { return replyTo(q, dns.RcodeRefused) }
	var wg sync.WaitGroup
	for range 10 {
		q := query(t, "www.example.com.", dns.TypeA, true, false)
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
			defer cancel()
			ans, err := h.Exchange(ctx, q)
			if err != nil || ans.ID != q.ID || ans.Rcode() != dns.RcodeRefused {
				t.Errorf("got %v, %v", ans.Header, err)
			}
		})
	}
	waitFor(t, "the followers", func() bool { return h.waiters("www.example.com.", dns.TypeA) == 9 })
	close(gate)
	wg.Wait()
	if got := h.pub.queries.Load(); got != 1 {
		t.Errorf("upstream got %d queries, want 1", got)
	}
}

// looping is a plaintext upstream whose first query comes back to the
// cache as a client's, as conntrack sends the sidecar's own query to the
// cluster's resolver back to it when its source port was an application's
// a moment before; the query that came back is answered by the upstream,
// and that answer is the first query's.
type looping struct {
	scripted
	c     *Cache
	loops atomic.Bool
}

func (u *looping) Exchange(ctx context.Context, q dnswire.Msg) (dnswire.Msg, error) {
	if u.loops.CompareAndSwap(false, true) {
		return u.c.Exchange(ctx, q)
	}
	return u.scripted.Exchange(ctx, q)
}

// TestOwnQueryComingBack: the sidecar's own query to a plaintext route's
// upstream that comes back to it as a client's does not wait for the
// query it is (it would until the deadline), but is relayed again.
func TestOwnQueryComingBack(t *testing.T) {
	lan := &looping{scripted: scripted{name: "lan", handler: answerA(300)}}
	r, err := router.New(router.Options{
		Default:    &scripted{name: "pub", handler: answerA(300)},
		Routes:     []router.RouteOptions{{Name: "lan", Zones: []string{"lan.example"}, Upstream: lan, Cluster: true}},
		UDPSize:    1232,
		Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, Options{Upstream: r})
	lan.c = h.Cache
	q := query(t, "db.lan.example.", dns.TypeA, true, false)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	ans, err := h.Exchange(ctx, q)
	if err != nil {
		t.Fatalf("the query that came back waited for itself: %v", err)
	}
	if a := decode(t, ans.Wire(), q); len(a.Answer) != 1 {
		t.Errorf("answer %v", a)
	}
	if n := lan.queries.Load(); n != 1 {
		t.Errorf("upstream answered %d queries, want 1 (the one that came back)", n)
	}
	if _, ok := h.look(t, q); !ok {
		t.Error("the answer was not kept")
	}
}
