package cache

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
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
