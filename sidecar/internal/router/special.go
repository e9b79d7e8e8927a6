package router

import (
	"fmt"
	"strings"
)

// Special-use names (RFC 6761 and its successors) mean nothing on the public
// Internet. A public resolver can only answer NXDOMAIN for them, after
// learning what the pod looked for; they are answered here instead, below
// every route in precedence: a route for one of these zones or a zone above
// it wins (New leaves the special zone out).

// localKind is how a local zone answers.
type localKind int

const (
	// localhostZone: A 127.0.0.1 and AAAA ::1 for the zone and every name
	// under it, no data for other types (RFC 6761 §6.3).
	localhostZone localKind = iota
	// emptyZone: NXDOMAIN below the apex, the SOA or no data at the apex.
	emptyZone
)

type specialZone struct {
	zone string
	kind localKind
}

// namedZones are answered locally whatever the mode.
var namedZones = []specialZone{
	{"localhost.", localhostZone}, // RFC 6761 §6.3
	{"invalid.", emptyZone},       // RFC 6761 §6.4 (the check's canary, under it, is the server's)
	{"local.", emptyZone},         // RFC 6762: multicast DNS names, never unicast
	{"onion.", emptyZone},         // RFC 7686: Tor names, never DNS
	{"home.arpa.", emptyZone},     // RFC 8375: a home network's own names
}

// PrivateReverseZones returns the reverse zones (in-addr.arpa., ip6.arpa.)
// of the loopback, private and link-local ranges: 127/8, 10/8, 172.16/12,
// 192.168/16, 169.254/16, 100.64/10 (RFC 6303, RFC 6598, RFC 7793), ::1,
// fc00::/7 and fe80::/10. Their names exist only in the cluster or the
// network, never on the public Internet: in pod mode they go to the
// cluster's resolver (kube-dns answers PTR queries for Pods and Services),
// otherwise the router answers them (Options.LocalReverse).
func PrivateReverseZones() []string {
	zones := []string{"127.in-addr.arpa.", "10.in-addr.arpa."}
	for i := 16; i <= 31; i++ {
		zones = append(zones, fmt.Sprintf("%d.172.in-addr.arpa.", i))
	}
	zones = append(zones, "168.192.in-addr.arpa.", "254.169.in-addr.arpa.")
	for i := 64; i <= 127; i++ {
		zones = append(zones, fmt.Sprintf("%d.100.in-addr.arpa.", i))
	}
	// ::1, nibble by nibble: 1 then 31 zeros.
	zones = append(zones, "1."+strings.Repeat("0.", 31)+"ip6.arpa.")
	zones = append(zones, "c.f.ip6.arpa.", "d.f.ip6.arpa.") // fc00::/7
	for _, n := range []string{"8", "9", "a", "b"} {
		zones = append(zones, n+".e.f.ip6.arpa.") // fe80::/10
	}
	return zones
}

// specialZones returns the zones the router answers itself.
func specialZones(localReverse bool) []specialZone {
	zones := append([]specialZone(nil), namedZones...)
	if localReverse {
		for _, z := range PrivateReverseZones() {
			zones = append(zones, specialZone{z, emptyZone})
		}
	}
	return zones
}
