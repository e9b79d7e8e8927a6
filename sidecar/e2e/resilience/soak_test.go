package resilience

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
)

// The churn soak restarts the sidecar's upstream every few seconds while
// clients ask names, and checks what a long-lived pod relies on: that
// nothing the restarts cost the sidecar (connections, their goroutines,
// their buffers) stays behind once they stop, and that however often the
// upstream drops its connections the sidecar never holds more to it than
// its pool allows. The connections are counted by the kernel (the sockets
// among the sidecar's descriptors connected to the upstream's port), not by
// the sidecar's own gauge.

var (
	soakDuration = flag.Duration("soak-duration", time.Minute,
		"how long BenchmarkChurnSoak restarts the upstream for")
	soakEnv = flag.String("soak-env", "",
		"more of the sidecar's environment for BenchmarkChurnSoak, comma-separated (GOGC=20 tells retained memory from a lazy heap)")
)

// churnPlan is one soak: its phases, how the upstream is restarted and the
// load.
type churnPlan struct {
	warmup, churn, settle time.Duration
	every                 time.Duration // from one restart to the next
	downMin, downMax      time.Duration // how long the upstream stays down
	// delay is how long the upstream takes to answer: long enough that
	// the queries in flight on a connection make the pool grow to its
	// size, so that the churn tests the bound of a full pool.
	delay               time.Duration
	udpRate             int      // queries a second over UDP
	tcpClients, tcpRate int      // TCP clients, queries a second each
	env                 []string // settings beside the upstream's
}

// Bounds of the soak's checks, beside a baseline taken at rest after the
// warm-up, with the cache full. The pool may hold another number of
// connections than at the baseline (each a descriptor, a reader and a
// writer goroutine), and the scrape of /metrics that counts the goroutines
// is one of them.
const (
	soakFDSlack = 2 // descriptors, beside one per pool connection
	// goroutines, beside two per pool connection
	soakGoroutineSlack = 4
	// RSS may grow this much: the Go runtime returns freed memory to the
	// kernel a little at a time, and the heap's goal moves with what was
	// live at the last collection. With GOGC=20 (soak) a minute's soak
	// grew by 0.2 MiB at most, and three minutes' by 0.2 MiB.
	soakRSSSlack = 4 << 20
	// How long the sidecar has, once the churn stops, to answer a new name
	// again (its probes back off to HEALTH_CHECK_INTERVAL), and once the
	// load stops, to be back within the bounds.
	soakRecoverWithin = 15 * time.Second
	soakSettleWithin  = 30 * time.Second
)

// soakSnapshot is the sidecar at rest.
type soakSnapshot struct {
	rss             int64 // VmRSS
	goroutines, fds int
	upstreamConns   int // held to the upstream, as the kernel counts them
}

func (s soakSnapshot) String() string {
	return fmt.Sprintf("RSS %.1f MiB, %d goroutines, %d descriptors, %d upstream connections",
		float64(s.rss)/(1<<20), s.goroutines, s.fds, s.upstreamConns)
}

// soakReport is what a soak saw.
type soakReport struct {
	poolSize                           int
	asked, answered, servfail, lost    int64 // during the churn and the settle
	cachedAsked, cachedAnswered        int64 // of those, names in the cache
	wrong                              int64 // answers neither right nor SERVFAIL
	firstWrong                         string
	restarts, aborts                   int
	maxConns                           []testkit.TCPSocket // most sockets held to the upstream at once
	connSamples                        int
	before, after                      soakSnapshot
	recovered                          bool // a new name answered after the churn
	recoverAfter                       time.Duration
	settledWithinBounds                bool
	churnErr, samplerErr, recoveredErr error
}

func (r *soakReport) String() string {
	return fmt.Sprintf("%d restarts (%d resets); %d asked, %.2f%% answered, %.2f%% SERVFAIL, %d lost, %d wrong; "+
		"cached names %.2f%% answered; upstream connections ≤ %d (pool %d, %d samples); before: %s; after: %s; "+
		"answering again %s after the churn",
		r.restarts, r.aborts, r.asked, 100*share(r.answered, r.asked), 100*share(r.servfail, r.asked), r.lost, r.wrong,
		100*share(r.cachedAnswered, r.cachedAsked), len(r.maxConns), r.poolSize, r.connSamples, r.before, r.after, r.recoverAfter.Round(time.Millisecond))
}

