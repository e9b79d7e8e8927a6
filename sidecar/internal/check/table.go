package check

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteTable prints one line per path and a verdict that names every path
// not intercepted, so that an init container's log says what to fix.
func WriteTable(w io.Writer, rep *Report) error {
	for _, ig := range rep.Ignored {
		if _, err := fmt.Fprintf(w, "ignoring nameserver %q: not an IP address\n", ig); err != nil {
			return err
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAMESERVER\tPROTO\tRESULT\tRTT")
	for _, r := range rep.Results {
		result := r.Outcome.String()
		if r.Outcome != Intercepted && r.Detail != "" {
			result += " (" + r.Detail + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Nameserver, r.Proto, result, r.RTT.Round(10*time.Microsecond))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if c := rep.Cluster; c != nil {
		if _, err := fmt.Fprintf(w, "route %s: %s %s (%s)\n", c.Route, c.Name, c.Outcome, c.Detail); err != nil {
			return err
		}
	}
	failed := rep.Failed()
	if len(failed) > 0 {
		paths := make([]string, len(failed))
		for i, f := range failed {
			paths[i] = f.Path()
		}
		_, err := fmt.Fprintf(w, "FAIL: %d of %d paths NOT intercepted: %s\n", len(failed), len(rep.Results), strings.Join(paths, ", "))
		return err
	}
	if c := rep.Cluster; c != nil && c.Outcome == ClusterFailed {
		_, err := fmt.Fprintf(w, "FAIL: route %s does not resolve %s: %s\n", c.Route, c.Name, c.Detail)
		return err
	}
	_, err := fmt.Fprintf(w, "OK: all %d paths intercepted by the sidecar\n", len(rep.Results))
	return err
}
