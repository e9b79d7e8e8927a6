package upstream

import (
	"context"
	"fmt"
	"math"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
)

// Query IDs on the upstream hop (RFC 5452 §4.3, RFC 7766 §7). An ID must be
// unpredictable, so that an off-path attacker cannot forge an answer for a
// plaintext hop, and no answer given up on can match a later query; unique
// among the queries in flight on a connection, which are told apart by it;
// and unrelated to the client's ID, which the client chose and an attacker
// may know. These tests check each over idSamples queries, with statistical
// tests whose thresholds keep the chance that a correct client fails them
// below 1e-6 in all:
//
//   - per kind of upstream (DoT, dns://), 6 chi-square tests at 1e-8 each
//     and 16 bit balance tests at 1e-9 each (Hoeffding's bound, exact),
//     plus the count of IDs equal to the client's (at most 6: a chance of
//     3.8e-10 to see 7 or more), under 8e-8;
//   - for both, under 1.6e-7.
//
// The chi-square tests use the distribution's tail (the Pearson statistic
// of 10,000 draws in 256 cells of 39 expected each follows it closely); for
// the DoT, whose IDs are drawn without repetition among 10,000 in flight,
// the statistic is smaller than for independent draws, so the chance of a
// false failure only drops. Uniqueness is not statistical: any repeat
// fails.

const (
	idSamples = 10000
	chiAlpha  = 1e-8
	bitAlpha  = 1e-9
	// maxEqualIDs: equal client and upstream IDs are Binomial(10000,
	// 1/65536), mean 0.15; 7 or more has a chance of 3.8e-10.
	maxEqualIDs = 6
)

// idSample is one query's client ID and the ID the upstream saw.
type idSample struct{ client, wire uint16 }

// idRecorder keeps the wire ID of each query, by its name "id<client ID>.".
type idRecorder struct {
	mu   sync.Mutex
	seen map[uint16]uint16 // client ID → wire ID
	dups int               // names seen twice (resends)
}

// raw records the IDs for a server answering from wire bytes, which is several
// times cheaper under the race detector than decoding every query.
func (r *idRecorder) raw(dst, query []byte) []byte {
	if m, err := dnswire.Parse(query); err == nil {
		r.note(m.QNameText(), m.ID)
	}
	return dnstest.ReflectRaw(dst, query)
}

func (r *idRecorder) note(name string, id uint16) {
	label, _, ok := strings.Cut(name, ".")
	if !ok || !strings.HasPrefix(label, "id") {
		return
	}
	n, err := strconv.Atoi(label[2:])
	if err != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seen == nil {
		r.seen = make(map[uint16]uint16)
	}
	if _, dup := r.seen[uint16(n)]; dup {
		r.dups++
	}
	r.seen[uint16(n)] = id
}

// idQuery is the query whose client ID is id, named after it.
func idQuery(t testing.TB, id uint16) dnswire.Msg {
	t.Helper()
	q, err := dnswire.NewQuery(id, fmt.Sprintf("id%d.example.", id), dnswire.TypeA)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// sendIDQueries sends the queries of client IDs 0 to idSamples-1 through u,
// conc at a time, and returns what rec saw, in client ID order.
func sendIDQueries(t *testing.T, u Upstream, rec *idRecorder, conc int) []idSample {
	t.Helper()
	var wg sync.WaitGroup
	next := make(chan uint16)
	errs := make(chan error, conc)
	for range conc {
		wg.Go(func() {
			for id := range next {
				q := idQuery(t, id)
				ctx, cancel := context.WithTimeout(context.Background(), 4*answerTimeout)
				ans, err := u.Exchange(ctx, q)
				cancel()
				if err == nil && ans.ID != id {
					err = fmt.Errorf("answer with ID %d, want the client's %d", ans.ID, id)
				}
				if err != nil {
					select {
					case errs <- fmt.Errorf("query %d: %w", id, err):
					default:
					}
				}
			}
		})
	}
	for id := range uint16(idSamples) {
		next <- id
	}
	close(next)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.seen) != idSamples || rec.dups != 0 {
		t.Fatalf("upstream saw %d queries (%d resent), want %d once each", len(rec.seen), rec.dups, idSamples)
	}
	out := make([]idSample, idSamples)
	for id := range uint16(idSamples) {
		out[id] = idSample{client: id, wire: rec.seen[id]}
	}
	return out
}

// checkIDs fails t with every problem idProblems finds.
func checkIDs(t *testing.T, samples []idSample) {
	t.Helper()
	for _, p := range idProblems(samples) {
		t.Error(p)
	}
}

// idProblems runs the statistical tests on samples, whose client IDs are
// 0, 1, 2...: as structured as client IDs get. It returns what failed.
func idProblems(samples []idSample) []string {
	var problems []string
	cells := func(f func(s idSample) uint16) []int {
		c := make([]int, 256)
		for _, s := range samples {
			c[f(s)&0xFF]++
		}
		return c
	}
	prev := samples[len(samples)-1].wire
	chi := []struct {
		what  string
		cells []int
	}{
		{"high byte", cells(func(s idSample) uint16 { return s.wire >> 8 })},
		{"low byte", cells(func(s idSample) uint16 { return s.wire })},
		{"high byte of (upstream − client)", cells(func(s idSample) uint16 { return (s.wire - s.client) >> 8 })},
		{"low byte of (upstream − client)", cells(func(s idSample) uint16 { return s.wire - s.client })},
		{"high byte of (upstream XOR client)", cells(func(s idSample) uint16 { return (s.wire ^ s.client) >> 8 })},
		{"high byte of the step from the previous ID", cells(func(s idSample) uint16 {
			d := s.wire - prev
			prev = s.wire
			return d >> 8
		})},
	}
	for _, c := range chi {
		stat, p := chiSquare(c.cells)
		if p < chiAlpha {
			problems = append(problems, fmt.Sprintf("%s: chi-square %.1f on 255 degrees of freedom, p = %.2g < %g: not uniform", c.what, stat, p, chiAlpha))
		}
	}
	// Each bit set in about half the IDs. Hoeffding: P(|ones - n/2| >= d)
	// <= 2 exp(-2 d²/n).
	d := math.Sqrt(float64(len(samples)) * math.Log(2/bitAlpha) / 2)
	for bit := range 16 {
		ones := 0
		for _, s := range samples {
			ones += int(s.wire>>bit) & 1
		}
		if math.Abs(float64(ones)-float64(len(samples))/2) >= d {
			problems = append(problems, fmt.Sprintf("bit %d set in %d of %d IDs: off by %.0f or more from half", bit, ones, len(samples), d))
		}
	}
	equal := 0
	for _, s := range samples {
		if s.wire == s.client {
			equal++
		}
	}
	if equal > maxEqualIDs {
		problems = append(problems, fmt.Sprintf("%d upstream IDs equal to the client's, want at most %d", equal, maxEqualIDs))
	}
	return problems
}

// chiSquare returns Pearson's statistic for cells that should be equally
// filled, and its p-value (the chi-square distribution's upper tail).
func chiSquare(cells []int) (stat, p float64) {
	n := 0
	for _, c := range cells {
		n += c
	}
	want := float64(n) / float64(len(cells))
	for _, c := range cells {
		stat += (float64(c) - want) * (float64(c) - want) / want
	}
	return stat, gammaQ(float64(len(cells)-1)/2, stat/2)
}

// gammaQ is the regularized upper incomplete gamma function Q(a, x): by its
// series below a+1, by its continued fraction (modified Lentz) above, where
// it is small and must stay accurate.
func gammaQ(a, x float64) float64 {
	const eps, tiny = 1e-15, 1e-300
	lg, _ := math.Lgamma(a)
	if x < a+1 {
		sum, term := 1/a, 1/a
		for n := 1; n < 1000 && math.Abs(term) > eps*math.Abs(sum); n++ {
			term *= x / (a + float64(n))
			sum += term
		}
		return 1 - sum*math.Exp(-x+a*math.Log(x)-lg)
	}
	b := x + 1 - a
	c, d := 1/tiny, 1/b
	h := d
	for i := 1; i < 1000; i++ {
		an := -float64(i) * (float64(i) - a)
		b += 2
		if d = an*d + b; math.Abs(d) < tiny {
			d = tiny
		}
		if c = b + an/c; math.Abs(c) < tiny {
			c = tiny
		}
		d = 1 / d
		del := d * c
		h *= del
		if math.Abs(del-1) < eps {
			break
		}
	}
	return math.Exp(-x+a*math.Log(x)-lg) * h
}

// gammaQ against values of the chi-square upper tail computed with mpmath
// (30 digits).
func TestGammaQ(t *testing.T) {
	for _, tt := range []struct{ x, df, want float64 }{
		{255, 255, 0.48822252177},
		{300, 255, 0.0277275220539},
		{400, 255, 1.66000252441e-8},
		{420, 255, 3.35288745214e-10},
		{3.84, 1, 0.0500435212487},
		{10, 3, 0.018566135463},
		{1, 10, 0.99982788437},
	} {
		if got := gammaQ(tt.df/2, tt.x/2); math.Abs(got-tt.want) > 1e-9*math.Max(tt.want, 1e-3) {
			t.Errorf("chi-square tail at %v on %v degrees of freedom: %.12g, want %.12g", tt.x, tt.df, got, tt.want)
		}
	}
}

