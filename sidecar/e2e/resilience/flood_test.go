package resilience

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
)

// The floods of this file attack the built binary the way a process in the
// pod could, on loopback, each bounded in time and in count. A flood runs
// beside a watch (watch.run): a client asking names the upstream answers,
// the kubelet's three probes, and samples of the sidecar's descriptors;
// what the watch saw is a floodReport, which the tests hold to bounds and
// the benchmarks report.

// Names the flood upstream knows. The floods ask a new name each time, as
// an attacker would, so that every query misses the sidecar's cache.
const (
	slowZone = "slow.flood.test." // never answered
	bigZone  = "big.flood.test."  // TXT answers of bigAnswerSize bytes
	midZone  = "mid.flood.test."  // TXT answers of midAnswerSize bytes
	okZone   = "ok.flood.test."   // answered at once
)

const (
	bigAnswerSize = 65000 // about the largest answer TCP can frame
	midAnswerSize = 4000  // a large DNSSEC-signed RRset's
)

// manifestMemoryLimit is the sidecar container's memory limit in
// manifests/base.
const manifestMemoryLimit = 128 << 20

// floodUpstream is a DoT server that never answers names under slowZone,
// answers names under bigZone and midZone with TXT records of their sizes
// and any other question with one A record, all without decoding more than
// the question.
func floodUpstream(t testing.TB) *dnstest.Server {
	t.Helper()
	slow := wireName(slowZone)
	zones := []struct {
		name     []byte
		template []byte
	}{
		{wireName(bigZone), txtTemplate(t, bigZone, bigAnswerSize)},
		{wireName(midZone), txtTemplate(t, midZone, midAnswerSize)},
	}
	return dnstest.New(t, dnstest.Options{Raw: func(dst, q []byte) []byte {
		if len(q) < dnswireHeader {
			return dst
		}
		name := bytes.ToLower(questionName(q))
		if bytes.HasSuffix(name, slow) {
			return dst
		}
		for _, z := range zones {
			if bytes.HasSuffix(name, z.name) && len(q) >= dnswireHeader+len(name)+4 {
				// The template's header with the query's ID, the query's
				// question, then the template's records, whose owner
				// names point at the question's.
				start := len(dst)
				dst = append(dst, z.template[:dnswireHeader]...)
				copy(dst[start:], q[:2])
				dst = append(dst, q[dnswireHeader:dnswireHeader+len(name)+4]...)
				return append(dst, z.template[dnswireHeader+len(z.name)+4:]...)
			}
		}
		return dnstest.ReflectRaw(dst, q)
	}})
}

const dnswireHeader = 12

// txtTemplate is an answer to name TXT of about size bytes, ID 0, whose
// records' owner names are pointers to the question's name (offset 12), so
// that another question can take its place.
func txtTemplate(t testing.TB, name string, size int) []byte {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(name, dns.TypeTXT)
	r := new(dns.Msg)
	r.SetReply(q)
	r.Id = 0
	r.Compress = true
	for i := 0; r.Len() < size-300; i++ {
		r.Answer = append(r.Answer, &dns.TXT{
			Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60},
			Txt: []string{fmt.Sprintf("%04d%s", i, strings.Repeat("x", 250))},
		})
	}
	b, err := r.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// wireName is name in uncompressed wire form.
func wireName(name string) []byte {
	b := make([]byte, 256)
	n, err := dns.PackDomainName(name, b, 0, nil, false)
	if err != nil {
		panic(err)
	}
	return b[:n]
}

// questionName returns the first question's name of query q, wire form, or
// nil.
func questionName(q []byte) []byte {
	end := dnswireHeader
	for end < len(q) && q[end] != 0 {
		if q[end]&0xC0 != 0 {
			return nil
		}
		end += int(q[end]) + 1
	}
	if end >= len(q) {
		return nil
	}
	return q[dnswireHeader : end+1]
}

// query packs a query for name and type with the given ID, EDNS when
// udpSize > 0.
func query(id uint16, name string, qtype uint16, udpSize uint16) []byte {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.Id = id
	if udpSize > 0 {
		m.SetEdns0(udpSize, false)
	}
	b, err := m.Pack()
	if err != nil {
		panic(err)
	}
	return b
}

