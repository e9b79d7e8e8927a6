package cache

import (
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestPrefetch: a hot entry is refreshed before it expires, so that its
// name never misses; a cold one is not.
func TestPrefetch(t *testing.T) {
	h := newHarness(t, Options{PrefetchHits: 3, PrefetchPercent: 10})
	h.pub.handler = answerA(100)
	hot := query(t, "hot.example.com.", dns.TypeA, true, false)
	cold := query(t, "cold.example.com.", dns.TypeA, true, false)
	h.mustAsk(t, hot)
	h.mustAsk(t, cold)
	for range 3 {
		h.clock.advance(10 * time.Second)
		if _, ok := h.look(t, hot); !ok {
			t.Fatal("hot: miss")
		}
	}
	// 89 s: more than 10% of 100 s left, no refresh yet.
	h.clock.advance(59 * time.Second)
	h.look(t, hot)
	h.look(t, cold)
	if n := h.pub.queries.Load(); n != 2 {
		t.Fatalf("upstream got %d queries before the refresh was due, want 2", n)
	}
	// 91 s: 9 s left. The hit is answered from the entry, and the
	// refresh reaches the upstream before the entry expires.
	h.clock.advance(2 * time.Second)
	a, ok := h.look(t, hot)
	if !ok || a.Answer[0].Header().Ttl != 9 {
		t.Fatalf("hit at 91 s: %v, %v", ok, a)
	}
	waitFor(t, "the prefetch to reach the upstream and replace the entry", func() bool {
		a, ok := h.look(t, hot)
		return ok && a.Answer[0].Header().Ttl == 100
	})
	if n := h.pub.queries.Load(); n != 3 {
		t.Errorf("upstream got %d queries, want 3 (two misses, one prefetch)", n)
	}
	if got := counter(h.m.prefetch); got != 1 {
		t.Errorf("prefetch_total %v, want 1", got)
	}
	// Past the first entry's expiry, the hot name still hits; the cold
	// one misses.
	h.clock.advance(10 * time.Second)
	if _, ok := h.look(t, hot); !ok {
		t.Error("hot name missed after its first entry expired")
	}
	if _, ok := h.look(t, cold); ok {
		t.Error("cold name was refreshed")
	}
	// The refreshed entry (stored at 91 s, for 100 s) inherited the
	// count: asked for within the window, it is refreshed again.
	h.clock.advance(50 * time.Second)
	h.look(t, hot)
	h.clock.advance(31 * time.Second)
	h.look(t, hot)
	waitFor(t, "the second prefetch", func() bool { return h.pub.queries.Load() == 4 })
}

// TestPrefetchWindow: hits spread wider than the window do not make an
// entry hot.
func TestPrefetchWindow(t *testing.T) {
	h := newHarness(t, Options{PrefetchHits: 2, PrefetchWindow: 10 * time.Second})
	h.pub.handler = answerA(100)
	q := query(t, "www.example.com.", dns.TypeA, false, false)
	h.mustAsk(t, q)
	for range 9 {
		h.clock.advance(11 * time.Second)
		h.look(t, q)
	}
	// At 99 s, within the last 10%, but every hit came more than the
	// window after the previous one.
	if got := counter(h.m.prefetch); got != 0 {
		t.Errorf("prefetch_total %v for an entry never asked for twice within the window", got)
	}
	// A second hit within the window makes it hot.
	h.clock.advance(500 * time.Millisecond)
	h.look(t, q)
	waitFor(t, "the prefetch", func() bool { return h.pub.queries.Load() == 2 })
}
