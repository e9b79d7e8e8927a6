package netns

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/check"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/bintest"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/netnstest"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/unboundtest"
)

const (
	bindPort   = "5053"
	serverName = "unbound.test"
	zone       = "e2e.test."
)

// TestInterception runs the whole scenario once per iptables backend, each in
// namespaces of its own and in parallel.
func TestInterception(t *testing.T) {
	testkit.RequireRoot(t)
	testkit.RequireTools(t, "ip", "iptables", "ip6tables", "iptables-legacy", "iptables-nft",
		"ip6tables-legacy", "ip6tables-nft", "unbound", "unbound-control", "kdig", "tcpdump", "getent", "setpriv", "sysctl")
	root := testkit.RepoRoot(t)
	runInterception(t, root, filepath.Join(root, "entrypoint.sh"))
}

// runInterception runs the scenario with the release build of the sidecar
// and entrypoint as the init container's entrypoint, once per backend.
func runInterception(t *testing.T, root, entrypoint string) {
	for _, f := range []string{entrypoint, filepath.Join(filepath.Dir(entrypoint), "iptables", "dns-redirect.sh")} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
	bin := bintest.Binary(t)
	for _, backend := range []string{"nft", "legacy"} {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			s := newScenario(t, root, bin, entrypoint, backend)
			s.run(t)
			t.Logf("%s scenario took %v", backend, time.Since(start).Round(time.Millisecond))
		})
	}
}

// scenario is one pod with its sidecar and rules, one upstream.
type scenario struct {
	backend    string
	root, bin  string
	dir        string
	tp         *topology
	unbound    *unboundtest.Server
	entrypoint string
	sidecar    *testkit.Process
	nsides     int            // sidecar processes started, for log names
	before     map[int]string // nat table per family, before init
	beforeRaw  map[int]string // raw table per family, before init
}

func newScenario(t *testing.T, root, bin, entrypoint, backend string) *scenario {
	s := &scenario{backend: backend, root: root, bin: bin, dir: sharedDir(t, true), entrypoint: entrypoint}
	s.tp = newTopology(t)
	// Every later command in the pod reads these as /etc/...: resolv.conf
	// names kube-dns; nsswitch.conf and hosts are pinned too, so that glibc
	// asks DNS whatever the machine's own configuration.
	s.tp.pod.WriteEtc(t, "resolv.conf", resolvConf([]string{kubeDNS4, kubeDNS6}, false))
	s.tp.pod.WriteEtc(t, "nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n")
	s.tp.pod.WriteEtc(t, "hosts", "127.0.0.1 localhost\n::1 localhost ip6-localhost\n")
	return s
}

func (s *scenario) ipt(family int) ipt { return ipt{backend: s.backend, family: family} }

