package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

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
		argv, env, err := startDotSidecar(true)(ui, t, sub, port) // as it ships: cache on
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
