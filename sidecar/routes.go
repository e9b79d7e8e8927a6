package main

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/resolvconf"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/router"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/upstream"
)

// clusterRouteName is the `route` label and log name of the cluster route.
const clusterRouteName = "cluster"

// defaultClusterDomain is the cluster domain when neither CLUSTER_DOMAIN
// nor the kubelet's resolv.conf says otherwise: the kubelet's own default.
const defaultClusterDomain = "cluster.local"

// routePlan is what the sidecar routes besides UPSTREAMS, decided once at
// start from the settings and the pod's resolv.conf. serve builds the
// routes from it and `dot-sidecar check` tests them: one decision, made by
// planRoutes for both.
type routePlan struct {
	// routes in precedence: ROUTES', then the cluster route.
	routes []plannedRoute
	// cluster is the cluster route, also in routes; nil without one.
	cluster *plannedRoute
	// domain is the cluster domain ("" with CLUSTER_DNS=off).
	domain string
	// podMode: resolv.conf follows the kubelet's pattern, so this is a pod
	// of the cluster, whose search domains and private reverse zones the
	// cluster's resolver answers. Otherwise (node mode, or outside a
	// cluster) the private reverse zones are answered locally.
	podMode bool
	// resolvConf is the file as read (nil when it was not, or could not be).
	resolvConf *resolvconf.Conf
	// missing says why there is no cluster route although resolv.conf is
	// the kubelet's (no nameserver the sidecar could use): the pod's
	// Services cannot resolve, which check reports.
	missing string
	// notes say what CLUSTER_DNS=auto decided (info) and what went wrong
	// with it (warn), in order, for the log.
	notes []note
}

type note struct {
	warn bool
	msg  string
}

func (p *routePlan) info(format string, args ...any) {
	p.notes = append(p.notes, note{msg: fmt.Sprintf(format, args...)})
}

func (p *routePlan) warn(format string, args ...any) {
	p.notes = append(p.notes, note{warn: true, msg: fmt.Sprintf(format, args...)})
}

type plannedRoute struct {
	name  string
	zones []string // lower case, without the final dot
	// reverse are the private reverse zones of the cluster route in pod
	// mode, apart from zones only to keep logs short.
	reverse   []string
	upstreams []config.Upstream
	// setting names the setting the upstreams come from, for errors about
	// them (a ;ca= file that cannot be read): ROUTES, CLUSTER_DNS or, for
	// the nameservers auto takes, RESOLV_CONF.
	setting   string
	encrypted bool
	// cluster: the cluster route, or a plaintext route to a resolver of the
	// network; a cache must not serve its answers stale.
	cluster bool
	// probe is the name whose SOA the group's health probe asks for.
	probe string
}

// planRoutes decides the routes. It reads cfg.ResolvConf unless
// CLUSTER_DNS is off; a file that cannot be read is a warning under auto,
// never an error.
func planRoutes(cfg *config.Config) *routePlan {
	p := &routePlan{}
	taken := map[string]bool{}
	for _, r := range cfg.Routes {
		name := r.Zone
		if name == clusterRouteName || name == upstream.DefaultRoute || name == router.LocalRoute {
			name += "." // a zone of that one label: keep the labels apart
		}
		p.routes = append(p.routes, plannedRoute{
			name: name, zones: []string{r.Zone}, upstreams: r.Upstreams, setting: "ROUTES",
			encrypted: r.Encrypted(), cluster: !r.Encrypted(), probe: r.Zone + ".",
		})
		taken[r.Zone] = true
	}
	if cfg.ClusterDNS.Mode == config.ClusterDNSOff {
		return p
	}
	auto := cfg.ClusterDNS.Mode == config.ClusterDNSAuto
	cl, found := p.readResolvConf(cfg, auto)
	p.domain = cmp.Or(cfg.ClusterDomain, cl.Domain, defaultClusterDomain)

	cr := plannedRoute{name: clusterRouteName, cluster: true, probe: p.domain + "."}
	switch {
	case !auto:
		cr.upstreams, cr.setting, cr.encrypted = cfg.ClusterDNS.Upstreams, "CLUSTER_DNS", cfg.ClusterDNS.Upstreams[0].Scheme.Encrypted()
	case found && len(cl.Nameservers) > 0:
		cr.setting = "RESOLV_CONF"
		for _, ns := range cl.Nameservers {
			cr.upstreams = append(cr.upstreams, config.Upstream{Scheme: config.SchemeDNS, Addr: netip.AddrPortFrom(ns, config.DefaultDNSPort)})
		}
	default:
		return p // auto found nothing to route to; readResolvConf said why
	}
	// Pod mode only with a route to send the pod's cluster names to: else
	// the private reverse zones are answered locally, never sent to
	// UPSTREAMS.
	p.podMode = found
	zones := []string{p.domain}
	var reverse []string
	if p.podMode {
		zones = append(zones, cl.Zones...)
		for _, z := range router.PrivateReverseZones() {
			reverse = append(reverse, strings.TrimSuffix(z, "."))
		}
	}
	keep := func(into *[]string, z string) {
		switch {
		case taken[z]:
			p.info("zone %s goes to its ROUTES entry, not to the cluster route", z)
		case !slices.Contains(*into, z):
			*into = append(*into, z)
		}
	}
	for _, z := range zones {
		keep(&cr.zones, z)
	}
	for _, z := range reverse {
		keep(&cr.reverse, z)
	}
	if len(cr.zones)+len(cr.reverse) == 0 {
		p.podMode = false
		return p
	}
	p.routes = append(p.routes, cr)
	p.cluster = &p.routes[len(p.routes)-1]
	return p
}