func (s *scenario) run(t *testing.T) {
	tp := s.tp
	// The capture starts before anything runs in the pod, so "at any time"
	// covers init, the sidecar's start, every query and the sidecar's stop.
	capture := netnstest.StartCapture(t, tp.pod, podIface, s.dir)

	s.unbound = unboundtest.Start(t, unboundtest.Options{
		Address:     upstreamV4,
		Port:        853,
		ExtraConfig: []string{"interface: " + upstreamV6 + "@853"},
		Prefix:      tp.up.Prefix(),
		Zone:        zone,
		Names:       32,
	})
	caFile := filepath.Join(s.dir, "ca.pem")
	copyFile(t, s.unbound.CAFile, caFile, 0o644)

	// A mesh's rule, present before init; it must outlive init and cleanup.
	for _, f := range []int{4, 6} {
		tp.pod.Must(t, append([]string{s.ipt(f).tool("")}, foreignRule[f]...)...)
	}
	s.before = map[int]string{4: s.ipt(4).natRules(t, tp.pod), 6: s.ipt(6).natRules(t, tp.pod)}
	s.beforeRaw = map[int]string{4: s.ipt(4).rawRules(t, tp.pod), 6: s.ipt(6).rawRules(t, tp.pod)}

	s.init(t)
	t.Run("init twice leaves the same rules", func(t *testing.T) {
		first := map[int]string{4: s.ipt(4).natRules(t, tp.pod), 6: s.ipt(6).natRules(t, tp.pod)}
		firstRaw := map[int]string{4: s.ipt(4).rawRules(t, tp.pod), 6: s.ipt(6).rawRules(t, tp.pod)}
		s.init(t)
		for _, f := range []int{4, 6} {
			raw := s.ipt(f).rawRules(t, tp.pod)
			if raw != firstRaw[f] {
				t.Errorf("%v: raw rules after the second init differ from the first:\nfirst:\n%s\nsecond:\n%s", s.ipt(f), firstRaw[f], raw)
			}
			for _, want := range []string{":" + ourChain, commentZoneJump, commentZoneSkip, commentZoneUDP, commentZoneTCP} {
				if !strings.Contains(raw, want) {
					t.Errorf("%v: raw rules lack %q:\n%s", s.ipt(f), want, raw)
				}
			}
			second := s.ipt(f).natRules(t, tp.pod)
			if second != first[f] {
				t.Errorf("%v: rules after the second init differ from the first:\nfirst:\n%s\nsecond:\n%s", s.ipt(f), first[f], second)
			}
			for _, want := range []string{":" + ourChain, commentSkipUID, commentUDP, commentTCP, commentJump, "foreign/mesh-outbound"} {
				if !strings.Contains(second, want) {
					t.Errorf("%v: rules lack %q:\n%s", s.ipt(f), want, second)
				}
			}
			if n := strings.Count(second, commentJump); n != 1 {
				t.Errorf("%v: %d jumps into our chain, want 1:\n%s", s.ipt(f), n, second)
			}
		}
	})
	// From here the counters count only what the scenario does.
	for _, f := range []int{4, 6} {
		tp.pod.Must(t, s.ipt(f).tool(""), "-t", "nat", "-Z")
	}

	s.startSidecar(t, caFile)

	t.Run("sidecar runs as its own UID", func(t *testing.T) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.sidecar.Cmd.Process.Pid))
		if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(`(?m)^Uid:\s+(\d+)\s+(\d+)`).FindStringSubmatch(string(b))
		if m == nil || m[1] != strconv.Itoa(sidecarUID) || m[2] != strconv.Itoa(sidecarUID) {
			t.Fatalf("sidecar process status: %v, want uid %d", m, sidecarUID)
		}
	})

	queriesBefore := s.unboundQueries(t)
	t.Run("kdig from the app gets the upstream's answer", func(t *testing.T) { s.testKdig(t) })
	t.Run("rule counters show no loop", func(t *testing.T) { s.testCounters(t) })
	t.Run("upstream saw the queries over TLS", func(t *testing.T) {
		if got := s.unboundQueries(t) - queriesBefore; got < 4 {
			t.Errorf("unbound received %v queries during the kdig tests, want at least 4 (one per path)", got)
		}
	})
	t.Run("sidecar UID is excluded", func(t *testing.T) { s.testUIDExcluded(t) })
	t.Run("glibc resolver gets the upstream's answer", func(t *testing.T) { s.testGetent(t) })
	t.Run("check passes with the rules in place", func(t *testing.T) {
		out, code := s.check(t)
		t.Logf("dot-sidecar check:\n%s", out)
		if code != 0 || !strings.Contains(out, "OK: all 4 paths intercepted") {
			t.Errorf("check exit %d, want 0 and all 4 paths intercepted:\n%s", code, out)
		}
	})
	t.Run("sidecar stopped: DNS fails closed", func(t *testing.T) { s.testFailClosed(t) })

	capture.Stop(t)
	t.Run("capture: no plaintext DNS left the pod, only TLS to 853", func(t *testing.T) { s.testCapture(t, capture) })

	// The rest removes rules on purpose, so plaintext may now leave the pod.
	// A second capture proves the first one could have seen it.
	s.startSidecar(t, caFile)
	leaks := netnstest.StartCapture(t, tp.pod, podIface, s.dir)
	t.Run("check fails naming the paths without IPv6 rules", func(t *testing.T) {
		s.ipt(6).deleteByComment(t, tp.pod, commentUDP)
		s.ipt(6).deleteByComment(t, tp.pod, commentTCP)
		s.expectCheckFails(t, []string{"[" + kubeDNS6 + "]:53/udp", "[" + kubeDNS6 + "]:53/tcp"},
			[]string{kubeDNS4 + ":53/udp", kubeDNS4 + ":53/tcp"})
		s.init(t)
		s.expectCheckPasses(t)
	})
	t.Run("check fails naming the paths without TCP rules", func(t *testing.T) {
		s.ipt(4).deleteByComment(t, tp.pod, commentTCP)
		s.ipt(6).deleteByComment(t, tp.pod, commentTCP)
		s.expectCheckFails(t, []string{kubeDNS4 + ":53/tcp", "[" + kubeDNS6 + "]:53/tcp"},
			[]string{kubeDNS4 + ":53/udp", "[" + kubeDNS6 + "]:53/udp"})
		s.init(t)
		s.expectCheckPasses(t)
	})
	leaks.Stop(t)
	t.Run("capture sees the leaks of removed rules", func(t *testing.T) {
		if got := leaks.Packets(t, filterDNS); len(got) == 0 {
			t.Errorf("no port-53 packet captured while rules were missing: the capture cannot see leaks")
		}
	})

	t.Run("cleanup removes only ours", func(t *testing.T) {
		for range 2 { // cleanup is idempotent too
			s.entrypointCmd(t, "cleanup")
			for _, f := range []int{4, 6} {
				if got := s.ipt(f).natRules(t, tp.pod); got != s.before[f] {
					t.Errorf("%v: after cleanup the nat table is not as before init:\nbefore:\n%s\nafter:\n%s", s.ipt(f), s.before[f], got)
				}
				if got := s.ipt(f).rawRules(t, tp.pod); got != s.beforeRaw[f] {
					t.Errorf("%v: after cleanup the raw table is not as before init:\nbefore:\n%s\nafter:\n%s", s.ipt(f), s.beforeRaw[f], got)
				}
			}
		}
		for _, f := range []int{4, 6} {
			if got := s.ipt(f).natRules(t, tp.pod); !strings.Contains(got, "foreign/mesh-outbound") {
				t.Errorf("%v: the foreign rule is gone:\n%s", s.ipt(f), got)
			}
		}
	})
}