// pace calls send for items 0, 1, ... at rate a second until ctx ends or n
// have been sent (send reporting false stops it too), and returns how many
// it sent. It catches up after a stall rather than dropping items, and
// wakes when the next item is due, or every millisecond at rates above a
// thousand: eighty slow senders ticking every millisecond cost the
// race-instrumented test process more than the flood they sent.
func pace(ctx context.Context, rate, n int, send func(i int) bool) int {
	start := time.Now()
	interval := time.Second / time.Duration(rate)
	timer := time.NewTimer(0)
	defer timer.Stop()
	i := 0
	for i < n {
		due := min(n, int(time.Since(start).Seconds()*float64(rate))+1)
		for ; i < due; i++ {
			if !send(i) {
				return i
			}
		}
		// Item i is due at start + i*interval.
		timer.Reset(max(time.Until(start.Add(time.Duration(i)*interval)), time.Millisecond))
		select {
		case <-ctx.Done():
			return i
		case <-timer.C:
		}
	}
	return i
}

// floodUDP sends the datagrams msg appends to dst to addr, rate a second, at most
// n, until ctx ends, from socks sockets (a spread of source ports, as many
// clients would have), and drains what comes back. It returns the count
// sent.
func floodUDP(ctx context.Context, addr string, rate, n, socks int, msg func(dst []byte, i int) []byte) int {
	return floodUDPReplies(ctx, addr, rate, n, socks, msg, nil)
}

// floodUDPReplies is floodUDP handing each datagram that comes back to
// reply (when not nil), from one goroutine per socket.
func floodUDPReplies(ctx context.Context, addr string, rate, n, socks int, msg func(dst []byte, i int) []byte, reply func([]byte)) int {
	var conns []*net.UDPConn
	for range socks {
		c, err := net.Dial("udp", addr)
		if err != nil {
			panic(err)
		}
		conns = append(conns, c.(*net.UDPConn))
	}
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() {
			buf := make([]byte, 65535)
			for {
				n, err := c.Read(buf)
				if err != nil {
					return
				}
				if reply != nil {
					reply(buf[:n])
				}
			}
		})
	}
	var buf []byte // pace sends from one goroutine
	sent := pace(ctx, rate, n, func(i int) bool {
		buf = msg(buf[:0], i)
		_, _ = conns[i%len(conns)].Write(buf)
		return true
	})
	for _, c := range conns {
		_ = c.Close()
	}
	wg.Wait()
	return sent
}

// floodTCPNonReaders keeps conns connections open that each pipeline
// queries for names under zone, rate a second each, and never read an
// answer, until ctx ends. A connection's writes block once the sidecar stops reading from it;
// one the sidecar closes is opened again. Each asks for the smallest
// receive buffer and small segments, as an attacker would: the sidecar's
// writes then block after kilobytes rather than megabytes.
func floodTCPNonReaders(ctx context.Context, addr string, conns, rate int, zone string, qtype uint16) {
	var wg sync.WaitGroup
	for i := range conns {
		wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				nonReader(ctx, addr, rate, fmt.Sprintf("c%d-%d", i, n), zone, qtype)
			}
		})
	}
	wg.Wait()
}

// nonReader is one connection of floodTCPNonReaders, named conn.
func nonReader(ctx context.Context, addr string, rate int, conn, zone string, qtype uint16) {
	d := net.Dialer{Timeout: 2 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			// Before the connection is made, so that the window it
			// offers is this small from the start, and the segments the
			// sidecar may send are small: on loopback they would be
			// 64 KiB, and the kernel sizes a socket's send buffer by
			// them, to megabytes.
			serr = cmp.Or(syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 1),
				syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_MAXSEG, 536))
		})
		return cmp.Or(err, serr)
	}}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		<-ctx.Done() // no more connections to be had: hold what we have
		return
	}
	stop := context.AfterFunc(ctx, func() { _ = c.Close() })
	defer stop()
	defer c.Close()
	var frame []byte
	pace(ctx, rate, math.MaxInt, func(i int) bool {
		q := query(uint16(i), fmt.Sprintf("q%d.%s.%s", i, conn, zone), qtype, 0)
		frame = binary.BigEndian.AppendUint16(frame[:0], uint16(len(q)))
		frame = append(frame, q...)
		_, err := c.Write(frame)
		return err == nil
	})
}

// halfHeader is the start of an HTTP request that never ends.
const halfHeader = "GET /livez HTTP/1.1\r\nHost: flood\r\nUser-Agent: "

