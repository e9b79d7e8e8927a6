package unboundtest

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
)

// Stats returns unbound's counters ("total.num.queries", "num.query.tls",
// "num.query.tcp", ...) without resetting them (unbound-control
// stats_noreset). Counters are cumulative since start.
func (s *Server) Stats(ctx context.Context) (map[string]float64, error) {
	if s.tools.control == "" {
		return nil, errors.New("unbound-control not found (Debian package unbound)")
	}
	out, err := exec.CommandContext(ctx, s.tools.control, "-c", s.ConfigFile, "stats_noreset").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("unbound-control stats_noreset: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return parseStats(string(out))
}

func parseStats(out string) (map[string]float64, error) {
	stats := make(map[string]float64)
	for _, l := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(l), "=")
		if !ok {
			continue
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return nil, fmt.Errorf("unbound-control stats: line %q: %w", l, err)
		}
		stats[k] = f
	}
	if len(stats) == 0 {
		return nil, fmt.Errorf("unbound-control stats: no counters in %q", out)
	}
	return stats, nil
}