// init runs `entrypoint.sh init` in the pod as the init container would.
func (s *scenario) init(t *testing.T) {
	t.Helper()
	s.entrypointCmd(t, "init")
}

func (s *scenario) entrypointCmd(t *testing.T, cmd string) {
	t.Helper()
	r := run(s.tp.pod, rootUID, []string{
		"IPTABLES_MODE=" + s.backend, "BIND_PORT=" + bindPort, "SIDECAR_UID=" + strconv.Itoa(sidecarUID),
	}, "sh", s.entrypoint, cmd)
	if r.Err != nil {
		t.Fatalf("entrypoint.sh %s: %v", cmd, r)
	}
	if !strings.Contains(r.Stderr, "backend: "+s.backend) && cmd == "init" {
		t.Errorf("entrypoint.sh init did not say it chose %s:\n%s", s.backend, r.Stderr)
	}
}

// startSidecar runs the binary in the pod as the sidecar's UID and waits
// until it answers the canary on both loopback listeners.
func (s *scenario) startSidecar(t *testing.T, caFile string) {
	t.Helper()
	s.nsides++
	env := []string{
		"UPSTREAMS=tls://" + upstreamV4 + ":853#" + serverName + ",tls://[" + upstreamV6 + "]:853#" + serverName,
		"TLS_CA_FILE=" + caFile,
		"BIND_PORT=" + bindPort,
		// Both upstreams (both families) carry traffic.
		"UPSTREAM_POLICY=round_robin",
		"SHUTDOWN_LAMEDUCK=0",
		"SHUTDOWN_GRACE=2s",
		"ADMIN_ADDRESS=127.0.0.1:9253",
		"LOG_LEVEL=debug",
		// No cluster resolver here: kube-dns's addresses exist only to be
		// redirected. Every name goes to the DoT upstreams, as the capture
		// asserts, rather than the cluster's names to kube-dns in plaintext.
		"CLUSTER_DNS=off",
	}
	s.sidecar = start(t, s.tp.pod, fmt.Sprintf("sidecar #%d", s.nsides), sidecarUID, env, s.bin)
	for _, addr := range []string{"127.0.0.1", "::1"} {
		waitForCanary(t, s.tp.pod, s.sidecar, addr)
	}
}

