package check

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"strings"
)

// ResolvConf is the part of a resolv.conf that decides where an application's
// queries go.
type ResolvConf struct {
	// Nameservers in file order; IPv6 link-local addresses keep their zone.
	Nameservers []netip.Addr
	// Ignored lists nameserver lines the C library would skip too (not an IP
	// address), so that check can say why a line was not tested.
	Ignored []string
}

// ReadResolvConf reads and parses the file at path.
func ReadResolvConf(path string) (*ResolvConf, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading resolv.conf: %w", err)
	}
	return ParseResolvConf(b), nil
}

// ParseResolvConf extracts the nameserver lines the way the C libraries and
// Go's resolver read them: lines starting with '#' or ';' are comments, only
// the first word after the keyword counts and anything after it is ignored.
// Every other keyword (search, options, ...) does not change where packets go
// and is skipped. Where resolvers differ it errs towards testing more paths:
// it accepts leading blanks (Go's resolver does) and keeps more than three
// nameservers (glibc and musl stop at three); testing an unused path costs a
// query, skipping a used one would hide a leak.
func ParseResolvConf(b []byte) *ResolvConf {
	rc := &ResolvConf{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) == 0 || fields[0] != "nameserver" {
			continue
		}
		if len(fields) < 2 {
			rc.Ignored = append(rc.Ignored, strings.TrimSpace(line))
			continue
		}
		addr, err := netip.ParseAddr(fields[1])
		if err != nil {
			rc.Ignored = append(rc.Ignored, fields[1])
			continue
		}
		rc.Nameservers = append(rc.Nameservers, addr.Unmap())
	}
	// A line longer than the buffer ends the scan early; what was read so far
	// is still the best information available, and the table will show it.
	return rc
}
