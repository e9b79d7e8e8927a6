package router

import (
	"fmt"
	"net/netip"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/upstream"
)

// localTTL is the TTL of every record the router answers with, and the
// MINIMUM of its SOAs, so that a negative answer is cached for at most that
// long (RFC 2308 §5). Short: these answers never change while the sidecar
// runs, but a setting that moves a zone to a route (or pod mode, which
// sends the private reverse zones to the cluster's resolver) takes effect
// at the next start, and caches between the application and the sidecar
// should not hold the old answer long after.
const localTTL = 60

// The SOA of a local zone, as RFC 6303 §3 has it for the zones it lists:
// the zone as MNAME, nobody.invalid. as RNAME, the timers of its example.
var (
	soaRName = mustName("nobody.invalid.")
	soaTimes = dnswire.SOAData{Serial: 1, Refresh: 3600, Retry: 1200, Expire: 604800, Minimum: localTTL}
)

// localZone answers the names of one special-use zone. Its record slices
// are built once and only read.
type localZone struct {
	kind localKind
	soa  []dnswire.Record // the zone's SOA
	a    []dnswire.Record // A 127.0.0.1 (localhost)
	aaaa []dnswire.Record // AAAA ::1 (localhost)
}

func newLocalZone(wire []byte, kind localKind) *localZone {
	d := soaTimes
	d.MName, d.RName = wire, soaRName
	return &localZone{
		kind: kind,
		soa:  []dnswire.Record{dnswire.SOA(wire, localTTL, d)},
		a:    []dnswire.Record{dnswire.A(localTTL, netip.AddrFrom4([4]byte{127, 0, 0, 1}))},
		aaaa: []dnswire.Record{dnswire.AAAA(localTTL, netip.IPv6Loopback())},
	}
}

// answer builds the authoritative answer to q, a name of the zone (apex:
// the zone's own name), as the caller of an upstream gets it: parsed, with
// q's ID and question.
//
//   - the zone's SOA at the apex;
//   - localhost and every name under it: A 127.0.0.1, AAAA ::1, no data
//     (NOERROR, the SOA in the authority section) for any other type;
//   - other zones: NXDOMAIN below the apex, no data at it, the SOA in the
//     authority section of either;
//   - another class than IN: REFUSED; these zones exist in IN only.
func (z *localZone) answer(q *dnswire.Msg, apex bool, udpSize uint16) (dnswire.Msg, error) {
	rep := dnswire.Reply{Authoritative: true, EDNS: dnswire.ReplyEDNS(q, udpSize)}
	switch qt := q.QType(); {
	case q.QClass() != dnswire.ClassINET:
		rep.Rcode, rep.Authoritative = dnswire.RcodeRefused, false
	case apex && qt == dnswire.TypeSOA:
		rep.Answer = z.soa
	case z.kind == localhostZone && qt == dnswire.TypeA:
		rep.Answer = z.a
	case z.kind == localhostZone && qt == dnswire.TypeAAAA:
		rep.Answer = z.aaaa
	case z.kind == emptyZone && !apex:
		rep.Rcode, rep.Authority = dnswire.RcodeNameError, z.soa
	default:
		rep.Authority = z.soa
	}
	ans, err := dnswire.Parse(dnswire.AppendReply(make([]byte, 0, 128), q, rep))
	if err != nil {
		// Only a bug gets here: the message is ours.
		return dnswire.Msg{}, fmt.Errorf("%w: local answer: %w", upstream.ErrBadResponse, err)
	}
	return ans, nil
}

func mustName(s string) []byte {
	b, err := dnswire.AppendName(nil, s)
	if err != nil {
		panic(err)
	}
	return b
}