// The checks fail the IDs a careless client would send.
func TestCheckIDsCatchesBadIDs(t *testing.T) {
	bad := map[string]func(client uint16, i int) uint16{
		"the client's ID":       func(c uint16, _ int) uint16 { return c },
		"the client's, XORed":   func(c uint16, _ int) uint16 { return c ^ 0x5A5A },
		"the client's, shifted": func(c uint16, _ int) uint16 { return c + 12345 },
		"a counter":             func(_ uint16, i int) uint16 { return uint16(7919 * i) },
	}
	for name, f := range bad {
		t.Run(name, func(t *testing.T) {
			samples := make([]idSample, idSamples)
			for i := range samples {
				samples[i] = idSample{client: uint16(i), wire: f(uint16(i), i)}
			}
			if len(idProblems(samples)) == 0 {
				t.Error("passed")
			}
		})
	}
}

// A DoT upstream's IDs: 10,000 queries, 2,000 at a time in flight on one
// connection, every ID distinct among those in flight, and the whole
// uniform and unrelated to the clients'.
func TestDoTQueryIDs(t *testing.T) {
	const batch = 2000 // 10,000 at once takes three times longer under -race, for no more to learn
	rec := new(idRecorder)
	srv := dnstest.New(t, dnstest.Options{Raw: rec.raw})
	// Nothing is answered until a batch is read: all of it in flight at
	// once. Each of batch senders sends one query per batch, and takes
	// its client IDs in order: batch k is client IDs k×batch onwards.
	srv.Behavior.ReverseBatch.Store(batch)
	d := newTestDoT(t, srv, func(o *DoTOptions) {
		o.PoolSize = 1
		o.MaxInFlightPerConn = maxMaxInFlight
		o.QueryTimeout = 4 * answerTimeout
	})
	samples := sendIDQueries(t, d, rec, batch)
	if got := srv.MaxOutstanding(); got != batch {
		t.Fatalf("at most %d queries in flight at once, want %d", got, batch)
	}
	for start := 0; start < idSamples; start += batch {
		seen := make(map[uint16]bool, batch)
		for _, s := range samples[start : start+batch] {
			if seen[s.wire] {
				t.Fatalf("ID %d twice among the queries in flight on one connection", s.wire)
			}
			seen[s.wire] = true
		}
	}
	checkIDs(t, samples)
}

// A plaintext upstream's IDs. Over UDP: tcp:// draws its IDs from the same
// generator, one query per connection at a time (plain_tcp.go), and a
// second 10,000 queries cost the suite a half-minute under -race to learn
// nothing more.
func TestPlainQueryIDs(t *testing.T) {
	rec := new(idRecorder)
	// A UDP server answering from wire bytes: dnstest's PlainServer decodes
	// every query, which under -race costs more than the rest of the test.
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf, out := make([]byte, dnswire.MaxMsgSize), make([]byte, 0, 512)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if out = rec.raw(out[:0], buf[:n]); len(out) > 0 {
				_, _ = pc.WriteToUDPAddrPort(out, from)
			}
		}
	}()
	t.Cleanup(func() { _ = pc.Close(); <-done })
	opts := testPlainOptions(nil, false)
	opts.Addr = pc.LocalAddr().(*net.UDPAddr).AddrPort()
	p, err := NewPlain(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	checkIDs(t, sendIDQueries(t, p, rec, 64))
}

// A DoH upstream sends every query with ID 0 (RFC 8484 §4.1: HTTP tells the
// answers apart, and equal requests can be cached), and gives the client's
// back on the answer.
func TestDoHQueryIDZero(t *testing.T) {
	var mu sync.Mutex
	ids := map[uint16]int{}
	_, d := newTestDoH(t, dnstest.Options{Handler: func(q *dns.Msg) *dns.Msg {
		mu.Lock()
		ids[q.Id]++
		mu.Unlock()
		return dnstest.DefaultHandler(q)
	}}, nil)
	for id := range uint16(100) {
		q := idQuery(t, id*653+1)
		ans, err := d.Exchange(context.Background(), q)
		if err != nil {
			t.Fatal(err)
		}
		if ans.ID != q.ID {
			t.Fatalf("answer with ID %d, want the client's %d", ans.ID, q.ID)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(ids) != 1 || ids[0] != 100 {
		t.Errorf("IDs on the wire %v, want 0 for all 100", ids)
	}
}
