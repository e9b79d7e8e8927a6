package resilience

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/unboundtest"
)

// The overload tests reproduce, against the built binary with its default
// limits, the attacks a process in the pod could make on the sidecar's
// resources, and hold it to what keeps a pod's DNS up: memory below the
// manifests' limit, the upstream kept in rotation, names that resolve still
// resolving, the probes answering within their timeouts. Their figures, at
// the attacks' full size, are BenchmarkFlood's.

// tcpMaxConns is TCP_MAX_CONNS's default.
const tcpMaxConns = 256

// floodCase is one attack: a flood against a sidecar with the default
// settings, watched for d. maxFDs bounds the sidecar's open descriptors,
// and maxInflight, when set, its queries in flight.
type floodCase struct {
	name        string
	d           time.Duration
	maxFDs      int
	maxInflight int
	flood       func(ctx context.Context, s *sidecar)
	// unbound, in the tests, has a real Unbound serve the flood's large
	// answers (floodUnbound), and sends the names the watch asks to a
	// dnstest upstream of their own (ROUTES): made and encrypted by the
	// race-instrumented test process, tens of megabytes of answers a
	// second starved it, and behind them, on connections that carry
	// answers in order, the names asked measured that rather than the
	// sidecar. The benchmark keeps one dnstest upstream for all.
	unbound bool
	// env adds to the sidecar's settings, or overrides their defaults.
	env []string
}

// nonReaderSlots bounds the queries in flight beside TCP clients that do
// not read: their blocked writes once held a slot each, and within seconds
// all of MAX_INFLIGHT; now a query's slot is free once its answer is made,
// and a few hundred are in flight at most, on a loaded machine.
const nonReaderSlots = 1024

// floodCases are the attacks, at the size the tests run them (full false)
// or at the size the benchmark reports (full true): the size at which they
// were first found to take a pod's DNS down.
//
// The TCP clients' answers all come through the upstream's connections,
// which carry them in order: at full size the 65,000-byte ones (130 MB/s)
// take whatever the machine can encrypt and decrypt, and the names that
// resolve queue behind them at the upstream. The tests ask for a fifth of
// that, which a loaded 2-core machine carries, so that what they hold the
// sidecar to is its own limits and not the machine's throughput; they
// bound the queries in flight, which before the unread budget grew with
// every blocked write.
func floodCases(full bool) []floodCase {
	d, bigRate, slowFor, tcpFor, admins := 4*time.Second, 2000, 5*time.Second, 8*time.Second, 5000
	nonReaderRate, atLimitRate := 5, 1
	if full {
		d, bigRate, slowFor, tcpFor, admins = 8*time.Second, 5000, 15*time.Second, 12*time.Second, 15000
		nonReaderRate, atLimitRate = 25, 2
	}
	return []floodCase{
		{
			// Datagrams of 65,000 bytes, each a query for a name the
			// upstream never answers followed by bytes that are not part
			// of it: a query in flight must not keep them.
			name:   "big datagrams",
			d:      d,
			maxFDs: 100,
			flood: func(ctx context.Context, s *sidecar) {
				floodUDP(ctx, s.DNS, bigRate, bigRate*int(d.Seconds()), 16, func(dst []byte, i int) []byte {
					return paddedQuery(dst, uint16(i), fmt.Sprintf("b%d.%s", i, slowZone), 65000)
				})
			},
		},
		{
			// Small queries for names the upstream never answers, more than
			// the pool's connections carry within QUERY_TIMEOUT: waiting for
			// the relay's own slots must not mark the upstream down, nor
			// starve the names it answers.
			name:   "slow names",
			d:      slowFor,
			maxFDs: 100,
			flood: func(ctx context.Context, s *sidecar) {
				floodUDP(ctx, s.DNS, 1500, 1500*int(slowFor.Seconds()), 16, func(dst []byte, i int) []byte {
					return append(dst, query(uint16(i), fmt.Sprintf("s%d.%s", i, slowZone), dns.TypeA, 1232)...)
				})
			},
		},
		{
			// TCP clients that pipeline queries for a 65,000-byte answer
			// and never read, opening a new connection when the sidecar
			// closes theirs: answers pile up once the kernel's buffers are
			// full, and before answers had a budget, each blocked write
			// held its answer's memory for TCP_IDLE_TIMEOUT.
			name:        "TCP non-readers",
			d:           tcpFor,
			maxFDs:      200,
			maxInflight: nonReaderSlots,
			unbound:     true,
			flood: func(ctx context.Context, s *sidecar) {
				floodTCPNonReaders(ctx, s.DNS, 80, nonReaderRate, bigZone, dns.TypeTXT)
			},
		},
		{
			// The same clients asking for 4,000-byte answers: before
			// answers had a budget, each blocked write also held a query
			// slot; at full size they held all of MAX_INFLIGHT within
			// seconds, denying UDP to the whole pod.
			name:        "TCP non-readers of mid-size answers",
			d:           tcpFor,
			maxFDs:      200,
			maxInflight: nonReaderSlots,
			unbound:     true,
			flood: func(ctx context.Context, s *sidecar) {
				floodTCPNonReaders(ctx, s.DNS, 80, nonReaderRate, midZone, dns.TypeTXT)
			},
		},
		{
			// As many such clients as TCP_MAX_CONNS lets in: the most answer
			// bytes TCP clients can make the sidecar hold.
			name:        "TCP non-readers at TCP_MAX_CONNS",
			d:           tcpFor,
			maxFDs:      tcpMaxConns + 100,
			maxInflight: nonReaderSlots,
			unbound:     true,
			flood: func(ctx context.Context, s *sidecar) {
				floodTCPNonReaders(ctx, s.DNS, tcpMaxConns, atLimitRate, bigZone, dns.TypeTXT)
			},
		},
		{
			// Connections to the admin listener that send half a request
			// header and wait.
			name:   "admin half headers",
			d:      d,
			maxFDs: 300,
			flood: func(ctx context.Context, s *sidecar) {
				floodAdminHalfHeaders(ctx, s.Admin, 5000, admins)
			},
		},
	}
}

