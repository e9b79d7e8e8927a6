package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/unboundtest"
)

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