// floodAdminHalfHeaders opens up to n connections to the admin listener at
// addr, rate a second, sends each halfHeader, and holds them all until ctx
// ends. It returns how many it opened. They come from 127.0.0.2, the probes
// from 127.0.0.1: a flood from a pod comes from another address than the
// kubelet's probes.
func floodAdminHalfHeaders(ctx context.Context, addr string, rate, n int) int {
	var mu sync.Mutex
	var conns []net.Conn
	d := net.Dialer{Timeout: time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	opened := pace(ctx, rate, n, func(int) bool {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			return ctx.Err() == nil // the listener's backlog is full: keep trying
		}
		_, _ = c.Write([]byte(halfHeader))
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
		return true
	})
	<-ctx.Done()
	for _, c := range conns {
		_ = c.Close()
	}
	return opened
}

// floodReport is what a watch saw while a flood ran.
type floodReport struct {
	asked, answered, servfail, lost int             // answered-name queries over UDP
	latencies                       []time.Duration // of those answered, sorted
	probes, probeFails              int             // /livez, /readyz and /startupz requests
	probeMax, livezMax              time.Duration   // slowest probe answer, slowest /livez answer
	maxFDs                          int             // the sidecar's open descriptors, sampled
	maxInflight                     int             // dot_sidecar_server_inflight_queries, sampled
	peakRSS                         int64           // VmHWM at the end
	markedDown                      int             // dot_sidecar_upstream_marked_down_total at the end
	cpu                             float64         // the sidecar's CPU seconds, user and system, flood and watch
	stall                           time.Duration   // the longest the test process itself was kept from running
}

func (r *floodReport) percentile(p float64) time.Duration {
	if len(r.latencies) == 0 {
		return 0
	}
	return r.latencies[min(len(r.latencies)-1, int(float64(len(r.latencies))*p))]
}

func (r *floodReport) String() string {
	return fmt.Sprintf("peak RSS %.1f MiB; answered names: %d asked, %d NOERROR, %d SERVFAIL, %d lost, p50 %s p99 %s max %s; "+
		"probes: %d, %d failed, slowest %s (/livez %s); descriptors ≤ %d; in flight ≤ %d; marked down %d times; CPU %.1fs; "+
		"test process stalled ≤ %s",
		float64(r.peakRSS)/(1<<20), r.asked, r.answered, r.servfail, r.lost,
		r.percentile(0.5).Round(10*time.Microsecond), r.percentile(0.99).Round(10*time.Microsecond),
		r.percentile(1).Round(10*time.Microsecond),
		r.probes, r.probeFails, r.probeMax.Round(time.Millisecond), r.livezMax.Round(time.Millisecond), r.maxFDs, r.maxInflight, r.markedDown, r.cpu, r.stall.Round(time.Millisecond))
}

// watchRate is how many answered-name queries the watch asks a second.
const watchRate = 50

