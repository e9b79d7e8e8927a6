package main

import (
	"context"
	"fmt"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/unboundtest"
)

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
		if conns0, err = counter.read(ctx, l.up); err != nil {
			return s, err
		}
	}
	up0, err := upQueries(ctx, up, l.doh)
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
		n, err := peakConns(sctx, pid, int(l.up.Port()), connSampleInterval)
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
		conns1, err := counter.read(ctx, l.up)
		if err != nil {
			return s, err
		}
		s.conns = conns1 - conns0
	}
	up1, err := upQueries(ctx, up, l.doh)
	if err != nil {
		return s, err
	}
	s.upQueries = up1 - up0
	return s, nil
}

// upQueries is the number of queries the upstream has received over TLS
// (DoT and DoH alike), or over DoH alone.
func upQueries(ctx context.Context, up *unboundtest.Server, doh bool) (float64, error) {
	st, err := up.Stats(ctx)
	if err != nil {
		return 0, err
	}
	name := "num.query.tls"
	if doh {
		name = "num.query.https"
	}
	v, ok := st[name]
	if !ok {
		return 0, fmt.Errorf("unbound-control stats lacks %s", name)
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
		n, err := counter.read(ctx, l.up)
		if err != nil {
			return nil, err
		}
		out[l.name] = n
	}
	return out, nil
}

// connSampleInterval is how often open upstream connections are counted
// during a run. Each count reads /proc/net/tcp, which walks the kernel's
// whole established-connection hash (262,144 buckets here, about 5 ms of
// system time): every 50 ms that raised a relay's p99 latency at 2,000
// queries/s from 0.2 to 2.7-3.8 ms and its maximum by about 5 ms, a cost
// the unsampled direct baseline never paid.
const connSampleInterval = 500 * time.Millisecond