func share(n, of int64) float64 {
	if of == 0 {
		return 0
	}
	return float64(n) / float64(of)
}

// judge holds r to the soak's bounds.
func (r *soakReport) judge(t testing.TB) {
	t.Helper()
	for _, err := range []error{r.churnErr, r.samplerErr, r.recoveredErr} {
		if err != nil {
			t.Error(err)
		}
	}
	if len(r.maxConns) > r.poolSize {
		t.Errorf("the sidecar held up to %d connections to the upstream, more than its pool of %d: %v", len(r.maxConns), r.poolSize, r.maxConns)
	}
	if r.connSamples == 0 {
		t.Error("the upstream connections were never counted")
	}
	if r.wrong > 0 {
		t.Errorf("%d answers neither the upstream's nor SERVFAIL; first: %s", r.wrong, r.firstWrong)
	}
	if !r.settledWithinBounds {
		t.Errorf("%s after the load, want at most %d goroutines and %d descriptors (%s before, slack %d goroutines, "+
			"%d descriptors, and per pool connection 2 goroutines and a descriptor)",
			r.after, r.goroutineBound(), r.fdBound(), r.before, soakGoroutineSlack, soakFDSlack)
	}
	if r.after.rss > r.before.rss+soakRSSSlack {
		t.Errorf("RSS %.1f MiB after the load, %.1f MiB before: grew more than %d MiB",
			float64(r.after.rss)/(1<<20), float64(r.before.rss)/(1<<20), soakRSSSlack>>20)
	}
}

func (r *soakReport) goroutineBound() int {
	return r.before.goroutines + soakGoroutineSlack + 2*r.poolSize
}
func (r *soakReport) fdBound() int { return r.before.fds + soakFDSlack + r.poolSize }

