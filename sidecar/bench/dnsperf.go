package main

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// perfResult is what one dnsperf run reports.
type perfResult struct {
	Sent, Completed, Lost int
	QPS                   float64
	AvgLatency            time.Duration
	MaxLatency            time.Duration
	Rcodes                map[string]int // e.g. "NOERROR": 9990
}

// perfArgs describe one dnsperf run.
type perfArgs struct {
	Server    string // IP literal
	Port      int
	Proto     string // "udp" or "tcp"
	QueryFile string
	Duration  time.Duration
	Clients   int
	Inflight  int // -q: most queries outstanding
	Rate      int // -Q: queries per second; 0 = as fast as possible
	Timeout   time.Duration
	Passes    int // -n: stop after this many passes over the query file; 0 = no limit
}

func (a perfArgs) argv(bin string) []string {
	argv := []string{bin,
		"-s", a.Server, "-p", strconv.Itoa(a.Port), "-m", a.Proto,
		"-d", a.QueryFile,
		"-l", strconv.FormatFloat(a.Duration.Seconds(), 'f', -1, 64),
		"-c", strconv.Itoa(a.Clients), "-q", strconv.Itoa(a.Inflight),
		"-t", strconv.FormatFloat(a.Timeout.Seconds(), 'f', -1, 64),
	}
	if a.Rate > 0 {
		argv = append(argv, "-Q", strconv.Itoa(a.Rate))
	}
	if a.Passes > 0 {
		argv = append(argv, "-n", strconv.Itoa(a.Passes))
	}
	return argv
}

func runDnsperf(ctx context.Context, bin string, a perfArgs) (perfResult, error) {
	argv := a.argv(bin)
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return perfResult{}, fmt.Errorf("%s: %w\n%s", strings.Join(argv, " "), err, out)
	}
	r, err := parseDnsperf(string(out))
	if err != nil {
		return perfResult{}, fmt.Errorf("%s: %w\n%s", strings.Join(argv, " "), err, out)
	}
	return r, nil
}

var (
	reSent      = regexp.MustCompile(`(?m)^\s*Queries sent:\s+(\d+)`)
	reCompleted = regexp.MustCompile(`(?m)^\s*Queries completed:\s+(\d+)`)
	reLost      = regexp.MustCompile(`(?m)^\s*Queries lost:\s+(\d+)`)
	reQPS       = regexp.MustCompile(`(?m)^\s*Queries per second:\s+([0-9.]+)`)
	reLatency   = regexp.MustCompile(`(?m)^\s*Average Latency \(s\):\s+([0-9.]+) \(min [0-9.]+, max ([0-9.]+)\)`)
	reRcodes    = regexp.MustCompile(`(?m)^\s*Response codes:\s+(.*)$`)
	reRcode     = regexp.MustCompile(`([A-Z0-9]+) (\d+) \(`)
)

// parseDnsperf reads dnsperf's "Statistics:" block. In TCP mode dnsperf adds
// a "Connection Statistics:" block with its own "Average Latency" (of
// connection setup); only the query statistics before it are read.
func parseDnsperf(out string) (perfResult, error) {
	stats, _, _ := strings.Cut(out, "Connection Statistics:")
	_, stats, ok := strings.Cut(stats, "Statistics:")
	if !ok {
		return perfResult{}, errors.New("dnsperf output has no Statistics block")
	}
	var r perfResult
	var err error
	intOf := func(re *regexp.Regexp, name string) int {
		m := re.FindStringSubmatch(stats)
		if m == nil {
			err = errors.Join(err, fmt.Errorf("dnsperf output lacks %q", name))
			return 0
		}
		n, perr := strconv.Atoi(m[1])
		err = errors.Join(err, perr)
		return n
	}
	r.Sent = intOf(reSent, "Queries sent")
	r.Completed = intOf(reCompleted, "Queries completed")
	r.Lost = intOf(reLost, "Queries lost")
	if m := reQPS.FindStringSubmatch(stats); m != nil {
		r.QPS, _ = strconv.ParseFloat(m[1], 64)
	} else {
		err = errors.Join(err, errors.New(`dnsperf output lacks "Queries per second"`))
	}
	r.Rcodes = map[string]int{}
	if m := reRcodes.FindStringSubmatch(stats); m != nil {
		for _, rc := range reRcode.FindAllStringSubmatch(m[1], -1) {
			n, _ := strconv.Atoi(rc[2])
			r.Rcodes[rc[1]] = n
		}
	}
	// With no query completed dnsperf prints no latency line.
	if m := reLatency.FindStringSubmatch(stats); m != nil {
		r.AvgLatency = seconds(m[1])
		r.MaxLatency = seconds(m[2])
	} else if r.Completed > 0 {
		err = errors.Join(err, errors.New(`dnsperf output lacks "Average Latency"`))
	}
	return r, err
}

func seconds(s string) time.Duration {
	f, _ := strconv.ParseFloat(s, 64)
	return time.Duration(f * float64(time.Second))
}