// kdig queries name as the application; proto is udp or tcp.
func (s *scenario) kdig(uid int, server, proto, name, qtype string) netnstest.Result {
	tcp := "+notcp"
	if proto == "tcp" {
		tcp = "+tcp"
	}
	return run(s.tp.pod, uid, nil, "kdig", "@"+server, tcp, "+timeout=2", "+retry=0", "+short", name, qtype)
}

// paths are the four ways an application's query leaves: kube-dns over IPv4
// and IPv6, each over UDP and TCP.
var paths = []struct {
	family int
	server string
	proto  string
}{
	{4, kubeDNS4, "udp"}, {4, kubeDNS4, "tcp"}, {6, kubeDNS6, "udp"}, {6, kubeDNS6, "tcp"},
}

func (s *scenario) testKdig(t *testing.T) {
	for i, p := range paths {
		rec := s.unbound.Names[i]
		for _, q := range []struct {
			qtype string
			want  string
		}{{"A", rec.A.String()}, {"AAAA", rec.AAAA.String()}} {
			t.Run(fmt.Sprintf("%s/%s/%s", p.server, p.proto, q.qtype), func(t *testing.T) {
				r := s.kdig(appUID, p.server, p.proto, rec.Name, q.qtype)
				if r.Err != nil || strings.TrimSpace(r.Stdout) != q.want {
					t.Errorf("want %s from the upstream; got %v", q.want, r)
				}
			})
		}
	}
}

// testCounters: every application query went through exactly one REDIRECT
// (per family and protocol), and the sidecar's own connections to the
// upstream took the RETURN of its UID instead of being redirected to itself.
func (s *scenario) testCounters(t *testing.T) {
	var skip uint64
	for _, f := range []int{4, 6} {
		c := s.ipt(f).counters(t, s.tp.pod)
		// testKdig sent two queries (A, AAAA) per path; each kdig run is one
		// new UDP flow or TCP connection, and nat sees only the first packet
		// of a connection.
		for _, rule := range []string{commentUDP, commentTCP} {
			if c[rule] != 2 {
				t.Errorf("%v: %s counted %d connections, want exactly 2 (the app's kdig queries): %v", s.ipt(f), rule, c[rule], c)
			}
		}
		skip += c[commentSkipUID]
	}
	if skip == 0 {
		t.Errorf("no packet of the sidecar's UID reached %s: its upstream traffic was not seen by the chain", commentSkipUID)
	}
}

// testUIDExcluded: the same query to loopback port 53 is redirected for the
// application's UID and not for the sidecar's, which is what keeps the
// sidecar from capturing its own queries. Loopback keeps it off the capture;
// TCP makes the unredirected query fail at once (RST) instead of timing out.
func (s *scenario) testUIDExcluded(t *testing.T) {
	before := s.ipt(4).counters(t, s.tp.pod)
	app := s.kdig(appUID, "127.0.0.1", "tcp", check.CanaryName, "TXT")
	if app.Err != nil || !strings.Contains(app.Stdout, strings.TrimSpace(check.CanaryPrefix)) {
		t.Errorf("app's query to 127.0.0.1:53 not answered by the sidecar: %v", app)
	}
	own := s.kdig(sidecarUID, "127.0.0.1", "tcp", check.CanaryName, "TXT")
	if own.Err == nil || strings.Contains(own.Stdout, strings.TrimSpace(check.CanaryPrefix)) {
		t.Errorf("a query from the sidecar's UID was answered by the sidecar (redirected to itself): %v", own)
	}
	after := s.ipt(4).counters(t, s.tp.pod)
	if d := after[commentSkipUID] - before[commentSkipUID]; d < 1 {
		t.Errorf("%s counter did not move for the sidecar UID's query (%d → %d)", commentSkipUID, before[commentSkipUID], after[commentSkipUID])
	}
	if d := after[commentTCP] - before[commentTCP]; d != 1 {
		t.Errorf("%s counted %d, want 1 (the app's query only)", commentTCP, d)
	}
}

