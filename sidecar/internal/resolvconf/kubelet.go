package resolvconf

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Errors of Detect.
var (
	// ErrNotKubelet: the search list does not follow the kubelet's pattern,
	// so the file is not a pod's ClusterFirst resolv.conf (a node's, say).
	ErrNotKubelet = errors.New("search list does not follow the kubelet's pattern (no svc.<domain>)")
	// ErrNoNameservers: the file names no nameserver that can be used.
	ErrNoNameservers = errors.New("no usable nameserver")
)

// Cluster is what the kubelet's resolv.conf of a pod says about its cluster.
type Cluster struct {
	// Domain is the cluster domain, e.g. "cluster.local".
	Domain string
	// Zones are the zones only the cluster's resolver can answer: Domain
	// first, then every other search domain that is not under it (the
	// node's own, such as a cloud's internal domain), in file order.
	Zones []string
	// Nameservers are the file's nameservers in file order, less those
	// DetectOptions.Own left out.
	Nameservers []netip.Addr
	// Notes say what was left out and why, for the log.
	Notes []string
}

// DetectOptions adjust Detect.
type DetectOptions struct {
	// Domain, when not empty, is the cluster domain the operator set: then
	// only svc.<Domain> in the search list shows the kubelet's pattern.
	Domain string
	// Own, when not nil, reports whether the sidecar itself answers on
	// addr port 53. Such nameservers are left out: the sidecar would ask
	// itself.
	Own func(addr netip.Addr) bool
}

// Detect recognises the resolv.conf the kubelet writes for a pod with
// dnsPolicy ClusterFirst or ClusterFirstWithHostNet:
//
//	search <namespace>.svc.<domain> svc.<domain> <domain> [node's domains...]
//	nameserver <cluster DNS Service IP>
//	options ndots:5
//
// The pattern is svc.<domain> in the search list (the first such entry
// wins). It returns ErrNotKubelet without it and ErrNoNameservers when no
// nameserver is left.
//
// Search domains of one label are left out with a note: routing a whole
// top-level domain to the cluster's resolver in plaintext would send it
// every public name under that domain.
func Detect(c *Conf, opts DetectOptions) (Cluster, error) {
	var cl Cluster
	want := strings.ToLower(strings.TrimSuffix(opts.Domain, "."))
	for _, s := range c.Search {
		if d, ok := strings.CutPrefix(s, "svc."); ok && validZone(d) && (want == "" || d == want) {
			cl.Domain = d
			break
		}
	}
	if cl.Domain == "" {
		if want != "" {
			return cl, fmt.Errorf("%w: no svc.%s", ErrNotKubelet, want)
		}
		return cl, ErrNotKubelet
	}
	cl.Zones = []string{cl.Domain}
	var candidates []string
	for _, s := range c.Search {
		switch {
		case s == cl.Domain || under(s, cl.Domain):
			// Answered by the cluster domain's route already.
		case !strings.Contains(s, "."):
			cl.Notes = append(cl.Notes, fmt.Sprintf("search domain %q left out: a top-level domain is not routed to the cluster resolver", s))
		case !validZone(s):
			cl.Notes = append(cl.Notes, fmt.Sprintf("search domain %q left out: not a domain name", s))
		default:
			candidates = append(candidates, s)
		}
	}
	for _, s := range candidates {
		// A domain under another one is answered by that one's route.
		if !contains(cl.Zones, s) && !slices.ContainsFunc(candidates, func(z string) bool { return under(s, z) }) {
			cl.Zones = append(cl.Zones, s)
		}
	}
	for _, ns := range c.Nameservers {
		if opts.Own != nil && opts.Own(ns) {
			cl.Notes = append(cl.Notes, fmt.Sprintf("nameserver %s left out: the sidecar itself listens there", ns))
			continue
		}
		if !contains(cl.Nameservers, ns) {
			cl.Nameservers = append(cl.Nameservers, ns)
		}
	}
	if len(cl.Nameservers) == 0 {
		return cl, ErrNoNameservers
	}
	return cl, nil
}

// under reports whether name is a proper subdomain of zone.
func under(name, zone string) bool {
	return len(name) > len(zone) && strings.HasSuffix(name, zone) && name[len(name)-len(zone)-1] == '.'
}

func contains[T comparable](s []T, v T) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// validZone accepts what a search domain can be: labels of 1 to 63 bytes,
// letters, digits, '-' and '_', at most 253 bytes in all.
func validZone(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if len(label) == 0 || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}
