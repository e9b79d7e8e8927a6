package upstream

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
	"github.com/miekg/dns"
)

// An upstream that writes with Nagle's algorithm on (Unbound does on its TLS
// port) sends nothing more while data it sent is unacknowledged. Linux
// delays a pipelining client's ACKs (up to 40 ms) in the hope of carrying
// them on its next query, so such an upstream's answers wait for the next
// query or for the delayed-ACK timer. With Unbound 1.17 behind the relay
// this cost one query interval per answer at steady load (0.69 ms average
// at 2,000 queries/s, 1 ms at 1,000/s) and 40-50 ms maxima. Here the
// upstream splits each answer over several writes, so every answer has a
// part to hold back: without quick ACKs each answer waits out the timer.
func TestNagleUpstreamAnswersPromptly(t *testing.T) {
	srv := dnstest.New(t, dnstest.Options{})
	srv.Behavior.Nagle.Store(true)
	srv.Behavior.SplitWrites.Store(true)
	d := newTestDoT(t, srv, func(o *DoTOptions) { o.PoolSize = 1 })

	const n = 40
	lats := make([]time.Duration, 0, n)
	for i := range n {
		q := packQuery(t, fmt.Sprintf("q%d.example.", i), dns.TypeA)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		start := time.Now()
		resp, err := d.Exchange(ctx, q)
		lat := time.Since(start)
		cancel()
		if err == nil {
			err = checkAnswer(resp, q)
		}
		if err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
		lats = append(lats, lat)
	}
	slices.Sort(lats)
	// Held answers take the delayed-ACK timeout (40 ms at least on Linux);
	// on loopback an answer takes well under a millisecond, and 10 ms
	// leaves room for a loaded machine.
	if median := lats[n/2]; median >= 10*time.Millisecond {
		t.Errorf("median answer time %v (max %v) over %d queries; want under 10ms: answers wait for delayed ACKs",
			median, lats[n-1], n)
	}
}