// testGetent resolves through glibc (getent → getaddrinfo/gethostbyname)
// with resolv.conf naming one kube-dns address at a time, over UDP and TCP
// (options use-vc), and checks in the counters which path was taken.
func (s *scenario) testGetent(t *testing.T) {
	defer s.tp.pod.WriteEtc(t, "resolv.conf", resolvConf([]string{kubeDNS4, kubeDNS6}, false))
	for i, p := range paths {
		t.Run(fmt.Sprintf("%s/%s", p.server, p.proto), func(t *testing.T) {
			s.tp.pod.WriteEtc(t, "resolv.conf", resolvConf([]string{p.server}, p.proto == "tcp"))
			before := map[int]map[string]uint64{4: s.ipt(4).counters(t, s.tp.pod), 6: s.ipt(6).counters(t, s.tp.pod)}
			rec := s.unbound.Names[8+i]
			for _, q := range []struct {
				db, want string
			}{
				{"hosts", rec.AAAA.String()}, // getent hosts asks for AAAA first
				{"ahostsv4", rec.A.String()},
				{"ahostsv6", rec.AAAA.String()},
			} {
				r := run(s.tp.pod, appUID, nil, "getent", q.db, strings.TrimSuffix(rec.Name, "."))
				if r.Err != nil || !strings.HasPrefix(r.Stdout, q.want+" ") {
					t.Errorf("getent %s: want %s from the upstream; got %v", q.db, q.want, r)
				}
			}
			comment := map[string]string{"udp": commentUDP, "tcp": commentTCP}
			for _, f := range []int{4, 6} {
				after := s.ipt(f).counters(t, s.tp.pod)
				for proto, c := range comment {
					d := after[c] - before[f][c]
					taken := f == p.family && proto == p.proto
					if taken && d == 0 {
						t.Errorf("%v %s: counter did not move: glibc's queries did not take this path", s.ipt(f), c)
					}
					if !taken && d != 0 {
						t.Errorf("%v %s: counter moved by %d, but resolv.conf named only %s over %s", s.ipt(f), c, d, p.server, p.proto)
					}
				}
			}
		})
	}
}

// testFailClosed stops the sidecar: the rules stay, so queries meet a closed
// port on loopback and fail instead of reaching kube-dns in plaintext. The
// counters show each query was redirected; the capture, checked later, shows
// none left the pod.
func (s *scenario) testFailClosed(t *testing.T) {
	if s.sidecar.Exited() {
		t.Fatalf("the sidecar died during the scenario: %v\n%s", s.sidecar.Err(), testkit.Tail(s.sidecar.Output(), 30))
	}
	stopStart := time.Now()
	if err := s.sidecar.Stop(5 * time.Second); err != nil {
		t.Fatalf("stopping the sidecar: %v", err)
	}
	t.Logf("sidecar stopped in %v (%v)", time.Since(stopStart).Round(time.Millisecond), s.sidecar.Err())
	if s.sidecar.Err() != nil {
		t.Errorf("the sidecar did not exit cleanly on SIGTERM: %v", s.sidecar.Err())
	}
	before := map[int]map[string]uint64{4: s.ipt(4).counters(t, s.tp.pod), 6: s.ipt(6).counters(t, s.tp.pod)}
	// At once (goroutines, not parallel subtests, which -parallel would
	// queue behind the scenarios): a UDP query to a closed port waits out
	// kdig's timeout.
	t.Run("kdig", func(t *testing.T) {
		results := make([]netnstest.Result, len(paths))
		var wg sync.WaitGroup
		for i, p := range paths {
			wg.Go(func() { results[i] = s.kdig(appUID, p.server, p.proto, s.unbound.Names[16+i].Name, "A") })
		}
		wg.Wait()
		for i, p := range paths {
			if r := results[i]; r.Err == nil || strings.Contains(r.Stdout, s.unbound.Names[16+i].A.String()) {
				t.Errorf("%s/%s: query answered with the sidecar stopped: %v", p.server, p.proto, r)
			}
		}
	})
	for _, p := range paths {
		c := commentUDP
		if p.proto == "tcp" {
			c = commentTCP
		}
		after := s.ipt(p.family).counters(t, s.tp.pod)
		if d := after[c] - before[p.family][c]; d != 1 {
			t.Errorf("%v %s: counted %d, want 1: the query to %s/%s was not redirected", s.ipt(p.family), c, d, p.server, p.proto)
		}
	}
	t.Run("getent", func(t *testing.T) {
		rec := s.unbound.Names[20]
		r := run(s.tp.pod, appUID, nil, "getent", "ahosts", strings.TrimSuffix(rec.Name, "."))
		if r.Code() != 2 || r.Stdout != "" {
			t.Errorf("getent with the sidecar stopped: want exit 2 (not found) and no address; got %v", r)
		}
	})
	t.Run("check", func(t *testing.T) {
		out, code := s.check(t)
		if code == 0 || strings.Count(out, check.NoAnswer.String()) != 4 {
			t.Errorf("check with the sidecar stopped: exit %d, want non-zero and 4 paths with no answer:\n%s", code, out)
		}
	})
}

