package main

import (
	"context"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
)

// openConns counts the TCP connections that process pid holds established to
// port (the upstream's DoT port), as the kernel lists them. Unlike the SYN
// counter this is a snapshot; peakConns samples it during a run to check a
// relay against its pool size.
func openConns(pid, port int) (int, error) {
	_, established, err := testkit.TCPConns(pid, port)
	return established, err
}

// peakConns samples openConns every interval until ctx ends and returns the
// largest count seen.
func peakConns(ctx context.Context, pid, port int, interval time.Duration) (int, error) {
	peak := 0
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		n, err := openConns(pid, port)
		if err != nil {
			return peak, err
		}
		peak = max(peak, n)
		select {
		case <-ctx.Done():
			return peak, nil
		case <-tick.C:
		}
	}
}