// report sets r's figures as the benchmark's metrics.
func (r *soakReport) report(b *testing.B) {
	b.ReportMetric(100*share(r.answered, r.asked), "answered-%")
	b.ReportMetric(100*share(r.servfail, r.asked), "servfail-%")
	b.ReportMetric(100*share(r.cachedAnswered, r.cachedAsked), "cached-answered-%")
	b.ReportMetric(float64(len(r.maxConns)), "max-upstream-conns")
	b.ReportMetric(float64(r.poolSize), "pool-size")
	b.ReportMetric(float64(r.before.rss)/(1<<20), "RSS-before-MiB")
	b.ReportMetric(float64(r.after.rss)/(1<<20), "RSS-after-MiB")
	b.ReportMetric(float64(r.before.goroutines), "goroutines-before")
	b.ReportMetric(float64(r.after.goroutines), "goroutines-after")
	b.ReportMetric(float64(r.before.fds), "fds-before")
	b.ReportMetric(float64(r.after.fds), "fds-after")
	b.ReportMetric(float64(r.restarts), "restarts")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkChurnSoak restarts the upstream every 3 s, for -soak-duration
// (a minute by default), under a steady load of 300 queries a second over
// UDP and 40 over TCP (eight clients), half of them new names, which the
// upstream answers in 200 ms, and half cached ones, and reports how the
// queries fared, the most connections the sidecar held to the upstream and
// its resources at rest before and after; it fails on the bounds TestChurn
// holds it to. Run it once: -benchtime 1x.
func BenchmarkChurnSoak(b *testing.B) {
	for b.Loop() {
		r := soak(b, churnPlan{
			warmup: 10 * time.Second, churn: *soakDuration, settle: 10 * time.Second,
			every: 3 * time.Second, downMin: 200 * time.Millisecond, downMax: 1500 * time.Millisecond,
			delay: 200 * time.Millisecond, udpRate: 300, tcpClients: 8, tcpRate: 5,
			env: splitEnv(*soakEnv),
		})
		b.Logf("%s", r)
		r.judge(b)
		r.report(b)
	}
}

// splitEnv splits a comma-separated list of settings.
func splitEnv(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// TestChurn is the soak made short: about five restarts in ten seconds under a
// lighter load, and a cache of 1,000 answers, filled in a second rather than
// ten. It holds the sidecar to the bounds the code keeps whatever the
// machine's load: never more connections to the upstream than the pool, no
// wrong answer, answering again once the upstream is back, and goroutines,
// descriptors and memory back to where they were.
func TestChurn(t *testing.T) {
	if testing.Short() {
		t.Skip("the churn takes seconds")
	}
	r := soak(t, churnPlan{
		warmup: 2 * time.Second, churn: 10 * time.Second, settle: 2 * time.Second,
		every: 2 * time.Second, downMin: 200 * time.Millisecond, downMax: 800 * time.Millisecond,
		delay: 400 * time.Millisecond, udpRate: 200, tcpClients: 2, tcpRate: 2,
		env: []string{"CACHE_SIZE=1000"},
	})
	t.Logf("%s", r)
	r.judge(t)
}

// soak runs plan against a sidecar with the default settings (but plan.env)
// toward an upstream it restarts.
func soak(t testing.TB, plan churnPlan) *soakReport {
	t.Helper()
	up := dnstest.New(t, dnstest.Options{Raw: dnstest.ReflectRaw})
	// GOGC=20 keeps the heap within a fifth of what is live, so that RSS
	// after the load tells memory kept from garbage not yet collected. At
	// the default of 100 the heap may hold as much garbage as live data
	// when either snapshot is taken, and nothing forces a collection once
	// the load stops: a minute's soak then read from 3 to 8 MiB of growth
	// where GOGC=20 read none. plan.env may set another.
	env := append(append([]string{"GOGC=20"}, upstreamEnv(t, up)...), plan.env...)
	cfg, err := config.Load(nil, env)
	if err != nil {
		t.Fatal(err)
	}
	s := startSidecar(t, env...)
	pid, port := s.Cmd.Process.Pid, int(up.Addr.Port())
	r := &soakReport{poolSize: cfg.UpstreamPoolSize}

	// Counted from the start: the first connections, the warm-up's.
	sampling, stopSampling := context.WithCancel(context.Background())
	var sampler sync.WaitGroup
	sampler.Go(func() { r.maxConns, r.connSamples, r.samplerErr = sampleConns(sampling, pid, port) })
	defer func() { stopSampling(); sampler.Wait() }()

	// The cache full first: the new names asked later then take the place
	// of others, and what the cache holds does not grow the RSS.
	fillCache(t, s, cfg.CacheSize)
	up.Behavior.SetDelay(plan.delay)
	warm, stopWarm := context.WithCancel(context.Background())
	var warmLoad sync.WaitGroup
	warmLoad.Go(func() { soakLoad(warm, s, plan, "w") })
	time.Sleep(plan.warmup) // the warm-up is a length of load, not a condition
	stopWarm()
	warmLoad.Wait()
	r.before = atRest(t, s, pid, port)

	load, stopLoad := context.WithCancel(context.Background())
	var loaded sync.WaitGroup
	var counts *soakCounts
	loaded.Go(func() { counts = soakLoad(load, s, plan, "c") })
	r.restarts, r.aborts, r.churnErr = churn(up, plan)
	start := time.Now()
	r.recoveredErr = waitAnswered(s, soakRecoverWithin)
	r.recoverAfter = time.Since(start)
	time.Sleep(plan.settle) // more load, with the upstream up
	stopLoad()
	loaded.Wait()
	r.asked, r.answered, r.servfail, r.lost, r.wrong = counts.asked.Load(), counts.answered.Load(),
		counts.servfail.Load(), counts.lost.Load(), counts.wrong.Load()
	r.cachedAsked, r.cachedAnswered = counts.cachedAsked.Load(), counts.cachedAnswered.Load()
	if w := counts.firstWrong.Load(); w != nil {
		r.firstWrong = *w
	}

	deadline := time.Now().Add(soakSettleWithin)
	for {
		r.after = atRest(t, s, pid, port)
		r.settledWithinBounds = r.after.goroutines <= r.goroutineBound() && r.after.fds <= r.fdBound()
		if r.settledWithinBounds || time.Now().After(deadline) {
			break
		}
		time.Sleep(testkit.PollInterval)
	}
	return r
}

// churn stops the upstream every plan.every, in order or with resets at
// random, for a random time between plan.downMin and plan.downMax, and
// starts it again, for plan.churn. The upstream is up when it returns.
func churn(up *dnstest.Server, plan churnPlan) (restarts, aborts int, err error) {
	tick := time.NewTicker(plan.every)
	defer tick.Stop()
	end := time.After(plan.churn)
	for {
		select {
		case <-end:
			return restarts, aborts, nil
		case <-tick.C:
		}
		mode := dnstest.StopGraceful
		if rand.N(2) == 0 {
			mode, aborts = dnstest.StopAbort, aborts+1
		}
		if err := up.Stop(mode); err != nil {
			return restarts, aborts, fmt.Errorf("stopping the upstream: %w", err)
		}
		time.Sleep(plan.downMin + rand.N(plan.downMax-plan.downMin))
		if err := up.Restart(); err != nil {
			return restarts, aborts, fmt.Errorf("restarting the upstream: %w", err)
		}
		restarts++
	}
}

// sampleConns counts, every 50 ms until ctx ends, the sockets process pid
// holds to port, and returns the most it saw, which they were, and how many
// samples it took.
func sampleConns(ctx context.Context, pid, port int) (most []testkit.TCPSocket, samples int, err error) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		held, err := testkit.TCPSockets(pid, port)
		if err != nil {
			return most, samples, fmt.Errorf("counting the connections to the upstream: %w", err)
		}
		if len(held) > len(most) {
			most = held
		}
		samples++
		select {
		case <-ctx.Done():
			return most, samples, nil
		case <-tick.C:
		}
	}
}