// watch runs f (the flood) for d and meanwhile asks answered names over UDP,
// probes the admin paths as the kubelet does (a new connection each time),
// samples the sidecar's descriptors and queries in flight, and measures how
// late its own timers fire (the stall of the test process, where the
// probes, the names asked and the upstreams run); then it reads the peak
// RSS and how often the upstream was marked down.
func watch(t testing.TB, s *sidecar, d time.Duration, f func(ctx context.Context)) *floodReport {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	pid := s.Cmd.Process.Pid
	r := &floodReport{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	wg.Go(func() { f(ctx) })
	wg.Go(func() { // answered names
		var asks sync.WaitGroup
		pace(ctx, watchRate, int(d.Seconds()*watchRate), func(i int) bool {
			asks.Go(func() {
				name := fmt.Sprintf("w%d.%s", i, okZone)
				start := time.Now()
				m, err := ask(s.DNS, "udp", name, true, 3*time.Second)
				took := time.Since(start)
				mu.Lock()
				defer mu.Unlock()
				r.asked++
				switch {
				case err != nil:
					r.lost++
				case m.Rcode == dns.RcodeSuccess:
					r.answered++
					r.latencies = append(r.latencies, took)
				default:
					r.servfail++
				}
			})
			return true
		})
		asks.Wait()
	})
	wg.Go(func() { // probes, as the kubelet sends them
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			path := []string{"/livez", "/readyz", "/startupz"}[i%3]
			start := time.Now()
			code, err := getStatus(c, "http://"+s.Admin+path)
			took := time.Since(start)
			mu.Lock()
			r.probes++
			r.probeMax = max(r.probeMax, took)
			if path == "/livez" {
				r.livezMax = max(r.livezMax, took)
			}
			if err != nil || code != http.StatusOK {
				r.probeFails++
			}
			mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	})
	stalls := testkit.WatchStalls() // the test process's own

	wg.Go(func() { // descriptors, and every other time queries in flight
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			if n, err := testkit.OpenFDs(pid); err == nil {
				mu.Lock()
				r.maxFDs = max(r.maxFDs, n)
				mu.Unlock()
			}
			if i%2 == 0 {
				if n, ok := inflight(s); ok {
					mu.Lock()
					r.maxInflight = max(r.maxInflight, n)
					mu.Unlock()
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	})
	wg.Wait()
	r.stall = stalls.Stop()
	slices.Sort(r.latencies)
	rss, err := testkit.PeakRSS(pid)
	if err != nil {
		t.Fatal(err)
	}
	r.peakRSS = rss
	fams := s.metrics(t)
	down := fams["dot_sidecar_upstream_marked_down_total"]
	if down == nil {
		t.Fatal("/metrics has no dot_sidecar_upstream_marked_down_total")
	}
	for _, m := range down.GetMetric() { // every upstream of every route
		r.markedDown += int(m.GetCounter().GetValue())
	}
	r.cpu, _ = metricValue(fams, "process_cpu_seconds_total")
	return r
}

// inflight reads dot_sidecar_server_inflight_queries from /metrics, with a
// look for its line rather than a parse of the whole page, which the
// race-instrumented test process would pay for ten times a second.
func inflight(s *sidecar) (int, bool) {
	code, body := s.Get("/metrics")
	if code != http.StatusOK {
		return 0, false
	}
	const name = "\ndot_sidecar_server_inflight_queries "
	i := strings.Index(body, name)
	if i < 0 {
		return 0, false
	}
	v, _, _ := strings.Cut(body[i+len(name):], "\n")
	f, err := strconv.ParseFloat(v, 64)
	return int(f), err == nil
}

func getStatus(c *http.Client, url string) (int, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

// paddedQuery appends to dst a query for name whose datagram is size
// bytes: the query followed by bytes that are not part of it, which a
// server ignores. The buffer is reused: 65,000-byte allocations thousands
// of times a second cost the race-instrumented test process more than the
// sidecar.
func paddedQuery(dst []byte, id uint16, name string, size int) []byte {
	dst = append(dst, query(id, name, dns.TypeA, 1232)...)
	return append(dst, make([]byte, size-len(dst))...)
}

// merge keeps the worse of r's and o's figures.
func (r *floodReport) merge(o *floodReport) {
	if r.asked == 0 || o.answeredShare() < r.answeredShare() {
		r.asked, r.answered, r.servfail, r.lost = o.asked, o.answered, o.servfail, o.lost
	}
	if o.percentile(0.99) > r.percentile(0.99) {
		r.latencies = o.latencies
	}
	r.probes += o.probes
	r.probeFails += o.probeFails
	r.probeMax = max(r.probeMax, o.probeMax)
	r.livezMax = max(r.livezMax, o.livezMax)
	r.maxFDs = max(r.maxFDs, o.maxFDs)
	r.maxInflight = max(r.maxInflight, o.maxInflight)
	r.peakRSS = max(r.peakRSS, o.peakRSS)
	r.markedDown = max(r.markedDown, o.markedDown)
	r.cpu = max(r.cpu, o.cpu)
	r.stall = max(r.stall, o.stall)
}

func (r *floodReport) answeredShare() float64 {
	if r.asked == 0 {
		return 1
	}
	return float64(r.answered) / float64(r.asked)
}

func (r *floodReport) servfailShare() float64 {
	if r.asked == 0 {
		return 0
	}
	return float64(r.servfail) / float64(r.asked)
}

// report sets r's figures as the benchmark's metrics.
func (r *floodReport) report(b *testing.B) {
	b.ReportMetric(float64(r.peakRSS)/(1<<20), "peak-RSS-MiB")
	b.ReportMetric(100*r.answeredShare(), "answered-%")
	b.ReportMetric(100*r.servfailShare(), "servfail-%")
	b.ReportMetric(float64(r.percentile(0.99))/1e6, "p99-ms")
	b.ReportMetric(float64(r.probeMax)/1e6, "probe-max-ms")
	b.ReportMetric(float64(r.livezMax)/1e6, "livez-max-ms")
	b.ReportMetric(float64(r.maxFDs), "max-fds")
	b.ReportMetric(float64(r.maxInflight), "max-inflight")
	b.ReportMetric(float64(r.stall)/1e6, "stall-ms")
	b.ReportMetric(float64(r.markedDown), "marked-down")
	b.ReportMetric(0, "ns/op")
}
