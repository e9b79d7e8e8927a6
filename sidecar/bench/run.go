package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/unboundtest"
)

// live is a started target.
type live struct {
	target
	addr string
	port int
	up   netip.AddrPort // the relay's own endpoint on the upstream: a DoT port or a DoH address
	proc *proc          // nil for the direct baseline
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
	dotRelays, dohRelays := 0, 0
	for _, t := range selected {
		switch {
		case t.start == nil:
		case t.doh:
			dohRelays++
		default:
			dotRelays++
		}
	}
	up, err := startUpstream(ctx, cfg.names, dotRelays, dohRelays)
	if err != nil {
		return fmt.Errorf("starting upstream: %w", err)
	}
	defer up.Stop()
	// The main DoT port and DoH address serve the verification check and
	// the startup timing; each measured relay gets one of the extra ones.
	ui := upstreamInfo{host: "127.0.0.1", port: portOf(up.Addr), serverName: up.ServerName, caFile: up.CAFile, checkName: up.Names[0].Name}
	if up.HTTPSAddr != "" {
		ui.dohHost, ui.dohPort = hostOf(up.HTTPSAddr), portOf(up.HTTPSAddr)
	}
	var dotEnds, dohEnds []netip.AddrPort
	for _, a := range up.ExtraAddrs {
		dotEnds = append(dotEnds, netip.MustParseAddrPort(a))
	}
	for _, a := range up.ExtraHTTPSAddrs {
		dohEnds = append(dohEnds, netip.MustParseAddrPort(a))
	}

	var notes []string
	counter, err := newSynCounter(ctx, slices.Concat(dotEnds, dohEnds))
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
	for _, t := range selected {
		tui := ui
		switch {
		case t.start == nil:
		case t.doh:
			tui.dohHost, tui.dohPort = dohEnds[0].Addr().String(), int(dohEnds[0].Port())
			dohEnds = dohEnds[1:]
		default:
			tui.port = int(dotEnds[0].Port())
			dotEnds = dotEnds[1:]
		}
		l, err := startTarget(ctx, t, tui, tl, dir, up)
		if l != nil {
			targets = append(targets, l)
		}
		if err != nil {
			return err
		}
	}

	if err := warm(ctx, tl["dnsperf"], targets, cfg.protos, qfile, len(up.Names)*3); err != nil {
		return err
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
	whole := map[string]int64{}
	for name, n := range opened1 {
		whole[name] = n - opened0[name]
	}

	var rows []row
	for _, proto := range cfg.protos {
		for _, l := range targets {
			var rss int64
			if l.proc != nil {
				if rss, err = testkit.PeakRSS(l.proc.pid()); err != nil {
					return fmt.Errorf("%s: %w", l.name, err)
				}
			}
			r := aggregate(l.name, proto, samples[key{l.name, proto, kindMax}], samples[key{l.name, proto, kindRate}], rss)
			r.doh, r.cache = l.doh, l.cache
			rows = append(rows, r)
		}
	}
	if s := poolNote(rows, whole, sidecarPool); s != "" {
		notes = append(notes, s)
	}
	notes = append(notes, cacheNotes(rows)...)
	notes = append(notes, fmt.Sprintf("1-minute load average: %s when the runs began, %s when they ended (%d CPUs).", loadBefore, loadAvg(), runtime.NumCPU()))
	report := renderReport(cfg, rows, targets, startup, notes, versions(ctx, tl))
	if cfg.lookups && tl["dot-sidecar"] != "" {
		logf("counting what one lookup of a public name sends to the public upstream, in a network namespace")
		counts, err := measureLookups(ctx, tl)
		if err != nil {
			logf("warning: %v", err)
		}
		report += renderLookups(counts, err)
	}
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
	l := &live{target: t, up: netip.AddrPortFrom(netip.MustParseAddr(ui.host), uint16(ui.port))}
	if t.doh {
		l.up = netip.AddrPortFrom(netip.MustParseAddr(ui.dohHost), uint16(ui.dohPort))
	}
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