// soakCounts counts what came back to the load's queries.
type soakCounts struct {
	asked, answered, servfail, lost, wrong atomic.Int64
	cachedAsked, cachedAnswered            atomic.Int64 // of those, names in the cache
	firstWrong                             atomic.Pointer[string]
}

// note counts the answer r (or the error err) to a query for name, one of
// the cached ones or not.
func (c *soakCounts) note(name string, cached bool, r *dns.Msg, err error) {
	c.asked.Add(1)
	if cached {
		c.cachedAsked.Add(1)
	}
	switch {
	case err != nil:
		c.lost.Add(1)
	case r.Rcode == dns.RcodeServerFailure:
		c.servfail.Add(1)
	case checkA(r, name) == nil:
		c.answered.Add(1)
		if cached {
			c.cachedAnswered.Add(1)
		}
	default:
		c.wrong.Add(1)
		w := checkA(r, name).Error()
		c.firstWrong.CompareAndSwap(nil, &w)
	}
}

// soakCachedNames is how many names the load asks again and again: the
// first of those fillCache asks.
const soakCachedNames = 200

// soakName is the load's ith name: every other one new, the others among
// soakCachedNames. tag keeps one phase's new names from another's.
func soakName(tag string, i int64) (name string, cached bool) {
	if i%2 == 0 {
		return fillName(int((i / 2) % soakCachedNames)), true
	}
	return fmt.Sprintf("%s%d.soak.test.", tag, i), false
}

func fillName(i int) string { return fmt.Sprintf("fill%d.soak.test.", i) }

// soakLoad asks names through s at plan's rates until ctx ends, and counts
// what came back.
func soakLoad(ctx context.Context, s *sidecar, plan churnPlan, tag string) *soakCounts {
	c := &soakCounts{}
	var next atomic.Int64 // the next name's number, over UDP and TCP
	var wg sync.WaitGroup
	wg.Go(func() {
		var asks sync.WaitGroup
		pace(ctx, plan.udpRate, math.MaxInt, func(int) bool {
			asks.Go(func() {
				name, cached := soakName(tag, next.Add(1))
				r, err := ask(s.DNS, "udp", name, true, 3*time.Second)
				c.note(name, cached, r, err)
			})
			return true
		})
		asks.Wait()
	})
	for range plan.tcpClients {
		wg.Go(func() {
			for ctx.Err() == nil {
				soakTCPClient(ctx, s, plan.tcpRate, c, func() (string, bool) { return soakName(tag, next.Add(1)) })
			}
		})
	}
	wg.Wait()
	return c
}