// maxStall is how long the test process may itself have been kept from
// running during a flood for the run to measure the sidecar: the probes,
// the names asked and the upstreams are all in the test process, and on a
// machine busy with other work (and -race) it was seen to stall for 1.6 s.
// A run that stalled longer is run again, up to floodAttempts in all.
const (
	maxStall      = 250 * time.Millisecond
	floodAttempts = 3
)

func TestFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("floods take seconds each")
	}
	for _, fc := range floodCases(false) {
		t.Run(fc.name, func(t *testing.T) {
			_, r := runFlood(t, fc)
			judgeFlood(t, fc, r)
		})
	}
}

// runFlood runs fc against a new sidecar under a watch, again on a new one
// when the test process itself stalled past maxStall, up to floodAttempts
// in all, and returns the last sidecar, still running, and what the watch
// saw of it.
func runFlood(t *testing.T, fc floodCase) (*sidecar, *floodReport) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		s := startFlooded(t, fc.unbound, fc.env...)
		start := time.Now()
		r := watch(t, s, fc.d, func(ctx context.Context) { fc.flood(ctx, s) })
		t.Logf("%s (%s): %s", fc.name, time.Since(start).Round(time.Millisecond), r)
		if r.stall <= maxStall || attempt == floodAttempts {
			return s, r
		}
		t.Logf("the test process stalled %s: not a measurement of the sidecar, again", r.stall)
		_ = s.Stop(testkit.StopGrace)
	}
}

// judgeFlood holds what the watch saw of one flood to the bounds that keep
// a pod's DNS up.
func judgeFlood(t *testing.T, fc floodCase, r *floodReport) {
	t.Helper()
	if r.peakRSS >= manifestMemoryLimit {
		t.Errorf("peak RSS %.1f MiB, want below the manifests' limit of %d MiB",
			float64(r.peakRSS)/(1<<20), manifestMemoryLimit>>20)
	}
	if r.maxFDs > fc.maxFDs {
		t.Errorf("the sidecar held up to %d descriptors, want at most %d", r.maxFDs, fc.maxFDs)
	}
	if fc.maxInflight > 0 && r.maxInflight > fc.maxInflight {
		t.Errorf("up to %d queries in flight, want at most %d", r.maxInflight, fc.maxInflight)
	}
	// These depend on the test process running too.
	stalled := ""
	if r.stall > maxStall {
		stalled = fmt.Sprintf(" (the test process stalled %s in each of %d attempts)", r.stall, floodAttempts)
	}
	if r.answered != r.asked {
		t.Errorf("names the upstream answers: %d of %d answered (%d SERVFAIL, %d lost)%s",
			r.answered, r.asked, r.servfail, r.lost, stalled)
	}
	if r.markedDown > 0 {
		t.Errorf("the upstream was marked down %d times; it answered throughout%s", r.markedDown, stalled)
	}
	if r.probeFails > 0 || r.probeMax > time.Second {
		t.Errorf("probes: %d of %d failed, slowest %s; want all answered within 1s%s",
			r.probeFails, r.probes, r.probeMax, stalled)
	}
}

