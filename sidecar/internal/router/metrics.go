package router

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// registerInfo registers dot_sidecar_route_info: 1 for each zone a route
// forwards, with the route's name (the `route` label of the upstream
// series), the zone, and whether the route is encrypted, so that a
// dashboard can show where each zone goes and spot plaintext. Local zones
// are left out: nothing leaves the sidecar for them.
func registerInfo(reg prometheus.Registerer, routes []*Route) error {
	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "dot_sidecar",
		Name:      "route_info",
		Help:      "1 for each zone with upstreams of its own (the default route's zone is .), with the route's name and whether it is encrypted.",
	}, []string{"route", "zone", "encrypted"})
	if err := reg.Register(info); err != nil {
		return err
	}
	for _, rt := range routes {
		if !rt.Local {
			info.WithLabelValues(rt.Name, rt.Zone, strconv.FormatBool(rt.Encrypted)).Set(1)
		}
	}
	return nil
}
