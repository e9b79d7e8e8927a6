package router

import (
	"fmt"
	"strings"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
)

// table maps zones, each the lower-case wire form of its name as a string
// key, to their routes. It is built once and then only read, by any number
// of queries at once, without locks.
type table struct {
	zones map[string]*Route
}

// rootKey is the root zone's key: the default route, which matches every
// name.
const rootKey = "\x00"

func newTable() table { return table{zones: make(map[string]*Route)} }

func (t table) set(key string, rt *Route) { t.zones[key] = rt }

func (t table) get(key string) *Route { return t.zones[key] }

// lookup returns the route of the longest zone that name (a wire-form name
// as dnswire.Msg.QName returns it) equals or is under, and whether name is
// that zone's apex. It folds the name's case into a buffer on the stack and
// tries each suffix that starts on a label boundary, longest first: at most
// one map lookup per label, and no allocation (the map index by
// string(bytes) does not copy). A name that cannot be read (nil) goes to
// the default route.
func (t table) lookup(name []byte) (*Route, bool) {
	var buf [255]byte
	if len(name) == 0 || len(name) > len(buf) {
		return t.zones[rootKey], len(name) == 1
	}
	b := dnswire.FoldName(buf[:0], name)
	for off := 0; off < len(b); off += int(b[off]) + 1 {
		if rt, ok := t.zones[string(b[off:])]; ok {
			return rt, off == 0
		}
	}
	// Not reached for a well-formed name: its last suffix is the root.
	return t.zones[rootKey], false
}

// zoneKey turns a zone's name (presentation form, the final dot optional,
// any case) into its table key and its canonical name: lower case, final
// dot.
func zoneKey(z string) (key, zone string, err error) {
	zone = zoneName(z)
	wire, err := dnswire.AppendName(nil, zone)
	if err != nil {
		return "", "", fmt.Errorf("zone %q: %w", z, err)
	}
	return string(wire), zone, nil
}

func zoneName(z string) string {
	z = strings.ToLower(strings.TrimSuffix(z, "."))
	return z + "."
}

// coveredBy reports whether the zone of key is one of zones, or under one:
// compared on label boundaries, as wire names end with the labels of the
// zones above them.
func coveredBy(key string, zones []string) bool {
	for _, z := range zones {
		if key == z || strings.HasSuffix(key, z) && isSuffixAtLabel(key, len(key)-len(z)) {
			return true
		}
	}
	return false
}

// isSuffixAtLabel reports whether off, in the wire name key, is the start of
// a label.
func isSuffixAtLabel(key string, off int) bool {
	for i := 0; i < len(key); i += int(key[i]) + 1 {
		if i == off {
			return true
		}
		if key[i] == 0 {
			break
		}
	}
	return false
}
