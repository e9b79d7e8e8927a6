package main

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/router"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/upstream"
)

// routing is what serve relays through: the router, the group of
// UPSTREAMS, one group per route, and the trusts they verify against.
type routing struct {
	router *router.Router
	def    *upstream.Group   // UPSTREAMS: what readiness looks at
	groups []*upstream.Group // every group, def first
	trusts []*upstream.Trust // every Trust loaded from files, watched
	plan   *routePlan
	ups    []config.Upstream // UPSTREAMS, for the log
}

// newRouting builds a group for UPSTREAMS, verified against trust, and one
// for each planned route, then the router over them. A route's tls://
// entries are verified against their own ;ca= file, or the system roots,
// and their own pins only: TLS_CA_FILE and the default pins are
// UPSTREAMS' alone.
func newRouting(cfg *config.Config, plan *routePlan, trust *upstream.Trust, log *slog.Logger, reg prometheus.Registerer) (*routing, error) {
	policy, err := upstream.ParsePolicy(cfg.UpstreamPolicy)
	if err != nil {
		return nil, cfg.Invalid("UPSTREAM_POLICY", err)
	}
	rt := &routing{plan: plan, trusts: []*upstream.Trust{trust}, ups: cfg.Upstreams()}
	fail := func(err error) (*routing, error) {
		for _, g := range rt.groups {
			g.Close()
		}
		return nil, err
	}
	m := upstream.NewMetrics(reg)
	b := groupBuilder{cfg: cfg, policy: policy, log: log}

	def, err := b.build(rt.ups, upstream.Probe{}, func(config.Upstream) (*upstream.Trust, error) { return trust, nil }, m)
	if err != nil {
		return fail(err)
	}
	rt.def = def
	rt.groups = append(rt.groups, def)

	// Routes' trusts: one per ;ca= file, shared by the entries naming it;
	// the system roots for the others.
	system := upstream.NewTrust(nil, nil)
	byFile := map[string]*upstream.Trust{}
	var routes []router.RouteOptions
	for _, pr := range plan.routes {
		trustFor := func(u config.Upstream) (*upstream.Trust, error) {
			if u.CAFile == "" {
				return system, nil
			}
			if t, ok := byFile[u.CAFile]; ok {
				return t, nil
			}
			t, err := upstream.LoadTrust(upstream.TrustSource{CAFile: u.CAFile})
			if fe, ok := errors.AsType[*upstream.FileError](err); ok {
				return nil, cfg.Invalid(pr.setting, fmt.Errorf("%s: ;ca=%s: %w", u.Name(), u.CAFile, fe.Err))
			}
			if err != nil {
				return nil, err
			}
			byFile[u.CAFile] = t
			rt.trusts = append(rt.trusts, t)
			return t, nil
		}
		g, err := b.build(pr.upstreams, upstream.Probe{Name: pr.probe, Type: dnswire.TypeSOA}, trustFor, m.ForRoute(pr.name))
		if err != nil {
			return fail(err)
		}
		rt.groups = append(rt.groups, g)
		routes = append(routes, router.RouteOptions{
			Name: pr.name, Zones: slices.Concat(pr.zones, pr.reverse), Upstream: g, Encrypted: pr.encrypted, Cluster: pr.cluster,
		})
	}
	r, err := router.New(router.Options{
		Default:      def,
		Routes:       routes,
		LocalReverse: !plan.podMode,
		UDPSize:      uint16(cfg.UDPMaxSize),
		Registerer:   reg,
	})
	if err != nil {
		return fail(err)
	}
	rt.router = r
	return rt, nil
}

// reverify has every group re-check its connections against its trust as
// it is now (the trust reloader calls it after a change).
func (rt *routing) reverify() int {
	n := 0
	for _, g := range rt.groups {
		n += g.Reverify()
	}
	return n
}

