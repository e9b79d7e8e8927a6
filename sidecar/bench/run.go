package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/unboundtest"
)

// tools maps a program name to its path.
type tools map[string]string

// live is a started target.
type live struct {
	target
	addr   string
	port   int
	upPort int   // the relay's own DoT port on the upstream
	proc   *proc // nil for the direct baseline
}

func run(ctx context.Context, cfg config) error {
	if err := validate(cfg); err != nil {
		return err
	}
	timeout := cfg.timeout
	if timeout == 0 {
		timeout = cfg.estimate()
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	dir, err := os.MkdirTemp("", "dot-sidecar-bench-")
	if err != nil {
		return err
	}
	if cfg.keep {
		logf("keeping configs and logs in %s", dir)
	} else {
		defer os.RemoveAll(dir)
	}

	var selected []target
	for _, name := range cfg.targets {
		for _, t := range allTargets() {
			if t.name == name {
				selected = append(selected, t)
			}
		}
	}
	tl, err := findTools(ctx, cfg, selected, dir)
	if err != nil {
		return err
	}

	logf("starting the upstream (Unbound, 1 thread, %d names)", cfg.names)
	relays := 0
	for _, t := range selected {
		if t.start != nil {
			relays++
		}
	}
	up, err := startUpstream(ctx, cfg.names, relays)
	if err != nil {
		return fmt.Errorf("starting upstream: %w", err)
	}
	defer up.Stop()
	// The main DoT port serves the verification check and the startup
	// timing; each measured relay gets one of the extra ports.
	ui := upstreamInfo{host: "127.0.0.1", port: portOf(up.Addr), serverName: up.ServerName, caFile: up.CAFile, checkName: up.Names[0].Name}
	var relayPorts []int
	for _, a := range up.ExtraAddrs {
		relayPorts = append(relayPorts, portOf(a))
	}

	var notes []string
	counter, err := newSynCounter(ctx, relayPorts)
	if err != nil {
		notes = append(notes, "TLS connections not counted: "+err.Error()+".")
		logf("warning: %v", err)
		counter = nil
	} else {
		defer func() {
			if err := counter.close(); err != nil {
				logf("warning: %v", err)
			}
		}()
	}

	qfile, err := writeQueryFile(dir, up.Names)
	if err != nil {
		return err
	}

	if cfg.verifyCheck {
		if err := checkVerification(ctx, selected, ui, tl, dir, up); err != nil {
			return err
		}
	}

	var targets []*live
	defer func() {
		for _, l := range slices.Backward(targets) {
			if l.proc != nil {
				l.proc.stop()
			}
		}
	}()
	next := 0
	for _, t := range selected {
		tui := ui
		if t.start != nil {
			tui.port = relayPorts[next]
			next++
		}
		l, err := startTarget(ctx, t, tui, tl, dir, up)
		if l != nil {
			targets = append(targets, l)
		}
		if err != nil {
			return err
		}
	}

	var startup []time.Duration
	if cfg.startupRuns > 0 && tl["dot-sidecar"] != "" {
		if startup, err = measureStartup(ctx, cfg.startupRuns, ui, tl, dir); err != nil {
			return err
		}
	}

	loadBefore := loadAvg()
	began := time.Now()
	opened0, err := totalOpened(ctx, counter, targets)
	if err != nil {
		return err
	}
	samples, err := measure(ctx, cfg, tl["dnsperf"], targets, qfile, up, counter)
	if err != nil {
		return err
	}
	opened1, err := totalOpened(ctx, counter, targets)
	if err != nil {
		return err
	}
	if counter != nil {
		var parts []string
		for _, l := range targets {
			if l.proc != nil {
				parts = append(parts, fmt.Sprintf("%s %d", l.name, opened1[l.name]-opened0[l.name]))
			}
		}
		notes = append(notes, fmt.Sprintf("TLS connections opened over the whole measurement (%s, runs and the idle time between a relay's runs): %s.",
			time.Since(began).Round(time.Second), strings.Join(parts, ", ")))
	}

	var rows []row
	for _, proto := range cfg.protos {
		for _, l := range targets {
			var rss int64
			if l.proc != nil {
				if rss, err = peakRSS(l.proc.pid()); err != nil {
					return fmt.Errorf("%s: %w", l.name, err)
				}
			}
			rows = append(rows, aggregate(l.name, proto,
				samples[key{l.name, proto, kindMax}], samples[key{l.name, proto, kindRate}], rss))
		}
	}
	notes = append(notes, fmt.Sprintf("1-minute load average: %s when the runs began, %s when they ended (%d CPUs).", loadBefore, loadAvg(), runtime.NumCPU()))
	report := renderReport(cfg, rows, targets, startup, notes, versions(ctx, tl))
	fmt.Print(report)
	if cfg.out != "" {
		if err := os.WriteFile(cfg.out, []byte(report), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// startTarget starts a relay (nothing for the direct baseline) and requires
// correct answers to control queries before it may be measured.
func startTarget(ctx context.Context, t target, ui upstreamInfo, tl tools, dir string, up *unboundtest.Server) (*live, error) {
	l := &live{target: t, upPort: ui.port}
	if t.start == nil {
		l.addr = up.PlainAddr
		l.port = portOf(up.PlainAddr)
	} else {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		sub := filepath.Join(dir, t.name)
		if err := os.MkdirAll(sub, 0o755); err != nil {
			return nil, err
		}
		argv, env, err := t.start(ui, tl, sub, port)
		if err != nil {
			return nil, fmt.Errorf("configuring %s: %w", t.name, err)
		}
		p, err := startProc(t.name, sub, argv, env)
		if err != nil {
			return nil, err
		}
		l.addr, l.port, l.proc = hostPort("127.0.0.1", port), port, p
	}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := control(cctx, l.addr, up.Names, l.proc); err != nil {
		tail := ""
		if l.proc != nil {
			tail = "\n" + l.proc.logTail(20)
		}
		return l, fmt.Errorf("%s does not answer correctly, refusing to measure it: %w%s", t.name, err, tail)
	}
	logf("%s ready on %s", t.name, l.addr)
	return l, nil
}

// checkVerification starts every relay once more, told to expect a server
// name the upstream's certificate does not carry, and requires that none of
// them answers: a relay that skipped certificate checks would be measured
// doing less work than the others. The relays are started together so that
// the check costs one timeout, not one per relay.
func checkVerification(ctx context.Context, selected []target, ui upstreamInfo, tl tools, dir string, up *unboundtest.Server) error {
	wrong := ui
	wrong.serverName = "wrong-name.test"
	type result struct {
		name string
		err  error
	}
	results := make(chan result, len(selected))
	var procs []*proc
	defer func() {
		for _, p := range procs {
			p.stop()
		}
	}()
	n := 0
	for _, t := range selected {
		if t.start == nil {
			continue
		}
		port, err := freePort()
		if err != nil {
			return err
		}
		sub := filepath.Join(dir, t.name+"-wrong-name")
		if err := os.MkdirAll(sub, 0o755); err != nil {
			return err
		}
		argv, env, err := t.start(wrong, tl, sub, port)
		if err != nil {
			return fmt.Errorf("configuring %s: %w", t.name, err)
		}
		p, err := startProc(t.name+"-wrong-name", sub, argv, env)
		if err != nil {
			return err
		}
		procs = append(procs, p)
		n++
		go func(name, addr string) {
			results <- result{name, expectNoAnswer(ctx, addr, up.Names[0])}
		}(t.name, hostPort("127.0.0.1", port))
	}
	var errs []string
	for range n {
		if r := <-results; r.err != nil {
			errs = append(errs, r.name+": "+r.err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("relays answered through an upstream whose certificate does not carry their server name, so they do not verify it: %s", strings.Join(errs, "; "))
	}
	logf("every relay refused an upstream certificate without its server name")
	return nil
}

// measure runs the rounds, interleaving targets within each protocol and run
// shape so that drifts of a shared machine hit every target alike.
func measure(ctx context.Context, cfg config, perfBin string, targets []*live, qfile string, up *unboundtest.Server, counter *synCounter) (map[key][]sample, error) {
	samples := map[key][]sample{}
	for round := 1; round <= cfg.rounds; round++ {
		for _, proto := range cfg.protos {
			for _, k := range []kind{kindMax, kindRate} {
				for _, l := range targets {
					s, err := measureOne(ctx, cfg, perfBin, l, proto, k, qfile, up, counter)
					if err != nil {
						return nil, fmt.Errorf("round %d, %s %s %s: %w", round, l.name, proto, k, err)
					}
					samples[key{l.name, proto, k}] = append(samples[key{l.name, proto, k}], s)
					logf("round %d/%d %s %-4s %-17s %8.0f qps  lost %d  avg %s  max %s  conns opened %d, open peak %d", round, cfg.rounds, proto, k, l.name,
						s.perf.QPS, s.perf.Lost, ms(s.perf.AvgLatency), ms(s.perf.MaxLatency), s.conns, s.peakOpen)
				}
			}
		}
	}
	return samples, nil
}

func measureOne(ctx context.Context, cfg config, perfBin string, l *live, proto string, k kind, qfile string, up *unboundtest.Server, counter *synCounter) (sample, error) {
	a := perfArgs{Server: "127.0.0.1", Port: l.port, Proto: proto, QueryFile: qfile, Duration: cfg.duration,
		Clients: cfg.clients, Inflight: cfg.inflight, Timeout: perfTimeout}
	if k == kindRate {
		a.Rate = cfg.rate
	}
	s := sample{conns: -1, upQueries: -1, peakOpen: -1}
	if l.proc == nil { // the direct baseline: only dnsperf's figures
		var err error
		s.perf, err = runDnsperf(ctx, perfBin, a)
		return s, err
	}
	pid := l.proc.pid()
	cpu0, err := cpuTime(pid)
	if err != nil {
		return s, err
	}
	var conns0 int64
	if counter != nil {
		if conns0, err = counter.read(ctx, l.upPort); err != nil {
			return s, err
		}
	}
	up0, err := upQueries(ctx, up)
	if err != nil {
		return s, err
	}

	type peak struct {
		n   int
		err error
	}
	sampled := make(chan peak, 1)
	sctx, stopSampling := context.WithCancel(ctx)
	defer stopSampling()
	go func() {
		n, err := peakConns(sctx, pid, l.upPort, connSampleInterval)
		sampled <- peak{n, err}
	}()
	s.perf, err = runDnsperf(ctx, perfBin, a)
	stopSampling()
	p := <-sampled
	if err != nil {
		return s, err
	}
	if p.err != nil {
		return s, fmt.Errorf("sampling open connections: %w", p.err)
	}
	s.peakOpen = p.n

	if err := l.proc.alive(); err != nil {
		return s, err
	}
	cpu1, err := cpuTime(pid)
	if err != nil {
		return s, err
	}
	s.cpu, s.hasCPU = cpu1-cpu0, true
	if counter != nil {
		conns1, err := counter.read(ctx, l.upPort)
		if err != nil {
			return s, err
		}
		s.conns = conns1 - conns0
	}
	up1, err := upQueries(ctx, up)
	if err != nil {
		return s, err
	}
	s.upQueries = up1 - up0
	return s, nil
}

// upQueries is the number of queries the upstream has received over TLS.
func upQueries(ctx context.Context, up *unboundtest.Server) (float64, error) {
	st, err := up.Stats(ctx)
	if err != nil {
		return 0, err
	}
	v, ok := st["num.query.tls"]
	if !ok {
		return 0, fmt.Errorf("unbound-control stats lacks num.query.tls")
	}
	return v, nil
}

// totalOpened reads every relay's SYN counter.
func totalOpened(ctx context.Context, counter *synCounter, targets []*live) (map[string]int64, error) {
	out := map[string]int64{}
	if counter == nil {
		return out, nil
	}
	for _, l := range targets {
		if l.proc == nil {
			continue
		}
		n, err := counter.read(ctx, l.upPort)
		if err != nil {
			return nil, err
		}
		out[l.name] = n
	}
	return out, nil
}

// connSampleInterval is how often open upstream connections are counted
// during a run.
const connSampleInterval = 50 * time.Millisecond

// measureStartup starts fresh dot-sidecars and times process start to the
// first 200 from /startupz.
func measureStartup(ctx context.Context, n int, ui upstreamInfo, t tools, dir string) ([]time.Duration, error) {
	var out []time.Duration
	for i := range n {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		sub := filepath.Join(dir, fmt.Sprintf("startup-%d", i))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			return nil, err
		}
		argv, env, err := startDotSidecar(ui, t, sub, port)
		if err != nil {
			return nil, err
		}
		var admin string
		for _, e := range env {
			if v, ok := strings.CutPrefix(e, "ADMIN_ADDRESS="); ok {
				admin = v
			}
		}
		p, err := startProc("dot-sidecar-startup", sub, argv, env)
		if err != nil {
			return nil, err
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		d, err := waitStartupz(cctx, p, admin)
		cancel()
		p.stop()
		if err != nil {
			return nil, fmt.Errorf("timing /startupz: %w\n%s", err, p.logTail(15))
		}
		out = append(out, d)
	}
	logf("dot-sidecar /startupz after %v", out)
	return out, nil
}

// findTools locates every program the selected targets need, building
// dot-sidecar from this tree unless a binary was given.
func findTools(ctx context.Context, cfg config, targets []target, dir string) (tools, error) {
	t := tools{}
	var missing []string
	need := []string{"dnsperf", "unbound", "unbound-control"}
	for _, tg := range targets {
		if tg.tool != "" && tg.tool != "dot-sidecar" && tg.tool != "coredns" {
			need = append(need, tg.tool)
		}
	}
	for _, n := range need {
		if _, ok := t[n]; ok {
			continue
		}
		p, err := lookTool(n)
		if err != nil {
			missing = append(missing, n)
			continue
		}
		t[n] = p
	}
	for _, tg := range targets {
		switch tg.tool {
		case "coredns":
			p := cfg.corednsBin
			if p == "" {
				var err error
				if p, err = lookCoreDNS(ctx); err != nil {
					missing = append(missing, "coredns")
					continue
				}
			}
			t["coredns"] = p
		case "dot-sidecar":
			p := cfg.sidecarBin
			if p == "" {
				p = filepath.Join(dir, "bin", "dot-sidecar")
				logf("building dot-sidecar from this tree")
				out, err := exec.CommandContext(ctx, "go", "build", "-o", p, "./sidecar").CombinedOutput()
				if err != nil {
					return nil, fmt.Errorf("go build ./sidecar (run from the repository root, or pass -sidecar, or leave it out with -targets): %w\n%s", err, out)
				}
			}
			t["dot-sidecar"] = p
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("missing %s: run sidecar/bench/setup.sh, or leave targets out with -targets", strings.Join(missing, ", "))
	}
	return t, nil
}

func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", name)
}

func lookCoreDNS(ctx context.Context) (string, error) {
	if p, err := exec.LookPath("coredns"); err == nil {
		return p, nil
	}
	out, err := exec.CommandContext(ctx, "go", "env", "GOPATH").Output()
	if err != nil {
		return "", err
	}
	for _, gp := range filepath.SplitList(strings.TrimSpace(string(out))) {
		p := filepath.Join(gp, "bin", "coredns")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("coredns not found")
}