// startFlooded starts a flood upstream and a sidecar with the default
// settings toward it, and env; with unbound, the flood's upstream is floodUnbound
// and the names the watch asks (okZone) go to a dnstest upstream of their
// own.
func startFlooded(t testing.TB, unbound bool, env ...string) *sidecar {
	t.Helper()
	up := floodUpstream(t)
	if !unbound {
		return startSidecar(t, append(upstreamEnv(t, up), env...)...)
	}
	u := floodUnbound(t)
	ca := filepath.Join(t.TempDir(), "ok-ca.pem") // a route trusts its own ;ca= only
	if err := os.WriteFile(ca, up.CAPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return startSidecar(t, append([]string{
		fmt.Sprintf("UPSTREAMS=tls://%s#%s", u.Addr, u.ServerName), "TLS_CA_FILE=" + u.CAFile,
		fmt.Sprintf("ROUTES=%s=tls://%s#%s;ca=%s", okZone, up.Addr, up.ServerName, ca)}, env...)...)
}

// floodUnbound is an Unbound, shared by the package's tests, that answers
// every name under bigZone and midZone with TXT records of about their
// sizes (Unbound's redirect zones: the apex's records, for any name below).
func floodUnbound(t testing.TB) *unboundtest.Server {
	t.Helper()
	var conf []string
	for _, z := range []struct {
		zone string
		size int
	}{{bigZone, bigAnswerSize}, {midZone, midAnswerSize}} {
		conf = append(conf, fmt.Sprintf("local-zone: %q redirect", z.zone))
		// A record: a 2-byte owner name (a pointer to the question), 10
		// bytes of type, class, TTL and length, and its 231 of text.
		for i := range z.size / 243 {
			conf = append(conf, fmt.Sprintf(`local-data: '%s 60 IN TXT "%04d%s"'`, z.zone, i, strings.Repeat("x", 226)))
		}
	}
	return unboundtest.Shared(t, unboundtest.Options{ExtraConfig: conf})
}

// TestIdleTCPConnections: a process holding 1,000 idle connections (all of
// TCP_MAX_CONNS and more; the sidecar closes those over the limit at once)
// does not lock other clients out of TCP for TCP_IDLE_TIMEOUT.
func TestIdleTCPConnections(t *testing.T) {
	up := floodUpstream(t)
	s := startSidecar(t, upstreamEnv(t, up)...)
	idle := holdIdleTCP(t, s.DNS, 1000)
	defer closeAll(idle)
	start := time.Now()
	testkit.WaitFor(t, fmt.Sprintf("a new TCP client answered beside %d idle connections", len(idle)), 3*time.Second, func() error {
		r, err := ask(s.DNS, "tcp", "idle."+okZone, false, time.Second)
		if err != nil {
			return err
		}
		return checkA(r, "idle."+okZone)
	})
	t.Logf("a new TCP client was answered %s after %d idle connections were opened",
		time.Since(start).Round(time.Millisecond), len(idle))
}

// holdIdleTCP opens n TCP connections to addr that send nothing.
func holdIdleTCP(t testing.TB, addr string, n int) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	for range n {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			closeAll(conns)
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	return conns
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		_ = c.Close()
	}
}

// TestFloodUpstream: both floods' upstreams answer any name under bigZone
// and midZone, through the sidecar, with TXT records of about their sizes
// for that name; otherwise the TCP floods would measure small error
// answers.
func TestFloodUpstream(t *testing.T) {
	for _, unbound := range []bool{false, true} {
		s := startFlooded(t, unbound)
		for _, tt := range []struct {
			zone string
			size int
		}{{bigZone, bigAnswerSize}, {midZone, midAnswerSize}} {
			name := "q1.c2-3." + tt.zone
			q := new(dns.Msg)
			q.SetQuestion(name, dns.TypeTXT)
			r, _, err := (&dns.Client{Net: "tcp", Timeout: 5 * time.Second}).Exchange(q, s.DNS)
			if err != nil {
				t.Fatalf("unbound %v, %s: %v", unbound, name, err)
			}
			if r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 || r.Answer[0].Header().Name != name {
				t.Fatalf("unbound %v, %s: rcode %s, %d records, first %v", unbound, name, dns.RcodeToString[r.Rcode], len(r.Answer), r.Answer)
			}
			r.Compress = true // as it came: its owner names point at the question's
			if n := r.Len(); n < tt.size*9/10 || n > tt.size {
				t.Errorf("unbound %v, %s: answer of %d bytes, want about %d", unbound, name, n, tt.size)
			}
		}
	}
}