// log writes one line per route: its zones, its upstreams, whether it is
// encrypted.
func (rt *routing) log(log *slog.Logger) {
	log.Info("route", "route", upstream.DefaultRoute, "zones", []string{"."},
		"upstreams", upstreamNames(rt.ups), "encrypted", true)
	for _, pr := range rt.plan.routes {
		attrs := []any{"route", pr.name, "zones", pr.zones, "upstreams", upstreamNames(pr.upstreams), "encrypted", pr.encrypted}
		if len(pr.reverse) > 0 {
			attrs = append(attrs, "private_reverse_zones", len(pr.reverse))
		}
		log.Info("route", attrs...)
	}
}

// groupBuilder makes the upstream group of a list of entries, all with
// the same connection, retry and health settings.
type groupBuilder struct {
	cfg    *config.Config
	policy upstream.Policy
	log    *slog.Logger
}

func (b groupBuilder) build(entries []config.Upstream, probe upstream.Probe,
	trustFor func(config.Upstream) (*upstream.Trust, error), m *upstream.Metrics) (*upstream.Group, error) {
	cfg := b.cfg
	// Every line the group and its upstreams log says which route it is.
	b.log = b.log.With("route", m.Route())
	var members []upstream.Upstream
	var probes []upstream.Probe
	closeAll := func() {
		for _, u := range members {
			u.Close()
		}
	}
	for _, e := range entries {
		u, err := b.member(e, trustFor, m)
		if err != nil {
			closeAll()
			return nil, err
		}
		members = append(members, u)
		var p upstream.Probe
		if e.Probe != "" {
			p = upstream.Probe{Name: e.Probe, Type: dnswire.TypeSOA}
		}
		probes = append(probes, p)
	}
	g, err := upstream.NewGroup(upstream.GroupOptions{
		Upstreams:     members,
		Policy:        b.policy,
		MaxAttempts:   cfg.RetryMaxAttempts,
		BaseDelay:     cfg.RetryBaseDelay,
		MaxFails:      cfg.HealthMaxFails,
		ProbeInterval: cfg.HealthCheckInterval,
		ProbeTimeout:  config.HealthProbeTimeout,
		PartialWindow: config.HealthPartialWindow,
		Probe:         probe,
		Probes:        probes,
		Logger:        b.log,
		Metrics:       m,
	})
	if err != nil {
		closeAll()
		return nil, err
	}
	return g, nil
}

func (b groupBuilder) member(e config.Upstream, trustFor func(config.Upstream) (*upstream.Trust, error), m *upstream.Metrics) (upstream.Upstream, error) {
	cfg := b.cfg
	if !e.Scheme.Encrypted() {
		u, err := upstream.NewPlain(upstream.PlainOptions{
			Addr:                e.Addr,
			TCPOnly:             e.Scheme == config.SchemeTCP,
			DialTimeout:         cfg.DialTimeout,
			QueryTimeout:        cfg.QueryTimeout,
			ForwardClientSubnet: cfg.ForwardClientSubnet,
			Logger:              b.log,
			Metrics:             m,
		})
		if err != nil {
			return nil, fmt.Errorf("upstream %s: %w", e.Name(), err)
		}
		return u, nil
	}
	trust, err := trustFor(e)
	if err != nil {
		return nil, err
	}
	opts := upstream.DoTOptions{
		Addr:                e.Addr,
		ServerName:          e.ServerName,
		Pins:                e.Pins,
		Trust:               trust,
		PoolSize:            cfg.UpstreamPoolSize,
		DialTimeout:         cfg.DialTimeout,
		IdleTimeout:         cfg.UpstreamIdleTimeout,
		MaxAge:              cfg.UpstreamMaxAge,
		MaxInFlightPerConn:  cfg.UpstreamMaxInflight,
		QueryTimeout:        cfg.QueryTimeout,
		ForwardClientSubnet: cfg.ForwardClientSubnet,
		Logger:              b.log,
		Metrics:             m,
	}
	var u upstream.Upstream
	if e.Scheme == config.SchemeHTTPS {
		u, err = upstream.NewDoH(upstream.DoHOptions{DoTOptions: opts, Path: e.Path, GET: e.GET})
	} else {
		u, err = upstream.NewDoT(opts)
	}
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", e, err)
	}
	return u, nil
}
