package netns

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/netnstest"
)

// Names from iptables/dns-redirect.sh, the contract the script documents.
const (
	ourChain       = "DOT_SIDECAR_OUTPUT"
	commentSkipUID = "dot-sidecar/skip-sidecar-uid"
	commentUDP     = "dot-sidecar/redirect-udp-dns"
	commentTCP     = "dot-sidecar/redirect-tcp-dns"
	commentJump    = "dot-sidecar/capture-dns"
	// raw: the conntrack zone of the sidecar's own port-53 flows.
	commentZoneJump = "dot-sidecar/zone-dns"
	commentZoneSkip = "dot-sidecar/zone-not-sidecar"
	commentZoneUDP  = "dot-sidecar/zone-udp-dns"
	commentZoneTCP  = "dot-sidecar/zone-tcp-dns"
)

// A foreign rule per family, as a mesh's init step would leave it; it must
// survive init and cleanup byte for byte.
var foreignRule = map[int][]string{
	4: {"-t", "nat", "-A", "OUTPUT", "-d", "198.51.100.7/32", "-p", "tcp", "--dport", "8080",
		"-m", "comment", "--comment", "foreign/mesh-outbound", "-j", "REDIRECT", "--to-ports", "15001"},
	6: {"-t", "nat", "-A", "OUTPUT", "-d", "2001:db8:ffff::7/128", "-p", "tcp", "--dport", "8080",
		"-m", "comment", "--comment", "foreign/mesh-outbound", "-j", "REDIRECT", "--to-ports", "15001"},
}

// ipt is one iptables backend for one family.
type ipt struct {
	backend string // nft or legacy
	family  int    // 4 or 6
}

func (b ipt) tool(verb string) string {
	p := "iptables"
	if b.family == 6 {
		p = "ip6tables"
	}
	if verb == "" {
		return p + "-" + b.backend
	}
	return p + "-" + b.backend + "-" + verb
}

func (b ipt) String() string { return fmt.Sprintf("IPv%d/%s", b.family, b.backend) }

// natRules returns the nat table (netnstest.NATTable), so that two states
// can be compared.
func (b ipt) natRules(t *testing.T, n *netnstest.Netns) string {
	t.Helper()
	return n.NATTable(t, b.tool("save"))
}

// rawRules returns the raw table, where the conntrack zone rules live.
func (b ipt) rawRules(t *testing.T, n *netnstest.Netns) string {
	t.Helper()
	return n.Table(t, b.tool("save"), "raw")
}

var counterLine = regexp.MustCompile(`^\[(\d+):(\d+)\] (.*)$`)

// counters returns the packet counter of every rule carrying a comment,
// keyed by that comment (iptables-save -c).
func (b ipt) counters(t *testing.T, n *netnstest.Netns) map[string]uint64 {
	t.Helper()
	out := n.Must(t, b.tool("save"), "-c", "-t", "nat")
	got := map[string]uint64{}
	for _, l := range strings.Split(out, "\n") {
		m := counterLine.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		c := commentOf(m[3])
		if c == "" {
			continue
		}
		v, err := strconv.ParseUint(m[1], 10, 64)
		if err != nil {
			t.Fatalf("counter in %q: %v", l, err)
		}
		got[c] += v
	}
	return got
}

var commentRE = regexp.MustCompile(`--comment "?([^" ]+)"?`)

func commentOf(rule string) string {
	m := commentRE.FindStringSubmatch(rule)
	if m == nil {
		return ""
	}
	return m[1]
}

// deleteByComment removes every rule of the nat table whose comment is c, as
// a broken or partial init would leave the namespace. It fails the test when
// there is none: a test that deletes nothing proves nothing.
func (b ipt) deleteByComment(t *testing.T, n *netnstest.Netns, c string) {
	t.Helper()
	out := n.Must(t, b.tool("save"), "-t", "nat")
	deleted := 0
	for _, l := range strings.Split(out, "\n") {
		if !strings.HasPrefix(l, "-A ") || commentOf(l) != c {
			continue
		}
		args := append([]string{b.tool(""), "-t", "nat", "-D"}, splitRule(strings.TrimPrefix(l, "-A "))...)
		n.Must(t, args...)
		deleted++
	}
	if deleted == 0 {
		t.Fatalf("%v: no rule with comment %q to delete:\n%s", b, c, out)
	}
}

// splitRule splits an iptables-save rule into arguments, honouring the
// double quotes iptables-save puts around comments.
func splitRule(s string) []string {
	var args []string
	var cur strings.Builder
	inQuote, has := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote, has = !inQuote, true
		case r == ' ' && !inQuote:
			if has {
				args = append(args, cur.String())
				cur.Reset()
				has = false
			}
		default:
			cur.WriteRune(r)
			has = true
		}
	}
	if has {
		args = append(args, cur.String())
	}
	return args
}