// soakTCPClient asks names on one TCP connection, one at a time, rate a
// second, until ctx ends or the connection fails.
func soakTCPClient(ctx context.Context, s *sidecar, rate int, c *soakCounts, name func() (string, bool)) {
	client := &dns.Client{Net: "tcp", Timeout: 3 * time.Second}
	conn, err := client.DialContext(ctx, s.DNS)
	if err != nil {
		select { // the listener is full or gone: try again soon
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
		return
	}
	defer conn.Close()
	pace(ctx, rate, math.MaxInt, func(int) bool {
		n, cached := name()
		q := new(dns.Msg)
		q.SetQuestion(n, dns.TypeA)
		r, _, err := client.ExchangeWithConnContext(ctx, q, conn)
		if err != nil && ctx.Err() != nil {
			return false // cut short by the end of the load: not counted
		}
		c.note(n, cached, r, err)
		return err == nil
	})
}

// fillCache asks n new names through s, so that its cache of n answers is
// full.
func fillCache(t testing.TB, s *sidecar, n int) {
	t.Helper()
	const clients = 8
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for c := range clients {
		wg.Go(func() {
			conn, err := dns.Dial("udp", s.DNS)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			for i := c; i < n; i += clients {
				name := fillName(i)
				q := new(dns.Msg)
				q.SetQuestion(name, dns.TypeA)
				q.SetEdns0(1232, false)
				_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
				if err := conn.WriteMsg(q); err != nil {
					errs <- err
					return
				}
				r, err := conn.ReadMsg()
				if err == nil {
					err = checkA(r, name)
				}
				if err != nil {
					errs <- fmt.Errorf("filling the cache: %s: %w", name, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	kept, _ := metricValue(s.metrics(t), "dot_sidecar_cache_entries", "type", "success")
	if int(kept) < n*99/100 {
		t.Fatalf("%v answers cached of %d asked", kept, n)
	}
}

// atRest waits for the sidecar to have no query in flight and no client TCP
// connection open, then takes a snapshot of it.
func atRest(t testing.TB, s *sidecar, pid, port int) soakSnapshot {
	t.Helper()
	var snap soakSnapshot
	testkit.WaitFor(t, "the sidecar at rest", soakSettleWithin, func() error {
		fams := s.metrics(t)
		inflight, _ := metricValue(fams, "dot_sidecar_server_inflight_queries")
		tcp, _ := metricValue(fams, "dot_sidecar_server_tcp_connections_open")
		if inflight != 0 || tcp != 0 {
			return fmt.Errorf("%v queries in flight, %v client TCP connections", inflight, tcp)
		}
		g, ok := metricValue(fams, "go_goroutines")
		if !ok {
			return testkit.Permanent(errors.New("/metrics has no go_goroutines"))
		}
		snap.goroutines = int(g)
		var err error
		if snap.fds, err = testkit.OpenFDs(pid); err != nil {
			return testkit.Permanent(err)
		}
		if snap.rss, err = testkit.ProcSize(pid, "VmRSS"); err != nil {
			return testkit.Permanent(err)
		}
		if snap.upstreamConns, _, err = testkit.TCPConns(pid, port); err != nil {
			return testkit.Permanent(err)
		}
		return nil
	})
	return snap
}

// waitAnswered waits for s to answer a new name with the upstream's
// answer.
func waitAnswered(s *sidecar, within time.Duration) error {
	deadline := time.Now().Add(within)
	for i := 0; ; i++ {
		name := fmt.Sprintf("back%d.soak.test.", i)
		r, err := ask(s.DNS, "udp", name, true, 3*time.Second)
		if err == nil {
			err = checkA(r, name)
		}
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no new name answered within %s of the last restart: %w", within, err)
		}
		time.Sleep(testkit.PollInterval)
	}
}