func (s *scenario) testCapture(t *testing.T, c *netnstest.Capture) {
	if got := c.Packets(t, filterDNS); len(got) != 0 {
		t.Errorf("%d packets to or from port 53 left the pod:\n%s", len(got), strings.Join(got, "\n"))
	}
	if got := c.Packets(t, filterUnexpected); len(got) != 0 {
		t.Errorf("%d packets that are neither DoT nor link housekeeping:\n%s", len(got), strings.Join(got, "\n"))
	}
	for _, fam := range []string{"ip", "ip6"} {
		if got := c.Packets(t, fam+" and "+filterDoT); len(got) == 0 {
			t.Errorf("no %s DoT packet captured: the capture saw nothing of the upstream traffic", fam)
		}
	}
	if got := c.Packets(t, filterTLSHandshake); len(got) == 0 {
		t.Errorf("no TLS handshake record on port 853: the upstream traffic is not TLS")
	}
}

// check runs `dot-sidecar check` in the pod as the check init container's
// UID and returns its output and exit code.
func (s *scenario) check(t *testing.T) (string, int) {
	t.Helper()
	// The sidecar's settings, as the check container loads them: with the
	// sidecar's CLUSTER_DNS=off there is no cluster route to check.
	r := run(s.tp.pod, checkUID, []string{"CLUSTER_DNS=off"}, s.bin, "check")
	return r.Stdout + r.Stderr, r.Code()
}

func (s *scenario) expectCheckPasses(t *testing.T) {
	t.Helper()
	out, code := s.check(t)
	if code != 0 {
		t.Errorf("check after init again: exit %d, want 0:\n%s", code, out)
	}
}

// expectCheckFails: non-zero exit, each path in bad reported not
// intercepted (by name, in the verdict), each path in good intercepted.
func (s *scenario) expectCheckFails(t *testing.T, bad, good []string) {
	t.Helper()
	out, code := s.check(t)
	t.Logf("dot-sidecar check:\n%s", out)
	if code == 0 {
		t.Errorf("check passed with rules missing:\n%s", out)
	}
	verdict := ""
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "FAIL:") {
			verdict = l
		}
	}
	for _, p := range bad {
		if !strings.Contains(verdict, p) {
			t.Errorf("check's verdict does not name %s:\n%s", p, out)
		}
	}
	for _, p := range good {
		if strings.Contains(verdict, p) {
			t.Errorf("check's verdict names %s, whose rules are in place:\n%s", p, out)
		}
	}
}

// unboundQueries is the upstream's count of queries received.
func (s *scenario) unboundQueries(t *testing.T) float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := s.unbound.Stats(ctx)
	if err != nil {
		t.Fatalf("unbound stats: %v", err)
	}
	return st["total.num.queries"]
}
