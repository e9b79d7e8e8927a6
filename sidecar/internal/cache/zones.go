package cache

import (
	"fmt"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/router"
)

// zoneSet holds zones, each the lower-case wire form of its name.
type zoneSet map[string]struct{}

func newZoneSet(zones []string) (zoneSet, error) {
	s := make(zoneSet, len(zones))
	var buf [dnswire.MaxKeyLen]byte
	for _, z := range zones {
		wire, err := dnswire.AppendName(nil, z)
		if err != nil {
			return nil, fmt.Errorf("zone %q: %w", z, err)
		}
		s[string(dnswire.FoldName(buf[:0], wire))] = struct{}{}
	}
	return s, nil
}

// covers reports whether name (wire form, any case) is one of the zones or
// under one, label by label.
func (s zoneSet) covers(name []byte) bool {
	if len(s) == 0 || len(name) > dnswire.MaxKeyLen {
		return false
	}
	var buf [dnswire.MaxKeyLen]byte
	b := dnswire.FoldName(buf[:0], name)
	for off := 0; off < len(b); off += int(b[off]) + 1 {
		if _, ok := s[string(b[off:])]; ok {
			return true
		}
	}
	return false
}

// excluded reports whether q's name must never be served stale: it is in
// StaleExclude, or, with StaleExcludeCluster, the cluster's or the
// network's: its route is the cluster route or a plaintext one (to a
// resolver of the network's, whatever the route was told), or a private
// reverse zone holds it.
func (c *Cache) excluded(q *dnswire.Msg, rt *router.Route) bool {
	return c.opts.StaleExcludeCluster && (rt.Cluster || !rt.Encrypted) || c.exclude.covers(q.QName())
}