// readResolvConf reads the pod's resolv.conf and recognises the kubelet's
// pattern in it; found reports that it did.
func (p *routePlan) readResolvConf(cfg *config.Config, auto bool) (cl resolvconf.Cluster, found bool) {
	rc, err := resolvconf.Read(cfg.ResolvConf)
	problem := func(why string) {
		if auto {
			p.warn("RESOLV_CONF %s %s: running without a cluster route", cfg.ResolvConf, why)
		} else {
			p.info("RESOLV_CONF %s %s: node mode, the cluster domain alone goes to CLUSTER_DNS", cfg.ResolvConf, why)
		}
	}
	switch {
	case err != nil:
		problem(fmt.Sprintf("cannot be read (%v)", errors.Unwrap(err)))
		return cl, false
	case len(rc.Nameservers) == 0 && len(rc.Search) == 0:
		problem("is empty")
		return cl, false
	}
	p.resolvConf = rc
	cl, err = resolvconf.Detect(rc, resolvconf.DetectOptions{Domain: cfg.ClusterDomain, Own: ownAddress(cfg)})
	for _, n := range cl.Notes {
		p.info("%s", n)
	}
	switch {
	case errors.Is(err, resolvconf.ErrNotKubelet):
		if other, _ := resolvconf.Detect(rc, resolvconf.DetectOptions{}); other.Domain != "" {
			p.warn("CLUSTER_DOMAIN %s, but the search list of %s is the kubelet's for %s", cfg.ClusterDomain, cfg.ResolvConf, other.Domain)
		}
		if auto {
			p.info("RESOLV_CONF %s: %v: no cluster route (not a pod of a cluster, or dnsPolicy is not ClusterFirst)", cfg.ResolvConf, err)
		} else {
			p.info("RESOLV_CONF %s: %v: node mode, the cluster domain alone goes to CLUSTER_DNS", cfg.ResolvConf, err)
		}
		return cl, false
	case errors.Is(err, resolvconf.ErrNoNameservers) && auto:
		p.missing = fmt.Sprintf("RESOLV_CONF %s: %v besides the sidecar's own addresses", cfg.ResolvConf, err)
		p.warn("%s: running without a cluster route", p.missing)
		return cl, true
	}
	return cl, true
}

// ownAddress reports whether the sidecar listens on an address: one of
// BIND_ADDRESS, or any address of the host when it binds the unspecified
// address. A nameserver there would be the sidecar asking itself.
func ownAddress(cfg *config.Config) func(netip.Addr) bool {
	own := map[netip.Addr]bool{}
	for _, a := range cfg.BindAddress {
		if !a.IsUnspecified() {
			own[a.Unmap()] = true
			continue
		}
		addrs, _ := net.InterfaceAddrs()
		for _, ia := range addrs {
			if pfx, err := netip.ParsePrefix(ia.String()); err == nil {
				own[pfx.Addr().Unmap()] = true
			}
		}
	}
	return func(a netip.Addr) bool { return own[a.WithZone("").Unmap()] }
}

// log writes what the plan decided: a line per note, then one saying
// where the cluster's names go.
func (p *routePlan) log(log *slog.Logger) {
	for _, n := range p.notes {
		if n.warn {
			log.Warn(n.msg)
		} else {
			log.Info(n.msg)
		}
	}
	if p.cluster == nil {
		if p.domain != "" {
			log.Info("no cluster route: the cluster's names go to UPSTREAMS", "cluster_domain", p.domain)
		}
		return
	}
	mode := "node"
	if p.podMode {
		mode = "pod"
	}
	log.Info("cluster route", "mode", mode, "cluster_domain", p.domain, "source", p.cluster.setting,
		"zones", p.cluster.zones, "upstreams", upstreamNames(p.cluster.upstreams))
}

func upstreamNames(ups []config.Upstream) []string {
	names := make([]string, len(ups))
	for i, u := range ups {
		names[i] = u.Name()
	}
	return names
}
