// Package resolvconf reads resolv.conf(5) the way the C libraries do, and
// recognises the file the kubelet writes for a pod (kubelet.go). Both the
// sidecar, which routes the cluster's names by it, and `dot-sidecar check`,
// which tests those routes, read the file through this one parser.
package resolvconf

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// Conf is what a resolv.conf says about where an application's queries go
// and which names it tries.
type Conf struct {
	// Nameservers in file order; IPv6 link-local addresses keep their zone.
	Nameservers []netip.Addr
	// Ignored lists nameserver lines the C library would skip too (not an IP
	// address), so that a caller can say why a line was not used.
	Ignored []string
	// Search is the search list in file order, each domain lower-cased and
	// without its final dot, the root left out (addSearch). As in glibc,
	// the last search or domain line wins; a domain line is a search list
	// of one.
	Search []string
	// Options are the words of the options lines, in file order
	// ("ndots:5", "edns0", ...).
	Options []string
}

// Read reads and parses the file at path.
func Read(path string) (*Conf, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading resolv.conf: %w", err)
	}
	return Parse(b), nil
}

// Parse reads the lines the way the C libraries and Go's resolver do:
// lines starting with '#' or ';' are comments; for nameserver and domain
// only the first word after the keyword counts and anything after it is
// ignored. Where resolvers differ it errs towards seeing more: it accepts
// leading blanks (Go's resolver does) and keeps more than three nameservers
// (glibc and musl stop at three), because a caller testing paths would
// rather test an unused one than skip a used one.
func Parse(b []byte) *Conf {
	c := &Conf{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		switch fields[0] {
		case "nameserver":
			c.nameserver(line, fields)
		case "search":
			c.Search = c.Search[:0]
			for _, d := range fields[1:] {
				c.addSearch(d)
			}
		case "domain":
			c.Search = c.Search[:0]
			if len(fields) > 1 {
				c.addSearch(fields[1])
			}
		case "options":
			c.Options = append(c.Options, fields[1:]...)
		}
	}
	// A line longer than the buffer ends the scan early; what was read so far
	// is still the best information available.
	return c
}

func (c *Conf) nameserver(line string, fields []string) {
	if len(fields) < 2 {
		c.Ignored = append(c.Ignored, strings.TrimSpace(line))
		return
	}
	addr, err := netip.ParseAddr(fields[1])
	if err != nil {
		c.Ignored = append(c.Ignored, fields[1])
		return
	}
	c.Nameservers = append(c.Nameservers, addr.Unmap())
}

// addSearch appends a search domain in the form routes compare: lower case,
// no final dot. The root (".", or any word of dots only, "..") searches
// nothing and is left out. A word with an empty label elsewhere ("a..b",
// "a..") is kept as it is, for Detect to leave out with a note.
func (c *Conf) addSearch(d string) {
	d = strings.ToLower(strings.TrimSuffix(d, "."))
	if strings.Trim(d, ".") != "" {
		c.Search = append(c.Search, d)
	}
}

// Ndots is the ndots option (the last one given), 1 without it, capped at
// 15 as glibc does.
func (c *Conf) Ndots() int {
	n := 1
	for _, o := range c.Options {
		if v, ok := strings.CutPrefix(o, "ndots:"); ok {
			if d, err := strconv.Atoi(v); err == nil && d >= 0 {
				n = min(d, 15)
			}
		}
	}
	return n
}
