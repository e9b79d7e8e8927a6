package netnstest

import (
	"strings"
	"testing"
)

// NATTable returns the namespace's nat table as Table does.
func (n *Netns) NATTable(t testing.TB, save string) string {
	t.Helper()
	return n.Table(t, save, "nat")
}

// Table returns one table of the namespace as save (iptables-nft-save,
// ip6tables-legacy-save, ...) prints it, without comment lines and chain
// counters (":CHAIN POLICY [pkts:bytes]" becomes ":CHAIN POLICY"), so that
// two states compare as text: what a rule change added, removed or left.
func (n *Netns) Table(t testing.TB, save, table string) string {
	t.Helper()
	out := n.Must(t, save, "-t", table)
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, ":") {
			if i := strings.LastIndex(l, " ["); i > 0 {
				l = l[:i]
			}
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n")
}
