package cache

import (
	"unsafe"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
)

// cacheable reports whether answers to q may come from, and go into, the
// cache:
//   - not a zone transfer (AXFR, IXFR: several messages, made for the
//     client that asked);
//   - not a query carrying EDNS Client Subnet (RFC 7871): its answer may be
//     tailored to that subnet, and the key does not hold it.
func cacheable(q *dnswire.Msg) bool {
	switch q.QType() {
	case dnswire.TypeAXFR, dnswire.TypeIXFR:
		return false
	}
	if q.HasOPT() {
		if _, ecs := q.Option(dnswire.OptionECS); ecs {
			return false
		}
	}
	return true
}

// lookupKey views b as a string without copying, for a lookup only: otter
// hashes and compares the keys it is asked for but keeps none of them, and
// b is not changed until the lookup returns. A key that is stored is
// always a string of its own.
func lookupKey(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }
