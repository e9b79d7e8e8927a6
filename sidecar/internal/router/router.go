// Package router sends each query to the upstream group of its zone. One
// table of zones, matched longest suffix first on the query's name, holds
// the operator's routes, the cluster's route and the special-use names the
// router answers itself (special.go, local.go); a name no zone matches goes
// to the default upstreams.
//
// Data flows one way: server → (cache) → Router → Group → Upstream. The
// Router is an upstream.Upstream, so the server relays through it as it did
// through a Group; an answer cache in front of it asks Route for the route
// of a query (its zone, whether it is encrypted, whether it is the
// cluster's), from the query the server parsed once.
package router

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/upstream"
)

// Route is where the names of one zone go. A Router's Routes are fixed at
// New and shared; callers must not change them.
type Route struct {
	// Name is the route's name in logs and as the `route` metric label:
	// upstream.DefaultRoute for the default upstreams, the name the caller
	// gave a route (its first zone, without the final dot), or "local"
	// for the names the router answers itself.
	Name string
	// Zone is the zone matched, in presentation form, lower case, with its
	// final dot: "." for the default route, "cluster.local." for a route.
	Zone string
	// Encrypted: the route's upstreams are reached over TLS. False for
	// plaintext routes and for local answers (nothing is sent).
	Encrypted bool
	// Cluster: the zone belongs to the cluster or the network (the cluster
	// route, or a plaintext route to a private resolver). Its answers
	// change with the cluster's state (Pods and Services come and go), so
	// a cache must not serve them stale.
	Cluster bool
	// Local: the router answers the zone itself (Upstream is nil).
	Local bool
	// Upstream answers the zone's queries; nil for a Local route.
	Upstream upstream.Upstream

	local *localZone
}

// RouteOptions describes one route of Options.Routes.
type RouteOptions struct {
	// Name is the route's name in logs and metrics; default its first zone
	// without the final dot.
	Name string
	// Zones are the route's zones, presentation form, the final dot
	// optional, any case. Never the root: that is Options.Default.
	Zones []string
	// Upstream answers them; the Router's Close closes it.
	Upstream upstream.Upstream
	// Encrypted and Cluster are copied to each Route.
	Encrypted, Cluster bool
}

// Options configures a Router.
type Options struct {
	// Default answers every name no route matches (UPSTREAMS). Required.
	Default upstream.Upstream
	// Routes in order of precedence. A zone may appear in one route only.
	Routes []RouteOptions
	// LocalReverse answers the reverse zones of private ranges
	// (PrivateReverseZones) locally, unless a route has them or a zone
	// above them. Without it the caller routes them (to the cluster's
	// resolver, in pod mode).
	LocalReverse bool
	// UDPSize is the payload size advertised in the OPT record of local
	// answers to queries with EDNS.
	UDPSize uint16
	// Registerer receives dot_sidecar_route_info. Required.
	Registerer prometheus.Registerer
}

// Router is an upstream.Upstream that sends each query to its zone's route.
type Router struct {
	table   table
	routes  []*Route // every Route, for Routes(): the default first
	ups     []upstream.Upstream
	udpSize uint16
}

var _ upstream.Upstream = (*Router)(nil)

// New builds the zone table. It opens nothing; the upstreams are the
// caller's, and the Router's from then on (Close closes them).
func New(opts Options) (*Router, error) {
	if opts.Default == nil || opts.Registerer == nil {
		return nil, errors.New("router: Default and Registerer are required")
	}
	r := &Router{udpSize: opts.UDPSize, ups: []upstream.Upstream{opts.Default}}
	r.table = newTable()
	def := &Route{Name: upstream.DefaultRoute, Zone: ".", Encrypted: true, Upstream: opts.Default}
	r.table.set(rootKey, def)
	r.routes = append(r.routes, def)
	var taken []string // wire keys of the routes' zones
	for _, ro := range opts.Routes {
		if ro.Upstream == nil || len(ro.Zones) == 0 {
			return nil, fmt.Errorf("router: route %q needs an upstream and a zone", ro.Name)
		}
		r.ups = append(r.ups, ro.Upstream)
		for _, z := range ro.Zones {
			key, zone, err := zoneKey(z)
			if err != nil {
				return nil, fmt.Errorf("router: route %q: %w", ro.Name, err)
			}
			if key == rootKey {
				return nil, fmt.Errorf("router: route %q: the root zone is the default route's", ro.Name)
			}
			if prev := r.table.get(key); prev != nil {
				return nil, fmt.Errorf("router: zone %s in routes %q and %q", zone, prev.Name, ro.Name)
			}
			name := ro.Name
			if name == "" {
				name = strings.TrimSuffix(zoneName(ro.Zones[0]), ".")
			}
			rt := &Route{Name: name, Zone: zone, Encrypted: ro.Encrypted, Cluster: ro.Cluster, Upstream: ro.Upstream}
			r.table.set(key, rt)
			r.routes = append(r.routes, rt)
			taken = append(taken, key)
		}
	}
	for _, sz := range specialZones(opts.LocalReverse) {
		key, zone, err := zoneKey(sz.zone)
		if err != nil {
			panic(err) // the list is ours
		}
		if coveredBy(key, taken) {
			continue // a route has it, or a zone above it: never shadow a route
		}
		rt := &Route{Name: LocalRoute, Zone: zone, Local: true, local: newLocalZone([]byte(key), sz.kind)}
		r.table.set(key, rt)
		r.routes = append(r.routes, rt)
	}
	if err := registerInfo(opts.Registerer, r.routes); err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	return r, nil
}

// LocalRoute is the Name of the routes the router answers itself.
const LocalRoute = "local"

// Route returns the route of q's name: the route of the longest zone the
// name equals or is under, label by label, without regard to case; the
// default route when none matches. It allocates nothing.
func (r *Router) Route(q *dnswire.Msg) *Route {
	rt, _ := r.table.lookup(q.QName())
	return rt
}

// Exchange answers q from its route: the route's upstream, or the router
// itself for a local zone.
func (r *Router) Exchange(ctx context.Context, q dnswire.Msg) (dnswire.Msg, error) {
	rt, apex := r.table.lookup(q.QName())
	if rt.local != nil {
		return rt.local.answer(&q, apex, r.udpSize)
	}
	return rt.Upstream.Exchange(ctx, q)
}

// Routes returns every route, the default first, then the routes' zones in
// the order given, then the local zones that no route shadows.
func (r *Router) Routes() []*Route { return append([]*Route(nil), r.routes...) }

// Name summarises the router for logs.
func (r *Router) Name() string { return fmt.Sprintf("router(%d zones)", len(r.routes)) }

// Close closes every route's upstream.
func (r *Router) Close() error {
	var errs []error
	for _, u := range r.ups {
		if err := u.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
