package main

import (
	"context"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"time"
)

// machine describes where the figures were taken.
func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel := ""
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = ", Linux " + strings.TrimSpace(string(b))
	}
	return "nproc " + itoa(runtime.NumCPU()) + ", " + model + kernel
}

var reVersion = regexp.MustCompile(`\d+\.\d+(\.\d+)?`)

// versions names the version of each tool used, from its own output.
func versions(ctx context.Context, t tools) string {
	flags := map[string][]string{
		"dnsperf": {"-h"}, "dnsdist": {"--version"}, "unbound": {"-V"},
		"stubby": {"-V"}, "coredns": {"-version"},
	}
	var parts []string
	for _, name := range []string{"dnsperf", "dnsdist", "unbound", "stubby", "coredns"} {
		bin, ok := t[name]
		if !ok {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		out, _ := exec.CommandContext(cctx, bin, flags[name]...).CombinedOutput()
		cancel()
		v := "?"
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(strings.ToLower(l), "version") || strings.Contains(strings.ToLower(l), name) {
				if m := reVersion.FindString(l); m != "" {
					v = m
					break
				}
			}
		}
		parts = append(parts, name+" "+v)
	}
	return strings.Join(append(parts, runtime.Version()), ", ")
}

// loadAvg returns the 1-minute load average, which says how much else the
// shared machine was doing while the figures were taken.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	if f := strings.Fields(string(b)); len(f) > 0 {
		return f[0]
	}
	return "?"
}
