package cache

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// BenchmarkLookup measures the hit path alone: key, lookup, the copy
// shaped for the client (ID, TTLs, OPT), metrics and the prefetch count.
func BenchmarkLookup(b *testing.B) {
	h := newHarness(b, Options{PrefetchHits: 10})
	q := query(b, "www.example.com.", dns.TypeA, true, false)
	h.mustAsk(b, q)
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := h.Lookup(buf[:0], &q); !ok {
			b.Fatal("miss")
		}
	}
}

// BenchmarkLookupParallel is BenchmarkLookup from several read loops at
// once, on one hot entry: the contention of the shared counters.
func BenchmarkLookupParallel(b *testing.B) {
	h := newHarness(b, Options{PrefetchHits: 10})
	q := query(b, "www.example.com.", dns.TypeA, true, false)
	h.mustAsk(b, q)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, 0, 512)
		for pb.Next() {
			if _, ok := h.Lookup(buf[:0], &q); !ok {
				b.Error("miss")
				return
			}
		}
	})
}

// BenchmarkMemory fills a cache with 100,000 answers (one A record each,
// with EDNS, as a pod's lookups are) and reports the heap each entry takes
// (key, entry, answer, otter's node and tables) and the process's RSS
// once they are in.
func BenchmarkMemory(b *testing.B) {
	const n = 100_000
	for b.Loop() {
		before := heapInUse()
		rss0 := rss(b)
		h := newHarness(b, Options{Size: n})
		h.fill(b, n, "host-")
		if got := h.store.len(); got < n*99/100 {
			b.Fatalf("%d of %d entries kept", got, n)
		}
		after := heapInUse()
		b.ReportMetric(float64(after-before)/n, "heap-B/entry")
		b.ReportMetric(float64(rss(b))/(1<<20), "RSS-MiB")
		b.ReportMetric(float64(rss(b)-rss0)/(1<<20), "RSS-growth-MiB")
		runtime.KeepAlive(h)
	}
}

// rss reads the process's resident set from /proc/self/status, in bytes.
func rss(b *testing.B) int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Skip("no /proc/self/status")
	}
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	b.Skip("no VmRSS")
	return 0
}
