package cache

import (
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// fill sends n misses for distinct names through the cache, each kept.
func (h *harness) fill(t testing.TB, n int, prefix string) {
	t.Helper()
	for i := range n {
		h.mustAsk(t, query(t, prefix+strconv.Itoa(i)+".example.com.", dns.TypeA, true, false))
	}
	h.store.c.CleanUp()
}

func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// TestEvictionBoundsMemory: twenty times Size distinct answers leave at
// most Size entries, counted as evictions, and the heap grows by what Size
// entries take, not by what twenty times as many would.
func TestEvictionBoundsMemory(t *testing.T) {
	const size = 1000
	h := newHarness(t, Options{Size: size})
	h.fill(t, size, "warm")
	before := heapInUse()
	h.fill(t, 19*size, "flood")
	grown := int64(heapInUse()) - int64(before)
	if n := h.store.len(); n > size {
		t.Errorf("%d entries kept, Size is %d", n, size)
	}
	if got := counter(h.m.entries[success]); int(got) != h.store.len() {
		t.Errorf("entries gauge %v, store holds %d", got, h.store.len())
	}
	if got := counter(h.m.evictions[success]); got < 18*size {
		t.Errorf("evictions %v, want at least %d", got, 18*size)
	}
	// A thousand small entries take about 400 KiB; twenty thousand would
	// take four times the bound.
	if limit := int64(2 * size * 1024); grown > limit {
		t.Errorf("heap grew by %d bytes while the cache stayed at %d entries (limit %d)", grown, size, limit)
	}
	t.Logf("heap growth over 19000 evicting inserts: %d bytes", grown)
}

// TestLargeAnswersWeighMore: an answer of several KiB counts once per KiB,
// so that Size bounds memory however large the answers.
func TestLargeAnswersWeighMore(t *testing.T) {
	h := newHarness(t, Options{Size: 100})
	h.pub.handler = func(q *dns.Msg) *dns.Msg {
		r := replyTo(q, dns.RcodeSuccess)
		for range 16 {
			r.Answer = append(r.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 300},
				Txt: []string{strings.Repeat("x", 250)}})
		}
		return r
	}
	h.fill(t, 100, "big") // about 4 KiB each: a weight of 4 or 5
	if n := h.store.len(); n > 25 {
		t.Errorf("%d answers of 4 KiB kept in a cache of size 100", n)
	}
}
