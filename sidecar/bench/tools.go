package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/bintest"
)

// benchVersion is stamped into the dot-sidecar the harness builds.
const benchVersion = "0.0.0-bench"

// tools maps a program name to its path.
type tools map[string]string

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
				// The release build, as the image makes it: what is measured
				// is what ships.
				p = filepath.Join(dir, "bin", "dot-sidecar")
				logf("building dot-sidecar from this tree (the image's release build)")
				if err := bintest.Build(ctx, ".", p, benchVersion); err != nil {
					return nil, fmt.Errorf("%w\n(run from the repository root, or pass -sidecar, or leave it out with -targets)", err)
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
